"""Verify a domain's published DNS against its `DomainPlan`, record by record.

One job: ask DNS (through the `Resolver` seam, asynchronously) whether each
record of `records.DomainPlan` is there and right, and explain every failure
in words an operator can act on. It decides nothing about domain state; the
service does that with the result.

Public API:
    await check_domain(resolver, plan, now) -> CheckResult
    CheckResult(domain, checked_at, entries): .ok, .failures, .reason, .temporary,
        .to_dict()
    CheckEntry(name, record, ok, reason, required, selector, temporary)
        name is "dkim", "spf", "dmarc" or "return-path"
    parse_tags(text) -> dict      DKIM/DMARC tag=value lists
    parse_dmarc(text) -> dict     raises ValueError naming the bad tag

What passes:
  - dkim (one entry per selector): exactly one TXT at <sel>._domainkey.<d>,
    v=DKIM1 first if present, k= our algorithm, p= our public key byte for
    byte. Required for active selectors; pending (rotation) and retiring
    ones are reported but not required.
  - spf (one entry for <d>, one for the return-path domain): RFC 7208
    check_host() (`spf.py`) is "pass" for every `[server] public_ips`
    address. An empty public_ips fails: there is nothing to authorise.
  - dmarc: exactly one "v=DMARC1" record at _dmarc.<d>, v first, p= one of
    none/quarantine/reject, sp/adkim/aspf/pct/rua/ruf/fo/ri well-formed; and
    alignment holds: our DKIM d= is <d> itself (aligned in any mode), the
    return path <bounce>.<d> is only relaxed-aligned, so aspf=s fails.
  - return-path: <bounce>.<d> has an MX whose host is server.hostname.
Invariants: never raises on DNS trouble; a DnsTempError becomes a failed
entry with `temporary=True` (the service does not flip a verified domain to
failed on a timeout alone).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import asdict, dataclass
from typing import Any

from mta.delivery.resolver import DnsError, DnsTempError, NullMx, Resolver
from mta.domains.records import DomainPlan, SelectorKey, dmarc_value, spf_value
from mta.domains.spf import check_host

__all__ = ["CheckEntry", "CheckResult", "check_domain", "parse_dmarc", "parse_tags"]

_K = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}


@dataclass(frozen=True, slots=True)
class CheckEntry:
    name: str
    record: str
    ok: bool
    reason: str
    required: bool = True
    selector: str | None = None
    temporary: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    domain: str
    checked_at: float
    entries: tuple[CheckEntry, ...]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries if e.required)

    @property
    def failures(self) -> list[CheckEntry]:
        return [e for e in self.entries if e.required and not e.ok]

    @property
    def temporary(self) -> bool:
        """Every required failure is a DNS hiccup (timeout, SERVFAIL)."""
        f = self.failures
        return bool(f) and all(e.temporary for e in f)

    @property
    def reason(self) -> str | None:
        f = self.failures
        return "; ".join(f"{e.name} {e.record}: {e.reason}" for e in f) if f else None

    def entry(self, name: str, selector: str | None = None) -> list[CheckEntry]:
        return [e for e in self.entries if e.name == name
                and (selector is None or e.selector == selector)]

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "ok": self.ok, "checked_at": self.checked_at,
                "checks": [e.to_dict() for e in self.entries]}


def parse_tags(text: str) -> dict[str, str]:
    """RFC 6376 §3.2 tag-list: "a=1; b = 2;" → {"a": "1", "b": "2"} (ValueError if bad)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"{part.strip()!r} is not a tag=value pair")
        if name in tags:
            raise ValueError(f"tag {name}= appears twice")
        tags[name] = value.strip()
    return tags


# ---- DKIM ----

def _b64(value: str) -> bytes:
    return base64.b64decode(re.sub(r"\s+", "", value), validate=True)


async def _dkim(resolver: Resolver, plan: DomainPlan, sel: SelectorKey) -> CheckEntry:
    name = plan.dkim_name(sel.selector)
    required = sel.status == "active"

    def entry(ok: bool, reason: str, temp: bool = False) -> CheckEntry:
        return CheckEntry("dkim", name, ok, reason, required, sel.selector, temp)

    try:
        txts = await resolver.txt(name)
    except DnsTempError as exc:
        return entry(False, f"DNS temporary error: {exc}", True)
    except DnsError:
        return entry(False, f"no TXT record at {name}: publish the DKIM record")
    if len(txts) != 1:
        return entry(False, f"{len(txts)} TXT records at {name}; publish exactly one")
    want = dict(parse_tags(sel.txt))
    try:
        tags = parse_tags(txts[0])
    except ValueError as exc:
        return entry(False, f"malformed DKIM record: {exc}")
    if "v" in tags and (tags["v"] != "DKIM1" or next(iter(tags)) != "v"):
        return entry(False, "malformed DKIM record: v=DKIM1 must be the first tag")
    if tags.get("k", "rsa") != _K[sel.algorithm]:
        return entry(False, f"wrong key type k={tags.get('k', 'rsa')}, ours is "
                            f"k={_K[sel.algorithm]}")
    if "p" not in tags:
        return entry(False, "malformed DKIM record: no p= tag")
    if not tags["p"].strip():
        return entry(False, "the key is revoked (empty p=)")
    try:
        published = _b64(tags["p"])
    except (binascii.Error, ValueError):
        return entry(False, "malformed DKIM record: p= is not base64")
    if published != _b64(want["p"]):
        return entry(False, "wrong key: the published p= is not our public key "
                            "(publish the record `mta domain show` prints)")
    if "h" in tags and "sha256" not in [h.strip() for h in tags["h"].split(":")]:
        return entry(False, f"h={tags['h']} excludes sha256, which we sign with")
    if "s" in tags and not {"email", "*"} & {s.strip() for s in tags["s"].split(":")}:
        return entry(False, f"s={tags['s']} excludes email")
    return entry(True, f"{sel.algorithm} key published and equal to ours ({sel.status})")


# ---- SPF ----

async def _spf(resolver: Resolver, plan: DomainPlan, target: str, qualifier: str) -> CheckEntry:
    suggestion = spf_value(plan.public_ips, qualifier)
    if not plan.public_ips:
        return CheckEntry("spf", target, False, "[server] public_ips is empty: no address "
                                                "to authorise (set it in the config)")
    outcomes = await asyncio.gather(*(check_host(resolver, ip, target) for ip in plan.public_ips))
    bad = [(ip, o) for ip, o in zip(plan.public_ips, outcomes) if not o.ok]
    if not bad:
        return CheckEntry("spf", target, True,
                          f"pass for {', '.join(plan.public_ips)} "
                          f"({max(o.lookups for o in outcomes)} DNS lookups)")
    reasons = []
    for ip, o in bad:
        if o.result == "none":
            reasons.append(f"{ip}: no SPF record (publish \"{suggestion}\")")
        else:
            reasons.append(f"{ip}: {o.result}: {o.reason}")
    temp = all(o.result == "temperror" for _, o in bad)
    return CheckEntry("spf", target, False, "; ".join(reasons), temporary=temp)


# ---- DMARC ----

_DMARC_POLICIES = {"none", "quarantine", "reject"}
_URI = re.compile(r"mailto:[^@\s,!;]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+(?:![0-9]+[kmgtKMGT]?)?")


def parse_dmarc(text: str) -> dict[str, str]:
    """Validate one DMARC record (RFC 7489 §6.3); ValueError names the first bad tag."""
    if not re.match(r"v\s*=\s*DMARC1\s*(;|$)", text):
        raise ValueError("must start with v=DMARC1")
    tags = parse_tags(text)
    if tags.get("v") != "DMARC1":
        raise ValueError("v= must be DMARC1")
    if "p" not in tags:
        raise ValueError("no p= tag (none, quarantine or reject)")
    for t in ("p", "sp"):
        if t in tags and tags[t].lower() not in _DMARC_POLICIES:
            raise ValueError(f"{t}={tags[t]} is not none, quarantine or reject")
    for t in ("adkim", "aspf"):
        if t in tags and tags[t].lower() not in ("r", "s"):
            raise ValueError(f"{t}={tags[t]} is not r or s")
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        raise ValueError(f"pct={tags['pct']} is not 0..100")
    if "ri" in tags and not tags["ri"].isdigit():
        raise ValueError(f"ri={tags['ri']} is not a number of seconds")
    for t in ("rua", "ruf"):
        if t in tags:
            for uri in tags[t].split(","):
                if not _URI.fullmatch(uri.strip()):
                    raise ValueError(f"{t}: {uri.strip()!r} is not a mailto: URI")
    if "fo" in tags and not all(x.strip() in ("0", "1", "d", "s") for x in tags["fo"].split(":")):
        raise ValueError(f"fo={tags['fo']} is not a list of 0, 1, d, s")
    return tags


async def _dmarc(resolver: Resolver, plan: DomainPlan) -> CheckEntry:
    name = f"_dmarc.{plan.domain}"
    suggestion = dmarc_value(plan.domain, plan.dmarc_rua)
    try:
        txts = await resolver.txt(name)
    except DnsTempError as exc:
        return CheckEntry("dmarc", name, False, f"DNS temporary error: {exc}", temporary=True)
    except DnsError:
        return CheckEntry("dmarc", name, False, f"missing: no TXT record at {name} "
                                                f"(publish \"{suggestion}\")")
    records = [t for t in txts if t.lstrip().lower().startswith("v=dmarc1")]
    if not records:
        return CheckEntry("dmarc", name, False, f"malformed: no record starts with v=DMARC1 "
                                                f"(found {txts[0][:60]!r})")
    if len(records) > 1:
        return CheckEntry("dmarc", name, False, f"{len(records)} DMARC records; receivers "
                                                "ignore them all: publish exactly one")
    try:
        tags = parse_dmarc(records[0])
    except ValueError as exc:
        return CheckEntry("dmarc", name, False, f"malformed: {exc}")
    # Alignment (RFC 7489 §3.1): our d= is the domain itself, so DKIM aligns in
    # either mode; the return path is a subdomain, aligned only when relaxed.
    if tags.get("aspf", "r").lower() == "s":
        return CheckEntry("dmarc", name, False,
                          f"aspf=s: the return path {plan.bounce_domain} is not strictly "
                          f"aligned with {plan.domain}; remove aspf=s (relaxed is the default)")
    note = "; p=none is monitoring only" if tags["p"].lower() == "none" else ""
    return CheckEntry("dmarc", name, True, f"p={tags['p']}; DKIM d={plan.domain} aligned, return "
                                           f"path {plan.bounce_domain} relaxed-aligned{note}")


# ---- return path ----

async def _return_path(resolver: Resolver, plan: DomainPlan) -> CheckEntry:
    name = plan.bounce_domain
    want = plan.hostname.rstrip(".").lower()
    try:
        mxs = await resolver.mx(name)
    except DnsTempError as exc:
        return CheckEntry("return-path", name, False, f"DNS temporary error: {exc}",
                          temporary=True)
    except NullMx:
        return CheckEntry("return-path", name, False, f"null MX at {name}: bounces cannot "
                                                      f"reach us (publish MX 10 {want}.)")
    except DnsError:
        return CheckEntry("return-path", name, False, f"missing: no MX at {name} "
                                                      f"(publish MX 10 {want}.)")
    hosts = [m.host for m in mxs]
    if want in hosts:
        return CheckEntry("return-path", name, True, f"MX -> {want}")
    return CheckEntry("return-path", name, False,
                      f"MX points at {', '.join(hosts)}, not at this server ({want})")


async def check_domain(resolver: Resolver, plan: DomainPlan, now: float) -> CheckResult:
    checks = [_dkim(resolver, plan, s) for s in plan.selectors]
    checks += [_spf(resolver, plan, plan.domain, "~"),
               _spf(resolver, plan, plan.bounce_domain, "-"),
               _dmarc(resolver, plan), _return_path(resolver, plan)]
    entries = await asyncio.gather(*checks)
    return CheckResult(plan.domain, now, tuple(entries))
