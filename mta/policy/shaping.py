"""The traffic shaping table: how we connect to each mailbox provider, MX
site and recipient domain, as data (mta/data/shaping.toml, overridable by an
operator file). Pure: parsing text and answering questions about the table;
the only I/O is `ShapingTable.load` / `.builtin` reading their file.

Public API:
    ShapingError(ValueError)        every problem with a shaping file; the
                                    message names the file and the key path
                                    ("shaping.toml: provider.google.connection_limit:
                                    must be a whole number >= 1 (got 0)")
    Limits(connection_limit=None, max_deliveries_per_connection=None,
           max_message_rate=None, max_connection_rate=None, tls=None,
           connect_timeout=None, command_timeout=None)
                                    None = not set here (an earlier layer, or
                                    the [delivery] setting, or unlimited)
        .over(other) -> Limits      `other`'s set fields win over self's
    Provider(name, match, domains, site, total, rules, given=frozenset())
        match    MX host suffixes, lower-case, each starting with "."
        domains  recipient domains known to be the provider's
        site     limits per site (and per egress source)
        total    limits across all the provider's sites and egress
                 sources together ([provider.X.provider])
        rules    its automation rules (mta.policy.automation.Rule)
        given    the list keys its file wrote ("match", "domains",
                 "automation"), so an overlay can set them to []
    DomainShaping(mx_rollup=True, limits=Limits(), given=frozenset())
    ShapingTable(version, default, providers, sites, domains, rules,
                 given=frozenset())
        providers  in file order (first match wins); sites / domains:
                   read-only mappings keyed by normalised names; rules: the
                   top-level [[automation]] rules (any site); given:
                   {"automation"} when the file wrote top-level rules
        .builtin() -> ShapingTable          the shipped file
        .from_toml(text, source) -> ShapingTable
        .load(*, builtin, path) -> ShapingTable
                                    builtin and path: the operator file over
                                    the shipped one; builtin only: the shipped
                                    one; path only: the operator file alone
        .overlaid(other) -> ShapingTable
        .provider_for(mx_hosts, domain) -> Provider | None
        .limits_for(*, site, mx_hosts, domain) -> Limits
        .rollup(domain) -> bool
        .describe() -> dict         JSON-able: version, default, providers
                                    (match, domains, limits, rules), sites,
                                    domains, rules
    site_name(mx_hosts) -> str      lower-case, trailing dots stripped,
                                    de-duplicated, sorted, joined with ","
    TLS_MODES, LIMIT_KEYS, BUILTIN_SOURCE   ("opportunistic", "required");
                                    the limit keys in file order; the name
                                    the shipped file has in messages

File format (documented for operators at the top of mta/data/shaping.toml
and in docs/shaping.md):
    version = "..."                     optional in an operator file
    [default]                           limit keys
    [provider.NAME]                     match, domains, limit keys
    [provider.NAME.provider]            limit keys (the provider's total)
    [[provider.NAME.automation]]        a rule (automation.parse_rule)
    [site."HOST[,HOST...]"]             limit keys
    [domain."DOMAIN"]                   mx_rollup, limit keys
    [[automation]]                      a rule for every site
  Limit keys: connection_limit, max_deliveries_per_connection (int >= 1),
  max_message_rate, max_connection_rate ("100/s", mta.policy.gcra),
  tls ("opportunistic" | "required"), connect_timeout, command_timeout
  ("30s", mta.core.durations; > 0). Any other key is an error.

Rules:
  * provider_for: a domain listed in a provider's `domains` belongs to that
    provider (first such provider in table order); else the first provider
    (table order) such that every MX host ends with one of its suffixes
    (case-insensitive, trailing dots ignored); no hosts: None.
  * limits_for: default, then the provider's site limits, then
    sites[site], then domains[domain].limits, each `.over` the previous.
    The provider's `total` is not part of it (it is counted across sites).
  * overlaid(other), the operator file over the shipped one: per key, what
    `other` sets wins, in [default] and per provider / site / domain. A provider's match,
    domains and rules are replaced as a whole when `other` gives them (an
    empty list given counts: `automation = []` drops the shipped rules);
    the top-level rules likewise. Providers of both keep the shipped
    position; providers only in `other` are tried first, in its order, so an
    operator's provider can claim hosts a shipped one would match. The
    version is "<shipped>+<other>" when both have one.
  * Site names are normalised as site_name does, domain names lower-case
    without a trailing dot, so lookups do not depend on how they were written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

from mta.core.durations import format_duration
from mta.policy.automation import Rule
from mta.policy.shaping_file import (LIMIT_KEYS, TLS_MODES, DomainShaping, Limits, Provider,
                                     ShapingError, norm_domain, norm_host, norm_site,
                                     parse_toml, site_name, toml_key)

__all__ = ["ShapingError", "Limits", "Provider", "DomainShaping", "ShapingTable",
           "site_name", "TLS_MODES", "LIMIT_KEYS", "BUILTIN_SOURCE"]

BUILTIN_SOURCE = "mta/data/shaping.toml"
_RATE_KEYS = ("max_message_rate", "max_connection_rate")
_DURATION_KEYS = ("connect_timeout", "command_timeout")


@dataclass(frozen=True)
class ShapingTable:
    version: str
    default: Limits
    providers: tuple[Provider, ...]
    sites: Mapping[str, Limits]
    domains: Mapping[str, DomainShaping]
    rules: tuple[Rule, ...]
    given: frozenset[str] = field(default=frozenset(), compare=False)
    _by_domain: Mapping[str, Provider] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", MappingProxyType(dict(self.sites)))
        object.__setattr__(self, "domains", MappingProxyType(dict(self.domains)))
        by_domain: dict[str, Provider] = {}
        for provider in self.providers:
            for domain in provider.domains:
                by_domain.setdefault(domain, provider)
        object.__setattr__(self, "_by_domain", MappingProxyType(by_domain))

    # -- building ---------------------------------------------------------

    @classmethod
    def builtin(cls) -> ShapingTable:
        """The table shipped in the package (mta/data/shaping.toml)."""
        try:
            text = resources.files("mta").joinpath("data/shaping.toml").read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ShapingError(f"{BUILTIN_SOURCE}: cannot read: {e}") from None
        return cls.from_toml(text, BUILTIN_SOURCE)

    @classmethod
    def from_toml(cls, text: str, source: str) -> ShapingTable:
        """Parse one shaping file; `source` names it in error messages."""
        p = parse_toml(text, source)
        return cls(p.version, p.default, p.providers, p.sites, p.domains, p.rules, p.given)

    @classmethod
    def load(cls, *, builtin: bool, path: str | None) -> ShapingTable:
        """The table in force: the shipped one, the operator file at `path`
        over it, or (builtin=False) the operator file alone. Raises
        ShapingError for any problem, including a provider left with neither
        `match` nor `domains`."""
        if not builtin and path is None:
            raise ShapingError("shaping: builtin = false needs an operator file (path)")
        table = cls.builtin() if builtin else None
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ShapingError(f"{path}: cannot read: {e.strerror or e}") from None
            except UnicodeDecodeError as e:
                raise ShapingError(f"{path}: not UTF-8 text ({e.reason} at byte "
                                   f"{e.start})") from None
            own = cls.from_toml(text, path)
            table = own if table is None else table.overlaid(own)
        assert table is not None
        for provider in table.providers:
            if not provider.match and not provider.domains:
                where = path if path is not None else BUILTIN_SOURCE
                raise ShapingError(f"{where}: provider.{toml_key(provider.name)}: needs 'match' "
                                   f"(MX host suffixes) or 'domains'")
        return table

    def overlaid(self, other: ShapingTable) -> ShapingTable:
        """`other` (an operator file) over this table; see the module
        docstring for the rules."""
        mine = {p.name: p for p in self.providers}
        new = tuple(p for p in other.providers if p.name not in mine)
        theirs = {p.name: p for p in other.providers}
        merged = tuple(_merge_provider(p, theirs[p.name]) if p.name in theirs else p
                       for p in self.providers)
        sites = dict(self.sites)
        for name, limits in other.sites.items():
            sites[name] = sites[name].over(limits) if name in sites else limits
        domains = dict(self.domains)
        for name, shaping in other.domains.items():
            base = domains.get(name)
            domains[name] = shaping if base is None else _merge_domain(base, shaping)
        rules = other.rules if _gives(other.given, "automation", other.rules) else self.rules
        if self.version and other.version:
            version = f"{self.version}+{other.version}"
        else:
            version = self.version or other.version
        return ShapingTable(version, self.default.over(other.default), new + merged,
                            sites, domains, rules, self.given | other.given)

    # -- questions --------------------------------------------------------

    def provider_for(self, mx_hosts: Sequence[str], domain: str) -> Provider | None:
        provider = self._by_domain.get(norm_domain(domain))
        if provider is not None:
            return provider
        hosts = [norm_host(h) for h in mx_hosts]
        if not hosts:
            return None
        for provider in self.providers:
            if provider.match and all(host.endswith(provider.match) for host in hosts):
                return provider
        return None

    def limits_for(self, *, site: str, mx_hosts: Sequence[str], domain: str) -> Limits:
        limits = self.default
        provider = self.provider_for(mx_hosts, domain)
        if provider is not None:
            limits = limits.over(provider.site)
        if self.sites:
            own = self.sites.get(norm_site(site))
            if own is not None:
                limits = limits.over(own)
        if self.domains:
            shaping = self.domains.get(norm_domain(domain))
            if shaping is not None:
                limits = limits.over(shaping.limits)
        return limits

    def rollup(self, domain: str) -> bool:
        shaping = self.domains.get(norm_domain(domain))
        return True if shaping is None else shaping.mx_rollup

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "default": _describe_limits(self.default),
            "providers": [{
                "name": p.name,
                "match": list(p.match),
                "domains": list(p.domains),
                "site": _describe_limits(p.site),
                "total": _describe_limits(p.total),
                "rules": [_describe_rule(r) for r in p.rules],
            } for p in self.providers],
            "sites": {name: _describe_limits(limits)
                      for name, limits in sorted(self.sites.items())},
            "domains": {name: {"mx_rollup": d.mx_rollup, **_describe_limits(d.limits)}
                        for name, d in sorted(self.domains.items())},
            "rules": [_describe_rule(r) for r in self.rules],
        }


def _gives(given: frozenset[str], key: str, value: Sequence[object]) -> bool:
    """Whether a file set `key`: written (even as []) or non-empty."""
    return key in given or bool(value)


def _merge_provider(base: Provider, over: Provider) -> Provider:
    return Provider(
        name=base.name,
        match=over.match if _gives(over.given, "match", over.match) else base.match,
        domains=over.domains if _gives(over.given, "domains", over.domains) else base.domains,
        site=base.site.over(over.site),
        total=base.total.over(over.total),
        rules=over.rules if _gives(over.given, "automation", over.rules) else base.rules,
        given=base.given | over.given,
    )


def _merge_domain(base: DomainShaping, over: DomainShaping) -> DomainShaping:
    rollup = over.mx_rollup if "mx_rollup" in over.given else base.mx_rollup
    return DomainShaping(rollup, base.limits.over(over.limits), base.given | over.given)


def _describe_limits(limits: Limits) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in LIMIT_KEYS:
        value = getattr(limits, name)
        if value is None:
            continue
        if name in _RATE_KEYS or name == "tls":
            out[name] = str(value)
        elif name in _DURATION_KEYS:
            out[name] = format_duration(value)
        else:
            out[name] = value
    return out


def _describe_rule(rule: Rule) -> dict[str, object]:
    out: dict[str, object] = {"name": rule.name, "match": rule.pattern,
                              "action": str(rule.action)}
    if rule.action.kind != "bounce":
        out["duration"] = format_duration(rule.duration)
    if rule.threshold > 1:
        out["threshold"] = f"{rule.threshold}/{format_duration(rule.window)}"
    return out
