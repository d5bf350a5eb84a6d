"""Configuration: TOML → typed, frozen dataclasses (one per section).

Public API: `load_config(path)`, `parse_config(text)`, `render_config(cfg)`,
`Config` and its section classes. Keys are declared once in `sections.py`.
"""

from mta.config.loader import (EMBEDDED_DEFAULT, config_as_dict, load_config, parse_config,
                               render_config)
from mta.config.sections import (EVENT_TYPES, LedgerConfig, WebhookConfig, AdminConfig, BouncesConfig, Config, DeliveryConfig, DnsConfig,
                                 DomainsConfig, ListenerConfig, PolicyConfig, ServerConfig,
                                 SuppressionConfig)

__all__ = ["EVENT_TYPES", "LedgerConfig", "WebhookConfig", "AdminConfig", "BouncesConfig", "SuppressionConfig", "EMBEDDED_DEFAULT", "config_as_dict", "load_config", "parse_config", "render_config",
           "Config", "DeliveryConfig", "DnsConfig", "DomainsConfig", "ListenerConfig",
           "PolicyConfig", "ServerConfig"]
