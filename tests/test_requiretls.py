"""REQUIRETLS and "TLS-Required: No" (RFC 8689, issue 17), on real daemons.

Submission: REQUIRETLS is offered only inside TLS; MAIL FROM … REQUIRETLS in
clear text is 530 5.7.10; after STARTTLS it is taken and the message stored
with the flag, as is a "TLS-Required: No" header (durably: the index row).
Delivery (the TLS world of test_e2e_tls): a REQUIRETLS message goes only
over TLS a policy verified, to a server that offers REQUIRETLS, with the
parameter on MAIL FROM; otherwise it is returned with 5.7.30. A message
whose sender said "TLS-Required: No" is delivered even where the domain's
MTA-STS policy would have deferred it."""

from __future__ import annotations

import sqlite3
import time

import aiosmtplib
import pytest

from mta.spool import NewMessage, replay
from mta.spool.acceptance import pending_message
from tests.support.mtahelpers import (config_text, free_port, make_message, no_verify_context,
                                      running_daemon)
from tests.support.tlsworld import SENDER, TlsWorld, domain, tls_world


def _flags(state, qid: str) -> int:
    with sqlite3.connect(state / "spool" / "index.sqlite3") as db:
        return db.execute("SELECT tls_flags FROM messages WHERE id = ?", (qid,)).fetchone()[0]


async def test_submission_takes_requiretls_only_inside_tls(tmp_path):
    port = free_port()
    text = config_text(tmp_path / "state", port, tls="starttls", trusted=["127.0.0.0/8"],
                       routes={"*": "127.0.0.1:9"})
    async with running_daemon(text):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               tls_context=no_verify_context(), timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        assert not smtp.supports_extension("requiretls")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.mail("a@example.com", options=["REQUIRETLS"])
        assert info.value.code == 530 and "5.7.10" in info.value.message
        await smtp.rset()
        await smtp.starttls()
        await smtp.ehlo()
        assert smtp.supports_extension("requiretls")
        body = make_message("a@example.com", ["ok@rcpt.test"])
        _, reply = await smtp.sendmail("a@example.com", ["ok@rcpt.test"], body,
                                       mail_options=["REQUIRETLS"])
        required = reply.split()[-1]
        no_tls = make_message("a@example.com", ["ok@rcpt.test"],
                              extra_headers="TLS-Required: No\r\n")
        _, reply = await smtp.sendmail("a@example.com", ["ok@rcpt.test"], no_tls)
        optional = reply.split()[-1]
        _, reply = await smtp.sendmail("a@example.com", ["ok@rcpt.test"], body)
        plain = reply.split()[-1]
        await smtp.quit()
    state = tmp_path / "state"
    assert (_flags(state, required), _flags(state, optional), _flags(state, plain)) == (1, 2, 0)


async def _inject(w: TlsWorld, rcpt: str, flags: int, extra: str = "") -> str:
    assert w.daemon.spool is not None and w.daemon.runner is not None
    qid = await w.daemon.spool.enqueue(NewMessage(
        sender=SENDER, recipients=(rcpt,),
        body=make_message(SENDER, [rcpt], extra_headers=extra), tls_flags=flags), time.time())
    w.daemon.runner.poke()
    return qid


async def test_delivery_honours_requiretls_and_tls_required_no(tmp_path):
    async with tls_world(tmp_path) as w:
        good = w.sinks["good"]
        # 1. verified TLS (MTA-STS enforce), but the server does not offer REQUIRETLS
        q1 = await _inject(w, f"ok1@{domain('good', 'sts-enforce')}", 1)
        ev = await w.wait(q1, "bounced")
        assert "5.7.30" in ev.detail["reply"] and "does not offer REQUIRETLS" in ev.detail["reply"]
        # 2. no policy: TLS unverified, so not good enough
        q2 = await _inject(w, f"ok2@{domain('good', 'opportunistic')}", 1)
        ev = await w.wait(q2, "bounced")
        assert "5.7.30" in ev.detail["reply"] and "without verified TLS" in ev.detail["reply"]
        # 3. verified TLS (DANE) to a server that offers it: delivered, REQUIRETLS
        #    passed on (another MX host than 1's: its idle connection knew the
        #    server's EHLO from before)
        good.requiretls = True
        rcpt = f"ok3@{domain('good', 'dane')}"
        q3 = await _inject(w, rcpt, 1)
        await w.wait(q3, "delivered")
        (m,) = w.received(rcpt)
        assert "REQUIRETLS" in m.mail_options and m.tls
        # 4. "TLS-Required: No": the enforce policy of a domain whose MX has an
        #    expired certificate does not stop it (delivered over unverified TLS)
        rcpt = f"ok4@{domain('expired', 'sts-enforce')}"
        q4 = await _inject(w, rcpt, 2, extra="TLS-Required: No\r\n")
        await w.wait(q4, "delivered")
        (m,) = w.received(rcpt)
        assert m.tls and "REQUIRETLS" not in m.mail_options


def test_the_flag_survives_replay():
    """The v2 record's envelope carries tls_flags, so a replayed acceptance
    (crash recovery) keeps REQUIRETLS; a record from before reads 0."""
    m = pending_message(NewMessage(sender="a@x.test", recipients=("r@x.test",),
                                   body=b"A: b\r\n\r\nx\r\n", tls_flags=1), 1_700_000_000.0)
    raw = replay.envelope(m)
    assert replay.pending(raw).tls_flags == 1
    assert replay.pending(raw.replace(b',"tlsf":1', b"")).tls_flags == 0
    with pytest.raises(ValueError):
        replay.pending(raw.replace(b'"tlsf":1', b'"tlsf":9'))
