"""TLS-RPT in the daemon (mta.runtime.tlsrpt_job.TlsReports): outcomes counted
per UTC day across a fake clock's midnight, flushed into real index files,
and each finished day's reports sent once their spread delay passed — by
mail through `enqueue` (the body parsed as RFC 8460 §5.3 mail, its gzip
attachment's JSON validated against tests/fixtures/tlsrpt-schema.json, the
DKIM signature verified by dkimpy) and by HTTPS POST to a real aiohttp
server on 127.0.0.1 with a trustme certificate. The `_smtp._tls` records
come from tests/support/dnsserver.py through DnsResolver. Also: a domain
without a record is marked and never asked again, a new TlsReports over the
same state dir sends a flushed day, failing ruas are retried and given up
24 h after the day ended, and a failed flush keeps its counts."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import gzip
import json
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim as dkimpy
import jsonschema
import pytest
import trustme
from aiohttp import web

from mta.config import Config
from mta.core import FakeClock
from mta.delivery.resolver import DnsResolver
from mta.mail import dkim
from mta.mail.dkim import SigningKey
from mta.policy.tlsrpt import Outcome, spread_delay
from mta.runtime.tlsrpt_job import CONTENT_TYPE, REPORT_LISTENER, TlsReports
from mta.spool import NewMessage
from mta.spool.tlsrpt import SqliteTlsRpt, TlsRptStoreError
from tests.support.dnsserver import DnsServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "tlsrpt-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

HOST = "mta.example.org"
DAY, NEXT_DAY = "2026-12-06", "2026-12-07"
DAY_START = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
DAY_END = DAY_START + 86400
STS = ("version: STSv1", "mode: enforce", "mx: mx1.example.test", "max_age: 86400")
TLSA = ("3 1 1 0C72AC70B745AC19998811B131D662C9AC69DBDBE7CB23E5B514B56664C5D3D6",)


def outcome(domain: str, result: str = "success", *, ptype: str = "sts",
            strings: tuple[str, ...] = STS, mx: str = "mx1.example.test",
            rip: str = "192.0.2.10") -> Outcome:
    return Outcome(policy_domain=domain, policy_type=ptype, policy_strings=strings, mx_host=mx,
                   result=result, sending_ip="198.51.100.7", receiving_ip=rip)


def record_many(reports: TlsReports, items: list[tuple[Outcome, int]]) -> int:
    for o, n in items:
        for _ in range(n):
            reports.record(o)
    return sum(n for _, n in items)


# -- the parts: DKIM keys, the HTTPS report receiver, DNS, config ----------------------------

class Signer:
    """The daemon's DomainCache seam (keys_for / sign) over one real key
    for example.org, the registered parent of HOST."""

    def __init__(self, key: SigningKey):
        self.key = key

    def keys_for(self, domain: str) -> list[SigningKey]:
        labels = domain.lower().split(".")
        parents = {".".join(labels[i:]) for i in range(len(labels) - 1)}
        return [self.key] if self.key.domain in parents else []

    def sign(self, message: bytes, domain: str) -> bytes:
        return dkim.sign(message, self.keys_for(domain), now=DAY_END)


@pytest.fixture(scope="module")
def dkim_key() -> tuple[SigningKey, str]:
    pem, txt = dkim.generate_key("rsa-sha256")
    return SigningKey("example.org", "tls1", "rsa-sha256", pem), txt


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class Receiver:
    """What the HTTPS report endpoint got; `statuses[path]` are the answers
    to give, in turn (200 once they run out)."""

    def __init__(self) -> None:
        self.hits: list[dict[str, Any]] = []
        self.statuses: dict[str, list[int]] = {}
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append({"path": request.path, "query": request.query_string,
                          "type": request.headers.get("Content-Type"),
                          "body": await request.read()})
        queue = self.statuses.get(request.path) or [200]
        return web.Response(status=queue.pop(0) if len(queue) > 1 else queue[0])

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [h for h in self.hits if h["path"] == path]


@pytest.fixture
async def receiver(ca: trustme.CA) -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    rec.base = f"https://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


def config(tmp_path: Path, ca: trustme.CA, *, reports: bool = True) -> Config:
    ca_file = tmp_path / "ca.pem"
    if not ca_file.exists():
        ca.cert_pem.write_to_path(str(ca_file))
    cfg = Config()
    return dataclasses.replace(
        cfg, server=dataclasses.replace(cfg.server, hostname=HOST,
                                        state_dir=str(tmp_path / "state")),
        tls=dataclasses.replace(cfg.tls, ca_file=str(ca_file), reports=reports))


def txt(rua: str) -> dict[str, list[str]]:
    return {"TXT": [f"v=TLSRPTv1; rua={rua}", "v=spf1 -all"]}


class Harness:
    """A TlsReports over real parts, with what its `enqueue` got."""

    def __init__(self, tmp_path: Path, cfg: Config, dns: DnsServer, clock: FakeClock,
                 signer: Signer | None):
        self.cfg, self.dns, self.clock = cfg, dns, clock
        self.enqueued: list[NewMessage] = []
        self.resolver = DnsResolver([dns.nameserver], timeout=1.0, cache=False)
        self.signer = signer
        self.reports = self.new()

    def new(self) -> TlsReports:
        return TlsReports(state_dir=self.cfg.server.state_dir, resolver=self.resolver,
                          clock=self.clock, cfg_of=lambda: self.cfg, enqueue=self._enqueue,
                          signer=self.signer)

    async def _enqueue(self, msg: NewMessage) -> str:
        self.enqueued.append(msg)
        return f"Q{len(self.enqueued)}"

    def tlsrpt_queries(self) -> list[str]:
        return [name for name, rtype in self.dns.queries if name.startswith("_smtp._tls.")]

    def sent(self, day: str, domain: str) -> str | None:
        mark = SqliteTlsRpt(self.cfg.server.state_dir).sent(day, domain)
        return mark[0] if mark else None


def gunzip_json(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(gzip.decompress(data))
    errors = sorted(VALIDATOR.iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]
    return doc


def totals(doc: dict[str, Any]) -> tuple[int, int]:
    return (sum(p["summary"]["total-successful-session-count"] for p in doc["policies"]),
            sum(p["summary"]["total-failure-session-count"] for p in doc["policies"]))


def dkim_verifies(message: bytes, public_txt: str) -> bool:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        wanted = "tls1._domainkey.example.org"
        return public_txt.encode() if name.decode().rstrip(".") == wanted else None
    return bool(dkimpy.verify(message, dnsfunc=dnsfunc))


# -- a day of mixed outcomes, reported by mail and by HTTPS ---------------------------------

A_DAY = [(outcome("example.test"), 40),
         (outcome("example.test", "certificate-expired", mx="mx2.example.test",
                  rip="192.0.2.11"), 3),
         (outcome("example.test", "starttls-not-supported", mx="mx2.example.test",
                  rip="192.0.2.11"), 2),
         (outcome("example.test", ptype="tlsa", strings=TLSA, mx="mx3.example.test",
                  rip="2001:db8::25"), 7)]
B_DAY = [(outcome("example.net", mx="mx.example.net"), 5),
         (outcome("example.net", "sts-policy-fetch-error", mx="", strings=(), rip=""), 1)]
C_DAY = [(outcome("plain.example.org", ptype="no-policy-found", strings=(),
                  mx="mx.plain.example.org"), 9)]


async def test_a_day_of_mixed_outcomes_is_reported_by_mail_and_https(
        tmp_path: Path, ca: trustme.CA, receiver: Receiver,
        dkim_key: tuple[SigningKey, str]) -> None:
    zone = {"_smtp._tls.example.test": txt(
                f"mailto:tlsrpt@Reports.Example.test,{receiver.base}/v1/tlsrpt"),
            "_smtp._tls.example.net": txt(f"{receiver.base}/net")}
    clock = FakeClock(DAY_START + 10 * 3600)
    async with DnsServer(zone, host="127.0.0.161") as dns:
        h = Harness(tmp_path, config(tmp_path, ca), dns, clock, Signer(dkim_key[0]))
        n = record_many(h.reports, A_DAY + B_DAY + C_DAY)
        clock.set(DAY_END - 1)                       # 23:59:59: still the day
        h.reports.record(outcome("example.test"))
        clock.set(DAY_END + 1)                       # 00:00:01: the next day
        h.reports.record(outcome("example.test"))
        h.reports.record(outcome("example.test"))
        assert await h.reports.flush() == n + 3
        assert await h.reports.flush() == 0

        # Before any domain's spread delay: nothing asked, nothing sent.
        spreads = [spread_delay(d, DAY) for d in ("example.test", "example.net",
                                                  "plain.example.org")]
        assert min(spreads) > 2 and max(spreads) < 4 * 3600
        clock.set(DAY_END + min(spreads) / 2)
        assert await h.reports.send_due() == 0
        assert h.enqueued == [] and receiver.hits == [] and h.tlsrpt_queries() == []

        clock.set(DAY_END + 4 * 3600)
        assert await h.reports.send_due() == 3       # example.test: mail + POST; .net: POST
        assert h.sent(DAY, "example.test") == "mailto,https"
        assert h.sent(DAY, "example.net") == "https"
        assert h.sent(DAY, "plain.example.org") == "no-record"
        assert h.sent(NEXT_DAY, "example.test") is None        # its day is not over

        # The mail: RFC 8460 §5.3, DKIM-signed, to the rua, from tlsrpt@HOST.
        [msg] = h.enqueued
        assert msg.sender == f"tlsrpt@{HOST}"
        assert msg.recipients == ("tlsrpt@reports.example.test",)
        assert msg.listener == REPORT_LISTENER
        assert msg.idempotency_key == f"tlsrpt:{DAY}.example.test@{HOST}:" \
                                      "tlsrpt@reports.example.test"
        assert dkim_verifies(msg.body, dkim_key[1])
        mail = email.message_from_bytes(msg.body, policy=email.policy.default)
        assert mail.get_content_type() == "multipart/report"
        assert mail.get_param("report-type") == "tlsrpt"
        assert mail["TLS-Report-Domain"] == "example.test"
        assert mail["TLS-Report-Submitter"] == HOST
        assert mail["From"].addresses[0].addr_spec == f"tlsrpt@{HOST}"
        assert " ".join(str(mail["Subject"]).split()) == (
            f"Report Domain: example.test Submitter: {HOST} "
            f"Report-ID: <{DAY}.example.test@{HOST}>")
        [part] = [p for p in mail.iter_attachments() if p.get_content_type() == CONTENT_TYPE]
        assert part.get_filename().startswith(f"{HOST}!example.test!{int(DAY_START)}!")
        doc = gunzip_json(part.get_content())
        assert doc["organization-name"] == HOST
        assert doc["contact-info"] == f"postmaster@{HOST}"
        assert doc["report-id"] == f"{DAY}.example.test@{HOST}"
        assert doc["date-range"] == {"start-datetime": f"{DAY}T00:00:00Z",
                                     "end-datetime": f"{DAY}T23:59:59Z"}
        assert totals(doc) == (40 + 7 + 1, 3 + 2)     # 23:59:59 counted, 00:00:01 not
        failures = {(f["result-type"], f["failed-session-count"])
                    for p in doc["policies"] for f in p["failure-details"]}
        assert failures == {("certificate-expired", 3), ("starttls-not-supported", 2)}

        # The POSTs: the same report for example.test, example.net's own.
        [same] = receiver.posts("/v1/tlsrpt")
        assert same["type"] == "application/tlsrpt+gzip"
        assert gunzip_json(same["body"]) == doc
        [net] = receiver.posts("/net")
        net_doc = gunzip_json(net["body"])
        assert {p["policy"]["policy-domain"] for p in net_doc["policies"]} == {"example.net"}
        assert totals(net_doc) == (5, 1)

        # Done: nothing again, and the domain without a record is not asked again.
        asked = len(h.tlsrpt_queries())
        clock.set(DAY_END + 10 * 3600)
        assert await h.reports.send_due() == 0
        assert len(h.tlsrpt_queries()) == asked and len(h.enqueued) == 1
        assert len(receiver.hits) == 2


# -- durability -----------------------------------------------------------------------------

async def test_a_new_instance_sends_what_an_earlier_one_flushed(
        tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mta.tlsrpt")
    zone = {"_smtp._tls.example.test": txt("mailto:tlsrpt@example.test")}
    clock = FakeClock(DAY_START + 3600)
    async with DnsServer(zone, host="127.0.0.161") as dns:
        h = Harness(tmp_path, config(tmp_path, ca), dns, clock, signer=None)
        record_many(h.reports, A_DAY)
        await h.reports.tick()                       # flushed, nothing due yet
        assert h.enqueued == []
        del h.reports                                # "a restart"

        later = h.new()
        clock.set(DAY_END + 4 * 3600)
        await later.tick()
        [msg] = h.enqueued
        mail = email.message_from_bytes(msg.body, policy=email.policy.default)
        [part] = list(mail.iter_attachments())
        assert totals(gunzip_json(part.get_content())) == (47, 5)
        # No DKIM keys for the hostname: sent unsigned, and the operator is told.
        assert b"DKIM-Signature" not in msg.body
        assert "event=tlsrpt_unsigned" in caplog.text
        assert h.sent(DAY, "example.test") == "mailto"


async def test_a_failed_flush_keeps_its_counts(tmp_path: Path, ca: trustme.CA) -> None:
    """Segments without an index: the store refuses to create one (the
    spool's S11 state); once that is repaired the same counts go in."""
    clock = FakeClock(DAY_START + 3600)
    async with DnsServer({}, host="127.0.0.161") as dns:
        h = Harness(tmp_path, config(tmp_path, ca), dns, clock, signer=None)
        store = SqliteTlsRpt(h.cfg.server.state_dir)
        store.paths.segments.mkdir(parents=True)
        seg = store.paths.segments / "00000001.seg"
        seg.write_bytes(b"x")
        n = record_many(h.reports, B_DAY)
        with pytest.raises(TlsRptStoreError):
            await h.reports.flush()
        h.reports.record(outcome("example.net", mx="mx.example.net"))   # meanwhile
        seg.unlink()
        assert await h.reports.flush() == n + 1
        assert sum(c for _, c in store.counts(DAY, "example.net")) == n + 1


async def test_a_day_with_buffered_counts_waits_for_them(tmp_path: Path, ca: trustme.CA) -> None:
    """send_due alone never sends a day whose counts are partly still in
    memory; tick flushes first, so its report has them all."""
    zone = {"_smtp._tls.example.test": txt("mailto:tlsrpt@example.test")}
    clock = FakeClock(DAY_START + 3600)
    async with DnsServer(zone, host="127.0.0.161") as dns:
        h = Harness(tmp_path, config(tmp_path, ca), dns, clock, signer=None)
        record_many(h.reports, [(outcome("example.test"), 4)])
        await h.reports.flush()
        clock.set(DAY_END - 60)
        h.reports.record(outcome("example.test", "certificate-expired"))   # not flushed
        clock.set(DAY_END + 4 * 3600)
        assert await h.reports.send_due() == 0 and h.enqueued == []
        await h.reports.tick()
        mail = email.message_from_bytes(h.enqueued[0].body, policy=email.policy.default)
        assert totals(gunzip_json(list(mail.iter_attachments())[0].get_content())) == (4, 1)


# -- retries and giving up ------------------------------------------------------------------

async def test_failing_ruas_are_retried_for_a_day_then_given_up(
        tmp_path: Path, ca: trustme.CA, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mta.tlsrpt")
    receiver.statuses = {"/fail": [503], "/flaky": [503, 200]}
    zone = {"_smtp._tls.split.example.test": txt(
                f"mailto:r@split.example.test,{receiver.base}/fail?key=sekrit"),
            "_smtp._tls.flaky.example.test": txt(f"{receiver.base}/flaky")}
    clock = FakeClock(DAY_START + 3600)
    domains = ("split.example.test", "flaky.example.test", "dnsfail.example.test")
    async with DnsServer(zone, host="127.0.0.161",
                         servfail=["_smtp._tls.dnsfail.example.test"]) as dns:
        h = Harness(tmp_path, config(tmp_path, ca), dns, clock, signer=None)
        for d in domains:
            record_many(h.reports, [(outcome(d), 2), (outcome(d, "validation-failure"), 1)])
        await h.reports.flush()

        clock.set(DAY_END + 4 * 3600)
        assert await h.reports.send_due() == 1       # only split's mail
        assert [h.sent(DAY, d) for d in domains] == [None, None, None]
        failed = [r.getMessage() for r in caplog.records
                  if "event=tlsrpt_send_failed" in r.getMessage()]
        assert len(failed) == 3
        assert "sekrit" not in caplog.text and "/fail" not in caplog.text

        clock.set(DAY_END + 20 * 3600)               # still within the day after
        assert await h.reports.send_due() == 1       # flaky's second POST took it
        assert h.sent(DAY, "flaky.example.test") == "https"
        assert [h.sent(DAY, d) for d in domains[::2]] == [None, None]
        assert len(h.enqueued) == 1                  # the mail that went is not resent

        clock.set(DAY_END + 24 * 3600 + 1)           # past the retry window
        assert await h.reports.send_due() == 0
        assert h.sent(DAY, "split.example.test") == "mailto;failed=https"
        assert h.sent(DAY, "dnsfail.example.test") == "failed"
        assert "event=tlsrpt_gave_up" in caplog.text
        assert len(receiver.posts("/fail")) == 3 and len(receiver.posts("/flaky")) == 2

        clock.set(DAY_END + 30 * 3600)
        assert await h.reports.send_due() == 0
        assert len(receiver.posts("/fail")) == 3 and len(h.enqueued) == 1


# -- record() and [tls] reports -------------------------------------------------------------

async def test_record_never_raises_and_reports_can_be_turned_off(
        tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    zone = {"_smtp._tls.example.test": txt("mailto:tlsrpt@example.test")}
    clock = FakeClock(DAY_START + 3600)
    async with DnsServer(zone, host="127.0.0.161") as dns:
        h = Harness(tmp_path, config(tmp_path, ca), dns, clock, signer=None)
        h.reports.record("not an outcome")  # type: ignore[arg-type]
        assert "event=tlsrpt_record_failed" in caplog.text
        h.reports.record(outcome("example.test"))
        assert await h.reports.flush() == 1

        on = h.cfg
        h.cfg = config(tmp_path, ca, reports=False)
        h.reports.record(outcome("example.test"))
        assert await h.reports.flush() == 0          # not counted while off
        clock.set(DAY_END + 4 * 3600)
        assert await h.reports.send_due() == 0       # and nothing sent
        assert h.tlsrpt_queries() == [] and h.sent(DAY, "example.test") is None

        h.cfg = on
        assert await h.reports.send_due() == 1
        mail = email.message_from_bytes(h.enqueued[0].body, policy=email.policy.default)
        assert totals(gunzip_json(list(mail.iter_attachments())[0].get_content())) == (1, 0)
