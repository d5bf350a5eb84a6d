"""The console in a real browser: Debian's headless Chromium driven by
Selenium (tests/support/browser.py) against a real daemon with a sink and a
DNS server on 127.0.0.x. Each flow the issue names — log in, follow a
message to delivery on the live timeline without reload, add a domain and
watch its records turn green once DNS serves them, suppress and unsuppress,
hold and release, log out — runs as a person would click it; CSRF-less POSTs
and a tenant reading another tenant's message are refused. Every page is
photographed into tests/artifacts/console/ (desktop and phone widths)."""

from __future__ import annotations

import math
import random

import aiosmtplib
import pytest

from mta.api.keys import StoreKeys
from mta.core import LedgerEvent
from mta.spool.apikeys import SqliteApiKeys
from tests.support.browser import browser, missing
from mta.server.credentials import CredentialStore
from mta.spool.templates import SqliteTemplates
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from mta.domains.records import zone_text
from tests.test_domains import MultiStringDns, parse_zone

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

TOKEN = "test-admin-token-0123456789"
PASSWORD = "app-password-1"


@pytest.fixture
async def world(tmp_path):
    dns = MultiStringDns({}, host="127.0.0.157", ttl=1).start()
    try:
        async with Sink() as sink:
            port = free_port()
            state = tmp_path / "state"
            state.mkdir()
            CredentialStore(state / "credentials.json").add("app", PASSWORD)
            text = config_text(tmp_path / "state", port, nameservers=[dns.nameserver],
                               routes={"*": f"127.0.0.1:{sink.address[1]}"},
                               public_ips=["127.0.0.9"])
            async with running_daemon(text) as d:
                d.port = port
                d.console = d.admin.url + "/console"
                d.dest = f"[127.0.0.1]:{sink.address[1]}"
                yield d, sink, dns
    finally:
        dns.stop()


async def tenant_key(d, tenant: str, name: str) -> str:
    if await d.tenants.show(tenant) is None:
        await d.tenants.add(tenant, {}, {})
    _, token = StoreKeys(SqliteApiKeys(str(d.cfg.server.state_dir))).create(
        name, now=d.clock.now())
    await d.tenants.own("credential", f"api:{name}", tenant)
    return token


async def login(b, d, token: str = TOKEN) -> None:
    await b.get(d.console + "/login")
    await b.type("#token", token)
    await b.click("#login")
    await b.wait(lambda: "/login" not in b.driver.current_url, what="leaving the login page")


async def test_login_logout_and_refusals(world):
    d, sink, dns = world
    async with browser() as b:
        await b.get(d.console + "/")
        assert "/console/login" in b.url
        await b.shot("login")
        await b.type("#token", "not-the-token")
        await b.click("#login")
        await b.wait_text("#login-error", "not valid")
        await login(b, d)
        assert await b.text("#viewer") == "operator"
        # A POST without the CSRF field, sent by script from the page itself
        # with the session cookie, is refused and changes nothing.
        status = await b.js("""
            const r = await fetch('/console/logout', {method: 'POST',
                body: new URLSearchParams({}), credentials: 'same-origin'});
            return r.status;""")
        assert status == 403
        await b.get(d.console + "/login")
        assert await b.text("#viewer") == "operator"      # still logged in
        await b.click("#logout")
        await b.wait(lambda: "/console/login" in b.driver.current_url, what="the login page")
        await b.get(d.console + "/")
        assert "/console/login" in b.url                  # the session ended


async def submit(d, rcpt: str, subject: str = "hello") -> str:
    data = (f"From: app@sender.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
            "Hi there.\r\n").encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login("app", PASSWORD)
        _, resp = await c.sendmail("app@sender.test", [rcpt], data)
    return resp.split()[-1]


async def act(b, action: str) -> None:
    """Click an action on a message page, then confirm it."""
    await b.click(f"#action-{action}")
    await b.wait(lambda: "/confirm" in b.driver.current_url, what=f"the {action} confirmation")
    await b.shot(f"message-confirm-{action}")
    await b.click("#confirm-button")
    await b.wait(lambda: "/confirm" not in b.driver.current_url, what=f"{action} done")


async def test_follow_a_message_to_delivery_live_and_hold_release(world):
    d, sink, dns = world
    # The destination is suspended: the message waits in the queue.
    await d.admin.backend.destination_action(d.dest, "suspend")
    qid = await submit(d, "reader@rcpt.test", subject="live timeline")
    async with browser() as b:
        await login(b, d)
        await b.get(d.console + "/messages?recipient=reader@rcpt.test")
        await b.wait_text("#messages", qid)
        await b.shot("messages")
        await b.click(f"#msg-{qid} a")
        await b.wait(lambda: f"/messages/{qid}" in b.driver.current_url, what="the message page")
        assert await b.text("#rcpt-state-0") == "queued"
        await b.wait_text("#timeline", "received")
        # Hold, then release, each behind its confirmation page.
        await act(b, "hold")
        await b.wait_text("#envelope", "held")
        assert [r.state for r in (await d.spool.get_message(qid)).recipients] == ["held"]
        await act(b, "release")
        assert [r.state for r in (await d.spool.get_message(qid)).recipients] == ["queued"]
        # Now watch it go out without reloading the page.
        await b.wait(lambda: b.driver.find_element("id", "timeline").get_attribute("data-live")
                     == "open", what="the live stream")
        await b.js("window.__sameDocument = 'yes';")
        await d.admin.backend.destination_action(d.dest, "resume")
        await b.wait_text("#timeline", "delivered", timeout=30)
        await b.wait_text("#rcpt-state-0", "delivered")
        assert await b.js("return window.__sameDocument;") == "yes"    # no reload happened
        cls = await b.js("return document.getElementById('rcpt-state-0').className;")
        assert cls == "badge delivered"
        await b.wait_text("#message-status", "finished")        # the stream's end says so
        await b.shot("message")
        await b.shot("message-phone", width=390)
    (m,) = await sink.wait_for(1)
    assert b"live timeline" in m.data


async def test_a_tenant_cannot_read_another_tenants_message(world):
    d, sink, dns = world
    qid = await submit(d, "private@rcpt.test")        # the default tenant's mail
    token = await tenant_key(d, "acme", "acme-admin")
    async with browser() as b:
        await login(b, d, token)
        assert "acme" in await b.text("#viewer")
        await b.get(d.console + f"/messages/{qid}")
        assert await b.text("h1") == "404"
        await b.get(d.console + "/messages?recipient=private@rcpt.test&state=all")
        assert qid not in await b.page_source()
        await b.get(d.console + "/destinations")           # operator only
        assert await b.text("h1") == "404"


async def record_statuses(b) -> list[str]:
    return [await b.call(lambda e=e: e.text) for e in await b.finds("#records [id$='-status']")]


async def test_add_a_domain_and_watch_its_records_turn_green(world):
    d, sink, dns = world
    async with browser() as b:
        await login(b, d)
        await b.get(d.console + "/domains")
        await b.type("#domain-name", "brand.test")
        await b.click("#add-domain-submit")
        await b.wait(lambda: b.driver.current_url.endswith("/domains/brand.test"),
                     what="the domain page")
        statuses = await record_statuses(b)
        assert len(statuses) >= 5 and set(statuses) == {"pending"}, statuses
        assert await b.finds("#records .reason")               # each says why
        # The copy button puts the DKIM value where the user can paste it.
        copy = "#records button[data-copy$='-value']"
        await b.click(copy)
        await b.wait(lambda: b.driver.find_element("css selector", copy).get_attribute(
            "data-copied") or b.driver.execute_script("return String(window.getSelection())"),
            what="the copy button's effect")
        await b.shot("domain-failing")
        # The test DNS server now serves every record; "Check now" turns them green.
        dns.zone.update(parse_zone(zone_text(d.domains.service.plan("brand.test"))))
        await b.click("#check-now")
        await b.wait_text("#domain-status", "verified")
        assert set(await record_statuses(b)) == {"verified"}
        green = await b.js("return getComputedStyle(document.querySelector("
                           "'#records .badge')).color;")
        assert green == "rgb(31, 122, 63)"                       # the ok colour, not amber
        await b.shot("domain")
        await b.get(d.console + "/domains")
        await b.wait_text("#domain-brand\\.test", "verified")
        await b.shot("domains")
    assert d.domains.state("brand.test") == "verified"


async def test_suppress_and_unsuppress_an_address(world):
    d, sink, dns = world
    async with browser() as b:
        await login(b, d)
        await b.get(d.console + "/suppressions")
        await b.type("#add-address", "gone@rcpt.test")
        await b.click("#add-submit")
        await b.wait_text("#suppressions", "gone@rcpt.test")
        await b.shot("suppressions")
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await submit(d, "gone@rcpt.test")
        await b.click("#suppressions a.remove")
        await b.wait(lambda: "/suppressions/remove" in b.driver.current_url, what="remove form")
        await b.type("#remove-note", "asked to be mailed again")
        await b.shot("suppressions-remove")
        await b.click("#remove-confirm")
        await b.wait(lambda: "/suppressions/remove" not in b.driver.current_url,
                     what="back to the list")
        assert "gone@rcpt.test" not in await b.text("#suppressions")
    await submit(d, "gone@rcpt.test")                     # accepted again
    await sink.wait_for(1)


# Every element a person fills in must have a name a screen reader reads:
# a <label> around it or pointing at it, or aria-label / aria-labelledby.
UNLABELLED = """
return Array.from(document.querySelectorAll(
        'input:not([type=hidden]):not([type=submit]), select, textarea'))
    .filter(e => !(e.closest('label') || (e.id && document.querySelector(
        'label[for="' + e.id + '"]')) || e.getAttribute('aria-label')
        || e.getAttribute('aria-labelledby')))
    .map(e => e.name || e.id);"""


async def furnish(d, sink) -> dict[str, str]:
    """Something on every page: delivered and waiting mail, a tenant with a
    key, a template with a published version, a suppressed address."""
    for i in range(3):
        await submit(d, f"reader{i}@rcpt.test", subject=f"hello {i}")
    await sink.wait_for(3)
    await d.admin.backend.destination_action(d.dest, "suspend")
    waiting = await submit(d, "later@rcpt.test", subject="waiting")
    await tenant_key(d, "acme", "acme-admin")
    # A day of history for the charts (ledger events as delivery writes them).
    rng, now, history = random.Random(18), d.clock.now(), []
    for minute in range(1, 24 * 60, 7):
        at = now - minute * 60
        busy = 3 + int(4 * (1 + math.sin(minute / 180)))
        # (no bounces or complaints: the reputation tracker would pause the
        # default tenant, holding the mail this test looks at)
        for kind, n in (("queued", busy), ("delivered", busy - rng.randint(0, 2)),
                        ("deferred", rng.randint(0, 2))):
            history += [LedgerEvent(kind, at + i, "", f"h{i}@rcpt.test") for i in range(n)]
    await d.spool.ledger.append_events(history)
    store = SqliteTemplates(d.cfg.server.state_dir)
    tpl = store.create("default", {"name": "Welcome", "subject": "Hi {{name}}",
                                   "html": "<p>Hello <b>{{name}}</b></p>",
                                   "variables": [{"key": "name", "type": "string"}]},
                       d.clock.now()).id
    store.publish("default", tpl, d.clock.now())
    return {"message": waiting, "template": tpl}


async def test_every_page_renders_labelled_at_desktop_and_phone_width(world):
    d, sink, dns = world
    made = await furnish(d, sink)
    async with browser() as b:
        await login(b, d)
        links = await b.js("return Array.from(document.querySelectorAll('header nav a'))"
                           ".map(a => [a.textContent.trim(), a.getAttribute('href')]);")
        labels = [label for label, _ in links]
        assert labels == ["Overview", "Messages", "Domains", "Suppressions", "Webhooks",
                          "Destinations", "Tenants", "API keys", "Templates"]
        pages = [(label.lower().replace(" ", "-"), href) for label, href in links]
        pages += [("template", f"/console/templates/{made['template']}"),
                  ("tenant", "/console/tenants/acme")]
        for name, href in pages:
            await b.get(d.admin.url + href)
            h1 = await b.text("h1")
            assert h1 and h1 != "500" and h1 != "404", (name, h1)
            assert await b.js(UNLABELLED) == [], name
            # Nothing wider than a phone's screen but what scrolls on purpose.
            assert await b.overflow_at(390) <= 0, name
            await b.shot(name)
            await b.shot(f"{name}-phone", width=390)
        # (the width check does see a page that is too wide)
        await b.js("const wide = document.createElement('div');"
                   "wide.style.width = '2000px'; wide.style.height = '1px';"
                   "document.body.appendChild(wide);")
        assert await b.overflow_at(390) > 0
        await b.get(d.console + "/")
        await b.wait_text("#deferrals", "127.0.0.1")        # the suspended destination waits
        assert int(await b.text("#stat-queued")) >= 1
        svg = await b.find("#chart-hour-svg")
        assert await b.call(lambda: svg.tag_name) == "svg"
        # A template previewed with variables: escaped, in a sandboxed frame.
        await b.get(d.console + f"/templates/{made['template']}")
        await b.type("#preview-form textarea", '{"name": "Ann <b>"}')
        await b.click("#preview-form button[type=submit]")
        await b.wait_text("#preview-subject", "Hi Ann <b>")
        assert "&lt;b&gt;" in await b.text("#preview-html")     # the html, escaped once
        await b.shot("template-preview")
        # An API key made here is shown once, on the answer to the POST.
        await b.get(d.console + "/keys")
        await b.type("#key-name", "from-the-console")
        await b.click("#create-key button[type=submit]")
        await b.wait_text("h1", "")
        token = await b.text("#new-key")
        assert token.startswith("mta_live_")
        await b.shot("key-created")
        await b.get(d.console + "/keys")
        assert token not in await b.page_source()


async def test_read_pages_work_without_javascript(world):
    d, sink, dns = world
    made = await furnish(d, sink)
    async with browser(javascript=False) as b:
        await login(b, d)
        for path, element in [("/", "#chart-day-svg"), ("/messages?state=all", "#messages"),
                              (f"/messages/{made['message']}", "#timeline"),
                              ("/destinations", "#queue"), ("/suppressions", "#suppressions"),
                              ("/domains", "#domains"), ("/keys", "#keys"),
                              ("/templates", "#templates"), ("/tenants", "#tenants"),
                              ("/webhooks", "h1")]:
            await b.get(d.console + path)
            assert await b.finds(element), path
        await b.get(d.console + f"/messages/{made['message']}")
        assert "later@rcpt.test" in await b.text("#recipients")
        # console.js marks a live table when it runs: here it never did.
        timeline = await b.find("#timeline")
        assert await b.call(timeline.get_attribute, "data-live") is None
        await b.shot("message-no-javascript")
