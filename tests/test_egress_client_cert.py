"""An egress source's client certificate (issue 17): `[[egress]] cert/key`
are presented in STARTTLS. A sink that requires a client certificate from
our CA completes TLS with a source that has one (the message arrives over
TLS); a source without one is refused by the sink (with TLS 1.3 after the
client's side of the handshake is done, so the connection fails and the
message is deferred, not sent). A missing certificate file is a startup
error naming the key."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import pytest
import trustme

from mta.config import parse_config
from mta.runtime.shaping import check
from tests.support.mtahelpers import config_text, free_port, make_message, running_daemon
from tests.support.sink import Sink


def _sink_context(server_ca: trustme.CA, client_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("sink.test", "127.0.0.1").configure_cert(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(ctx)
    return ctx


@pytest.mark.parametrize("with_cert", [True, False])
async def test_a_source_presents_its_client_certificate(tmp_path, with_cert):
    client_ca = trustme.CA()
    leaf = client_ca.issue_cert("mta.test")
    chain, key = tmp_path / "client.pem", tmp_path / "client.key"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    egress = ('[[egress]]\nname = "a"\naddress = "127.0.0.1"\n'
              + (f'cert = "{chain}"\nkey = "{key}"\n' if with_cert else ""))
    async with Sink(tls_context=_sink_context(trustme.CA(), client_ca)) as sink:
        port = free_port()
        text = config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                           routes={"*": f"127.0.0.1:{sink.address[1]}"}) + egress
        async with running_daemon(text) as d:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as c:
                _, reply = await c.sendmail("a@example.com", ["ok@rcpt.test"],
                                            make_message("a@example.com", ["ok@rcpt.test"]))
            if with_cert:
                (m,) = await sink.wait_for(1)
                assert m.tls is not None and m.tls.startswith("TLS")
                return
            qid = reply.split()[-1]
            for _ in range(100):
                events = [e.type for e in await d.spool.ledger.message_events(qid)]
                if "deferred" in events:
                    break
                await asyncio.sleep(0.05)
            assert "deferred" in events and sink.messages == []


def test_a_missing_certificate_is_named(tmp_path):
    cfg = parse_config('[[egress]]\nname = "a"\naddress = "127.0.0.1"\n'
                       f'cert = "{tmp_path / "nope.pem"}"\n', "test")
    (problem,) = check(cfg)
    assert problem.startswith("egress[0].cert: ") and "nope.pem" in problem
    cfg = parse_config('[[egress]]\nname = "a"\naddress = "127.0.0.1"\nkey = "k.pem"\n', "test")
    assert check(cfg) == ["egress[0].key: set with cert (the client certificate)"]
