"""TLS-RPT (RFC 8460): the `_smtp._tls` record (mta.policy.tlsrpt.parse_record,
also read from a real DNS server through DnsResolver), the daily report in
its JSON (validated against tests/fixtures/tlsrpt-schema.json, written from
RFC 8460 §4), gzip, file name and mail forms, and the durable counts
(mta.spool.tlsrpt in real index files, across a killed process)."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mta.delivery.resolver import DnsResolver
from mta.policy.tlsrpt import (Outcome, TlsRptError, mailto_address, parse_record,
                               report_bytes, report_filename, report_json, report_mail,
                               spread_delay, utc_day)
from mta.spool.tlsrpt import SqliteTlsRpt, TlsRptStoreError
from tests.support.dnsserver import DnsServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "tlsrpt-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

DAY = date(2026, 12, 6)
STS = ("version: STSv1", "mode: enforce", "mx: mx1.example.test", "mx: mx2.example.test",
       "max_age: 86400")
TLSA = ("3 1 1 0C72AC70B745AC19998811B131D662C9AC69DBDBE7CB23E5B514B56664C5D3D6",)


def outcome(result: str = "success", *, mx: str = "mx1.example.test", ptype: str = "sts",
            strings: tuple[str, ...] = STS, rip: str = "192.0.2.10",
            sip: str = "198.51.100.7", domain: str = "example.test") -> Outcome:
    return Outcome(policy_domain=domain, policy_type=ptype, policy_strings=strings, mx_host=mx,
                   result=result, sending_ip=sip, receiving_ip=rip)


def mixed_day() -> list[tuple[Outcome, int]]:
    """A day of mixed outcomes for example.test: MTA-STS on two MX hosts, one
    with an expired certificate, one without STARTTLS at times, a policy
    fetch error (no MX host reached), and DANE on a third host."""
    return [
        (outcome(), 40),
        (outcome(mx="mx2.example.test", rip="192.0.2.11"), 25),
        (outcome("certificate-expired", mx="mx2.example.test", rip="192.0.2.11"), 3),
        (outcome("starttls-not-supported", mx="mx2.example.test", rip="192.0.2.12"), 2),
        (outcome("starttls-not-supported", mx="mx2.example.test", rip="192.0.2.12"), 1),
        (outcome("sts-policy-fetch-error", mx="", strings=(), rip=""), 4),
        (outcome(ptype="tlsa", strings=TLSA, mx="mx3.example.test", rip="2001:db8::25",
                 sip="2001:db8::1"), 7),
    ]


# -- the record -----------------------------------------------------------------------

RECORD_OK = [
    (["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"], ("mailto:tlsrpt@example.test",)),
    (["v=TLSRPTv1;rua=https://reports.example.test/v1/tlsrpt"],
     ("https://reports.example.test/v1/tlsrpt",)),
    (["v=TLSRPTv1 ;  rua=mailto:a@example.test , https://r.example.test/x?k=v ;"],
     ("mailto:a@example.test", "https://r.example.test/x?k=v")),
    (["v=TLSRPTv1; rua=MAILTO:A@Example.test; ext-1=foo"], ("mailto:A@Example.test",)),
    (["v=TLSRPTv1; ext=1; rua=http://plain.example.test/,ftp://x.example.test/,"
      "mailto:r@example.test"], ("mailto:r@example.test",)),
    (["v=spf1 -all", "v=TLSRPTv10; rua=mailto:no@example.test",
      "v=TLSRPTv1; rua=mailto:yes@example.test"], ("mailto:yes@example.test",)),
    (["v=TLSRPTv1;;rua=mailto:r%2Bx@example.test"], ("mailto:r%2Bx@example.test",)),
]

RECORD_BAD = [
    ([], "no v=TLSRPTv1 record"),
    (["v=STSv1; id=1", "V=TLSRPTV1; rua=mailto:r@example.test"], "no v=TLSRPTv1 record"),
    (["v=TLSRPTv1; rua=mailto:a@example.test", "v=TLSRPTv1; rua=mailto:b@example.test"],
     "2 v=TLSRPTv1 records"),
    (["v=TLSRPTv1"], "no rua"),
    (["v=TLSRPTv1; foo=bar"], "no rua"),
    (["v=TLSRPTv1; rua=mailto:a@example.test; rua=mailto:b@example.test"], "rua given twice"),
    (["v=TLSRPTv1; rua mailto:a@example.test"], "field 2 is not key=value"),
    (["v=TLSRPTv1; rua=http://r.example.test/"], "no mailto: or https: URI"),
    (["v=TLSRPTv1; rua=mailto:nobody"], "not a mailto address"),
    (["v=TLSRPTv1; rua=mailto:r@example.test!10m"], "not a mailto address"),
    (["v=TLSRPTv1; rua=https:///path"], "https URI without a host"),
    (["v=TLSRPTv1; rua=reports.example.test"], "not a URI"),
    (["v=TLSRPTv1; rua=mailto:a@example.test,"], "not a URI"),
    (["v=TLSRPTv1; rua=\x00mailto:a@example.test"], "field 2 is not key=value"),
]


@pytest.mark.parametrize(("records", "uris"), RECORD_OK)
def test_parse_record_ok(records: list[str], uris: tuple[str, ...]) -> None:
    assert parse_record(records) == uris


@pytest.mark.parametrize(("records", "reason"), RECORD_BAD)
def test_parse_record_bad(records: list[str], reason: str) -> None:
    with pytest.raises(TlsRptError) as err:
        parse_record(records)
    assert reason in err.value.reason
    assert "\x00" not in str(err.value)


def test_mailto_address() -> None:
    assert mailto_address("mailto:tls%2Brpt@example.test?subject=x") == "tls+rpt@example.test"
    assert mailto_address("MAILTO:r@example.test") == "r@example.test"
    for bad in ("https://x.example.test/", "mailto:", "mailto:a%40", "mailto:a@b c",
                "mailto:a%2Cb@example.test"):
        with pytest.raises(ValueError):
            mailto_address(bad)


async def test_record_from_a_real_dns_server() -> None:
    """A long record comes as several character-strings; the resolver joins
    them (RFC 8460 §3) and the parser reads the joined record."""
    long_https = "https://reports.example.test/" + "p" * 300
    zone = {"_smtp._tls.example.test": {"TXT": [
        f"v=TLSRPTv1; rua=mailto:tlsrpt@example.test,{long_https}", "v=spf1 -all"]}}
    async with DnsServer(zone) as dns:
        txt = await DnsResolver([dns.nameserver], timeout=1.0).txt("_smtp._tls.example.test")
    assert parse_record(txt) == ("mailto:tlsrpt@example.test", long_https)


# -- outcomes and the report --------------------------------------------------------------

@pytest.mark.parametrize(("field", "kwargs"), [
    ("policy_type", {"ptype": "dane"}),
    ("result", {"result": "certificate-revoked"}),
    ("receiving_ip", {"rip": "mx1.example.test"}),
    ("sending_ip", {"sip": "300.1.1.1"}),
    ("policy_domain", {"domain": ""}),
])
def test_outcome_checks_its_fields(field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=field):
        outcome(**kwargs)


def test_outcome_keeps_policy_strings_as_a_tuple() -> None:
    o = outcome(strings=list(STS))  # type: ignore[arg-type]
    assert o.policy_strings == STS and hash(o) == hash(outcome())
    with pytest.raises(ValueError, match="policy_strings"):
        outcome(strings="version: STSv1")  # type: ignore[arg-type]


def test_report_json_of_a_mixed_day_validates_and_counts() -> None:
    doc = report_json(organization="Example Sender", contact="tlsrpt@sender.test",
                      report_id="2026-12-06.example.test@sender.test", day=DAY,
                      policy_domain="Example.Test.", counts=mixed_day())
    VALIDATOR.validate(doc)
    assert doc["date-range"] == {"start-datetime": "2026-12-06T00:00:00Z",
                                 "end-datetime": "2026-12-06T23:59:59Z"}
    assert doc["organization-name"] == "Example Sender"
    by_mx = {(p["policy"]["policy-type"], p["policy"].get("mx-host")): p
             for p in doc["policies"]}
    assert len(by_mx) == len(doc["policies"]) == 4
    assert all(p["policy"]["policy-domain"] == "example.test" for p in doc["policies"])

    mx1 = by_mx[("sts", "mx1.example.test")]
    assert mx1["summary"] == {"total-successful-session-count": 40,
                              "total-failure-session-count": 0}
    assert mx1["failure-details"] == [] and mx1["policy"]["policy-string"] == list(STS)

    mx2 = by_mx[("sts", "mx2.example.test")]
    assert mx2["summary"] == {"total-successful-session-count": 25,
                              "total-failure-session-count": 6}
    assert mx2["failure-details"] == [
        {"result-type": "certificate-expired", "sending-mta-ip": "198.51.100.7",
         "receiving-mx-hostname": "mx2.example.test", "receiving-ip": "192.0.2.11",
         "failed-session-count": 3},
        {"result-type": "starttls-not-supported", "sending-mta-ip": "198.51.100.7",
         "receiving-mx-hostname": "mx2.example.test", "receiving-ip": "192.0.2.12",
         "failed-session-count": 3},      # two entries of the same key add up
    ]
    fetch = by_mx[("sts", None)]           # no MX host reached: no mx-host, no receiving-ip
    assert fetch["policy"]["policy-string"] == []
    assert fetch["summary"]["total-failure-session-count"] == 4
    assert fetch["failure-details"] == [{"result-type": "sts-policy-fetch-error",
                                         "sending-mta-ip": "198.51.100.7",
                                         "failed-session-count": 4}]
    dane = by_mx[("tlsa", "mx3.example.test")]
    assert dane["policy"]["policy-string"] == list(TLSA)
    assert dane["summary"]["total-successful-session-count"] == 7

    total = sum(p["summary"]["total-successful-session-count"]
                + p["summary"]["total-failure-session-count"] for p in doc["policies"])
    assert total == sum(n for _, n in mixed_day())
    # the same counts in another order give the same report
    again = report_json(organization="Example Sender", contact="tlsrpt@sender.test",
                        report_id="2026-12-06.example.test@sender.test", day="2026-12-06",
                        policy_domain="example.test", counts=list(reversed(mixed_day())))
    assert again == doc


def test_the_schema_is_not_vacuous() -> None:
    """The schema takes RFC 8460 §4.4's own example, and refuses the report
    when a required field is gone or a result type is not the RFC's."""
    rfc_example = {
        "organization-name": "Company-X",
        "date-range": {"start-datetime": "2016-04-01T00:00:00Z",
                       "end-datetime": "2016-04-01T23:59:59Z"},
        "contact-info": "sts-reporting@company-x.example",
        "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
        "policies": [{
            "policy": {"policy-type": "sts",
                       "policy-string": ["version: STSv1", "mode: testing",
                                         "mx: *.mail.company-y.example", "max_age: 86400"],
                       "policy-domain": "company-y.example",
                       "mx-host": "*.mail.company-y.example"},
            "summary": {"total-successful-session-count": 5326,
                        "total-failure-session-count": 303},
            "failure-details": [{"result-type": "certificate-expired",
                                 "sending-mta-ip": "2001:db8:abcd:0012::1",
                                 "receiving-mx-hostname": "mx1.mail.company-y.example",
                                 "failed-session-count": 100},
                                {"result-type": "validation-failure",
                                 "sending-mta-ip": "198.51.100.62",
                                 "receiving-ip": "203.0.113.58",
                                 "receiving-mx-hostname": "mx-backup.mail.company-y.example",
                                 "failed-session-count": 3,
                                 "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"}],
        }],
    }
    VALIDATOR.validate(rfc_example)
    broken = json.loads(json.dumps(rfc_example))
    del broken["policies"][0]["summary"]["total-failure-session-count"]
    assert not VALIDATOR.is_valid(broken)
    broken = json.loads(json.dumps(rfc_example))
    broken["policies"][0]["failure-details"][0]["result-type"] = "certificate-revoked"
    assert not VALIDATOR.is_valid(broken)
    broken = json.loads(json.dumps(rfc_example))
    broken["policies"][0]["failure-details"][0]["sending-mta-ip"] = "not-an-ip"
    assert not VALIDATOR.is_valid(broken)
    broken = json.loads(json.dumps(rfc_example))
    broken["date-range"]["start-datetime"] = "2016-04-01"
    assert not VALIDATOR.is_valid(broken)


def test_report_json_refuses_what_it_cannot_report() -> None:
    base: dict[str, Any] = {"organization": "X", "contact": "c@x.test", "report_id": "r1",
                            "day": DAY, "policy_domain": "example.test"}
    with pytest.raises(ValueError, match="counts"):
        report_json(**base, counts=[(outcome(domain="other.test"), 1)])
    with pytest.raises(ValueError, match="counts"):
        report_json(**base, counts=[(outcome(), -1)])
    with pytest.raises(ValueError, match="counts"):
        report_json(**base, counts=[(outcome(), 0)])
    with pytest.raises(ValueError, match="day"):
        report_json(**{**base, "day": "2026-13-01"}, counts=[(outcome(), 1)])
    with pytest.raises(ValueError, match="organization"):
        report_json(**{**base, "organization": " "}, counts=[(outcome(), 1)])


def test_report_bytes_gzip_round_trip() -> None:
    doc = report_json(organization="X", contact="c@x.test", report_id="r1", day=DAY,
                      policy_domain="example.test", counts=mixed_day())
    gz = report_bytes(doc)
    assert gz[:2] == b"\x1f\x8b"
    raw = gzip.decompress(gz)
    assert json.loads(raw) == doc
    assert raw == json.dumps(doc, separators=(",", ":")).encode()   # compact, ASCII
    assert report_bytes(doc) == gz                              # mtime 0: the same bytes


def test_report_filename() -> None:
    name = report_filename(receiver="Sender.Test", policy_domain="example.test.", day=DAY,
                           report_id="2026-12-06.example.test@sender.test")
    begin = int(datetime(2026, 12, 6, tzinfo=UTC).timestamp())
    assert begin == 1796515200
    assert name == (f"sender.test!example.test!{begin}!{begin + 86399}"
                    "!20261206exampletestsendertest.json.gz")
    assert report_filename(receiver="s.test", policy_domain="d.test", day="2026-12-06",
                           report_id="--") == f"s.test!d.test!{begin}!{begin + 86399}.json.gz"
    with pytest.raises(ValueError, match="policy_domain"):
        report_filename(receiver="s.test", policy_domain="d.test!x", day=DAY, report_id="1")


def test_report_mail_parses_and_carries_the_report() -> None:
    doc = report_json(organization="Example Sender", contact="tlsrpt@sender.test",
                      report_id="r20261206", day=DAY, policy_domain="example.test",
                      counts=mixed_day())
    gz = report_bytes(doc)
    now = datetime(2026, 12, 7, 2, 13, tzinfo=UTC).timestamp()
    raw = report_mail(sender="tlsrpt@sender.test", to="reports@example.test",
                      policy_domain="example.test", submitter="sender.test",
                      report_id="r20261206", day=DAY, gz=gz, now=now)
    assert raw.isascii() and raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == ("Report Domain: example.test Submitter: sender.test "
                              "Report-ID: <r20261206@sender.test>")
    assert msg["TLS-Report-Domain"] == "example.test"
    assert msg["TLS-Report-Submitter"] == "sender.test"
    assert msg["From"] == "tlsrpt@sender.test" and msg["To"] == "reports@example.test"
    assert msg["Date"].datetime == datetime(2026, 12, 7, 2, 13, tzinfo=UTC)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    text, attachment = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain" and "sender.test" in text.get_content()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == report_filename(
        receiver="sender.test", policy_domain="example.test", day=DAY, report_id="r20261206")
    payload = attachment.get_content()
    assert payload == gz and json.loads(gzip.decompress(payload)) == doc
    # the same inputs give the same bytes (Message-ID and boundary derive from them)
    assert raw == report_mail(sender="tlsrpt@sender.test", to="reports@example.test",
                              policy_domain="example.test", submitter="sender.test",
                              report_id="r20261206", day=DAY, gz=gz, now=now)


@pytest.mark.parametrize(("field", "kwargs"), [
    ("to", {"to": "reports@example.test\r\nBcc: x@evil.test"}),
    ("sender", {"sender": "a b@sender.test"}),
    ("policy_domain", {"policy_domain": "example.test\r\nX: y"}),
    ("submitter", {"submitter": "sender test"}),
    ("report_id", {"report_id": "<r1>"}),
])
def test_report_mail_refuses_header_injection(field: str, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"sender": "t@sender.test", "to": "r@example.test",
                            "policy_domain": "example.test", "submitter": "sender.test",
                            "report_id": "r1", "day": DAY, "gz": b"x", "now": 0.0}
    with pytest.raises(ValueError, match=field):
        report_mail(**{**args, **kwargs})


def test_spread_delay_is_stable_and_bounded() -> None:
    delays = [spread_delay(f"d{i}.example.test", DAY) for i in range(200)]
    assert all(0 <= d < 4 * 3600 for d in delays)
    assert len(set(delays)) == 200 and max(delays) - min(delays) > 3 * 3600
    assert spread_delay("d7.example.test", "2026-12-06") == delays[7]
    assert spread_delay("D7.example.test.", DAY) == delays[7]
    assert spread_delay("d7.example.test", date(2026, 12, 7)) != delays[7]
    assert 0 <= spread_delay("x.test", DAY, spread=60) < 60
    assert spread_delay("x.test", DAY, spread=0) == 0.0
    with pytest.raises(ValueError, match="spread"):
        spread_delay("x.test", DAY, spread=-1)


def test_utc_day() -> None:
    assert utc_day(datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC).timestamp()) == "2026-12-06"
    assert utc_day(datetime(2026, 12, 7, tzinfo=UTC).timestamp()) == "2026-12-07"


# -- the durable counts ---------------------------------------------------------------------

def test_store_reads_nothing_without_an_index(tmp_path: Path) -> None:
    store = SqliteTlsRpt(tmp_path)
    assert store.days_before("2026-12-07") == [] and store.counts("2026-12-06", "x.test") == []
    assert store.sent("2026-12-06", "x.test") is None and store.prune("2026-12-07") == 0
    store.add([])
    assert not store.paths.index.exists()


def test_store_counts_survive_reopening_and_build_the_report(tmp_path: Path) -> None:
    store = SqliteTlsRpt(tmp_path)
    batch = [("2026-12-06", o) for o, n in mixed_day() for _ in range(n)]
    store.add(batch[:40])
    store.add(batch[40:])
    store.add([("2026-12-06", outcome(domain="other.test"))])

    reopened = SqliteTlsRpt(tmp_path)
    rows = reopened.counts("2026-12-06", "EXAMPLE.test.")
    assert sum(n for _, n in rows) == sum(n for _, n in mixed_day())
    assert len(rows) == 6                 # the two starttls entries are one row
    doc = report_json(organization="X", contact="c@sender.test", report_id="r1", day=DAY,
                      policy_domain="example.test", counts=rows)
    expected = report_json(organization="X", contact="c@sender.test", report_id="r1",
                           day=DAY, policy_domain="example.test", counts=mixed_day())
    assert doc == expected
    VALIDATOR.validate(doc)
    assert [n for _, n in reopened.counts("2026-12-06", "other.test")] == [1]


def test_store_add_is_one_transaction(tmp_path: Path) -> None:
    store = SqliteTlsRpt(tmp_path)
    store.add([("2026-12-06", outcome())])
    with pytest.raises(ValueError, match="day"):
        store.add([("2026-12-06", outcome()), ("6 Dec 2026", outcome())])
    assert [n for _, n in store.counts("2026-12-06", "example.test")] == [1]


def test_store_counts_survive_a_killed_process(tmp_path: Path) -> None:
    """A process that added counts and then died by SIGKILL (no clean close)
    loses none of them: add() returns only after its commit."""
    code = (
        "import os, signal, sys\n"
        "from mta.policy.tlsrpt import Outcome\n"
        "from mta.spool.tlsrpt import SqliteTlsRpt\n"
        "o = Outcome('example.test', 'sts', ('version: STSv1',), 'mx1.example.test',\n"
        "            'certificate-expired', '198.51.100.7', '192.0.2.10')\n"
        "store = SqliteTlsRpt(sys.argv[1])\n"
        "for _ in range(5):\n"
        "    store.add([('2026-12-06', o)] * 3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, timeout=30,
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    rows = SqliteTlsRpt(tmp_path).counts("2026-12-06", "example.test")
    assert [(r.result, n) for r, n in rows] == [("certificate-expired", 15)]


def test_days_before_excludes_today_and_sent_days(tmp_path: Path) -> None:
    store = SqliteTlsRpt(tmp_path)
    store.add([("2026-12-04", outcome()), ("2026-12-05", outcome()),
               ("2026-12-05", outcome(domain="other.test")), ("2026-12-06", outcome())])
    assert store.days_before("2026-12-06") == [
        ("2026-12-04", "example.test"), ("2026-12-05", "example.test"),
        ("2026-12-05", "other.test")]
    store.mark_sent("2026-12-05", "Example.Test", "mailto:r@example.test", 1796500000.0)
    assert store.sent("2026-12-05", "example.test") == ("mailto:r@example.test", 1796500000.0)
    assert store.days_before("2026-12-06") == [("2026-12-04", "example.test"),
                                               ("2026-12-05", "other.test")]
    store.mark_sent("2026-12-05", "example.test", "https://r.example.test/", 1796500100.0)
    assert store.sent("2026-12-05", "example.test") == ("https://r.example.test/",
                                                        1796500100.0)
    # a late count for a sent day is kept, never reported again
    store.add([("2026-12-05", outcome("certificate-expired"))])
    assert ("2026-12-05", "example.test") not in store.days_before("2026-12-07")
    assert store.days_before("2026-12-07")[-1] == ("2026-12-06", "example.test")

    assert store.prune("2026-12-05") == 1
    assert store.days_before("2026-12-07") == [("2026-12-05", "other.test"),
                                               ("2026-12-06", "example.test")]
    assert store.prune("2026-12-07") == 4
    assert store.days_before("2026-12-08") == [] and store.sent("2026-12-05",
                                                                "example.test") is None
    with pytest.raises(ValueError, match="day"):
        store.days_before("2026-02-30")


def test_store_refuses_to_create_an_index_beside_segments(tmp_path: Path) -> None:
    store = SqliteTlsRpt(tmp_path)
    store.paths.segments.mkdir(parents=True)
    (store.paths.segments / "00000001.seg").write_bytes(b"x")
    with pytest.raises(TlsRptStoreError, match="missing"):
        store.add([("2026-12-06", outcome())])
    assert not store.paths.index.exists()
    assert os.listdir(store.paths.root) == ["segments"]
