"""MX resolution: a recipient domain → the ordered hosts and addresses to try.

One job: apply RFC 5321 §5.1 (and RFC 7505 null MX) on top of the `Resolver`
seam, and say *why* when there is nowhere to go.

Public API:
    Hop(host, addresses, preference)
    async resolve_hops(domain, resolver, *, rng=None) -> list[Hop]

Rules:
  - MX records in ascending preference; equal preferences in random order
    (RFC 5321 §5.1, spreads load; pass `rng` for a deterministic test).
  - A domain literal ("[192.0.2.1]") is its own single hop; no lookup.
  - No MX (the domain exists, NODATA) → the implicit MX: the domain's own A/AAAA.
  - Null MX (a single "." at preference 0) → PermFailure 556 5.1.10.
  - NXDOMAIN → PermFailure 550 5.1.2.
  - An MX host that does not resolve is skipped. If none resolves: temporary
    (451 4.4.3) when any failure was temporary, else permanent (550 5.4.4).
  - SERVFAIL / timeout on the MX query → TempFailure 451 4.4.3.
Invariants: a returned list is never empty and no Hop has empty addresses;
every failure carries a reply naming the domain and what failed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from mta.core.errors import PermFailure, TempFailure
from mta.core.reply import Reply
from mta.delivery.resolver import (DnsTempError, MxRecord, NoRecords, NullMx, NxDomain,
                                   Resolver, ip_literal)

__all__ = ["Hop", "resolve_hops"]


@dataclass(frozen=True, slots=True)
class Hop:
    host: str
    addresses: tuple[str, ...]
    preference: int


def _null_mx(domain: str) -> PermFailure:
    return PermFailure(Reply(556, "5.1.10", f"Recipient address rejected: domain {domain} "
                                           f"does not accept mail (null MX, RFC 7505)"))


def _order(records: list[MxRecord], rng: random.Random) -> list[MxRecord]:
    ordered: list[MxRecord] = []
    for _, group in itertools.groupby(sorted(records, key=lambda r: r.preference),
                                      key=lambda r: r.preference):
        same = list(group)
        rng.shuffle(same)
        ordered.extend(same)
    seen: set[str] = set()
    unique = []
    for r in ordered:  # a host listed twice is tried once, at its best preference
        if r.host not in seen:
            seen.add(r.host)
            unique.append(r)
    return unique


async def resolve_hops(domain: str, resolver: Resolver, *,
                       rng: random.Random | None = None) -> list[Hop]:
    if domain.startswith("[") and domain.endswith("]"):
        literal = ip_literal(domain)
        if literal is None:
            raise PermFailure(Reply(550, "5.1.2", f"bad address literal {domain}"))
        return [Hop(literal, (literal,), 0)]

    implicit = False
    try:
        records = await resolver.mx(domain)
    except NullMx:
        raise _null_mx(domain) from None
    except NxDomain:
        raise PermFailure(Reply(550, "5.1.2", f"Host or domain name not found: {domain} "
                                              f"does not exist in DNS (NXDOMAIN)")) from None
    except NoRecords:
        records = []
    except DnsTempError as exc:
        raise TempFailure(Reply(451, "4.4.3", f"MX lookup for {domain} failed temporarily "
                                              f"({exc}); will retry")) from None
    if not records:
        # RFC 5321 §5.1: no MX → the domain itself is the implicit MX, preference 0.
        implicit = True
        records = [MxRecord(0, domain)]
    elif len(records) == 1 and records[0].host in (".", ""):
        raise _null_mx(domain)
    # A "." mixed with real MX is a broken zone; the real ones are still usable.
    records = [r for r in records if r.host not in (".", "")]

    hops: list[Hop] = []
    failures: list[str] = []
    any_temp = False
    for record in _order(records, rng or random.Random()):
        try:
            addrs = await resolver.addresses(record.host)
        except DnsTempError as exc:
            any_temp = True
            failures.append(str(exc))
            continue
        except (NxDomain, NoRecords) as exc:
            failures.append(str(exc))
            continue
        if addrs:
            hops.append(Hop(record.host, tuple(dict.fromkeys(addrs)), record.preference))
        else:
            failures.append(f"A/AAAA {record.host}: no address records")
    if hops:
        return hops

    detail = "; ".join(failures)
    if any_temp:
        raise TempFailure(Reply(451, "4.4.3", f"address lookup for the mail hosts of {domain} "
                                              f"failed temporarily ({detail}); will retry"))
    if implicit:
        raise PermFailure(Reply(550, "5.4.4", f"Host or domain name not found: {domain} has "
                                              f"no MX and no A/AAAA records ({detail})"))
    raise PermFailure(Reply(550, "5.4.4", f"Host or domain name not found: no MX host of "
                                          f"{domain} has an address ({detail})"))
