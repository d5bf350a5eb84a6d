"""The ledger end to end (issue 6): for scripted scenarios every event type
appears, in order, in the message's timeline; idempotent submission over SMTP,
sequential and concurrent, yields one delivery."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from mta.runtime.admin import RuntimeAdmin
from mta.server.credentials import CredentialStore
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_e2e import wait_until
from tests.test_e2e_bounces import VERP_DOMAIN, arf, remote_dsn, to_inbound

SENDER = "app@sender.test"


@pytest.fixture
async def world(tmp_path):
    async with Sink() as sink:
        port, inbound = free_port(), free_port()
        text = config_text(tmp_path / "state", port, retry="1s", lifetime="4s",
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        text += (f'\n[bounces]\ndomain = "{VERP_DOMAIN}"\n'
                 f'[[listeners]]\nname = "inbound"\naddress = "127.0.0.1:{inbound}"\n'
                 f'role = "inbound"\ntls = "starttls"\n')
        (tmp_path / "state").mkdir()
        creds = CredentialStore(tmp_path / "state" / "credentials.json")
        creds.add("app", "app-password-1")
        creds.add("scoped", "scoped-password-1", domains=["a.example"])
        (tmp_path / "mta.toml").write_text(text)     # for the CLI (admin API)
        async with running_daemon(text) as d:
            d.port, d.inbound, d.config_file = port, inbound, tmp_path / "mta.toml"
            yield d, sink


async def submit(d, rcpts, *, user="app", password="app-password-1", sender=SENDER,
                 headers=b""):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login(user, password)
        _, resp = await c.sendmail(sender, rcpts, b"From: " + sender.encode() + b"\r\n"
                                   + headers + b"Subject: ledger\r\n\r\nhi\r\n")
        return resp.split()[-1]


async def timeline(d, qid):
    return [e.type for e in await d.spool.ledger.message_events(qid)]


async def until_types(d, qid, want, timeout=15.0):
    async def check():
        types = await timeline(d, qid)
        return types if types[:len(want)] == want else None
    try:
        return await wait_until(check, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{qid}: {await timeline(d, qid)} does not start with {want}")


async def test_every_event_type_in_order(world):
    d, sink = world
    delivered = await submit(d, ["ok-1@rcpt.test"])
    deferred = await submit(d, ["tempfail-1@rcpt.test"])
    bounced = await submit(d, ["reject-1@rcpt.test"])
    expiring = await submit(d, ["tempfail-99@rcpt.test"])
    await until_types(d, delivered, ["received", "queued", "delivered"])
    await until_types(d, deferred, ["received", "queued", "deferred", "delivered"])
    await until_types(d, bounced, ["received", "queued", "bounced", "dsn_sent"])
    ev = (await d.spool.ledger.message_events(bounced))[2]
    assert ev.detail["class"] == "hard" and ev.detail["sync"] is True
    await until_types(d, expiring, ["received", "queued", "deferred"])
    await wait_until(lambda: _has(d, expiring, "dsn_sent"), timeout=15)
    types = await timeline(d, expiring)
    assert types.index("expired") < types.index("dsn_sent")    # expired, then its DSN

    # asynchronous bounce and complaint through the inbound listener (VERP)
    async_b = await submit(d, ["ok-async@rcpt.test"])
    complained = await submit(d, ["ok-complainer@rcpt.test"])
    await until_types(d, async_b, ["received", "queued", "delivered"])
    await until_types(d, complained, ["received", "queued", "delivered"])
    verp_b = next(m.mail_from for m in sink.messages if "ok-async@rcpt.test" in m.rcpt_tos)
    verp_c = next(m.mail_from for m in sink.messages if "ok-complainer@rcpt.test" in m.rcpt_tos)
    await to_inbound(d, verp_b, remote_dsn("ok-async@rcpt.test"))
    await to_inbound(d, verp_c, arf("ok-complainer@rcpt.test"))
    assert (await timeline(d, async_b))[3] == "bounced"
    ev = (await d.spool.ledger.message_events(async_b))[3]
    assert ev.detail["sync"] is False
    assert (await timeline(d, complained))[3] == "complained"
    assert (await d.spool.ledger.message_events(complained))[3].detail["feedback_type"] == "abuse"

    # suppressed at RCPT (the complainer is now suppressed), rejected at MAIL
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await submit(d, ["ok-complainer@rcpt.test"])
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await submit(d, ["ok@rcpt.test"], user="scoped", password="scoped-password-1",
                     sender="x@b.example")
    async def refusals():   # appended without delaying the SMTP reply: wait for them
        recent = [(e.type, e.recipient, e.credential) for e in
                  await d.spool.ledger.events_after(0, 1000, types=["suppressed", "rejected"])]
        return recent if any(t == "rejected" and c == "scoped" for t, _, c in recent) else None
    recent = await wait_until(refusals, timeout=5)
    assert ("suppressed", "ok-complainer@rcpt.test", "app") in recent

    # held and released (through the admin backend, destination suspended meanwhile)
    admin = RuntimeAdmin(d)
    dest = f"[127.0.0.1]:{sink.address[1]}"
    await admin.destination_action(dest, "suspend")
    held = await submit(d, ["ok-held@rcpt.test"])
    await until_types(d, held, ["received", "queued"])
    # (the runner may still hold its lease while it puts the recipient back
    # for the suspended destination: operations leave leased recipients alone)
    async def hold():
        return (await admin.message_action(held, "hold"))["affected"] == 1 or None
    await wait_until(hold, timeout=5)
    assert (await admin.message_action(held, "release"))["affected"] == 1
    await admin.destination_action(dest, "resume")
    await until_types(d, held, ["received", "queued", "held", "released", "delivered"])

    # the global cursor sees everything exactly once, in sequence order
    seqs = [e.seq for e in await d.spool.ledger.events_after(0, 10_000)]
    assert seqs == sorted(set(seqs))


async def _has(d, qid, kind):
    return kind in await timeline(d, qid) or None


async def test_idempotent_submission_sequential_and_concurrent(world):
    d, sink = world
    first = await submit(d, ["ok-idem@rcpt.test"], headers=b"Idempotency-Key: order-42\r\n")
    again = await submit(d, ["ok-idem@rcpt.test"], headers=b"Idempotency-Key: order-42\r\n")
    assert again == first
    ids = await asyncio.gather(*(submit(d, ["ok-race@rcpt.test"],
                                        headers=b"Idempotency-Key: race-7\r\n")
                                 for _ in range(6)))
    assert len(set(ids)) == 1
    await asyncio.sleep(1.5)
    delivered = [m for m in sink.messages if m.rcpt_tos in (["ok-idem@rcpt.test"],
                                                            ["ok-race@rcpt.test"])]
    assert sorted(m.rcpt_tos[0] for m in delivered) == ["ok-idem@rcpt.test",
                                                        "ok-race@rcpt.test"]
    assert all(b"Idempotency-Key" not in m.data for m in delivered)   # removed before delivery
    received = [e for e in await d.spool.ledger.message_events(first) if e.type == "received"]
    assert len(received) == 2 and received[1].detail.get("duplicate_of") == first
    # another credential with the same key is a different submission
    other = await submit(d, ["ok-idem@rcpt.test"], user="scoped", password="scoped-password-1",
                         sender="y@a.example", headers=b"Idempotency-Key: order-42\r\n")
    assert other != first


async def test_cli_events_tail_and_queue_show_timeline(world):
    import json as _json
    import os
    import subprocess
    import sys
    d, sink = world
    qid = await submit(d, ["ok-cli@rcpt.test"])
    await until_types(d, qid, ["received", "queued", "delivered"])
    env = dict(os.environ, MTA_CONFIG=str(d.config_file))

    def mta(*args):
        return subprocess.run([sys.executable, "-m", "mta", *args], env=env,
                              capture_output=True, text=True, timeout=60)
    r = await asyncio.to_thread(mta, "events", "tail", "--json", "--after", "0")
    assert r.returncode == 0, r.stderr
    lines = [_json.loads(x) for x in r.stdout.splitlines()]
    mine = [e["type"] for e in lines if e["queue_id"] == qid]
    assert mine == ["received", "queued", "delivered"]
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    r = await asyncio.to_thread(mta, "events", "tail", "--last", "1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1
    r = await asyncio.to_thread(mta, "queue", "show", qid)
    assert r.returncode == 0, r.stderr
    timeline_part = r.stdout.split("*** TIMELINE ***")[1]
    assert "received" in timeline_part and "delivered" in timeline_part
