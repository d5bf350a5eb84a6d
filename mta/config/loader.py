"""TOML text → a validated, frozen `Config`, or a `ConfigError` listing every
bad key by path (``delivery.retry_schedule: "5x" is not a duration list``).

Resolution of which file to read (`config_path`, first that applies): an
explicit path (``--config``), ``$MTA_CONFIG``, the default file
``/etc/mta/mta.toml`` when it exists (``$MTA_DEFAULT_CONFIG`` names another
default file; set empty, there is none), else the embedded default (sandbox
mode, submission on 127.0.0.1:2525 with STARTTLS; its `source` is
``EMBEDDED_SOURCE``). A default file that exists but cannot be read is an
error, never a silent fallback to the sandbox: every command must act on the
daemon's store. ``MTA_STATE_DIR`` overrides ``server.state_dir`` in every
case; ``MTA_LISTEN`` (what ``mta serve --listen`` sets) replaces the address
of the one submission listener (`with_listen`; an error when there is not
exactly one). Overrides live in the environment so a reload (SIGHUP), which
calls `load_config` again, keeps them.

Parsing checks the text only; `mta.config.checks` adds what `mta config
check` also verifies (certificate files, placeholder values).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from types import MappingProxyType
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mta.config.schema import HOSTPORT, KeyError_, check_bounds, host_of
from mta.config.content import content_checks
from mta.config.cluster import cluster_checks
from mta.config.sections import ARRAYS, EVENT_TYPES, SECTIONS, Config, WebhookConfig
from mta.core.address import AddressError, parse_domain
from mta.core.errors import ConfigError

EMBEDDED_DEFAULT = """\
# The embedded default: a sandbox you can try without writing a config file.
[server]
hostname = "localhost"
state_dir = "./var/mta"
mode = "sandbox"

[[listeners]]
name = "submission"
address = "127.0.0.1:2525"
role = "submission"
tls = "starttls"

[api]
address = "127.0.0.1:8080"

[public]
address = "127.0.0.1:8081"
"""


def _build(cls: type, table: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(table, dict):
        errors.append(f"{path}: must be a table")
        return cls()
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata}
    for name, raw in table.items():
        f = fields.get(name)
        if f is None:
            errors.append(f"{path}.{name}: unknown key")
            continue
        meta = f.metadata
        try:
            value = meta["kind"].parse(raw)
            check_bounds(value, meta)
            values[name] = value
        except KeyError_ as exc:
            errors.append(f"{path}.{name}: {exc}")
    return cls(**values)


def _routes(table: Any, errors: list[str]) -> MappingProxyType[str, str]:
    out: dict[str, str] = {}
    if not isinstance(table, dict):
        errors.append("routes: must be a table of domain = \"host:port\"")
        return MappingProxyType(out)
    for dom, hop in table.items():
        try:
            name = "*" if dom == "*" else parse_domain(dom)
        except AddressError:
            errors.append(f"routes.{dom}: not a domain")
            continue
        try:
            out[name] = HOSTPORT.parse(hop)
        except KeyError_ as exc:
            errors.append(f"routes.{dom}: {exc}")
    return MappingProxyType(out)


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    errors: list[str] = []
    kwargs: dict[str, Any] = {"source": source}
    for name, raw in data.items():
        if name in SECTIONS:
            kwargs[name] = _build(SECTIONS[name], raw, name, errors)
        elif name in ARRAYS:
            if not isinstance(raw, list):
                errors.append(f"{name}: must be an array of tables ([[{name}]])")
                continue
            kwargs[name] = tuple(
                _build(ARRAYS[name], t, f"{name}[{i}]", errors) for i, t in enumerate(raw))
        elif name == "routes":
            kwargs["routes"] = _routes(raw, errors)
        else:
            errors.append(f"{name}: unknown section")
    cfg = Config(**kwargs)
    errors.extend(_cross_checks(cfg))
    if errors:
        raise ConfigError(errors)
    return cfg


def _cross_checks(cfg: Config) -> list[str]:
    errors = []
    names = [lst.name for lst in cfg.listeners]
    for i, lst in enumerate(cfg.listeners):
        if names.count(lst.name) > 1:
            errors.append(f"listeners[{i}].name: {lst.name!r} is used by more than one listener")
        if lst.name == "tlsrpt":
            errors.append(f"listeners[{i}].name: \"tlsrpt\" is reserved (the daemon's own "
                          "TLS-RPT reports)")
        if (lst.cert is None) != (lst.key is None):
            errors.append(f"listeners[{i}]: set both cert and key, or neither")
        if (lst.role == "submission" and lst.tls == "none" and lst.require_tls_for_auth
                and not lst.trusted_networks):
            errors.append(f"listeners[{i}]: tls = \"none\" with require_tls_for_auth = true "
                          "and no trusted_networks means nobody can submit")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", cfg.domains.bounce_subdomain):
        errors.append(f"domains.bounce_subdomain: {cfg.domains.bounce_subdomain!r} is not "
                      "one lower-case DNS label")
    rua = cfg.domains.dmarc_rua
    if rua is not None and not re.fullmatch(r"[^@\s,;!]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+", rua):
        errors.append(f"domains.dmarc_rua: {rua!r} is not an e-mail address")
    admin_host = host_of(cfg.admin.address)
    if cfg.admin.enabled and cfg.admin.token is None and not _is_loopback(admin_host):
        errors.append(f"admin.address: {cfg.admin.address} is not a loopback address, so "
                      "admin.token must be set (the API steers the queue)")
    if cfg.admin.token is not None and len(cfg.admin.token) < 16:
        errors.append("admin.token: use at least 16 characters")
    errors.extend(_webhook_checks(cfg))
    errors.extend(_api_checks(cfg))
    errors.extend(content_checks(cfg))
    errors.extend(cluster_checks(cfg))
    errors.extend(_egress_checks(cfg))
    r = cfg.reputation
    for what in ("bounce", "complaint"):
        if getattr(r, f"{what}_warn") > getattr(r, f"{what}_pause"):
            errors.append(f"reputation.{what}_warn: above {what}_pause")
    if r.min_volume > r.window:
        errors.append("reputation.min_volume: above window (no assessment could ever act)")
    addrs = [lst.address for lst in cfg.listeners]
    for a in set(addrs):
        if addrs.count(a) > 1:
            errors.append(f"listeners: address {a} is used by more than one listener")
    return errors


def _egress_checks(cfg: Config) -> list[str]:
    """[[egress]] sources and [[egress_pool]]s: names, addresses, references.
    (Warm-up schedules and the shaping file are read by runtime/shaping.py,
    which `mta config check` and a reload also run.)"""
    errors = []
    names = [e.name for e in cfg.egress]
    addresses = [e.address for e in cfg.egress]
    for i, e in enumerate(cfg.egress):
        where = f"egress[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", e.name):
            errors.append(f"{where}.name: required: letters, digits, '.', '_' or '-'")
        elif names.count(e.name) > 1:
            errors.append(f"{where}.name: {e.name!r} is used by more than one source")
        try:
            ipaddress.ip_address(e.address)
        except ValueError:
            errors.append(f"{where}.address: {e.address!r} is not an IPv4 or IPv6 address")
        else:
            if addresses.count(e.address) > 1:
                errors.append(f"{where}.address: {e.address} is used by more than one source")
    pools = [p.name for p in cfg.egress_pool]
    with_sources = {e.pool for e in cfg.egress}
    for i, p in enumerate(cfg.egress_pool):
        if pools.count(p.name) > 1:
            errors.append(f"egress_pool[{i}].name: {p.name!r} is used by more than one pool")
        if p.name not in with_sources:
            errors.append(f"egress_pool[{i}].name: no [[egress]] source has pool = "
                          f"{p.name!r}")
    return errors


def _api_checks(cfg: Config) -> list[str]:
    api, errors = cfg.api, []
    if (api.cert is None) != (api.key is None):
        errors.append("api: set both cert and key, or neither")
    if (api.address is not None and api.cert is None and not api.behind_tls_proxy
            and not _is_loopback(host_of(api.address))):
        errors.append(f"api.address: {api.address} is not a loopback address, so the API "
                      "needs TLS: set api.cert and api.key, or api.behind_tls_proxy = true "
                      "when a TLS proxy sits in front (API keys must never cross a network "
                      "in clear)")
    if (cfg.admin.cert is None) != (cfg.admin.key is None):
        errors.append("admin: set both cert and key, or neither")
    if api.address is not None and cfg.admin.enabled and api.address == cfg.admin.address:
        errors.append(f"api.address: {api.address} is the admin API's address")
    return errors


def _webhook_checks(cfg: Config) -> list[str]:
    errors = []
    names = [w.name for w in cfg.webhooks]
    for i, w in enumerate(cfg.webhooks):
        if w.name and names.count(w.name) > 1:
            errors.append(f"webhooks[{i}].name: {w.name!r} is used by more than one webhook")
        errors.extend(f"webhooks[{i}].{key}: {message}" for key, message in webhook_errors(w))
    return errors


def webhook_errors(w: WebhookConfig) -> list[tuple[str, str]]:
    """What is wrong with one webhook endpoint on its own, as (key, message)
    pairs (key: name, url, secret or events); the config's checks and the
    sending API's POST/PATCH /webhooks (mta.api.resources) both use it."""
    errors = []
    if not w.name:
        errors.append(("name", "required"))
    if not w.url.startswith(("http://", "https://")):
        errors.append(("url", f"{w.url!r} is not an http(s) URL"))
    else:
        try:
            parts = urlsplit(w.url)
            _ = parts.port      # raises on a port that is not a number in range
            if not parts.hostname:
                raise ValueError("no host")
        except ValueError as exc:
            errors.append(("url", f"{w.url!r} is not a usable URL ({exc})"))
    if not w.secret.startswith("whsec_"):
        errors.append(("secret", "must be whsec_<base64> (run `mta webhooks secret`)"))
    else:
        try:
            if not base64.b64decode(w.secret[6:], validate=True):
                raise ValueError
        except ValueError:
            errors.append(("secret", "the part after whsec_ is not base64"))
    bad = [e for e in w.events if e != "*" and e not in EVENT_TYPES]
    if bad:
        errors.append(("events", f"unknown event type(s) {', '.join(bad)}; "
                                 f"use \"*\" or some of {', '.join(EVENT_TYPES)}"))
    return errors


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT_CONFIG = "/etc/mta/mta.toml"
EMBEDDED_SOURCE = "<embedded default>"


def default_config_path() -> str | None:
    """The default config file: ``$MTA_DEFAULT_CONFIG`` if set (empty: none),
    else DEFAULT_CONFIG."""
    return os.environ.get("MTA_DEFAULT_CONFIG", DEFAULT_CONFIG) or None


def config_path(path: str | None = None) -> str | None:
    """The file `load_config(path)` reads: `path`, else ``$MTA_CONFIG``, else
    the default file when it exists; None means the embedded default."""
    if path:
        return path
    if os.environ.get("MTA_CONFIG"):
        return os.environ["MTA_CONFIG"]
    default = default_config_path()
    if default is not None and os.path.lexists(default):
        return default
    return None


def with_listen(cfg: Config, address: str, what: str = "--listen") -> Config:
    """`cfg` with the address of its one submission listener replaced by
    `address` ("host:port"); ConfigError when the address is not host:port or
    the config has no or several submission listeners (which one to move
    would be a guess)."""
    try:
        address = HOSTPORT.parse(address)
    except KeyError_ as exc:
        raise ConfigError(f"{what}: {exc}") from None
    subs = [i for i, lst in enumerate(cfg.listeners) if lst.role == "submission"]
    if len(subs) != 1:
        names = ", ".join(cfg.listeners[i].name for i in subs)
        have = f"{len(subs)} submission listeners ({names})" if subs else "no submission listener"
        raise ConfigError(f"{what}: the configuration {cfg.source} has {have}; {what} replaces "
                          "the address of exactly one (edit the listeners' addresses instead)")
    listeners = list(cfg.listeners)
    listeners[subs[0]] = dataclasses.replace(listeners[subs[0]], address=address)
    cfg = dataclasses.replace(cfg, listeners=tuple(listeners))
    errors = [f"{what} {address}: {e}" for e in _cross_checks(cfg)]
    if errors:
        raise ConfigError(errors)
    return cfg


def load_config(path: str | None = None) -> Config:
    """Load the file `config_path(path)` names, else the embedded default; then
    apply ``MTA_STATE_DIR`` and ``MTA_LISTEN``."""
    chosen = config_path(path)
    if chosen is None:
        cfg = parse_config(EMBEDDED_DEFAULT, EMBEDDED_SOURCE)
    else:
        try:
            with open(chosen, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            hint = ""
            if not path and not os.environ.get("MTA_CONFIG"):
                hint = " (the default config file; pass --config PATH to use another)"
            raise ConfigError(f"{chosen}: cannot read: {exc.strerror}{hint}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{chosen}: not UTF-8 text: {exc.reason} at byte "
                              f"{exc.start}") from None
        cfg = parse_config(text, chosen)
    state = os.environ.get("MTA_STATE_DIR")
    if state:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, state_dir=state))
    listen = os.environ.get("MTA_LISTEN")
    if listen:
        cfg = with_listen(cfg, listen, "MTA_LISTEN (mta serve --listen)")
    return cfg


def _render_value(value: Any, meta: Mapping[str, Any]) -> Any:
    return value if value is None else meta["kind"].render(value)


def _section_dict(obj: Any) -> dict[str, Any]:
    return {f.name: _render_value(getattr(obj, f.name), f.metadata)
            for f in dataclasses.fields(obj) if f.metadata}


# Keys whose values are secrets: `mta config check` says whether they are set,
# never what they are (its output ends up in tickets and CI logs).
SECRET_KEYS = {("admin", "token"), ("webhooks", "secret")}
REDACTED = "(set, not shown)"


def render_config(cfg: Config) -> str:
    """The effective configuration as TOML (unset optional keys as comments;
    SECRET_KEYS as a comment saying they are set)."""
    lines = [f"# effective configuration from {cfg.source}"]

    def emit_table(header: str, obj: Any) -> None:
        lines.append("")
        lines.append(header)
        section = header.strip("[]")
        for f in dataclasses.fields(obj):
            if not f.metadata:
                continue
            v = _render_value(getattr(obj, f.name), f.metadata)
            doc = f.metadata["doc"]
            if v and (section, f.name) in SECRET_KEYS:
                lines.append(f"# {f.name} = {REDACTED}  # {doc}")
            elif v is None:
                lines.append(f"# {f.name} = (unset)  # {doc}")
            else:
                lines.append(f"{f.name} = {json.dumps(v)}  # {doc}")

    for name in SECTIONS:
        emit_table(f"[{name}]", getattr(cfg, name))
    for name in ARRAYS:
        for table in getattr(cfg, name):
            emit_table(f"[[{name}]]", table)
    lines.append("")
    lines.append("[routes]")
    for dom, hop in cfg.routes.items():
        lines.append(f"{json.dumps(dom)} = {json.dumps(hop)}")
    return "\n".join(lines) + "\n"


def config_as_dict(cfg: Config, *, redact: bool = False) -> dict[str, Any]:
    """Every key's value by section (arrays as lists); `redact`: SECRET_KEYS
    that are set become REDACTED (for printing; the reload compares the real
    values)."""
    out: dict[str, Any] = {name: _section_dict(getattr(cfg, name)) for name in SECTIONS}
    for name in ARRAYS:
        out[name] = [_section_dict(t) for t in getattr(cfg, name)]
    out["routes"] = dict(cfg.routes)
    if redact:
        for section, key in SECRET_KEYS:
            tables = out[section] if isinstance(out[section], list) else [out[section]]
            for table in tables:
                if table.get(key):
                    table[key] = REDACTED
    return out
