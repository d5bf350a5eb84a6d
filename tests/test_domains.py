"""Sending domains end to end: `mta domain add` prints records, a real DNS
server on 127.0.0.x serves exactly those, `mta domain check` passes; then each
record is broken in turn and the check names the failure. Plus the state
machine, the check backoff and DKIM key rotation through the service API."""

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mta.config import parse_config
from mta.core.clock import FakeClock
from mta.core.statemachine import IllegalTransition
from mta.delivery.resolver import DnsResolver
from mta.domains.check import CheckEntry, CheckResult
from mta.domains.model import Domain, DomainState, SelectorStatus
from mta.domains.records import DomainPlan, SelectorKey, zone_text
from mta.domains.service import DomainService, decide, next_check_delay
from mta.domains.sqlite_store import SqliteDomainStore
from mta.mail.dkim import generate_key
from tests.support.dnsserver import DnsServer

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "brand.test"
IPS = ("127.0.0.9", "::1")


class MultiStringDns(DnsServer):
    """The test server, with TXT values over 255 bytes served as several
    character-strings of one record (as a real zone holds RSA-2048 keys)."""

    @staticmethod
    def _rdata_text(rdtype, value):
        if rdtype == "TXT":
            raw = str(value)
            return " ".join('"' + raw[i:i + 255].replace('"', '\\"') + '"'
                            for i in range(0, max(len(raw), 1), 255))
        return DnsServer._rdata_text(rdtype, value)


def parse_zone(text: str) -> dict:
    """Zone lines `NAME TTL IN TYPE RDATA` → the DnsServer zone dict."""
    zone: dict = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        name, ttl, cls, rtype, rdata = line.split(None, 4)
        assert name.endswith(".") and ttl.isdigit() and cls == "IN", line
        if rtype == "TXT":
            parts = re.findall(r'"((?:[^"\\]|\\.)*)"', rdata)
            assert all(len(p.encode()) <= 255 for p in parts), line
            value = "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)
        elif rtype == "MX":
            pref, host = rdata.split()
            assert host.endswith(".")
            value = (int(pref), host)
        else:
            value = rdata
        zone.setdefault(name.rstrip("."), {}).setdefault(rtype, []).append(value)
    return zone


@pytest.fixture
def dns():
    server = MultiStringDns({}, host="127.0.0.154", ttl=1).start()
    yield server
    server.stop()


def config_text(state_dir, nameserver, extra=""):
    return (f'[server]\nhostname = "mta.test"\nstate_dir = "{state_dir}"\n'
            f'public_ips = {json.dumps(list(IPS))}\n'
            f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = "2s"\n'
            f'[domains]\nrotation_grace = "1h"\n{extra}')


@pytest.fixture
def conf(tmp_path, dns):
    path = tmp_path / "mta.toml"
    path.write_text(config_text(tmp_path / "state", dns.nameserver))
    return path


def mta(conf, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MTA_CONFIG", "MTA_STATE_DIR")}
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.fixture
def published(conf, dns):
    """`mta domain add` output, parsed and served by the DNS server."""
    p = mta(conf, "domain", "add", DOMAIN)
    assert p.returncode == 0, p.stderr
    dns.zone.update(parse_zone(p.stdout))
    return p.stdout


def test_add_prints_zone_records_and_check_passes(conf, dns, published, tmp_path):
    names = {(n, t) for n, recs in parse_zone(published).items() for t in recs}
    sel = re.search(r"^(mta\d{6})\._domainkey", published, re.MULTILINE).group(1)
    assert names == {(f"{sel}._domainkey.{DOMAIN}", "TXT"),
                     (f"{sel}-ed._domainkey.{DOMAIN}", "TXT"),
                     (DOMAIN, "TXT"), (f"_dmarc.{DOMAIN}", "TXT"),
                     (f"bounce.{DOMAIN}", "MX"), (f"bounce.{DOMAIN}", "TXT"),
                     ("mta.test", "A"), ("mta.test", "AAAA")}
    # the MX target's own addresses (issue 10 item 19), from [server] public_ips
    assert "\nmta.test. 3600 IN A 127.0.0.9\n" in published
    assert "\nmta.test. 3600 IN AAAA ::1\n" in published
    # and a PTR reminder per address, as a comment: not a record of this zone
    assert "\n; 9.0.0.127.in-addr.arpa. 3600 IN PTR mta.test.\n" in published
    assert "\n; 1." + "0." * 31 + "ip6.arpa. 3600 IN PTR mta.test.\n" in published
    assert "; reverse DNS of 127.0.0.9 must name mta.test" in published
    assert "; reverse DNS of ::1 must name mta.test" in published
    assert f'{DOMAIN}. 3600 IN TXT "v=spf1 ip4:127.0.0.9 ip6:::1 ~all"' in published
    assert f'bounce.{DOMAIN}. 3600 IN TXT "v=spf1 ip4:127.0.0.9 ip6:::1 -all"' in published
    assert f'bounce.{DOMAIN}. 3600 IN MX 10 mta.test.' in published
    assert (f'_dmarc.{DOMAIN}. 3600 IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}"'
            in published)
    # an RSA-2048 key does not fit one 255-byte string: two strings, one record
    rsa_line = next(ln for ln in published.splitlines() if ln.startswith(f"{sel}._domainkey"))
    assert rsa_line.count('" "') == 1

    keydir = tmp_path / "state" / "dkim" / DOMAIN
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    assert stat.S_IMODE(keydir.parent.stat().st_mode) == 0o700
    files = sorted(p.name for p in keydir.iterdir())
    assert files == [f"{sel}-ed.ed25519.pem", f"{sel}.rsa.pem"]
    assert all(stat.S_IMODE((keydir / f).stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE((tmp_path / "state" / "domains.sqlite3").stat().st_mode) == 0o600

    shown = json.loads(mta(conf, "domain", "show", DOMAIN, "--json").stdout)
    assert shown["state"] == "pending"

    p = mta(conf, "domain", "check", DOMAIN)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout and p.stdout.count("PASS") == 6
    p = mta(conf, "domain", "check", DOMAIN, "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["ok"] is True
    assert {c["name"] for c in out["checks"]} == {"dkim", "spf", "dmarc", "return-path"}
    listed = json.loads(mta(conf, "domain", "list", "--json").stdout)
    assert [(d["domain"], d["state"]) for d in listed] == [(DOMAIN, "verified")]
    assert listed[0]["failure_reason"] is None


def _spf_chain(n):
    """example TXT that spends n lookups in a chain of includes before authorising us."""
    zone = {}
    for i in range(n):
        nxt = (f"include:l{i + 1}.spf.test -all" if i < n - 1
               else "ip4:127.0.0.9 ip6:::1 -all")
        zone[f"l{i}.spf.test"] = {"TXT": [f"v=spf1 {nxt}"]}
    return zone


def _sel(dns, suffix=""):
    return next(n for n in dns.zone if n.endswith(f"{suffix}._domainkey.{DOMAIN}")
                and (suffix or "-ed." not in n))


def break_missing_dkim(dns):
    del dns.zone[_sel(dns)]


def break_wrong_key(dns):
    _, other = generate_key("rsa-sha256")
    dns.zone[_sel(dns)]["TXT"] = [other]


def break_spf_without_our_ip(dns):
    dns.zone[DOMAIN]["TXT"] = ["v=spf1 ip4:192.0.2.1 -all"]


def break_spf_eleven_lookups(dns):
    dns.zone.update(_spf_chain(11))
    dns.zone[DOMAIN]["TXT"] = ["v=spf1 include:l0.spf.test -all"]


def break_missing_dmarc(dns):
    del dns.zone[f"_dmarc.{DOMAIN}"]


def break_malformed_dmarc(dns):
    dns.zone[f"_dmarc.{DOMAIN}"]["TXT"] = ["v=DMARC1; p=maybe; rua=mailto:dmarc@brand.test"]


def break_dmarc_not_first(dns):
    dns.zone[f"_dmarc.{DOMAIN}"]["TXT"] = ["p=none; v=DMARC1"]


def break_strict_spf_alignment(dns):
    dns.zone[f"_dmarc.{DOMAIN}"]["TXT"] = ["v=DMARC1; p=reject; aspf=s"]


def break_missing_return_path(dns):
    del dns.zone[f"bounce.{DOMAIN}"]["MX"]


def break_return_path_elsewhere(dns):
    dns.zone[f"bounce.{DOMAIN}"]["MX"] = [(10, "mx.elsewhere.test")]


@pytest.mark.parametrize("breaker, name, reason", [
    (break_missing_dkim, "dkim", "no TXT record"),
    (break_wrong_key, "dkim", "wrong key"),
    (break_spf_without_our_ip, "spf", "127.0.0.9: fail"),
    (break_spf_eleven_lookups, "spf", "more than 10 DNS lookups"),
    (break_missing_dmarc, "dmarc", "missing"),
    (break_malformed_dmarc, "dmarc", "malformed: p=maybe"),
    (break_dmarc_not_first, "dmarc", "malformed"),
    (break_strict_spf_alignment, "dmarc", "aspf=s"),
    (break_missing_return_path, "return-path", "missing"),
    (break_return_path_elsewhere, "return-path", "not at this server"),
])
def test_each_broken_record_is_named(conf, dns, published, breaker, name, reason):
    assert mta(conf, "domain", "check", DOMAIN).returncode == 0
    breaker(dns)
    p = mta(conf, "domain", "check", DOMAIN)
    assert p.returncode == 1, p.stdout
    failed = [ln for ln in p.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(failed) == 1, p.stdout
    assert failed[0].split()[1] == name and reason in failed[0], failed[0]
    out = json.loads(mta(conf, "domain", "check", DOMAIN, "--json").stdout)
    assert out["ok"] is False
    assert [c["name"] for c in out["checks"] if not c["ok"]] == [name]
    shown = json.loads(mta(conf, "domain", "show", DOMAIN, "--json").stdout)
    assert shown["state"] == "failed" and reason in shown["failure_reason"]


def test_ten_spf_lookups_still_pass(conf, dns, published):
    dns.zone.update(_spf_chain(10))
    dns.zone[DOMAIN]["TXT"] = ["v=spf1 include:l0.spf.test -all"]
    p = mta(conf, "domain", "check", DOMAIN)
    assert p.returncode == 0, p.stdout


def test_cli_errors(conf, dns, published):
    p = mta(conf, "domain", "add", DOMAIN)
    assert p.returncode == 1 and "already exists" in p.stderr
    p = mta(conf, "domain", "check", "unknown.test")
    assert p.returncode == 1 and "mta domain add unknown.test" in p.stderr
    p = mta(conf, "domain", "add", "nodot")
    assert p.returncode == 1
    p = mta(conf, "domain", "add", "x.test", "--algorithm", "dsa")
    assert p.returncode == 2
    p = mta(conf, "domain", "add", "rsaonly.test", "--algorithm", "rsa", "--selector", "s1",
            "--json")
    out = json.loads(p.stdout)
    assert [(s["selector"], s["algorithm"]) for s in out["selectors"]] == [("s1", "rsa-sha256")]
    assert {r["purpose"] for r in out["records"]} == {"dkim", "spf", "dmarc", "return-path",
                                                      "host", "ptr"}
    host = [(r["name"], r["type"], r["value"], r["required"]) for r in out["records"]
            if r["purpose"] in ("host", "ptr")]
    assert host == [("mta.test.", "A", "127.0.0.9", False), ("mta.test.", "AAAA", "::1", False),
                    ("9.0.0.127.in-addr.arpa.", "PTR", "mta.test.", False),
                    ("1." + "0." * 31 + "ip6.arpa.", "PTR", "mta.test.", False)]
    p = mta(conf, "domain", "remove", "rsaonly.test")
    assert p.returncode == 0
    assert not (Path(json.loads(mta(conf, "domain", "show", DOMAIN, "--json").stdout)
                     ["selectors"][0]["key_path"]).parent.parent / "rsaonly.test").exists()
    assert "rsaonly.test" not in mta(conf, "domain", "list").stdout


# ---- the service API in-process, with a fake clock ----

def make_service(tmp_path, dns, clock, extra=""):
    cfg = parse_config(config_text(tmp_path / "state", dns.nameserver, extra), "test")
    return DomainService(cfg, DnsResolver(cfg.dns.nameservers, 2.0, cache=False), clock)


def publish(dns, svc, domain=DOMAIN):
    dns.zone.update(parse_zone(zone_text(svc.plan(domain))))


async def test_states_pending_verified_failed_and_back(tmp_path, dns):
    clock = FakeClock(1_700_000_000.0)
    svc = make_service(tmp_path, dns, clock)
    d = svc.add(DOMAIN)
    assert d.state is DomainState.PENDING and svc.due_checks(clock.now()) == [DOMAIN]

    # nothing published yet: stays pending, backs off 1m, 5m, 15m, …
    waits = []
    for _ in range(7):
        r = await svc.check(DOMAIN)
        assert not r.ok
        d = svc.get(DOMAIN)
        assert d.state is DomainState.PENDING and "dkim" in d.failure_reason
        waits.append(d.next_check - clock.now())
        assert svc.due_checks(clock.now()) == []
        clock.set(d.next_check)
        assert svc.due_checks(clock.now()) == [DOMAIN]
    assert waits == [60, 300, 900, 3600, 21600, 86400, 86400]

    publish(dns, svc)
    assert (await svc.check(DOMAIN)).ok
    d = svc.get(DOMAIN)
    assert (d.state, d.failure_reason, d.check_attempts) == (DomainState.VERIFIED, None, 0)
    assert d.next_check == clock.now() + 86400 and d.last_checked == clock.now()

    # a DNS outage alone does not flip a verified domain
    dns.servfail = {f"_dmarc.{DOMAIN}"}
    r = await svc.check(DOMAIN)
    assert not r.ok and r.temporary
    assert svc.get(DOMAIN).state is DomainState.VERIFIED
    dns.servfail = set()

    del dns.zone[f"_dmarc.{DOMAIN}"]
    clock.advance(86400)
    await svc.check(DOMAIN)
    d = svc.get(DOMAIN)
    assert d.state is DomainState.FAILED and d.failure_reason.startswith(f"dmarc _dmarc.{DOMAIN}")
    assert d.next_check == clock.now() + 60

    publish(dns, svc)
    await svc.check(DOMAIN)
    assert svc.get(DOMAIN).state is DomainState.VERIFIED


async def test_rotation_switches_signing_when_the_new_key_verifies(tmp_path, dns):
    clock = FakeClock(1_700_000_000.0)  # 2023-11
    svc = make_service(tmp_path, dns, clock)
    svc.add(DOMAIN)
    publish(dns, svc)
    assert (await svc.check(DOMAIN)).ok
    old = [(k.selector, k.algorithm) for k in svc.signing_keys(DOMAIN)]
    assert old == [("mta202311", "rsa-sha256"), ("mta202311-ed", "ed25519-sha256")]

    d = svc.rotate(DOMAIN)
    new = {s.selector: s.status for s in d.selectors if s.status is SelectorStatus.PENDING}
    assert new == {"mta202311b": SelectorStatus.PENDING, "mta202311b-ed": SelectorStatus.PENDING}
    with pytest.raises(Exception, match="already in progress"):
        svc.rotate(DOMAIN)

    # not yet published: the domain stays verified, signing stays on the old keys
    r = await svc.check(DOMAIN)
    assert r.ok and not all(e.ok for e in r.entry("dkim"))
    assert [k.selector for k in svc.signing_keys(DOMAIN)] == ["mta202311", "mta202311-ed"]

    publish(dns, svc)   # the new records, alongside the old
    clock.advance(600)
    assert (await svc.check(DOMAIN)).ok
    d = svc.get(DOMAIN)
    status = {s.selector: (s.status, s.retire_at) for s in d.selectors}
    assert status == {"mta202311": (SelectorStatus.RETIRING, clock.now() + 3600),
                      "mta202311-ed": (SelectorStatus.RETIRING, clock.now() + 3600),
                      "mta202311b": (SelectorStatus.ACTIVE, None),
                      "mta202311b-ed": (SelectorStatus.ACTIVE, None)}
    keys = svc.signing_keys(DOMAIN)
    assert [k.selector for k in keys] == ["mta202311b", "mta202311b-ed"]
    assert keys[0].private_pem.startswith(b"-----BEGIN")

    # the old records stay in the plan until the grace period ends
    plan_names = {r.name for r in svc.plan(DOMAIN).records()}
    assert f"mta202311._domainkey.{DOMAIN}." in plan_names
    old_key = Path(next(s.key_path for s in d.selectors if s.selector == "mta202311"))
    assert old_key.exists()

    clock.advance(3599)
    await svc.check(DOMAIN)
    assert len(svc.get(DOMAIN).selectors) == 4
    clock.advance(1)
    await svc.check(DOMAIN)
    d = svc.get(DOMAIN)
    assert [(s.selector, s.status) for s in d.selectors] == [
        ("mta202311b", SelectorStatus.ACTIVE), ("mta202311b-ed", SelectorStatus.ACTIVE)]
    assert not old_key.exists()
    assert f"mta202311._domainkey.{DOMAIN}." not in {r.name for r in svc.plan(DOMAIN).records()}
    new_key = Path(d.selectors[0].key_path)
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600


def test_illegal_moves_are_refused(tmp_path):
    store = SqliteDomainStore(tmp_path)
    pem, _ = generate_key("ed25519-sha256")
    store.add_domain("a.test", 1.0, [("s", "ed25519-sha256", pem, SelectorStatus.ACTIVE)])
    with pytest.raises(IllegalTransition, match="pending -> failed"):
        store.set_state("a.test", DomainState.FAILED, now=2.0, failure_reason="x",
                        next_check=None, check_attempts=1)
    with pytest.raises(IllegalTransition, match="active -> pending"):
        store.set_selector_status("a.test", "s", SelectorStatus.PENDING)
    with pytest.raises(IllegalTransition):
        store.delete_selector("a.test", "s")   # only retiring keys may go
    store.set_selector_status("a.test", "s", SelectorStatus.RETIRING, retire_at=5.0)
    store.delete_selector("a.test", "s")
    assert store.get("a.test").selectors == ()


def test_backoff_schedule_is_the_documented_one():
    schedule = parse_config("").domains.check_schedule
    assert [next_check_delay(n, schedule) for n in range(1, 9)] == [
        60, 300, 900, 3600, 21600, 86400, 86400, 86400]


def test_decide_is_pure_and_keeps_pending_pending():
    cfg = parse_config("")
    d = Domain("a.test", DomainState.PENDING, 0.0, None, None, 0.0, 2, ())
    bad = CheckResult("a.test", 100.0, (CheckEntry("dmarc", "_dmarc.a.test", False, "missing"),))
    dec = decide(d, bad, 100.0, cfg)
    assert (dec.state, dec.check_attempts, dec.next_check) == (DomainState.PENDING, 3, 100 + 900)
    good = dataclasses.replace(bad, entries=(CheckEntry("dmarc", "_dmarc.a.test", True, ""),))
    dec = decide(d, good, 100.0, cfg)
    assert (dec.state, dec.check_attempts, dec.next_check) == (DomainState.VERIFIED, 0,
                                                               100 + 86400)


def test_plan_json_and_zone_agree():
    _, txt = generate_key("rsa-sha256")
    plan = DomainPlan("x.test", (SelectorKey("s", "rsa-sha256", "active", txt),), ("192.0.2.1",),
                      "mta.example", "rp", "reports@ops.example")
    zone = parse_zone(zone_text(plan))
    assert zone["s._domainkey.x.test"]["TXT"] == [txt]
    assert zone["rp.x.test"]["MX"] == [(10, "mta.example.")]
    assert zone["_dmarc.x.test"]["TXT"] == ["v=DMARC1; p=none; rua=mailto:reports@ops.example"]
    assert zone["mta.example"]["A"] == ["192.0.2.1"]
    recs = [r.to_dict() for r in plan.records()]
    assert {(r["name"], r["type"]) for r in recs} == {
        ("s._domainkey.x.test.", "TXT"), ("x.test.", "TXT"), ("_dmarc.x.test.", "TXT"),
        ("rp.x.test.", "MX"), ("rp.x.test.", "TXT"), ("mta.example.", "A"),
        ("1.2.0.192.in-addr.arpa.", "PTR")}


def test_no_public_ips_no_host_records():
    plan = DomainPlan("x.test", (), (), "mta.example")
    assert [r for r in plan.records() if r.purpose in ("host", "ptr")] == []
    assert "public_ips is empty" in zone_text(plan)


def test_domains_database_is_0600_whatever_the_umask(tmp_path):
    """Issue 10 item 19: domains.sqlite3 was created 0644 (umask 022) while
    every other state file is 0600; its -wal and -shm files too."""
    old = os.umask(0o022)
    try:
        store = SqliteDomainStore(tmp_path)
        pem, _ = generate_key("ed25519-sha256")
        store.add_domain("a.test", 1.0, [("s", "ed25519-sha256", pem, SelectorStatus.ACTIVE)])
        db = tmp_path / "domains.sqlite3"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        with store._db():               # while a connection is open, WAL files exist
            for suffix in ("-wal", "-shm"):
                f = tmp_path / f"domains.sqlite3{suffix}"
                assert f.exists() and stat.S_IMODE(f.stat().st_mode) == 0o600, suffix
        # a database left 0644 by an older version is made private at first use
        os.chmod(db, 0o644)
        assert SqliteDomainStore(tmp_path).get("a.test") is not None
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
    finally:
        os.umask(old)
