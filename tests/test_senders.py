"""Sender enforcement (issue 3): credential scopes and verified domains, as a
pure policy and through the real listener over loopback with STARTTLS+AUTH;
and the signer hook runs before the commit point."""

from __future__ import annotations

import pytest

from mta.config import ListenerConfig
from mta.core import FakeClock
from mta.policy.senders import SenderPolicy, domain_in_scopes
from mta.server import SubmissionListener
from mta.server.credentials import CredentialError, CredentialStore
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401
from tests.test_server import Client, FakeSpool, _message_factory

STATES = {"a.example": "verified", "b.example": "verified", "pending.example": "pending",
          "failed.example": "failed"}


def policy(require_verified=True):
    return SenderPolicy(require_verified=require_verified, domain_state=STATES.get)


@pytest.mark.parametrize("domain, scopes, ok", [
    ("a.example", ("a.example",), True),
    ("mail.a.example", ("a.example",), False),      # subdomains only when listed as *.d
    ("mail.a.example", ("*.a.example",), True),
    ("a.example", ("*.a.example",), False),
    ("xa.example", ("*.a.example",), False),
    ("b.example", ("a.example", "b.example"), True),
])
def test_scopes(domain, scopes, ok):
    assert domain_in_scopes(domain, scopes) is ok


def test_policy_replies():
    p = policy()
    assert p.check("a.example", ("a.example",), "MAIL FROM") is None
    r = p.check("b.example", ("a.example",), "MAIL FROM")
    assert (r.code, r.esc) == (550, "5.7.1") and "b.example" in r.text and "not allowed" in r.text
    r = p.check("pending.example", None, "From: header")
    assert (r.code, r.esc) == (550, "5.7.1")
    assert "mta domain check pending.example" in r.text and "pending" in r.text
    r = p.check("unknown.example", None, "MAIL FROM")
    assert "not set up" in r.text and "mta domain add unknown.example" in r.text
    assert "domain check" not in r.text
    # a verified parent covers a subdomain sender (DMARC relaxed alignment)
    assert p.check("news.a.example", ("*.a.example",), "From: header") is None
    # development: verification not required, scopes still are
    assert policy(False).check("pending.example", None, "MAIL FROM") is None
    assert policy(False).check("b.example", ("a.example",), "MAIL FROM") is not None


def test_credential_scopes_are_stored_and_validated(tmp_path):
    store = CredentialStore(tmp_path / "c.json")
    store.add("app", "pw-long-enough", domains=["A.Example", "*.b.example"])
    assert store.domains("app") == ("a.example", "*.b.example")
    store.passwd("app", "another-password")
    assert store.domains("app") == ("a.example", "*.b.example")  # kept across passwd
    store.add("free", "pw-long-enough")
    assert store.domains("free") is None
    with pytest.raises(CredentialError):
        store.add("bad", "pw-long-enough", domains=["not a domain"])


@pytest.fixture
async def listener(tmp_path, server_tls):
    creds = CredentialStore(tmp_path / "credentials.json")
    creds.add("scoped", "scoped-password", domains=["a.example"])
    creds.add("free", "free-password")
    signed: list[tuple[str, bytes]] = []

    class FakeSigner:   # keys only for a.example, like a DomainCache with one domain
        def keys_for(self, domain):
            return ["key"] if domain == "a.example" else []

        def sign(self, body: bytes, domain: str) -> bytes:
            signed.append((domain, body))
            return b"DKIM-Signature: v=1; d=" + domain.encode() + b"; test\r\n" + body

    signer = FakeSigner()

    spool = FakeSpool()
    lst = SubmissionListener(ListenerConfig(address="127.0.0.1:0"), hostname="mx.test",
                             spool=spool, credentials=creds, tls_context=server_tls,
                             clock=FakeClock(), message_factory=_message_factory(),
                             sender_policy=policy(), signer=signer)
    await lst.start()
    yield lst, spool, signed
    await lst.stop(grace=0.1)


async def login(lst, client_tls, user, password):
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    assert (await c.auth_plain(user, password))[0] == 235
    return c


async def test_scoped_credential_sends_for_its_domain_and_is_signed(listener, client_tls):
    lst, spool, signed = listener
    c = await login(lst, client_tls, "scoped", "scoped-password")
    code, line = await c.mail(sender="app@a.example",
                              content=b"From: App <app@a.example>\r\nSubject: ok\r\n\r\nhi\r\n.\r\n")
    assert code == 250, line
    assert [d for d, _ in signed] == ["a.example"]
    assert spool.messages[0][1].body.startswith(b"DKIM-Signature: v=1; d=a.example")


async def test_other_domain_in_mail_from_is_refused(listener, client_tls):
    lst, spool, _ = listener
    c = await login(lst, client_tls, "scoped", "scoped-password")
    code, line = await c.cmd("MAIL FROM:<app@b.example>")
    assert line.startswith("550 5.7.1") and "b.example" in line and "not allowed" in line
    assert spool.messages == []


async def test_other_domain_in_from_header_is_refused(listener, client_tls):
    lst, spool, signed = listener
    c = await login(lst, client_tls, "scoped", "scoped-password")
    code, line = await c.mail(sender="app@a.example",
                              content=b"From: Boss <ceo@b.example>\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert line.startswith("550 5.7.1") and "b.example" in line and "From: header" in line
    assert spool.messages == [] and signed == []
    code, line = await c.mail(sender="app@a.example",
                              content=b"Subject: no from\r\n\r\nhi\r\n.\r\n")
    assert line.startswith("550 5.7.1") and "From:" in line


def test_never_added_and_not_yet_verified_get_different_commands():
    """Issue 10 item 17: `mta domain check D` for a domain never added fails
    with "no such domain"; the reply must say `mta domain add D` then, and
    `check` (of the domain that was added) only for a pending or failed one."""
    p = policy()
    never = p.check("never.example", None, "MAIL FROM")
    assert str(never) == ("550 5.7.1 Sender domain never.example (MAIL FROM) is not set up "
                          "(never added): run `mta domain add never.example`")
    for dom in ("pending.example", "failed.example"):
        r = p.check(dom, None, "From: header")
        state = dom.split(".")[0]
        assert str(r) == (f"550 5.7.1 Sender domain {dom} (From: header) is {state}, not "
                          f"verified: publish the DNS records of {dom} and run "
                          f"`mta domain check {dom}`")
    # a subdomain of a pending domain: check the domain that was added
    r = p.check("news.pending.example", None, "MAIL FROM")
    assert "is pending" in r.text and r.text.endswith("`mta domain check pending.example`")
    # a subdomain of nothing added: add the sender's domain itself
    r = p.check("news.never.example", None, "MAIL FROM")
    assert r.text.endswith("`mta domain add news.never.example`")
    assert p.registration("news.a.example") == ("a.example", "verified")
    assert p.registration("never.example") is None


async def test_unverified_domain_names_the_command(listener, client_tls):
    lst, spool, _ = listener
    c = await login(lst, client_tls, "free", "free-password")
    code, line = await c.cmd("MAIL FROM:<app@pending.example>")
    assert line.startswith("550 5.7.1") and "mta domain check pending.example" in line
    code, line = await c.cmd("RSET")
    code, line = await c.cmd("MAIL FROM:<app@never.example>")
    assert line.startswith("550 5.7.1") and "mta domain add never.example" in line, line
    code, line = await c.cmd("RSET")
    code, line = await c.mail(sender="app@b.example",
                              content=b"From: app@b.example\r\n\r\nhi\r\n.\r\n")
    assert code == 250, line   # unscoped credential, verified domain
