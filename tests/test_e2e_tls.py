"""End to end: outbound TLS policy (issue 17) — every policy × every sink, as a table.

One world for the module (tests/support/tlsworld.py): sinks presenting a good,
an expired, a wrong-name and a self-signed certificate, and one without
STARTTLS; a DNS server with MTA-STS and DANE records (AD bit for the "signed"
zones); an HTTPS MTA-STS policy host trusted through `[tls] ca_file`; the
daemon. One message per row is sent at once, then each row checks its own.

The table (recipient row@<sink>.<policy>.test; tls_policy is the ledger
event's detail["tls_policy"]):

    policy         good  expired  wrongname  selfsigned  plain   tls_policy
    opportunistic  TLS   TLS      TLS        TLS         CLEAR   opportunistic
    sts-enforce    TLS   DEFER    DEFER      DEFER       DEFER   mta-sts
    sts-testing    TLS   TESTING  TESTING    TESTING     TESTING mta-sts
    dane           TLS   TLS      TLS        TLS         DEFER   dane
    dane-bad       DEFER DEFER    DEFER      DEFER       DEFER   dane
    verify         TLS   DEFER    DEFER      DEFER       DEFER   verify
    encrypt        TLS   TLS      TLS        TLS         DEFER   encrypt
    none           CLEAR CLEAR    CLEAR      CLEAR       CLEAR   none

    TLS      delivered, the sink saw TLS
    CLEAR    delivered, the sink saw clear text (none: STARTTLS not even tried)
    DEFER    a `deferred` event whose reply names why, nothing at the sink
    TESTING  delivered despite the failure (over TLS when offered, else in
             clear); the failure is counted for TLS-RPT (not asserted here yet)

dane is "3 1 1" of the sink's own key: DANE-EE ignores names and dates
(RFC 7672 §3.1.1). Also: STARTTLS stripping under an enforce policy, and two
domains sharing one MX site where only one of them publishes MTA-STS.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import aiosmtplib
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import pytest_asyncio

from tests.support.tlsworld import (KINDS, POLICIES, POLICY_IP, SINK_IPS, TlsWorld, domain, mx_name,
                                    spki_sha256, sts_policy, tls_world)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TLS, CLEAR, DEFER, TESTING = "delivered-tls", "delivered-clear", "deferred", "delivered-testing"

TABLE = {   # policy: outcomes for KINDS = good, expired, wrongname, selfsigned, plain
    "opportunistic": (TLS, TLS, TLS, TLS, CLEAR),
    "sts-enforce": (TLS, DEFER, DEFER, DEFER, DEFER),
    "sts-testing": (TLS, TESTING, TESTING, TESTING, TESTING),
    "dane": (TLS, TLS, TLS, TLS, DEFER),
    "dane-bad": (DEFER, DEFER, DEFER, DEFER, DEFER),
    "verify": (TLS, DEFER, DEFER, DEFER, DEFER),
    "encrypt": (TLS, TLS, TLS, TLS, DEFER),
    "none": (CLEAR, CLEAR, CLEAR, CLEAR, CLEAR),
}
TLS_POLICY = {"opportunistic": "opportunistic", "sts-enforce": "mta-sts",
              "sts-testing": "mta-sts", "dane": "dane", "dane-bad": "dane",
              "verify": "verify", "encrypt": "encrypt", "none": "none"}
ROWS = [(policy, kind, TABLE[policy][i]) for policy in POLICIES for i, kind in enumerate(KINDS)]
OUTCOME_EVENTS = ("delivered", "deferred", "bounced", "expired")


def why_deferred(policy: str, kind: str) -> tuple[str, ...]:
    """Words one of which the deferred reply must hold (case-insensitive)."""
    if kind == "plain":
        return ("STARTTLS", "TLSA", "DANE") if policy == "dane-bad" else ("STARTTLS",)
    if policy == "dane-bad":
        return ("TLSA", "DANE")
    return ("certificate",)


def rcpt_of(policy: str, kind: str) -> str:
    return f"row@{domain(kind, policy)}"


# Extra names: an enforce domain whose MX offers no STARTTLS (stripping), and
# two domains on one MX site (rolled up into one queue), one with MTA-STS.
STRIPPED, SHARED_OPEN, SHARED_STS = "stripped.test", "shared-open.test", "shared-sts.test"
EXTRA_ZONE = {
    STRIPPED: {"MX": [(10, "mx.stripped.test")]},
    "mx.stripped.test": {"A": [SINK_IPS["plain"]]},
    SHARED_OPEN: {"MX": [(10, "mx.shared.test")]},
    SHARED_STS: {"MX": [(10, "mx.shared.test")]},
    "mx.shared.test": {"A": [SINK_IPS["plain"]]},
    **{f"_mta-sts.{d}": {"TXT": ["v=STSv1; id=1"]} for d in (STRIPPED, SHARED_STS)},
    **{f"mta-sts.{d}": {"A": [POLICY_IP]} for d in (STRIPPED, SHARED_STS)},
}
EXTRA_POLICIES = {STRIPPED: sts_policy("enforce", ["mx.stripped.test"]),
                  SHARED_STS: sts_policy("enforce", ["mx.shared.test"])}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    async with tls_world(tmp_path_factory.mktemp("tlsworld"), extra_zone=EXTRA_ZONE,
                         extra_policies=EXTRA_POLICIES) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def outcomes(world: TlsWorld):
    """{(policy, kind): (queue id, its first outcome event or None)}: every row
    sent first, then all waited for together."""
    qids = {(p, k): await world.send(rcpt_of(p, k)) for p, k, _ in ROWS}

    async def first(qid):
        try:
            return await world.wait(qid, OUTCOME_EVENTS, timeout=15)
        except TimeoutError:
            return None
    events = await asyncio.gather(*(first(q) for q in qids.values()))
    return {row: (qid, ev) for (row, qid), ev in zip(qids.items(), events)}


# ---- the world itself (these pass whatever delivery does with TLS) ----

async def test_world_delivers_to_the_good_sink_opportunistically(world: TlsWorld):
    rcpt = "first@" + domain("good", "opportunistic")
    qid = await world.send(rcpt)
    ev = await world.wait(qid, OUTCOME_EVENTS)
    assert ev.type == "delivered", ev.detail
    [got] = world.received(rcpt)
    assert got.tls and got.tls.startswith("TLS")
    assert any(m is got for m in world.sinks["good"].messages)
    assert ev.detail["remote_host"] == mx_name("good", "opportunistic")


async def _starttls(world: TlsWorld, kind: str, ctx: ssl.SSLContext, name: str) -> bytes:
    """STARTTLS to one sink with `ctx`; the certificate it presented (DER)."""
    smtp = aiosmtplib.SMTP(hostname=SINK_IPS[kind], port=world.smtp_port, start_tls=False,
                           timeout=5)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.starttls(tls_context=ctx, server_hostname=name)
        ssl_object = smtp.transport.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True)
    finally:
        smtp.close()


@pytest.mark.parametrize("kind, failure", [
    ("good", None), ("expired", "expired"), ("wrongname", "mismatch"),
    ("selfsigned", "self-signed")])
async def test_world_sink_certificates_are_what_they_claim(world: TlsWorld, kind, failure):
    name = mx_name(kind, "sts-enforce")
    der = await _starttls(world, kind, ssl._create_unverified_context(), name)
    assert der == world.leaf_der[kind]
    tlsa = world.dns.zone[f"_{world.smtp_port}._tcp.{mx_name(kind, 'dane')}"]["TLSA"]
    assert tlsa == [(3, 1, 1, spki_sha256(der))]
    bad = world.dns.zone[f"_{world.smtp_port}._tcp.{mx_name(kind, 'dane-bad')}"]["TLSA"]
    assert bad[0][3] != spki_sha256(der)
    trusting = ssl.create_default_context(cafile=str(world.ca_file))
    if failure is None:
        assert await _starttls(world, kind, trusting, name) == der
    else:
        with pytest.raises(ssl.SSLCertVerificationError, match=failure):
            await _starttls(world, kind, trusting, name)


async def test_world_plain_sink_offers_no_starttls(world: TlsWorld):
    async with aiosmtplib.SMTP(hostname=SINK_IPS["plain"], port=world.smtp_port,
                               start_tls=False, timeout=5) as smtp:
        await smtp.ehlo()
        assert not smtp.supports_extension("starttls")


async def _ask(world: TlsWorld, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    return await dns.asyncquery.udp(query, world.dns.host, port=world.dns.port, timeout=2)


async def test_world_dns_signs_only_the_dane_zones(world: TlsWorld):
    port = world.smtp_port
    signed = await _ask(world, f"_{port}._tcp.{mx_name('good', 'dane')}", "TLSA")
    assert signed.flags & dns.flags.AD and signed.answer
    mx = await _ask(world, domain("good", "dane-bad"), "MX")
    assert mx.flags & dns.flags.AD and mx.answer
    unsigned = await _ask(world, f"_{port}._tcp.{mx_name('good', 'opportunistic')}", "TLSA")
    assert not unsigned.flags & dns.flags.AD and unsigned.rcode() == dns.rcode.NXDOMAIN
    txt = await _ask(world, f"_mta-sts.{domain('good', 'sts-enforce')}", "TXT")
    assert b"v=STSv1; id=1" in txt.answer[0][0].strings[0]


async def test_world_policy_host_serves_over_trusted_https(world: TlsWorld):
    dom = domain("wrongname", "sts-testing")
    ctx = ssl.create_default_context(cafile=str(world.ca_file))
    async with aiohttp.ClientSession() as session:
        url = f"https://{POLICY_IP}:{world.sts_port}/.well-known/mta-sts.txt"
        async with session.get(url, ssl=ctx, server_hostname=f"mta-sts.{dom}",
                               headers={"Host": f"mta-sts.{dom}"}) as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            body = await resp.text()
    assert body == ("version: STSv1\nmode: testing\nmx: mx.wrongname.sts-testing.test\n"
                    "max_age: 86400\n")


# ---- the table ----

@pytest.mark.parametrize("policy, kind, expected", ROWS,
                         ids=[f"{p}-{k}" for p, k, _ in ROWS])
async def test_policy_table(world: TlsWorld, outcomes, policy, kind, expected):
    qid, ev = outcomes[(policy, kind)]
    rcpt = rcpt_of(policy, kind)
    assert ev is not None, f"{policy}/{kind} {qid}: neither delivered nor deferred in time"
    reply = str(ev.detail.get("reply"))
    got = world.received(rcpt)
    if expected == DEFER:
        assert ev.type == "deferred", f"{policy}/{kind}: {ev.type}, expected deferred: {reply}"
        assert not got, f"{policy}/{kind}: deferred, yet the sink has it"
        words = why_deferred(policy, kind)
        assert any(w.lower() in reply.lower() for w in words), f"{reply!r} names none of {words}"
    else:
        assert ev.type == "delivered", f"{policy}/{kind}: {ev.type}, expected {expected}: {reply}"
        assert len(got) == 1, got
        over_tls = expected == TLS or (expected == TESTING and kind != "plain")
        if over_tls:
            assert got[0].tls and got[0].tls.startswith("TLS"), got[0].tls
            assert ev.detail.get("tls") == got[0].tls
        else:
            assert got[0].tls is None, f"{policy}/{kind}: expected clear text, got {got[0].tls}"
    assert ev.detail.get("tls_policy") == TLS_POLICY[policy], (
        f"{policy}/{kind}: tls_policy {ev.detail.get('tls_policy')!r}, "
        f"expected {TLS_POLICY[policy]!r}")


# ---- STARTTLS stripping and a shared MX site ----

async def test_starttls_stripping_under_enforce_sends_nothing(world: TlsWorld):
    rcpt = f"strip@{STRIPPED}"
    qid = await world.send(rcpt)
    first = await world.wait(qid, OUTCOME_EVENTS)
    assert first.type == "deferred", first.detail
    assert "starttls" in str(first.detail.get("reply")).lower(), first.detail
    again = await world.wait(qid, OUTCOME_EVENTS, count=2, timeout=10)   # the retry too
    assert again.type == "deferred", again.detail
    # not a byte of the envelope reached the MX that offered no STARTTLS
    assert world.sinks["plain"].rcpt_attempts[rcpt] == 0
    assert world.received(rcpt) == []
    assert f"mta-sts.{STRIPPED}" in world.policy_fetches
    view = await world.daemon.spool.get_message(qid)
    assert not view.done and view.recipients[0].state == "queued"
    assert first.detail.get("tls_policy") == "mta-sts", (
        f"tls_policy {first.detail.get('tls_policy')!r} on the deferred event")


async def test_shared_mx_site_applies_each_domains_own_policy(world: TlsWorld):
    """One message to two domains on one MX (one queue after rollup): only
    the domain with an MTA-STS policy may not go in clear (RFC 8461 §5: the
    policy is the recipient domain's)."""
    open_rcpt, sts_rcpt = f"ok@{SHARED_OPEN}", f"ok@{SHARED_STS}"
    qid = await world.send([open_rcpt, sts_rcpt])
    sts = await world.wait(qid, OUTCOME_EVENTS, rcpt=sts_rcpt)
    opened = await world.wait(qid, OUTCOME_EVENTS, rcpt=open_rcpt)
    assert sts.type == "deferred", sts.detail
    assert world.sinks["plain"].rcpt_attempts[sts_rcpt] == 0
    assert opened.type == "delivered", opened.detail
    [got] = world.received(open_rcpt)
    assert got.tls is None and sts_rcpt not in got.rcpt_tos
    assert opened.detail.get("tls_policy") == "opportunistic", opened.detail


async def test_metrics_count_negotiations_by_policy_and_result(world: TlsWorld, outcomes):
    """After the table: /metrics-level counters name each policy's successes
    and failures by their RFC 8460 type (mta_tls_sessions_total)."""
    counter = world.daemon.metrics.tls_sessions
    seen = {tuple(s.labels.values()): s.value for m in counter.collect() for s in m.samples
            if s.name.endswith("_total")}
    assert seen.get(("mta-sts", "success"), 0) >= 2, seen
    assert seen.get(("mta-sts", "certificate-expired"), 0) >= 1, seen
    assert seen.get(("mta-sts", "certificate-host-mismatch"), 0) >= 1, seen
    assert seen.get(("dane", "success"), 0) >= 4, seen
    assert any(p == "dane" and r != "success" for p, r in seen), seen


@pytest.mark.parametrize("policy, kind, check", [
    ("sts-enforce", "good", "verified"), ("dane", "wrongname", "verified"),
    ("verify", "good", "verified"), ("sts-testing", "good", "verified"),
    ("sts-testing", "expired", "failed: certificate-expired"),
    ("sts-testing", "wrongname", "failed: certificate-host-mismatch"),
    ("sts-testing", "selfsigned", "failed: certificate-not-trusted"),
    ("opportunistic", "good", None), ("encrypt", "expired", None)])
async def test_each_delivery_records_its_certificate_check(world: TlsWorld, outcomes, policy,
                                                          kind, check):
    """The verification result is on the attempt's ledger event: verified,
    or (testing mode, delivered anyway) the RFC 8460 failure; no check, none."""
    _, ev = outcomes[(policy, kind)]
    assert ev is not None and ev.type == "delivered", ev
    assert ev.detail.get("tls_check") == check, ev.detail
