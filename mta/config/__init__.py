"""Configuration: TOML → typed, frozen dataclasses (one per section).

Public API: `load_config(path)`, `config_path(path)`, `with_listen(cfg, addr)`,
`parse_config(text)`, `render_config(cfg)`, `Config` and its section classes
(loader.py: which file, overrides); `file_errors(cfg)` and
`placeholder_warnings(cfg)` (checks.py: what `mta config check` adds). Keys
are declared once in `sections.py`, each marked live or restart-only
(`live_keys(section)`).
"""

from mta.config.checks import file_errors, placeholder_warnings
from mta.config.loader import (DEFAULT_CONFIG, EMBEDDED_DEFAULT, EMBEDDED_SOURCE,
                               config_as_dict, config_path, load_config, parse_config,
                               render_config, with_listen)
from mta.config.sections import (EVENT_TYPES, ROUTES_LIVE, AdminConfig, ApiConfig, BouncesConfig,
                                 Config,
                                 DeliveryConfig, DnsConfig, DomainsConfig, LedgerConfig,
                                 ListenerConfig, PolicyConfig, ServerConfig, SuppressionConfig,
                                 WebhookConfig, live_keys)

__all__ = ["live_keys", "ROUTES_LIVE", "EVENT_TYPES", "LedgerConfig", "WebhookConfig",
           "AdminConfig", "ApiConfig", "BouncesConfig", "SuppressionConfig", "EMBEDDED_DEFAULT",
           "config_as_dict", "load_config", "parse_config", "render_config",
           "Config", "DeliveryConfig", "DnsConfig", "DomainsConfig", "ListenerConfig",
           "PolicyConfig", "ServerConfig", "DEFAULT_CONFIG", "EMBEDDED_SOURCE", "config_path",
           "with_listen", "file_errors", "placeholder_warnings"]
