"""TLS-RPT in the daemon (RFC 8460): every outbound TLS negotiation outcome
counted, and once a day each policy domain's report sent where it asks.

One job: take the outcomes delivery reports (`record`, on the loop, never
blocking), put them in the durable daily counts (mta/spool/tlsrpt.py), and
for each finished UTC day send each policy domain its report
(mta/policy/tlsrpt.py builds the bytes) to the `rua` URIs of its
`_smtp._tls` TXT record: by mail through our own outbound path, or by HTTPS
POST. Runs as one housekeeping job (`tick`).

API
    TlsReports(*, state_dir, resolver, clock, cfg_of, enqueue, signer, post=None)
        resolver   mta.delivery.resolver.Resolver (only .txt is used)
        cfg_of()   the Config in force: [server] hostname, [tls] reports,
                   report_contact, ca_file (read on every call: reloads apply)
        enqueue(NewMessage) -> queue id   the spool's commit point, e.g.
                   `lambda m: gated.enqueue(m, clock.now(), gate=False)`
        signer     .keys_for(domain) / .sign(message, domain) (DomainCache), or None
        post(url, body, headers) -> HTTP status; None: `https_post` with
                   [tls] ca_file as the trust anchors
      .record(outcome)        one session's Outcome, counted for the UTC day of
                              clock.now(); in memory until the next flush;
                              never raises (a bad argument is logged)
      await .flush() -> int   the buffered sessions into the store (one add
                              in a thread); the number written
      await .send_due() -> int  the reports due now; the number handed over
                              (one per rua that took one: enqueued, or 2xx)
      await .tick()           flush, send_due, prune (the housekeeping job,
                              TICK_EVERY)
    https_post(url, body, headers, *, ca_file=None, timeout=POST_TIMEOUT) -> int
    REPORT_SENDER_LOCAL ("tlsrpt"), REPORT_LISTENER ("tlsrpt"), TICK_EVERY,
    RETRY_FOR, KEEP_DAYS, MAX_PENDING, CONTENT_TYPE

When and how a report goes (per (day, policy domain) with counts, not marked):
  * Due at the end of its day + spread_delay(domain, day) (0-4 h, stable per
    domain and day: RFC 8460 §4.1 asks to spread the load); never while
    counts of that pair are still buffered here (they are flushed first).
  * `_smtp._tls.<domain>` TXT: NXDOMAIN, no TXT, or no usable record
    (parse_record) -> marked "no-record", never asked again.
  * Report: organization-name and submitter = [server] hostname,
    contact-info = [tls] report_contact or postmaster@<hostname>, report-id
    "<day>.<policy domain>@<hostname>": the same for every rua and every
    retry, so a receiver can drop a duplicate (RFC 8460 §5.3 Report-ID).
  * mailto: RFC 8460 §5.3's multipart/report, From: tlsrpt@<hostname>,
    DKIM-signed when the signer has keys for the hostname (or its closest
    registered parent: relaxed alignment), else sent unsigned with a
    warning (receivers MUST ignore it, RFC 8460 §3: the operator should add
    the domain). The spool's idempotency key "tlsrpt:<report-id>:<address>"
    makes a repeat (a crash between the enqueue and the mark) queue nothing.
  * Envelope sender tlsrpt@<hostname>, not <>: RFC 5321 §4.5.5 keeps the
    null reverse-path for messages a standard requires it of (DSNs, MDNs)
    and asks for a real one on everything else, and RFC 8460 requires
    none: it treats the report as an ordinary message of the submitter's
    domain, whose TLS-Report-Submitter must be the DMARC domain of its
    From (§5.3) — a MAIL FROM in that domain lets SPF align with From too,
    not only DKIM. A report that bounces comes back to tlsrpt@<hostname>.
  * https: POST of the gzip, Content-Type application/tlsrpt+gzip, no
    redirects; a 2xx status is delivered, anything else a failure.
  * Marks (`SqliteTlsRpt.sent(day, domain)[0]`): the schemes that got it in
    rua order ("mailto", "https", "mailto,https"); "no-record"; "failed"
    (nothing got it); "mailto;failed=https" (a part gave up; "failed=dns"
    or "failed=error" when the record lookup or the report itself failed).
  * A failing rua (or a DNS temporary error) is logged
    `event=tlsrpt_send_failed` and tried again on every run until RETRY_FOR
    (24 h, RFC 8460 §5.5) after the day ended; then the pair is marked and
    `event=tlsrpt_gave_up` logged. Every pair gets at least one try, however
    late (after downtime). Which ruas already have a report is kept in
    memory: after a restart, a retry may send a duplicate (same report-id).

Invariants
  * record() never blocks and never raises; memory is bounded by distinct
    outcome keys (MAX_PENDING; past it new keys are dropped and counted in
    `.dropped`), not by sessions. A failed flush puts its counts back.
  * Durable once flushed: a new TlsReports over the same state dir sends a
    finished day's report. Counts still buffered at a crash are lost (the
    daemon flushes on each tick and should flush at stop).
  * Log lines never carry an https rua's path or query (they may hold a
    token): only scheme and host.
  * Our own reports must not be counted in the next report (RFC 8460 §3:
    "SHOULD NOT include this SMTP session"), and must be delivered despite
    MTA-STS or DANE failures (§5.3.1): the delivery client knows a report by
    its NewMessage.listener == REPORT_LISTENER and neither records its
    sessions here nor defers it for a policy failure.
  * One pair at a time, one rua at a time (POST_TIMEOUT each): a slow
    receiver delays the others' reports by at most that, within the run.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from mta.config import Config
from mta.core import Clock
from mta.core.logfmt import event
from mta.delivery.resolver import DnsError, NoRecords, NxDomain, Resolver
from mta.policy.tlsrpt import (Outcome, TlsRptError, mailto_address, parse_record,
                               report_bytes, report_json, report_mail, spread_delay, utc_day)
from mta.spool import NewMessage
from mta.spool.tlsrpt import OutcomeRow, SqliteTlsRpt

__all__ = ["CONTENT_TYPE", "KEEP_DAYS", "MAX_PENDING", "POST_TIMEOUT", "REPORT_LISTENER",
           "REPORT_SENDER_LOCAL", "RETRY_FOR", "TICK_EVERY", "Enqueue", "Post", "Signer",
           "TlsReports", "https_post"]

log = logging.getLogger("mta.tlsrpt")

REPORT_SENDER_LOCAL = "tlsrpt"     # From: and MAIL FROM: tlsrpt@<hostname>
REPORT_LISTENER = "tlsrpt"         # NewMessage.listener of our reports
TICK_EVERY = 300.0                 # seconds between housekeeping runs
RETRY_FOR = 86400.0                # after the day ended (RFC 8460 §5.5)
KEEP_DAYS = 14                     # counts and marks of older days are pruned
MAX_PENDING = 50_000               # distinct (day, outcome) keys buffered
POST_TIMEOUT = 30.0
CONTENT_TYPE = "application/tlsrpt+gzip"

Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]
Enqueue = Callable[[NewMessage], Awaitable[str]]
Pair = tuple[str, str]             # (day, policy domain)


class Signer(Protocol):
    def keys_for(self, domain: str) -> Sequence[object]: ...

    def sign(self, message: bytes, domain: str) -> bytes: ...


class _Refused(Exception):
    """An https rua answered something other than 2xx."""


async def https_post(url: str, body: bytes, headers: dict[str, str], *,
                     ca_file: str | None = None, timeout: float = POST_TIMEOUT) -> int:
    """POST `body` to `url` (certificate verified against `ca_file`, or the
    system's store; redirects not followed); the response's status."""
    ctx = await asyncio.to_thread(ssl.create_default_context, cafile=ca_file)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                ssl=ctx) as response:
            return response.status


def _day_end(day: str) -> float:
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    return (start + timedelta(days=1)).timestamp()


def _for_log(uri: str) -> str:
    """A rua as a log line may show it: an https URI without path or query."""
    if uri.startswith("https:"):
        parts = urlsplit(uri)
        return f"https://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…"
    return uri


def _schemes(uris: Sequence[str]) -> str:
    return ",".join(dict.fromkeys(u.partition(":")[0] for u in uris))


def _address(uri: str) -> str:
    local, _, domain = mailto_address(uri).rpartition("@")
    return f"{local}@{domain.rstrip('.').lower()}"


class TlsReports:
    def __init__(self, *, state_dir: str | Path, resolver: Resolver, clock: Clock,
                 cfg_of: Callable[[], Config], enqueue: Enqueue, signer: Signer | None,
                 post: Post | None = None):
        self._store = SqliteTlsRpt(state_dir)
        self._resolver, self._clock, self._cfg_of = resolver, clock, cfg_of
        self._enqueue, self._signer = enqueue, signer
        self._post: Post = post or self._default_post
        self._tally: Counter[tuple[str, Outcome]] = Counter()
        self._delivered: dict[Pair, set[str]] = {}    # ruas that have the pair's report
        self.dropped = 0

    async def _default_post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        return await https_post(url, body, headers, ca_file=self._cfg_of().tls.ca_file)

    # -- counting --------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        try:
            if not self._cfg_of().tls.reports:
                return
            key = (utc_day(self._clock.now()), Outcome.of(outcome))
            if key not in self._tally and len(self._tally) >= MAX_PENDING:
                self.dropped += 1
                return
            self._tally[key] += 1
        except Exception as exc:   # delivery must never fail for a report's sake
            event(log, "tlsrpt_record_failed", logging.WARNING, error=type(exc).__name__,
                  reason=str(exc)[:200])

    async def flush(self) -> int:
        if self.dropped:
            event(log, "tlsrpt_dropped", logging.WARNING, sessions=self.dropped,
                  reason=f"more than {MAX_PENDING} distinct outcomes waiting")
            self.dropped = 0
        if not self._tally:
            return 0
        tally, self._tally = self._tally, Counter()
        items = [key for key, n in tally.items() for _ in range(n)]
        try:
            await asyncio.to_thread(self._store.add, items)
        except Exception:
            # Put them back (with what came meanwhile): the next flush retries.
            # A cancellation is not caught: the thread finishes the add anyway.
            self._tally.update(tally)
            raise
        return len(items)

    # -- sending ---------------------------------------------------------------------

    async def tick(self) -> None:
        await self.flush()
        await self.send_due()
        cutoff = utc_day(self._clock.now() - KEEP_DAYS * 86400.0)
        await asyncio.to_thread(self._store.prune, cutoff)
        for pair in [p for p in self._delivered if p[0] < cutoff]:
            del self._delivered[pair]

    async def send_due(self) -> int:
        cfg = self._cfg_of()
        if not cfg.tls.reports:
            return 0
        now = self._clock.now()
        buffered = {(day, o.policy_domain.rstrip(".").lower()) for day, o in self._tally}
        pairs = await asyncio.to_thread(self._store.days_before, utc_day(now))
        handed = 0
        for day, domain in pairs:
            if (day, domain) in buffered or now < self._due_at(day, domain):
                continue
            try:
                handed += await self._report(cfg, day, domain, now)
            except Exception as exc:   # one odd pair must not hold back the others
                event(log, "tlsrpt_send_failed", logging.WARNING, domain=domain, day=day,
                      rua="-", error=type(exc).__name__)
                await self._settle(day, domain, now, ["error"])
        return handed

    @staticmethod
    def _due_at(day: str, domain: str) -> float:
        try:
            return _day_end(day) + spread_delay(domain, day)
        except ValueError:         # a name the report cannot carry: settled in _report
            return _day_end(day)

    async def _report(self, cfg: Config, day: str, domain: str, now: float) -> int:
        """One (day, policy domain): send to the ruas that lack it, mark it
        when done or given up; the number of ruas that took it now."""
        try:
            uris = parse_record(await self._resolver.txt(f"_smtp._tls.{domain}"))
        except (NxDomain, NoRecords, TlsRptError) as exc:
            event(log, "tlsrpt_no_record", domain=domain, day=day,
                  reason=getattr(exc, "reason", None) or type(exc).__name__)
            await self._mark(day, domain, "no-record", now)
            return 0
        except DnsError as exc:
            event(log, "tlsrpt_send_failed", logging.WARNING, domain=domain, day=day,
                  rua="dns", reason=str(exc)[:200])
            await self._settle(day, domain, now, ["dns"])
            return 0
        done = self._delivered.setdefault((day, domain), set())
        failed: list[str] = []
        todo = [u for u in uris if u not in done]
        if todo:
            counts = await asyncio.to_thread(self._store.counts, day, domain)
            if not counts:             # days_before said there were: only a race
                return 0
            for uri in todo:
                try:
                    await self._send(cfg, uri, day, domain, counts, now)
                except Exception as exc:
                    failed.append(uri)
                    reason = str(exc) if isinstance(exc, (_Refused, ValueError)) else ""
                    event(log, "tlsrpt_send_failed", logging.WARNING, domain=domain, day=day,
                          rua=_for_log(uri), error=type(exc).__name__, reason=reason or None)
                else:
                    done.add(uri)
        await self._settle(day, domain, now, failed, uris)
        return len(todo) - len(failed)

    async def _settle(self, day: str, domain: str, now: float, failed: Sequence[str],
                      uris: Sequence[str] = ()) -> None:
        """Mark the pair when nothing failed, or when something did past the
        retry window; else leave it for the next run."""
        done = self._delivered.get((day, domain), set())
        sent = [u for u in uris if u in done] or sorted(done)
        if not failed:
            await self._mark(day, domain, _schemes(sent), now)
        elif now >= _day_end(day) + RETRY_FOR:
            how = (f"{_schemes(sent)};failed={_schemes(failed)}" if sent else "failed")
            event(log, "tlsrpt_gave_up", logging.WARNING, domain=domain, day=day, how=how)
            await self._mark(day, domain, how, now)

    async def _mark(self, day: str, domain: str, how: str, now: float) -> None:
        await asyncio.to_thread(self._store.mark_sent, day, domain, how, now)
        self._delivered.pop((day, domain), None)
        if how not in ("no-record", "failed"):
            event(log, "tlsrpt_sent", domain=domain, day=day, how=how)

    async def _send(self, cfg: Config, uri: str, day: str, domain: str,
                    counts: Sequence[tuple[OutcomeRow, int]], now: float) -> None:
        hostname = cfg.server.hostname.rstrip(".").lower()
        report_id = f"{day}.{domain}@{hostname}"
        doc = report_json(organization=hostname,
                          contact=cfg.tls.report_contact or f"postmaster@{hostname}",
                          report_id=report_id, day=day, policy_domain=domain, counts=counts)
        gz = report_bytes(doc)
        if uri.startswith("https:"):
            status = await self._post(uri, gz, {"Content-Type": CONTENT_TYPE})
            if not 200 <= status < 300:
                raise _Refused(f"HTTP status {status}")
            return
        to = _address(uri)
        sender = f"{REPORT_SENDER_LOCAL}@{hostname}"
        body = report_mail(sender=sender, to=to, policy_domain=domain, submitter=hostname,
                           report_id=report_id, day=day, gz=gz, now=now)
        body = await self._sign(body, hostname)
        await self._enqueue(NewMessage(sender=sender, recipients=(to,), body=body,
                                       listener=REPORT_LISTENER,
                                       idempotency_key=f"tlsrpt:{report_id}:{to}"))

    async def _sign(self, body: bytes, hostname: str) -> bytes:
        if self._signer is not None and self._signer.keys_for(hostname):
            return await asyncio.to_thread(self._signer.sign, body, hostname)
        event(log, "tlsrpt_unsigned", logging.WARNING, domain=hostname,
              reason="no DKIM keys for the server hostname's domain: receivers ignore "
                     "unsigned reports (RFC 8460 §3)")
        return body
