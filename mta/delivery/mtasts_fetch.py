"""MTA-STS policy discovery (RFC 8461 §3, §5): TXT record, HTTPS fetch, cache.

One job: answer "which MTA-STS policy applies to mail for this domain now?"
the way RFC 8461 says a sending MTA must, over our DNS seam and a durable
cache; parsing is `mta.policy.mtasts`, applying the policy to MX hosts is
the delivery client's.

Public API:
    StsResolver(resolver, cache, *, ca_file=None, timeout=10.0, port=443, clock)
        one per daemon; `cache` is a `StsCache` (spool/mtasts_cache.py's
        SqliteStsCache; typed by Protocol here: delivery may not import spool)
        await policy(domain) -> StsLookup
        await refresh_due(within=86400.0) -> int   policies fetched anew
        await purge(domain) -> bool                 forget the cached policy
    StsLookup(policy, error)                        frozen
        policy None, error None: the domain has no (available) MTA-STS policy
        policy set, error None:  apply it (mode "none" included: the caller
                                 treats that as no policy)
        policy None, error set:  deliver as if no MTA-STS, report `error`:
            "sts-policy-fetch-error: …" | "sts-policy-invalid: …" |
            "sts-webpki-invalid: …"  (the RFC 8460 result type, then why)
    StsCache, StsCacheRow                           the cache's Protocols

Behaviour (RFC 8461):
- `_mta-sts.<domain>` TXT without a v=STSv1 record (NXDOMAIN, NODATA,
  other TXTs): the cached policy while unexpired (a removed record does not
  end a policy before its max_age, §10.2), else none (an expired row is then
  purged); a v=STSv1 record `parse_txt` refuses is the same, reported as
  sts-policy-invalid when nothing is cached. A DNS temporary failure: the
  unexpired cached policy, else none; never a fetch.
- The TXT id equals the cached policy's and it is unexpired: the cached one,
  no fetch. Else GET https://mta-sts.<domain>/.well-known/mta-sts.txt:
  certificate and name verified (`ca_file`, or the system's default verify
  paths), no redirects (a 3xx is a fetch error), 200 only, Content-Type
  text/plain (parameters allowed), at most MAX_POLICY_BYTES, `timeout` for
  the whole exchange; the host resolved through OUR Resolver, on `port`.
- A good fetch is cached with expires_at = now + max_age under the TXT id
  (the returned policy carries it). A failed fetch while an unexpired policy
  is cached: that policy, no error (§5.1), logged event=mtasts_refresh_failed;
  with nothing valid cached: the error.
- A failed fetch for one (domain, TXT id) is not retried for RETRY_AFTER
  seconds (the same answer meanwhile): a dead policy host must not cost
  every delivery attempt a timeout. Concurrent lookups share one fetch.
- refresh_due re-checks the cached domains expiring within `within` seconds
  (expired ones too), one at a time: TXT, then a fetch even for an unchanged
  id (§5.1: refresh before expiry).

Invariants: the cache table is read once (on first use) into memory and
every change is written through, so a lookup costs a TXT query and a dict
look-up; checked_at is written at most every TOUCH_EVERY seconds per domain.
A cache write failure is logged (event=mtasts_cache_failed) and the
policy still applies from memory; a cache read failure at first use raises
core.StorageError. No network input raises: every failure is a StsLookup.
Times come from `clock` only.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from mta.core.errors import StorageError
from mta.core.logfmt import event as log_event
from mta.delivery.resolver import DnsError, DnsTempError, Resolver, ip_literal
from mta.policy.mtasts import MAX_POLICY_BYTES, StsError, StsPolicy, parse_policy, parse_txt

__all__ = ["REFRESH_EVERY", "StsResolver", "StsLookup", "StsCache", "StsCacheRow", "RETRY_AFTER",
           "TOUCH_EVERY"]

log = logging.getLogger("mta.delivery.mtasts")

FETCH_ERROR = "sts-policy-fetch-error"
POLICY_INVALID = "sts-policy-invalid"
WEBPKI_INVALID = "sts-webpki-invalid"
REFRESH_EVERY = 3600.0   # how often the daemon calls refresh_due (its housekeeping job)
RETRY_AFTER = 300.0
TOUCH_EVERY = 3600.0
WELL_KNOWN = "/.well-known/mta-sts.txt"
USER_AGENT = "mta-sts-fetch/1"
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


class StsCacheRow(Protocol):
    @property
    def domain(self) -> str: ...
    @property
    def policy_id(self) -> str: ...
    @property
    def policy_text(self) -> str: ...
    @property
    def fetched_at(self) -> float: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def checked_at(self) -> float: ...


class StsCache(Protocol):
    """Synchronous, called through asyncio.to_thread."""

    def rows(self) -> Sequence[StsCacheRow]: ...
    def put(self, domain: str, policy_id: str, text: str, fetched_at: float,
            expires_at: float) -> None: ...
    def touch(self, domain: str, checked_at: float) -> None: ...
    def purge(self, domain: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class StsLookup:
    policy: StsPolicy | None
    error: str | None


_NONE = StsLookup(None, None)


@dataclass(slots=True)
class _Entry:
    policy_id: str
    policy: StsPolicy
    expires_at: float
    checked_at: float


class _FetchFailed(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")


def _domain_name(domain: str) -> str | None:
    """The A-label form of a recipient domain, or None when it cannot have
    MTA-STS (an address literal, not a host name)."""
    name = domain.strip().rstrip(".").lower()
    if not name or name.startswith("[") or ip_literal(name) is not None:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 240 or not _NAME.fullmatch(name):
        return None
    return name


def _txt_id(records: Sequence[str]) -> tuple[str | None, str | None]:
    """(the policy id, None) | (None, None) without a v=STSv1 record |
    (None, "sts-policy-invalid: …") when `parse_txt` refuses them."""
    if not any(r.startswith("v=STSv1") and r[7:8] in ("", " ", "\t", ";") for r in records):
        return None, None
    try:
        return parse_txt(records), None
    except StsError as exc:
        return None, f"{POLICY_INVALID}: _mta-sts TXT: {exc}"


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"ca_file {ca_file!r}: cannot load: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx   # check_hostname and CERT_REQUIRED are the defaults


class _OurDns(AbstractResolver):
    """aiohttp's host lookups through our Resolver: nothing reaches the
    system resolver, and tests' DNS servers on 127.0.0.x answer."""

    def __init__(self, resolver: Resolver):
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            found = await self._resolver.addresses(host)
        except DnsError as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from None
        out: list[ResolveResult] = []
        for addr in found:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if family in (socket.AF_UNSPEC, fam):
                out.append(ResolveResult(hostname=host, host=addr, port=port, family=fam,
                                         proto=0, flags=socket.AI_NUMERICHOST))
        if not out:
            raise OSError(f"cannot resolve {host}: no usable address")
        return out

    async def close(self) -> None:
        return None


async def _read_policy(resp: aiohttp.ClientResponse) -> str:
    if resp.status != 200:
        if 300 <= resp.status < 400:
            raise _FetchFailed(FETCH_ERROR, f"HTTP {resp.status}: redirects are not followed")
        raise _FetchFailed(FETCH_ERROR, f"HTTP {resp.status}")
    if resp.content_type != "text/plain":
        ctype = resp.headers.get("Content-Type", "")[:100]
        raise _FetchFailed(POLICY_INVALID, f"Content-Type {ctype!r} is not text/plain")
    too_big = f"the policy is larger than {MAX_POLICY_BYTES} bytes"
    if resp.content_length is not None and resp.content_length > MAX_POLICY_BYTES:
        raise _FetchFailed(POLICY_INVALID, too_big)
    body = bytearray()
    while len(body) <= MAX_POLICY_BYTES:
        chunk = await resp.content.read(MAX_POLICY_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_POLICY_BYTES:
        raise _FetchFailed(POLICY_INVALID, too_big)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise _FetchFailed(POLICY_INVALID, "the policy is not UTF-8 text") from None


class StsResolver:
    def __init__(self, resolver: Resolver, cache: StsCache, *, ca_file: str | None = None,
                 timeout: float = 10.0, port: int = 443, clock: Callable[[], float]):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, not {port!r}")
        self._resolver = resolver
        self._cache = cache
        self._ssl = _ssl_context(ca_file)
        self._timeout = timeout
        self._port = port
        self._clock = clock
        self._known: dict[str, _Entry] | None = None
        self._load_lock = asyncio.Lock()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._failed: dict[str, tuple[str, float, str]] = {}   # domain -> (id, retry at, error)

    # -- public ------------------------------------------------------------------

    async def policy(self, domain: str) -> StsLookup:
        name = _domain_name(domain)
        if name is None:
            return _NONE
        entry = (await self._entries()).get(name)
        txt = await self._txt(name)
        now = self._clock()
        valid = entry if entry is not None and now < entry.expires_at else None
        if txt is None or txt[0] is None:   # DNS trouble, or no usable v=STSv1 record
            if valid is not None:
                return StsLookup(valid.policy, None)
            if entry is not None and txt is not None:   # expired and its record is gone
                await self._forget(name)
            return StsLookup(None, txt[1] if txt else None)
        if valid is not None and valid.policy_id == txt[0]:
            await self._touch(name, valid, now)
            return StsLookup(valid.policy, None)
        lookup, _ = await self._refresh(name, txt[0], force=False)
        return lookup

    async def refresh_due(self, within: float = 86400.0) -> int:
        """Re-check the cached domains whose policy expires within `within`
        seconds; the number of policies fetched anew."""
        known = await self._entries()
        now = self._clock()
        refreshed = 0
        for name in sorted(n for n, e in known.items() if e.expires_at - now <= within):
            txt = await self._txt(name)
            if txt is not None and txt[0] is not None:
                refreshed += (await self._refresh(name, txt[0], force=True))[1]
            elif txt is not None and name in known and self._clock() >= known[name].expires_at:
                await self._forget(name)   # expired and its record is gone
        return refreshed

    async def purge(self, domain: str) -> bool:
        """Forget the domain's cached policy (in memory and on disk); False when
        there was none. Raises core.StorageError when the cache cannot be written."""
        name = _domain_name(domain) or domain.strip().rstrip(".").lower()
        async with self._domain_lock(name):
            known = await self._entries()
            had = known.pop(name, None) is not None
            self._failed.pop(name, None)
            removed = await asyncio.to_thread(self._cache.purge, name)
        return had or removed

    async def _txt(self, name: str) -> tuple[str | None, str | None] | None:
        """`_txt_id` of the domain's _mta-sts records; None on a temporary DNS failure."""
        try:
            records = await self._resolver.txt(f"_mta-sts.{name}")
        except DnsTempError as exc:
            log_event(log, "mtasts_txt_failed", logging.DEBUG, domain=name, error=str(exc))
            return None
        except DnsError:
            records = []
        return _txt_id(records)

    # -- the cache ---------------------------------------------------------------

    async def _entries(self) -> dict[str, _Entry]:
        if self._known is None:
            async with self._load_lock:
                if self._known is None:
                    rows = await asyncio.to_thread(self._cache.rows)
                    self._known = {}
                    for row in rows:
                        entry = self._loaded(row)
                        if entry is not None:
                            self._known[row.domain] = entry
        return self._known

    @staticmethod
    def _loaded(row: StsCacheRow) -> _Entry | None:
        try:
            policy = parse_policy(row.policy_text)
        except StsError as exc:
            # e.g. a parser made stricter by an upgrade: as if never cached
            log_event(log, "mtasts_cache_unusable", logging.WARNING, domain=row.domain,
                      error=str(exc))
            return None
        return _Entry(row.policy_id, replace(policy, id=row.policy_id), row.expires_at,
                      row.checked_at)

    def _valid(self, name: str, now: float) -> _Entry | None:
        entry = (self._known or {}).get(name)
        return entry if entry is not None and now < entry.expires_at else None

    async def _write(self, what: str, name: str, call: Callable[[], object]) -> None:
        try:
            await asyncio.to_thread(call)
        except StorageError as exc:
            log_event(log, "mtasts_cache_failed", logging.WARNING, domain=name, action=what,
                      error=str(exc))

    async def _touch(self, name: str, entry: _Entry, now: float) -> None:
        if now - entry.checked_at < TOUCH_EVERY:
            return
        entry.checked_at = now
        await self._write("touch", name, lambda: self._cache.touch(name, now))

    async def _forget(self, name: str) -> None:
        (self._known or {}).pop(name, None)
        self._failed.pop(name, None)
        await self._write("purge", name, lambda: self._cache.purge(name))

    async def _store(self, name: str, txt_id: str, text: str, policy: StsPolicy) -> StsPolicy:
        now = self._clock()
        policy = replace(policy, id=txt_id)
        expires = now + policy.max_age
        known = await self._entries()
        known[name] = _Entry(txt_id, policy, expires, now)
        self._failed.pop(name, None)
        log_event(log, "mtasts_fetched", domain=name, id=txt_id, mode=policy.mode,
                  max_age=policy.max_age)
        await self._write("put", name,
                          lambda: self._cache.put(name, txt_id, text, now, expires))
        return policy

    # -- fetching ----------------------------------------------------------------

    @asynccontextmanager
    async def _domain_lock(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]

    async def _refresh(self, name: str, txt_id: str, *, force: bool) -> tuple[StsLookup, bool]:
        """Fetch the policy published under `txt_id` unless a concurrent caller
        just did (or `force`); (the lookup, whether a policy was fetched)."""
        async with self._domain_lock(name):
            entry = self._valid(name, self._clock())
            if not force and entry is not None and entry.policy_id == txt_id:
                return StsLookup(entry.policy, None), False
            failed = self._failed.get(name)
            if failed is not None and failed[0] == txt_id and self._clock() < failed[1]:
                error = failed[2]
            else:
                try:
                    text, policy = await self._fetch(name)
                except _FetchFailed as exc:
                    error = str(exc)
                    self._remember_failure(name, txt_id, error)
                else:
                    return StsLookup(await self._store(name, txt_id, text, policy), None), True
            entry = self._valid(name, self._clock())
            if entry is not None:
                return StsLookup(entry.policy, None), False
            return StsLookup(None, error), False

    def _remember_failure(self, name: str, txt_id: str, error: str) -> None:
        now = self._clock()
        cached = self._valid(name, now) is not None
        log_event(log, "mtasts_refresh_failed" if cached else "mtasts_fetch_failed",
                  logging.WARNING, domain=name, id=txt_id, error=error,
                  using="cached" if cached else "none")
        if len(self._failed) >= 4096:   # bound: drop the entries whose pause is over
            self._failed = {d: f for d, f in self._failed.items() if f[1] > now}
        self._failed[name] = (txt_id, now + RETRY_AFTER, error)

    async def _fetch(self, name: str) -> tuple[str, StsPolicy]:
        text = await self._get(name)
        try:
            return text, parse_policy(text)
        except StsError as exc:
            raise _FetchFailed(POLICY_INVALID, str(exc)) from None

    async def _get(self, name: str) -> str:
        host = f"mta-sts.{name}"
        url = URL.build(scheme="https", host=host,
                        port=None if self._port == 443 else self._port, path=WELL_KNOWN)
        connector = aiohttp.TCPConnector(resolver=_OurDns(self._resolver), ssl=self._ssl,
                                         use_dns_cache=False, limit=1)
        try:
            async with aiohttp.ClientSession(
                    connector=connector, trust_env=False,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                    headers={"User-Agent": USER_AGENT}) as session:
                async with session.get(url, allow_redirects=False) as resp:
                    return await _read_policy(resp)
        except aiohttp.ClientConnectorCertificateError as exc:
            err = exc.certificate_error   # ssl.SSLCertVerificationError: say why, briefly
            reason = getattr(err, "verify_message", None) or err
            raise _FetchFailed(WEBPKI_INVALID, f"{host}: {reason}") from None
        except TimeoutError:
            raise _FetchFailed(FETCH_ERROR, f"{host}: no answer within {self._timeout:g}s") \
                from None
        except aiohttp.ClientConnectorError as exc:
            raise _FetchFailed(FETCH_ERROR, f"{host}: {exc.os_error}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _FetchFailed(FETCH_ERROR, f"{host}: {exc.__class__.__name__}: {exc}") \
                from None
