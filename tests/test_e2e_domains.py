"""Sending domains end to end (issue 3), through the daemon over real sockets:
a domain added and verified against a real DNS server on 127.0.0.x, mail
submitted by a credential scoped to it is DKIM-signed once at acceptance and
verifies at the sink with dkimpy and Perl Mail::DKIM; other or unverified
domains get 550 5.7.1; signatures made before, during and after a key
rotation all verify."""

from __future__ import annotations


import aiosmtplib
import pytest

from mta.config import parse_config
from mta.delivery.resolver import DnsResolver
from mta.domains.records import zone_text
from mta.domains.service import DomainService
from mta.server.credentials import CredentialStore
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_dkim import _have_mail_dkim, dkimpy_results, perl_results
from tests.test_domains import MultiStringDns, parse_zone

DOMAIN = "brand.test"


@pytest.fixture
async def world(tmp_path):
    dns = MultiStringDns({}, host="127.0.0.155", ttl=1).start()
    try:
        async with Sink() as sink:
            port = free_port()
            text = config_text(tmp_path / "state", port, nameservers=[dns.nameserver],
                               routes={"*": f"127.0.0.1:{sink.address[1]}"},
                               require_verified=True, public_ips=["127.0.0.9"])
            cfg = parse_config(text, "test")
            svc = DomainService(cfg, DnsResolver(cfg.dns.nameservers, 2.0, cache=False))
            svc.add(DOMAIN)
            dns.zone.update(parse_zone(zone_text(svc.plan(DOMAIN))))
            assert (await svc.check(DOMAIN)).ok
            svc.add("pending.test")           # never published: stays pending
            creds = CredentialStore(tmp_path / "state" / "credentials.json")
            creds.add("app", "app-password-1", domains=[DOMAIN])
            creds.add("any", "any-password-1")
            async with running_daemon(text) as d:
                d.port = port
                yield d, sink, dns, svc
    finally:
        dns.stop()


async def send(port, user, password, sender, from_header, rcpt="ok@rcpt.test", subject="hi"):
    msg = (f"From: {from_header}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\nBody line\r\n").encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login(user, password)
        return await c.sendmail(sender, [rcpt], msg)


async def test_signed_once_at_acceptance_and_verifies(world):
    d, sink, dns, svc = world
    await send(d.port, "app", "app-password-1", f"news@{DOMAIN}", f"News <news@{DOMAIN}>")
    (m,) = await sink.wait_for(1)
    assert m.data.count(b"DKIM-Signature:") == 2          # RSA + Ed25519, once
    assert dkimpy_results(m.data, dns) == [True, True]
    if _have_mail_dkim():
        results = perl_results(m.data, dns)
        rsa = [v for k, v in results.items() if k.startswith("rsa-sha256")]
        assert rsa == ["pass"], results


async def test_scope_and_verification_enforced(world):
    d, sink, dns, svc = world
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as ei:
        await send(d.port, "app", "app-password-1", "x@other.test", f"x@{DOMAIN}")
    assert ei.value.code == 550 and "5.7.1" in ei.value.message and "other.test" in ei.value.message
    with pytest.raises(aiosmtplib.SMTPDataError) as ei:
        await send(d.port, "app", "app-password-1", f"news@{DOMAIN}", "ceo@other.test")
    assert ei.value.code == 550 and "other.test" in ei.value.message
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as ei:
        await send(d.port, "any", "any-password-1", "x@pending.test", "x@pending.test")
    assert "mta domain check pending.test" in ei.value.message
    await send(d.port, "any", "any-password-1", f"y@{DOMAIN}", f"y@{DOMAIN}")
    await sink.wait_for(1)


async def test_rotation_every_signature_verifies(world):
    d, sink, dns, svc = world
    await send(d.port, "app", "app-password-1", f"a@{DOMAIN}", f"a@{DOMAIN}", subject="before")
    svc.rotate(DOMAIN)
    dns.zone.update(parse_zone(zone_text(svc.plan(DOMAIN))))   # old and new published
    await d.domains.refresh()
    await send(d.port, "app", "app-password-1", f"a@{DOMAIN}", f"a@{DOMAIN}", subject="during")
    assert (await svc.check(DOMAIN)).ok                         # new key verified: switch
    await d.domains.refresh()
    await send(d.port, "app", "app-password-1", f"a@{DOMAIN}", f"a@{DOMAIN}", subject="after")
    msgs = await sink.wait_for(3)
    selectors = []
    for m in msgs:
        assert dkimpy_results(m.data, dns) == [True, True], m.data[:400]
        selectors.append(sorted(set(__import__("re").findall(rb"s=([\w-]+);", m.data))))
    assert selectors[0] == selectors[1] != selectors[2]        # signing switched after verify


def _over_smtp(raw: bytes) -> bytes:
    # SMTP caps lines at 998 bytes (mta answers 500 beyond): keep the long
    # lines the protocol allows; the client turns LF into CRLF and adds the
    # final CRLF, as every SMTP client does.
    lines = [ln for ln in raw.split(b"\n") if len(ln) <= 998]
    return b"\n".join(lines).replace(b"example.test", DOMAIN.encode())


@pytest.mark.parametrize("case", sorted(__import__("tests.test_dkim", fromlist=["CASES"]).CASES))
async def test_message_kinds_verify_after_delivery(world, case):
    from tests.test_dkim import CASES
    d, sink, dns, svc = world
    raw = _over_smtp(CASES[case])
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login("app", "app-password-1")
        await c.sendmail(f"news@{DOMAIN}", ["ok@rcpt.test"], raw)
    (m,) = await sink.wait_for(1)
    assert dkimpy_results(m.data, dns) == [True, True], case
    if _have_mail_dkim():
        rsa = [v for k, v in perl_results(m.data, dns).items() if k.startswith("rsa-sha256")]
        assert rsa == ["pass"], case


async def test_daemon_timer_verifies_pending_and_fails_broken_domains(world, caplog):
    d, sink, dns, svc = world
    svc.add("late.test")
    zone = parse_zone(zone_text(svc.plan("late.test")))
    dns.zone.update(zone)                       # published after `add`: pending until checked
    assert d.domains.state("late.test") in (None, "pending")
    svc.store.set_state("late.test", svc.get("late.test").state, now=0.0, failure_reason=None,
                        next_check=0.0, check_attempts=0)  # due now
    assert await d.domains.run_due_checks() >= 1
    assert d.domains.state("late.test") == "verified"
    # DNS breaks: the DMARC record disappears; at the next due check it fails
    # (no wait: the checks ask DNS afresh, not through delivery's TTL cache)
    del dns.zone["_dmarc.late.test"]
    svc.store.set_state("late.test", svc.get("late.test").state, now=0.0, failure_reason=None,
                        next_check=0.0, check_attempts=0)
    with caplog.at_level("WARNING", logger="mta.domains"):
        await d.domains.run_due_checks()
    assert d.domains.state("late.test") == "failed"
    assert any("late.test" in r.getMessage() and "dmarc" in r.getMessage().lower()
               for r in caplog.records)
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await send(d.port, "any", "any-password-1", "x@late.test", "x@late.test")
