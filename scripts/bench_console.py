#!/usr/bin/env python3
"""How fast do the console's heaviest pages render with 100,000 messages?

    scripts/bench_console.py [--messages 100000] [-n 30]
                             [--scenario settled|backlog|both] [--keep]

Two scenarios, each a spool of its own and one daemon run:

settled  `--messages` messages received over the last 24 hours (the Spool
         API's enqueue: `received` and `queued` events), then delivered
         through the real record path (`spool.lease_due`, then
         `spool.record` with RecipientUpdates attempted a little after each
         message arrived: the attempts rows, the recipient states and their
         ledger events): about 92% delivered (5% of all after a deferral),
         3% bounced, 5% still deferred (queued, next attempt tomorrow; one
         sender's held by the operator); the bounces' DSNs queued (`dsn_for`,
         the DSN issuer's path) and delivered; a few `complained` events
         (`ledger.append_events`). Built hour by hour, so the ledger's
         order follows time as a live one's does.
backlog  the same arrivals, nothing delivered: the same fates' ledger
         events appended for the charts (deferred, delivered, bounced,
         complained; not the queue's truth), then every recipient held, so
         the whole queue waits (the old benchmark's spool).

One message in five is sent with the API key of tenant "acme", whose own
session measures the tenant's overview. Each scenario then starts `mta
serve` on its spool (admin API and console on 127.0.0.1:8027, the SMTP
listener the config declares on 127.0.0.1:2535; nothing is ever due, so
nothing connects anywhere), logs in as a browser would (login form, CSRF
field, session cookie) and requests each page `-n` times after one warm-up
request. The overview's very first request after the start is reported on
its own line (one sample): it also builds the day's event series, which
later views keep up incrementally. Every page is checked for what it must
show (search results that match, the message's id). Latencies are measured
at the client over loopback (server time plus well under a millisecond).

The issue's target: the overview and the message search under ~200 ms of
server time with 100,000 messages in the index. Postfix has no console, so
there is no Postfix ratio here. Loopback only; the spools are deleted
unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (scripts/benchlib.py)

TOKEN = "bench-console-token-0123456789abcdef"
PORT = 8027
BASE = f"http://127.0.0.1:{PORT}/console"
BATCH = 1000
BODY = (b"From: app@sender.test\r\nTo: someone@rcpt.test\r\nSubject: console bench\r\n"
        b"Message-ID: <bench@sender.test>\r\n\r\n" + b"x" * 800 + b"\r\n")


@dataclass
class Built:
    """A scenario's spool: what to search for, and the tenant's key."""
    state: Path
    tenant_key: str
    rcpt: str = ""
    sender: str = "s42@app2.test"
    middle_id: str = ""
    recent_id: str = ""
    deferred: bool = True           # some recipient is queued after an attempt
    notes: list[str] = field(default_factory=list)


def make_tenant(state: Path, now: float) -> tuple[str, str]:
    """Tenant "acme" with a full-access API key: (its credential, the key)."""
    from mta.api.keys import StoreKeys
    from mta.spool.apikeys import SqliteApiKeys
    from mta.spool.tenants import SqliteTenants
    tenants = SqliteTenants(state)
    tenants.add("acme", limits={}, policy={}, now=now)
    made, key = StoreKeys(SqliteApiKeys(str(state))).create("acme-console", now=now)
    tenants.own("credential", made.credential, "acme", now)
    return made.credential, key


async def arrivals(spool: Any, count: int, now: float, acme: str, part: range
                   ) -> list[tuple[str, float, str]]:
    """Messages `part` of `count` received evenly over the last day, oldest
    first: [(id, at, rcpt)]."""
    from mta.spool import NewMessage
    out: list[tuple[str, float, str]] = []
    for start in range(part.start, part.stop, BATCH):
        some = range(start, min(part.stop, start + BATCH))
        ats = [now - 86400 + 86400 * i / count for i in some]
        made = await asyncio.gather(*(spool.enqueue(NewMessage(
            sender=f"s{i % 100}@app{i % 10}.test", recipients=(f"u{i}@d{i % 500}.test",),
            body=BODY, credential=acme if i % 5 == 0 else f"api:bench{i % 5}"), at)
            for i, at in zip(some, ats)))
        out += [(qid, at, f"u{i}@d{i % 500}.test") for qid, i, at in zip(made, some, ats)]
    return out


def _upto(t: float, at: float, now: float) -> float:
    """`t`, but not after now (nor before the message arrived at `at`)."""
    return max(at, min(t, now - 1))


def fates(ids: list[tuple[str, float, str]], now: float, seed: int
          ) -> tuple[dict[str, list[Any]], list[Any]]:
    """{queue id: its RecipientUpdates, in order}, and the complaints."""
    from mta.core import BOUNCED, DELIVERED, QUEUED, Reply, RecipientUpdate
    from mta.core.envelope import LedgerEvent
    rng = random.Random(seed)
    ok = Reply(250, "2.0.0", "ok")
    replies = [Reply(451, "4.7.1", "try again later"),
               Reply(421, "4.7.0", "too many connections from your IP, slow down"),
               Reply(452, "4.2.2", "mailbox full")]
    gone = Reply(550, "5.1.1", "no such user")
    out: dict[str, list[Any]] = {}
    complaints = []
    kw = {"duration": 0.4, "remote_host": "mx.rcpt.test", "remote_ip": "192.0.2.25",
          "tls": "TLSv1.3"}
    for qid, at, rcpt in ids:
        roll = rng.random()
        first = _upto(at + rng.uniform(1, 60), at, now)
        steps = []
        if roll < 0.10:         # deferred first: half of them still waiting
            steps.append(RecipientUpdate(qid, 0, QUEUED, rng.choice(replies), attempted_at=first,
                                         next_attempt=now + 86400 if roll < 0.05
                                         else first + 600, **kw))
        if roll >= 0.05:
            t = _upto(first + 600 if roll < 0.10 else first, at, now)
            final = (BOUNCED, gone) if roll >= 0.97 else (DELIVERED, ok)
            steps.append(RecipientUpdate(qid, 0, *final, attempted_at=t, **kw))
            if 0.10 <= roll < 0.1005:       # 0.05%: under the warn threshold
                complaints.append(LedgerEvent("complained", _upto(t + 600, at, now), qid, rcpt))
        out[qid] = steps
    return out, complaints


async def deliver(spool: Any, plan: dict[str, list[Any]], now: float) -> int:
    """Lease every due recipient and record its planned updates; -> recorded."""
    done = 0
    while True:
        leased = await spool.lease_due(now, 5000)
        if not leased:
            return done
        await spool.record([u for r in leased for u in plan.get(r.queue_id, ())])
        done += len(leased)


async def issue_dsns(spool: Any, bounced_at: dict[str, float], now: float
                     ) -> dict[str, list[Any]]:
    """Queue the DSNs the bounces owe, as the DSN issuer does; -> their plan."""
    from mta.core import DELIVERED, Reply, RecipientUpdate
    from mta.mail.dsn import build_dsn
    from mta.spool import DsnMark, NewMessage
    plan: dict[str, list[Any]] = {}
    while cands := await spool.dsn_candidates(500):
        for c in cands:
            at = min(bounced_at.get(c.queue_id, c.received_at) + 1, now - 0.5)
            body = build_dsn(original=BODY, candidate=c, reporting_mta="bench.mta.test",
                             queue_id=c.queue_id, now=at)
            qid = await spool.enqueue(
                NewMessage(sender="", recipients=(c.sender,), body=body, is_dsn=True,
                           listener="dsn"),
                at, dsn_for=DsnMark(c.queue_id, tuple(r.rcpt_idx for r in c.recipients),
                                    "failure"))
            plan[qid] = [RecipientUpdate(qid, 0, DELIVERED, Reply(250, "2.0.0", "ok"),
                                         attempted_at=min(at + 2, now - 0.1))]
    return plan


async def build_settled(state: Path, count: int) -> Built:
    """Hour by hour, so the ledger's order follows time as a live one does:
    that hour's arrivals, their attempts, the DSNs of its bounces (queued
    and delivered), its complaints."""
    from mta.spool import MessageFilter, Spool
    now = time.time()
    acme, key = make_tenant(state, now)
    spool = await Spool.open(state, now=now)
    ids: list[tuple[str, float, str]] = []
    recorded = dsns = complained = 0
    for hour in range(24):
        cutoff = now - 86400 + 3600 * (hour + 1)
        some = await arrivals(spool, count, now, acme,
                              range(count * hour // 24, count * (hour + 1) // 24))
        plan, complaints = fates(some, now, hour)
        recorded += await deliver(spool, plan, cutoff)
        bounced_at = {q: s[-1].attempted_at for q, s in plan.items()
                      if s and s[-1].state == "bounced"}
        dsn_plan = await issue_dsns(spool, bounced_at, now)
        recorded += await deliver(spool, dsn_plan, now)
        await spool.ledger.append_events(complaints)
        ids, dsns, complained = ids + some, dsns + len(dsn_plan), complained + len(complaints)
    # An operator held one sender's waiting mail (about 50 messages).
    held = await spool.hold_messages(MessageFilter(sender="s7@app7.test"), now)
    counts = await spool.counts()
    await spool.close()
    b = _built(state, key, ids)
    b.notes.append(f"{count} messages + {dsns} DSNs; recipients {counts} ({held} held); "
                   f"{recorded} leased and recorded, {complained} complaints")
    return b


async def build_backlog(state: Path, count: int) -> Built:
    from mta.core.envelope import LedgerEvent
    from mta.spool import MessageFilter, Spool
    now = time.time()
    acme, key = make_tenant(state, now)
    spool = await Spool.open(state, now=now)
    ids = await arrivals(spool, count, now, acme, range(count))
    plan, complaints = fates(ids, now, 18)
    events = [LedgerEvent(u.state if u.state != "queued" else "deferred",
                          u.attempted_at + u.duration, u.queue_id, rcpt,
                          detail={"reply": str(u.reply)})
              for qid, _, rcpt in ids for u in plan[qid]] + complaints
    for start in range(0, len(events), 5000):
        await spool.ledger.append_events(events[start:start + 5000])
    held = await spool.hold_messages(MessageFilter(), time.time())
    await spool.close()
    b = _built(state, key, ids)
    b.deferred = False
    b.notes.append(f"{count} messages, {held} recipients held; {len(events)} ledger events "
                   f"appended for the charts (the queue's state is all held)")
    return b


def _built(state: Path, key: str, ids: list[tuple[str, float, str]]) -> Built:
    middle = ids[len(ids) // 2]
    return Built(state, key, rcpt=middle[2], middle_id=middle[0], recent_id=ids[-10][0])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None             # the login's 303 is not followed: no page view


class Browser:
    """A cookie-keeping HTTP client that logs in through the form (without
    viewing the page the login redirects to: the first view is measured)."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(BASE + path, timeout=60) as r:
            return r.status, r.read().decode()

    def login(self, token: str) -> None:
        _, page = self.get("/login")
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
        assert csrf, "no CSRF field on the login page"
        data = urllib.parse.urlencode({"token": token, "_csrf": csrf.group(1)}).encode()
        try:
            self.opener.open(BASE + "/login", data=data, timeout=60).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 303 and "/login" not in exc.headers.get("Location", ""), \
                f"login failed: {exc.code}"
        else:
            raise AssertionError("login failed: no redirect")


def timed(b: Browser, path: str, must: str) -> float:
    t = time.perf_counter()
    status, page = b.get(path)
    ms = (time.perf_counter() - t) * 1000
    assert status == 200 and re.search(must, page), (path, status, must)
    return ms


def pages(built: Built) -> list[tuple[str, str, str, str]]:
    """(label, who, path, what the page must contain)."""
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3 * 3600))
    row = r'id="msg-[0-9A-Z]+"'
    return [("overview, later views", "op", "/", 'id="stat-queued">[0-9]+<'),
            ("overview, tenant (later views)", "acme", "/", 'id="stat-queued">[0-9]+<'),
            ("search: all, newest page", "op", "/messages?state=all", row),
            ("search: by recipient", "op", f"/messages?state=all&recipient={built.rcpt}",
             f'id="msg-{built.middle_id}"'),
            ("search: by sender", "op", f"/messages?state=all&sender={built.sender}", row),
            ("search: held", "op", "/messages?state=held", row),
            *([("search: deferred", "op", "/messages?state=deferred", row)]
              if built.deferred else []),
            ("search: received in the last 3 h", "op", f"/messages?state=all&from={since}",
             row),
            ("search: by id", "op", f"/messages?state=all&id={built.middle_id}",
             f'id="msg-{built.middle_id}"'),
            ("search: tenant, all", "acme", "/messages?state=all", row),
            ("message page (middle of the day)", "op", f"/messages/{built.middle_id}",
             f'id="message-id">{built.middle_id}<'),
            ("message page (last hour)", "op", f"/messages/{built.recent_id}",
             f'id="message-id">{built.recent_id}<')]


def run_daemon(tmp: Path, built: Built, n: int) -> list[tuple[str, list[float]]]:
    cfg = tmp / "mta.toml"
    cfg.write_text(benchlib.daemon_config(built.state, admin_port=PORT, token=TOKEN))
    cmd, env = benchlib.mta_command(ROOT, "serve", "--config", str(cfg))
    daemon = subprocess.Popen(cmd, env=env, stderr=open(tmp / "mta.log", "wb"))
    rows: list[tuple[str, list[float]]] = []
    try:
        benchlib.wait_http(f"http://127.0.0.1:{PORT}/healthz")
        op, acme = Browser(), Browser()
        op.login(TOKEN)
        rows.append(("overview, first view after start", [timed(op, "/", "id=\"stats\"")]))
        acme.login(built.tenant_key)
        rows.append(("overview, tenant's first view", [timed(acme, "/", "id=\"stats\"")]))
        for label, who, path, must in pages(built):
            b = op if who == "op" else acme
            timed(b, path, must)                  # warm: templates compiled
            rows.append((label, [timed(b, path, must) for _ in range(n)]))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return rows


def report(name: str, built: Built, rows: list[tuple[str, list[float]]], n: int) -> float:
    print(f"\n{name}: {'; '.join(built.notes)}")
    print(f"{n} requests per page after one warm-up (ms at the client over loopback)")
    print(f"{'page':40} {'p50':>8} {'p95':>8} {'max':>8}")
    worst = 0.0
    for label, times in rows:
        times = sorted(times)
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        worst = max(worst, p95)
        print(f"{label:40} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("-n", type=int, default=30, help="requests per page")
    ap.add_argument("--scenario", choices=("settled", "backlog", "both"), default="both")
    ap.add_argument("--keep", action="store_true", help="keep the spools (paths printed)")
    a = ap.parse_args()
    builders = {"settled": build_settled, "backlog": build_backlog}
    names = list(builders) if a.scenario == "both" else [a.scenario]
    results = []
    for name in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"mta-bench-console-{name}-"))
        try:
            (tmp / "state").mkdir()
            t0 = time.time()
            built = asyncio.run(builders[name](tmp / "state", a.messages))
            print(f"bench_console: {name} spool built in {time.time() - t0:.1f}s",
                  file=sys.stderr)
            results.append((name, built, run_daemon(tmp, built, a.n)))
        finally:
            if a.keep:
                print(f"bench_console: kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    worst = max(report(name, built, rows, a.n) for name, built, rows in results)
    print(f"\nworst p95: {worst:.1f} ms (target: ~200 ms server time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
