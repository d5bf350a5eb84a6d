"""End to end: TLS-RPT (RFC 8460) — a day of mixed outcomes, the report reaches a sink.

One world for the module (tests/support/tlsworld.py) whose daemon runs on an
OffsetClock (the wall clock plus an offset this test moves forward). The
clock starts at the next 12:00 UTC, so every session of the day falls in one
UTC day D. Policy domains that publish `_smtp._tls` "v=TLSRPTv1;
rua=mailto:tlsrpt@reports.test" (reports.test's MX is the good sink):

    domain              policy        MX hosts, in preference order (sink)
    enforce.rpt.test    sts enforce   expired, wrongname, plain, good
    stripped.rpt.test   sts enforce   plain
    testing.rpt.test    sts testing   selfsigned
    rpt.dane.test       dane          wrongname (TLSA of nobody's key), good (its key)

plus good.opportunistic.test, which publishes no TLS-RPT record. One
message each: the MX walk gives one session per host tried, so the day
holds, per policy domain and MX host:

    enforce   expired: certificate-expired 1, wrongname: certificate-host-mismatch
              1, plain: starttls-not-supported 1, good: success 1 (delivered)
    stripped  plain: starttls-not-supported, once per attempt (deferred; the
              test waits for two attempts and counts those of day D)
    testing   selfsigned: certificate-not-trusted 1 (delivered over unverified
              TLS; the retried connection is not a second session)
    dane      wrongname: DANE_MISMATCH 1, good: success 1 (delivered)

Then the clock moves past the end of D plus the 4 h spread, the test runs
`daemon.tls_reports.tick()` itself, and the good sink must receive one
multipart/report per policy domain with a record, whose gzip JSON validates
against tests/fixtures/tlsrpt-schema.json and holds exactly those counts.
The daemon gets DKIM keys for its hostname's domain (mta.test, as `mta
domain add mta.test` would, records published in the test DNS), so the
reports must arrive signed and verify.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dkim as dkimpy
import jsonschema
import pytest
import pytest_asyncio

from mta.domains.records import zone_text
from mta.policy.tlsrpt import utc_day
from mta.runtime.daemon import state_paths
from mta.spool.tlsrpt import SqliteTlsRpt
from tests.support.tlsworld import (POLICY_IP, SINK_IPS, TlsWorld, domain, spki_sha256,
                                    sts_policy, tls_world)
from tests.test_dkim import dkimpy_results
from tests.test_domains import parse_zone

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "tlsrpt-schema.json").read_text())
HOSTNAME = "mta.test"                          # [server] hostname of the world's daemon
REPORTS = "reports.test"
RUA = f"tlsrpt@{REPORTS}"
RECORD = f"v=TLSRPTv1; rua=mailto:{RUA}"
REPORT_MX = f"mx.{REPORTS}"

ENF, STRIPPED, TESTING, DANE = ("enforce.rpt.test", "stripped.rpt.test", "testing.rpt.test",
                                "rpt.dane.test")     # under the world's signed zone dane.test
NO_RECORD = domain("good", "opportunistic")
MX = {ENF: ("expired", "wrongname", "plain", "good"), STRIPPED: ("plain",),
      TESTING: ("selfsigned",), DANE: ("wrongname", "good")}
STS = {ENF: "enforce", STRIPPED: "enforce", TESTING: "testing"}
NOBODY = bytes(range(32))                      # a TLSA digest no sink's key has
# A DANE-EE record that matches nothing the host presents: mta/policy/tlspolicy.py's
# table says "tlsa mismatch … validation-failure" (RFC 8460 §4.3.1's catch-all;
# a DANE chain reaching no TLSA-named anchor is a validation-failure there).
DANE_MISMATCH = "validation-failure"


def host(kind: str, dom: str) -> str:
    return f"{kind}.mx.{dom}"


def _zone() -> dict[str, dict[str, list[Any]]]:
    zone: dict[str, dict[str, list[Any]]] = {
        REPORTS: {"MX": [(10, REPORT_MX)]}, REPORT_MX: {"A": [SINK_IPS["good"]]}}
    for dom, kinds in MX.items():
        zone[dom] = {"MX": [(10 * (i + 1), host(k, dom)) for i, k in enumerate(kinds)]}
        zone.update({host(k, dom): {"A": [SINK_IPS[k]]} for k in kinds})
        zone[f"_smtp._tls.{dom}"] = {"TXT": [RECORD]}
    for dom in STS:
        zone[f"_mta-sts.{dom}"] = {"TXT": ["v=STSv1; id=1"]}
        zone[f"mta-sts.{dom}"] = {"A": [POLICY_IP]}
    return zone


def sts_text(dom: str) -> str:
    return sts_policy(STS[dom], [host(k, dom) for k in MX[dom]])


# the sinks' certificates name the hosts whose failure must be of another kind
# than a name mismatch (OpenSSL checks the name before the dates)
NAMES = {"good": [REPORT_MX, host("good", ENF), host("good", DANE)],
         "expired": [host("expired", ENF)], "selfsigned": [host("selfsigned", TESTING)]}


class OffsetClock:
    """The wall clock plus an offset a test moves forward (the daemon's Clock)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    def advance_to(self, when: float) -> None:
        assert when > self.now(), "this clock only moves forward"
        self.offset += when - self.now()


def next_noon(now: float) -> float:
    noon = now // 86400 * 86400 + 43200
    return noon if noon >= now else noon + 86400


def day_end(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + 86400


@pytest.fixture(scope="module")
def clock() -> OffsetClock:
    wall = time.time()
    return OffsetClock(next_noon(wall) - wall)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory, clock):
    async with tls_world(tmp_path_factory.mktemp("tlsrpt"), extra_zone=_zone(),
                         extra_policies={d: sts_text(d) for d in STS}, extra_names=NAMES,
                         clock=clock) as w:
        port = w.smtp_port
        w.dns.zone[f"_{port}._tcp.{host('wrongname', DANE)}"] = {"TLSA": [(3, 1, 1, NOBODY)]}
        w.dns.zone[f"_{port}._tcp.{host('good', DANE)}"] = {
            "TLSA": [(3, 1, 1, spki_sha256(w.leaf_der["good"]))]}
        # DKIM keys for the hostname's domain, as `mta domain add mta.test` makes them
        assert w.daemon.domains is not None
        service = w.daemon.domains.service
        await asyncio.to_thread(service.add, HOSTNAME)
        w.dns.zone.update(parse_zone(zone_text(await asyncio.to_thread(service.plan, HOSTNAME))))
        await w.daemon.domains.refresh()
        assert w.daemon.domains.keys_for(HOSTNAME)
        yield w


class Day:
    """What the day sent and what came of it."""

    def __init__(self, day: str, qids: dict[str, str], stripped_attempts: int,
                 reports: dict[str, list[tuple[EmailMessage, bytes, str]]]):
        self.day, self.qids, self.stripped_attempts = day, qids, stripped_attempts
        self.reports = reports          # policy domain -> [(parsed, raw, envelope sender)]


async def _report_mails(world: TlsWorld, count: int, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while len(world.received(RUA)) < count and loop.time() < end:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)            # a duplicate would arrive about now
    return world.received(RUA)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def day(world: TlsWorld, clock: OffsetClock) -> Day:
    """Steps 1-3: the day's mail, the clock past the day and the spread, one
    tick, the report mails at the good sink."""
    reports = world.daemon.tls_reports
    assert reports is not None
    today = utc_day(clock.now())
    qids = {dom: await world.send(f"day@{dom}") for dom in (*MX, NO_RECORD)}
    for dom in (ENF, TESTING, DANE, NO_RECORD):
        ev = await world.wait(qids[dom], ("delivered", "bounced", "expired"))
        assert ev.type == "delivered", (dom, ev.detail)
    await world.wait(qids[STRIPPED], "deferred", count=2)
    clock.advance_to(day_end(today) + 4 * 3600 + 1)        # the spread is under 4 h
    stripped = [e for e in await world.events(qids[STRIPPED])
                if e.type == "deferred" and e.at < day_end(today)]
    assert all("starttls" in str(e.detail.get("reply")).lower() for e in stripped), stripped
    assert utc_day(clock.now()) > today
    await reports.tick()
    got = await _report_mails(world, len(MX))
    by_domain: dict[str, list[tuple[EmailMessage, bytes, str]]] = {}
    for m in got:
        parsed = email.message_from_bytes(m.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        by_domain.setdefault(str(parsed["TLS-Report-Domain"]), []).append(
            (parsed, m.data, m.mail_from))
    return Day(today, qids, len(stripped), by_domain)


def report_json(msg: EmailMessage) -> dict[str, Any]:
    [part] = [p for p in msg.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip"]
    raw = part.get_content()
    assert isinstance(raw, bytes)
    return json.loads(gzip.decompress(raw))


# ---- the world did what the table says (else the counts below mean nothing) ----

async def test_the_day_went_as_planned(world: TlsWorld, day: Day):
    [enf] = world.received(f"day@{ENF}")
    assert enf in world.sinks["good"].messages and enf.tls
    [testing] = world.received(f"day@{TESTING}")
    assert testing in world.sinks["selfsigned"].messages and testing.tls
    [dane] = world.received(f"day@{DANE}")
    assert dane in world.sinks["good"].messages and dane.tls
    assert world.received(f"day@{STRIPPED}") == []
    assert world.sinks["plain"].rcpt_attempts[f"day@{STRIPPED}"] == 0
    assert day.stripped_attempts >= 2


# ---- step 3: the reports reached the sink, one per policy domain with a record ----

async def test_one_report_per_policy_domain_with_a_record(world: TlsWorld, day: Day):
    assert sorted(day.reports) == sorted(MX), sorted(day.reports)
    assert all(len(mails) == 1 for mails in day.reports.values()), day.reports
    assert all(m in world.sinks["good"].messages for m in world.received(RUA))
    store = SqliteTlsRpt(state_paths(world.daemon.cfg)["root"])
    for dom in MX:
        mark = store.sent(day.day, dom)
        assert mark is not None and mark[0] == "mailto", (dom, mark)
    mark = store.sent(day.day, NO_RECORD)         # counted, but nobody asked for it
    assert mark is not None and mark[0] == "no-record", mark
    assert NO_RECORD not in day.reports


async def test_report_mail_is_rfc8460_multipart_report(day: Day):
    for dom, [(msg, _, mail_from)] in day.reports.items():
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "tlsrpt"
        assert msg["TLS-Report-Domain"] == dom
        assert msg["TLS-Report-Submitter"] == HOSTNAME
        assert msg["From"].addresses[0].addr_spec == f"tlsrpt@{HOSTNAME}"
        # MAIL FROM: the daemon's own mail of a domain set up for it gets a VERP
        # address in bounce.<domain>, as every sender of that domain does: a
        # bounce of the report comes back to the bounce processor
        assert mail_from.startswith("b+") and mail_from.endswith(f"@bounce.{HOSTNAME}"), \
            mail_from
        assert msg["To"].addresses[0].addr_spec == RUA
        assert f"Report-ID: <{day.day}.{dom}@{HOSTNAME}>" in str(msg["Subject"])
        types = [p.get_content_type() for p in msg.iter_parts()]
        assert types == ["text/plain", "application/tlsrpt+gzip"], types
        [part] = list(msg.iter_parts())[1:]
        assert part.get_filename().startswith(f"{HOSTNAME}!{dom}!")
        assert part.get_filename().endswith(".json.gz")


async def test_report_json_validates_against_the_schema(day: Day):
    validator = jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for dom, [(msg, _, _)] in day.reports.items():
        doc = report_json(msg)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, (dom, errors)
        assert doc["report-id"] == f"{day.day}.{dom}@{HOSTNAME}"
        assert doc["organization-name"] == HOSTNAME
        assert doc["date-range"] == {"start-datetime": f"{day.day}T00:00:00Z",
                                     "end-datetime": f"{day.day}T23:59:59Z"}
        assert {p["policy"]["policy-domain"] for p in doc["policies"]} == {dom}


# ---- the counts: what the day sent, per policy domain and MX host ----

Summary = tuple[int, int, dict[tuple[str, str, str], int]]   # ok, failed, failure details


def summaries(doc: dict[str, Any]) -> dict[tuple[str, tuple[str, ...], str], Summary]:
    """{(policy-type, policy-string, mx-host): (successes, failures,
    {(result-type, receiving-mx-hostname, receiving-ip): count})}"""
    out: dict[tuple[str, tuple[str, ...], str], Summary] = {}
    for entry in doc["policies"]:
        pol, summary = entry["policy"], entry["summary"]
        details: Counter[tuple[str, str, str]] = Counter()
        for d in entry.get("failure-details", []):
            assert "sending-mta-ip" not in d, d      # the daemon binds no egress source
            details[(d["result-type"], d.get("receiving-mx-hostname", ""),
                     d.get("receiving-ip", ""))] += d["failed-session-count"]
        key = (pol["policy-type"], tuple(pol.get("policy-string", ())), pol.get("mx-host", ""))
        assert key not in out, f"two entries for {key}"
        out[key] = (summary["total-successful-session-count"],
                    summary["total-failure-session-count"], dict(details))
    return out


def failed(kind: str, dom: str, result: str, n: int = 1) -> Summary:
    return (0, n, {(result, host(kind, dom), SINK_IPS[kind]): n})


def expected(day: Day, dom: str, world: TlsWorld) -> dict[tuple[str, tuple[str, ...], str],
                                                          Summary]:
    if dom in STS:
        strings = tuple(sts_text(dom).splitlines())
        result = {"expired": "certificate-expired", "wrongname": "certificate-host-mismatch",
                  "plain": "starttls-not-supported", "selfsigned": "certificate-not-trusted"}
        n = day.stripped_attempts if dom == STRIPPED else 1
        return {("sts", strings, host(k, dom)): (1, 0, {}) if k == "good"
                else failed(k, dom, result[k], n) for k in MX[dom]}
    good = spki_sha256(world.leaf_der["good"])
    return {("tlsa", (f"3 1 1 {NOBODY.hex()}",), host("wrongname", DANE)):
            failed("wrongname", DANE, DANE_MISMATCH),
            ("tlsa", (f"3 1 1 {good.hex()}",), host("good", DANE)): (1, 0, {})}


@pytest.mark.parametrize("dom", list(MX))
async def test_report_counts_match_the_day(world: TlsWorld, day: Day, dom: str):
    [(msg, _, _)] = day.reports[dom]
    assert summaries(report_json(msg)) == expected(day, dom, world)


# ---- step 4: signed; our own report sessions are not counted ----

async def test_report_mail_is_dkim_signed_for_the_hostname(world: TlsWorld, day: Day,
                                                           clock: OffsetClock):
    """The daemon has keys for mta.test (the fixture added them): each report
    carries signatures by d=mta.test that verify against the published keys.
    dkimpy rejects a t= more than 10 h ahead of its clock, so it reads ours."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dkimpy, "time", SimpleNamespace(time=clock.now))
        for dom, [(msg, raw, _)] in day.reports.items():
            sigs = msg.get_all("DKIM-Signature") or []
            assert sigs and all(re.search(r"(^|[;\s])d=mta\.test;", str(s)) for s in sigs), \
                (dom, sigs)
            # dkimpy asks DNS synchronously: off the loop that serves the zone
            results = await asyncio.to_thread(dkimpy_results, raw, world.dns)
            assert results and all(results), (dom, results)


async def test_report_delivery_is_not_counted(world: TlsWorld, day: Day, clock: OffsetClock):
    """RFC 8460 §3: the session that carries a report is not in any report."""
    reports = world.daemon.tls_reports
    assert reports is not None
    delivered = world.received(RUA)
    assert delivered and all(m.tls for m in delivered)     # they were TLS negotiations
    await reports.flush()
    store = SqliteTlsRpt(state_paths(world.daemon.cfg)["root"])
    assert store.counts(utc_day(clock.now()), REPORTS) == []
    assert all(dom != REPORTS for _, dom in store.days_before("9999-12-31"))
