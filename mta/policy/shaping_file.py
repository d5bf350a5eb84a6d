"""The shaping file's values and its parser: Limits, Provider,
DomainShaping, ShapingError, site_name, and TOML data -> FileParts.
mta/policy/shaping.py builds ShapingTable on them and re-exports the public
names: import them from there. Pure (text in, values out; no I/O).

Public API (beyond what mta.policy.shaping documents):
    FileParts(version, default, providers, sites, domains, rules, given)
                                    one parsed file, ShapingTable's fields
    parse_toml(text, source) -> FileParts       ShapingError naming `source`
                                    and the key path for every problem
    norm_host(host) / norm_domain(domain) / norm_site(site) -> str
                                    the lookup forms: lower-case, no trailing
                                    dot; a site as site_name writes it
    toml_key(name) -> str           one key path component as TOML writes it
                                    (bare, or quoted: site."mx1.example.net")

Rules: unknown keys are errors wherever they are; a [site] or [domain]
table written twice under different spellings ("A.example." and
"a.example") is an error, as are duplicate keys in TOML itself.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from mta.core.durations import parse_duration
from mta.policy.automation import Rule, parse_rule
from mta.policy.gcra import RateSpec, parse_rate

__all__ = ["ShapingError", "Limits", "Provider", "DomainShaping", "FileParts",
           "parse_toml", "site_name", "norm_host", "norm_domain", "norm_site",
           "toml_key", "TLS_MODES", "LIMIT_KEYS"]

TLS_MODES = ("opportunistic", "required")

_INT_KEYS = ("connection_limit", "max_deliveries_per_connection")
_RATE_KEYS = ("max_message_rate", "max_connection_rate")
_DURATION_KEYS = ("connect_timeout", "command_timeout")
LIMIT_KEYS = _INT_KEYS + _RATE_KEYS + ("tls",) + _DURATION_KEYS
_TOP_KEYS = ("version", "default", "provider", "site", "domain", "automation")
_PROVIDER_KEYS = ("match", "domains", "provider", "automation") + LIMIT_KEYS
_DOMAIN_KEYS = ("mx_rollup",) + LIMIT_KEYS
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_HOST = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


class ShapingError(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    connection_limit: int | None = None
    max_deliveries_per_connection: int | None = None
    max_message_rate: RateSpec | None = None
    max_connection_rate: RateSpec | None = None
    tls: str | None = None
    connect_timeout: float | None = None
    command_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in _INT_KEYS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name}: must be a whole number >= 1 (got {value!r})")
        for name in _RATE_KEYS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, RateSpec):
                raise ValueError(f"{name}: must be a RateSpec (got {value!r})")
        if self.tls is not None and self.tls not in TLS_MODES:
            raise ValueError(f"tls: must be one of {', '.join(map(repr, TLS_MODES))} "
                             f"(got {self.tls!r})")
        for name in _DURATION_KEYS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))
                                      or not 0 < value < math.inf):
                raise ValueError(f"{name}: must be a finite number of seconds > 0 "
                                 f"(got {value!r})")

    def over(self, other: Limits) -> Limits:
        """These limits with every field `other` sets replaced by other's."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)
                   if getattr(other, f.name) is not None}
        if not changes:
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Limits(**values)


_NO_LIMITS = Limits()


@dataclass(frozen=True)
class Provider:
    name: str
    match: tuple[str, ...]
    domains: tuple[str, ...]
    site: Limits
    total: Limits
    rules: tuple[Rule, ...]
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty string (got {self.name!r})")
        for suffix in self.match:
            if not isinstance(suffix, str) or not suffix.startswith(".") \
                    or suffix != suffix.lower() or len(suffix) < 2:
                raise ValueError(f"match: {suffix!r} must be a lower-case host suffix "
                                 f"starting with '.' (like '.google.com')")


@dataclass(frozen=True)
class DomainShaping:
    mx_rollup: bool = True
    limits: Limits = _NO_LIMITS
    given: frozenset[str] = field(default=frozenset(), compare=False)


@dataclass(frozen=True)
class FileParts:
    version: str
    default: Limits
    providers: tuple[Provider, ...]
    sites: dict[str, Limits]
    domains: dict[str, DomainShaping]
    rules: tuple[Rule, ...]
    given: frozenset[str]


def parse_toml(text: str, source: str) -> FileParts:
    """One shaping file's text -> its parts; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ShapingError(f"{source}: invalid TOML: {e}") from None
    return _Parser(source).table(data)


def site_name(mx_hosts: Sequence[str]) -> str:
    """A stable name for a set of MX hosts: "mx1.example.net" for one,
    "a.example,b.example" for several, whatever their order, case, trailing
    dots or repeats. ValueError for no hosts or an empty host name."""
    if isinstance(mx_hosts, str):
        raise ValueError(f"mx_hosts: expected a sequence of host names (got {mx_hosts!r})")
    hosts = {norm_host(h) for h in mx_hosts}
    if not hosts:
        raise ValueError("mx_hosts: no host names")
    if "" in hosts:
        raise ValueError(f"mx_hosts: an empty host name in {list(mx_hosts)!r}")
    return ",".join(sorted(hosts))


def norm_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def norm_domain(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def norm_site(site: str) -> str:
    try:
        return site_name(site.split(","))
    except ValueError:
        return site.strip().lower()


def toml_key(name: str) -> str:
    """One path component as TOML writes it: bare when it can be, quoted
    otherwise (site."mx1.example.net")."""
    if _BARE_KEY.match(name):
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class _Parser:
    """TOML data (from tomllib) -> FileParts, every error naming the file
    and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ShapingError:
        return ShapingError(f"{self.source}: {path}: {message}" if path
                            else f"{self.source}: {message}")

    def table(self, data: Mapping[str, object]) -> FileParts:
        self.known(data, _TOP_KEYS, "")
        version = data.get("version", "")
        if not isinstance(version, str):
            raise self.fail("version", f"must be a string (got {version!r})")
        default = self.limits(self.mapping(data.get("default", {}), "default"), "default",
                              LIMIT_KEYS)
        providers = tuple(self.provider(name, value, f"provider.{toml_key(name)}")
                          for name, value in self.mapping(data.get("provider", {}),
                                                          "provider").items())
        sites: dict[str, Limits] = {}
        for name, value in self.mapping(data.get("site", {}), "site").items():
            path = f"site.{toml_key(name)}"
            key = self.site_key(name, path)
            if key in sites:
                raise self.fail(path, f"the same site as another [site] table ({key})")
            sites[key] = self.limits(self.mapping(value, path), path, LIMIT_KEYS)
        domains: dict[str, DomainShaping] = {}
        for name, value in self.mapping(data.get("domain", {}), "domain").items():
            path = f"domain.{toml_key(name)}"
            key = self.domain_name(name, path)
            if key in domains:
                raise self.fail(path, f"the same domain as another [domain] table ({key})")
            domains[key] = self.domain(self.mapping(value, path), path)
        given = frozenset({"automation"}) if "automation" in data else frozenset()
        rules = self.rules(data.get("automation", []), "automation")
        return FileParts(version, default, providers, sites, domains, rules, given)

    def provider(self, name: str, value: object, path: str) -> Provider:
        data = self.mapping(value, path)
        self.known(data, _PROVIDER_KEYS, path)
        match = tuple(self.suffix(s, f"{path}.match[{i}]")
                      for i, s in enumerate(self.strings(data.get("match", []),
                                                         f"{path}.match")))
        domains = tuple(self.domain_name(d, f"{path}.domains[{i}]")
                        for i, d in enumerate(self.strings(data.get("domains", []),
                                                           f"{path}.domains")))
        site = self.limits(data, path, LIMIT_KEYS, skip=("match", "domains", "provider",
                                                          "automation"))
        total_path = f"{path}.provider"
        total = self.limits(self.mapping(data.get("provider", {}), total_path), total_path,
                            LIMIT_KEYS)
        rules = self.rules(data.get("automation", []), f"{path}.automation")
        given = frozenset(k for k in ("match", "domains", "automation") if k in data)
        try:
            return Provider(name, match, domains, site, total, rules, given)
        except ValueError as e:
            raise self.fail(path, str(e)) from None

    def domain(self, data: Mapping[str, object], path: str) -> DomainShaping:
        self.known(data, _DOMAIN_KEYS, path)
        rollup = data.get("mx_rollup", True)
        if not isinstance(rollup, bool):
            raise self.fail(f"{path}.mx_rollup", f"must be true or false (got {rollup!r})")
        limits = self.limits(data, path, LIMIT_KEYS, skip=("mx_rollup",))
        given = frozenset({"mx_rollup"}) if "mx_rollup" in data else frozenset()
        return DomainShaping(rollup, limits, given)

    def limits(self, data: Mapping[str, object], path: str, allowed: Iterable[str],
               skip: Iterable[str] = ()) -> Limits:
        skipped = set(skip)
        allowed = tuple(allowed)
        self.known(data, allowed + tuple(skipped), path)
        values: dict[str, Any] = {}
        for key, raw in data.items():
            if key in skipped:
                continue
            values[key] = self.limit_value(key, raw, f"{path}.{key}")
        try:
            return Limits(**values)
        except ValueError as e:     # limit_value has checked each value already
            raise self.fail(path, str(e)) from None

    def limit_value(self, key: str, raw: object, path: str) -> object:
        if key in _INT_KEYS:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
                raise self.fail(path, f"must be a whole number >= 1 (got {raw!r})")
            return raw
        if key in _RATE_KEYS:
            if not isinstance(raw, str):
                raise self.fail(path, f"must be a rate like \"100/s\" or \"1000/h\" "
                                      f"(got {raw!r})")
            try:
                return parse_rate(raw)
            except ValueError as e:
                raise self.fail(path, str(e)) from None
        if key == "tls":
            if raw not in TLS_MODES:
                raise self.fail(path, f"must be one of "
                                      f"{', '.join(map(repr, TLS_MODES))} (got {raw!r})")
            return raw
        # durations
        if not isinstance(raw, str):
            raise self.fail(path, f"must be a duration like \"30s\" or \"5m\" (got {raw!r})")
        try:
            seconds = parse_duration(raw)
        except ValueError:
            raise self.fail(path, f"must be a duration like \"30s\" or \"5m\" "
                                  f"(got {raw!r})") from None
        if not 0 < seconds < math.inf:
            raise self.fail(path, f"must be longer than 0 s (got {raw!r})")
        return seconds

    def rules(self, value: object, path: str) -> tuple[Rule, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be an array of tables ([[{path}]]), "
                                  f"got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            data = self.mapping(item, where)
            try:
                out.append(parse_rule(data, where))
            except ValueError as e:
                message = str(e)
                if message.startswith(f"{where}: "):
                    message = message[len(where) + 2:]
                raise self.fail(where, message) from None
        return tuple(out)

    def mapping(self, value: object, path: str) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, got {_toml_type(value)}")
        return value

    def strings(self, value: object, path: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of strings (got {value!r})")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{path}[{i}]", f"must be a string (got {item!r})")
        return value

    def known(self, data: Mapping[str, object], allowed: Iterable[str], path: str) -> None:
        allowed = tuple(allowed)
        for key in data:
            if key not in allowed:
                where = f"{path}.{toml_key(key)}" if path else toml_key(key)
                raise self.fail(where, f"unknown key (expected one of {', '.join(allowed)})")

    def suffix(self, raw: str, path: str) -> str:
        suffix = raw.strip().rstrip(".").lower()
        if not suffix.startswith(".") or not _HOST.match(suffix[1:]):
            raise self.fail(path, f"{raw!r} is not a host suffix: write it with a leading "
                                  f"dot, like \".google.com\"")
        return suffix

    def domain_name(self, raw: str, path: str) -> str:
        domain = norm_domain(raw)
        if not _HOST.match(domain):
            raise self.fail(path, f"{raw!r} is not a domain name")
        return domain

    def site_key(self, raw: str, path: str) -> str:
        hosts = [norm_host(h) for h in raw.split(",")]
        for host in hosts:
            if not _HOST.match(host):
                raise self.fail(path, f"{raw!r} is not a site name (MX host names "
                                      f"joined with \",\")")
        return site_name(hosts)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
