"""The console's Domains pages (issue 18) over HTTP against a real daemon:
a domain added from the page lists its records with failing statuses and
the reasons, the test DNS server (127.0.0.171) then serves them and "Check
now" turns every record verified (the daemon's sender policy follows);
rotation state; delete behind a confirmation; tenants see and act on their
own domains only (404 for another's); hostile names are 422 and CSRF-less
posts 403, with nothing made."""

from __future__ import annotations

import html
import re

import aiohttp
import pytest

from mta.api.keys import StoreKeys
from mta.domains.records import zone_text
from mta.runtime.console_domains import key_text
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.console import console_client
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.test_domains import MultiStringDns, parse_zone

TOKEN = "test-admin-token-0123456789"


async def tenant_key(d, tenant: str, name: str) -> str:
    """A full-access API key of `tenant` (made if new)."""
    if tenant != "default" and await d.tenants.show(tenant) is None:
        await d.tenants.add(tenant, {}, {})
    _, token = StoreKeys(SqliteApiKeys(str(d.cfg.server.state_dir))).create(
        name, now=d.clock.now())
    if tenant != "default":
        await d.tenants.own("credential", f"api:{name}", tenant)
    return token


@pytest.fixture
async def world(tmp_path, monkeypatch):
    dns = MultiStringDns({}, host="127.0.0.171", ttl=1).start()
    try:
        text = config_text(tmp_path / "state", free_port(), nameservers=[dns.nameserver],
                           public_ips=["127.0.0.9"])
        async with running_daemon(text) as d:
            d.dns = dns
            yield d
    finally:
        dns.stop()


def statuses(page: str) -> dict[int, str]:
    """Record number -> its status badge's text, from a domain page."""
    return {int(n): s for n, s in re.findall(r'id="rec-(\d+)-status">([^<]*)<', page)}


def serve(d, name: str) -> None:
    d.dns.zone.update(parse_zone(zone_text(d.domains.service.plan(name))))


async def test_add_shows_failing_records_then_check_now_verifies(world):
    d = world
    async with console_client(d.admin.url, TOKEN) as c:
        status, page = await c.get("/domains")
        assert status == 200 and 'id="domains"' in page and "No sending domains yet" in page
        status, _, location = await c.post("/domains", {"name": "Brand.TEST", "tenant": "default"})
        assert (status, location) == (303, "/console/domains/brand.test")
        status, page = await c.get("/domains/brand.test")
        assert status == 200 and "Domain brand.test added." in page
        # The first check ran: every record is there, none right yet, each says why.
        st = statuses(page)
        assert len(st) == 6 and set(st.values()) == {"pending"}, st   # 2 DKIM, 2 SPF, DMARC, MX
        assert 'id="domain-status">pending' in page
        reasons = dict(re.findall(r'id="rec-(\d+)-reason">([^<]*)<', page))
        assert len(reasons) == 6
        assert any("no TXT record at mta" in r for r in reasons.values()), reasons
        assert any("no SPF record" in html.unescape(r) for r in reasons.values()), reasons
        # Each value is shown exactly as the plan says, with a copy button.
        plan = d.domains.service.plan("brand.test")
        values = {int(n): html.unescape(v) for n, v in
                  re.findall(r'<code id="rec-(\d+)-value">([^<]*)</code>', page)}
        dkim = [r.value for r in plan.records() if r.purpose == "dkim"]
        assert set(dkim) <= set(values.values())
        for n in values:
            assert f'data-copy="rec-{n}-value"' in page and f'data-copy="rec-{n}-name"' in page
        assert d.domains.state("brand.test") == "pending"
        # The DNS server now serves them; "Check now" turns every record green.
        serve(d, "brand.test")
        status, _, location = await c.post("/domains/brand.test/check")
        assert (status, location) == (303, "/console/domains/brand.test")
        status, page = await c.get("/domains/brand.test")
        assert set(statuses(page).values()) == {"verified"}, statuses(page)
        assert 'id="domain-status">verified' in page and "every required record is right" in page
        assert 'id="rec-1-reason"' not in page
        assert d.domains.state("brand.test") == "verified"     # the sender policy follows
        status, page = await c.get("/domains")
        row = re.search(r'<tr id="domain-brand.test">.*?</tr>', page, re.S).group(0)
        assert "verified" in row and ">default<" in row and "mta" in row


async def test_check_now_reports_what_breaks(world):
    d = world
    async with console_client(d.admin.url, TOKEN) as c:
        await c.post("/domains", {"name": "half.test"})
        serve(d, "half.test")
        del d.dns.zone["_dmarc.half.test"]
        status, _, _ = await c.post("/domains/half.test/check")
        status, page = await c.get("/domains/half.test")
        assert "1 record not right yet" in page
        st = statuses(page)
        assert sorted(st.values()).count("verified") == 5, st
        (bad,) = [n for n, s in st.items() if s != "verified"]
        reason = re.search(rf'id="rec-{bad}-reason">([^<]*)<', page).group(1)
        assert "missing: no TXT record at _dmarc.half.test" in html.unescape(reason)
        assert 'id="domain-reason"' not in page     # the records say it, one by one


async def test_rotation_state(world):
    d = world
    async with console_client(d.admin.url, TOKEN) as c:
        await c.post("/domains", {"name": "rot.test"})
        serve(d, "rot.test")
        await c.post("/domains/rot.test/check")
        _, page = await c.get("/domains/rot.test")
        rotation = re.search(r'<section class="card" id="rotation">.*?</section>', page, re.S)
        text = rotation.group(0)
        assert "No rotation in progress" in text and "mta domain rotate rot.test" in text
        assert "RSA 2048 bits" in text and "Ed25519" in text and "7d 0h" in text
        svc = d.domains.service
        old = {s.selector for s in svc.get("rot.test").selectors}
        svc.rotate("rot.test", selector="next")
        _, page = await c.get("/domains/rot.test")
        assert "Rotation in progress" in page and "<code>next</code>" in page
        assert len(statuses(page)) == 8                     # the new keys' records too
        serve(d, "rot.test")
        await c.post("/domains/rot.test/check")
        _, page = await c.get("/domains/rot.test")
        state = re.search(r'id="rotation-state">(.*?)</p>', page, re.S).group(1)
        assert "Rotated: the previous keys" in state
        assert all(f"<code>{s}</code>" in state for s in old)


def test_key_text():
    from mta.mail.dkim import generate_key
    assert key_text("rsa-sha256", generate_key("rsa-sha256")[1]) == "RSA 2048 bits"
    assert key_text("ed25519-sha256", "v=DKIM1; k=ed25519; p=xx") == "Ed25519 (256 bits)"
    assert key_text("rsa-sha256", "v=DKIM1; k=rsa; p=!!") == "RSA"
    assert key_text("rsa-sha256", "garbage") == "RSA"


async def test_delete_behind_a_confirmation(world):
    d = world
    async with console_client(d.admin.url, TOKEN) as c:
        await c.post("/domains", {"name": "gone.test", "tenant": "default"})
        assert SqliteTenants(d.cfg.server.state_dir).owner("domain", "gone.test") == "default"
        _, page = await c.get("/domains/gone.test")
        assert 'id="delete" href="/console/domains/gone.test/confirm-delete"' in page
        status, page = await c.get("/domains/gone.test/confirm-delete")
        assert status == 200 and 'id="confirm-delete"' in page
        assert 'action="/console/domains/gone.test/delete"' in page
        assert d.domains.service.store.get("gone.test") is not None   # asking changes nothing
        status, _, location = await c.post("/domains/gone.test/delete")
        assert (status, location) == (303, "/console/domains")
        assert d.domains.service.store.get("gone.test") is None
        assert d.domains.state("gone.test") is None
        assert ("domain", "gone.test") not in SqliteTenants(d.cfg.server.state_dir).ownership()
        for path in ("/domains/gone.test", "/domains/gone.test/confirm-delete"):
            assert (await c.get(path))[0] == 404
        assert (await c.post("/domains/gone.test/delete"))[0] == 404


async def test_tenants_see_and_change_only_their_own(world):
    d = world
    acme = await tenant_key(d, "acme", "acme-admin")
    beta = await tenant_key(d, "beta", "beta-admin")
    owners = SqliteTenants(d.cfg.server.state_dir)
    async with console_client(d.admin.url, acme) as a, console_client(d.admin.url, beta) as b, \
            console_client(d.admin.url, TOKEN) as op:
        _, page = await a.get("/domains")
        assert 'id="domain-tenant"' not in page and ">Tenant<" not in page   # no choice
        status, _, location = await a.post("/domains", {"name": "acme.test"})
        assert (status, location) == (303, "/console/domains/acme.test")
        assert owners.owner("domain", "acme.test") == "acme"
        # acme may not add for another tenant; beta not under acme's name
        status, _, _ = await a.post("/domains", {"name": "x.test", "tenant": "beta"})
        assert status == 404 and d.domains.service.store.get("x.test") is None
        status, body, _ = await b.post("/domains", {"name": "mail.acme.test"})
        assert status == 409 and "belongs to another tenant" in body
        assert d.domains.service.store.get("mail.acme.test") is None
        await b.post("/domains", {"name": "beta.test"})
        _, page = await b.get("/domains")
        assert "beta.test" in page and "acme.test" not in page
        for path in ("/domains/acme.test", "/domains/acme.test/confirm-delete"):
            assert (await b.get(path))[0] == 404, path
        for path in ("/domains/acme.test/check", "/domains/acme.test/delete"):
            assert (await b.post(path))[0] == 404, path
        assert d.domains.service.store.get("acme.test") is not None
        assert d.domains.service.get("acme.test").last_checked is not None   # acme's own check
        # the operator sees both, with their tenants, and adds for a tenant
        _, page = await op.get("/domains")
        assert re.search(r'id="domain-acme.test">.*?>acme<', page, re.S)
        assert re.search(r'id="domain-beta.test">.*?>beta<', page, re.S)
        assert '<option value="acme">acme</option>' in page
        status, _, _ = await op.post("/domains", {"name": "ops.acme.test", "tenant": "acme"})
        assert status == 303 and owners.owner("domain", "ops.acme.test") == "acme"
        _, page = await a.get("/domains")
        assert "ops.acme.test" in page
        status, body, _ = await op.post("/domains", {"name": "ghost.test", "tenant": "ghost"})
        assert status == 422 and "tenant: no such tenant" in body
        assert d.domains.service.store.get("ghost.test") is None


@pytest.mark.parametrize("name", [
    "", "not a domain", "localhost", "a" * 300, "x\x00y.test", "x\r\ny.test", "[127.0.0.1]",
    "../etc/passwd", "<script>.test", "-bad-.test", "a..b.test", "é" * 80 + ".test"])
async def test_hostile_names_are_refused(world, name):
    d = world
    async with console_client(d.admin.url, TOKEN) as c:
        status, body, _ = await c.post("/domains", {"name": name})
        assert status == 422, (name, status)
        assert 'id="error-message">name:' in body
        assert d.domains.service.list() == []


async def test_hostile_paths_tenants_and_csrf(world):
    d = world
    async with console_client(d.admin.url, TOKEN) as c:
        for path in ("/domains/%00", "/domains/nothere.test", "/domains/%3Cscript%3E",
                     "/domains/" + "a" * 300, "/domains/x..y/confirm-delete",
                     "/domains/%C3%A9%C3%A9"):
            status, body = await c.get(path)
            assert status == 404 and "<script>" not in body, path
        for tenant in ("x\x00", "a" * 100, "Bad Name"):
            status, _, _ = await c.post("/domains", {"name": "ok.test", "tenant": tenant})
            assert status == 422, tenant
        wrong = aiohttp.FormData()                  # a file where text belongs
        wrong.add_field("name", b"ok.test", filename="name.txt")
        assert (await c.post("/domains", wrong))[0] == 422
        status, _, _ = await c.post("/domains", {"name": "ok.test"}, csrf=None)
        assert status == 403
        status, _, _ = await c.post("/domains", {"name": "ok.test"}, csrf="forged")
        assert status == 403
        assert d.domains.service.list() == []
        await c.post("/domains", {"name": "kept.test"})
        for path in ("/domains/kept.test/delete", "/domains/kept.test/check"):
            assert (await c.post(path, csrf=None))[0] == 403
        assert d.domains.service.store.get("kept.test") is not None
