"""The console's Messages pages (issue 18) against a real in-process daemon:
SMTP submissions over loopback, a scripted sink as every recipient's MX,
the real spool index and ledger, and a logged-in aiohttp client.

- search by recipient (address or domain), sender, id, tenant, state and
  received time, newest first, with cursor pages;
- the message page: envelope, recipients, decoded header fields (never the
  body), attempts with their TLS, the ledger timeline;
- the live timeline: a held message released while its stream is open
  gets its new rows and recipient states, then "end";
- hold / release / retry / bounce / delete through the confirmation page
  and its POST; refusals as notices; POSTs without CSRF change nothing;
- a tenant's session never sees or acts on another tenant's message;
- hostile query values are 400/404 pages, never a 500;
- units: the query and time parsing, header fields, timeline summaries,
  the spool's received-time bounds and newest-first pages (with plans).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import json
import re
import sqlite3
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import aiosmtplib
import pytest

from mta.admin.backend import MESSAGE_ACTIONS, MESSAGE_STATES
from mta.api.keys import StoreKeys
from mta.console import pages_messages_live
from mta.console.backend import ConsoleError, Viewer
from mta.console.pages_messages import ACTIONS, STATES, parse_query, parse_time
from mta.console.pages_messages_live import event_summary, sse
from mta.runtime.console_messages import header_fields
from mta.server.credentials import CredentialStore
from mta.spool import MessageFilter, NewMessage, Spool, filters
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.console import console_client, csrf_of
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink

TOKEN = "test-admin-token-0123456789"
PASSWORD = "app-password-1"
OPERATOR = Viewer(None, "operator")
ACME = Viewer("acme", "acme (key acme-admin)")


class World:
    def __init__(self, d, sink, acme_key: str):
        self.d, self.sink, self.acme_key = d, sink, acme_key
        self.dest = f"[127.0.0.1]:{sink.address[1]}"

    async def submit(self, rcpts, *, user="app", sender="app@sender.test", headers="",
                     body="hello\r\n") -> str:
        data = (f"From: {sender}\r\nTo: {rcpts[0]}\r\n{headers}\r\n{body}").encode()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.d.port, start_tls=True,
                                   tls_context=no_verify_context()) as c:
            await c.login(user, PASSWORD)
            _, resp = await c.sendmail(sender, rcpts, data)
        return resp.split()[-1]

    async def destination(self, action: str) -> None:
        await self.d.admin.backend.destination_action(self.dest, action)

    async def states(self, qid: str) -> list[str]:
        view = await self.d.spool.get_message(qid)
        return [r.state for r in view.recipients]


@pytest.fixture
async def world(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    creds, tenants = CredentialStore(state / "credentials.json"), SqliteTenants(state)
    for user in ("app", "acme-app", "beta-app"):
        creds.add(user, PASSWORD)
    for t in ("acme", "beta"):
        tenants.add(t, limits={}, policy={}, now=now)
        tenants.own("credential", f"{t}-app", t, now)
        tenants.own("domain", f"{t}.test", t, now)
    made, acme_key = StoreKeys(SqliteApiKeys(str(state))).create("acme-admin", now=now)
    tenants.own("credential", made.credential, "acme", now)
    async with Sink() as sink:
        port = free_port()
        text = config_text(state, port, retry="1h",
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        async with running_daemon(text) as d:
            d.port = port
            yield World(d, sink, acme_key)


async def until(cond, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while True:
        got = await cond()
        if got:
            return got
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def session(w: World, token: str = TOKEN):
    """A console client logged in with `token` (its CSRF token read from
    the Messages page: the console's home may redirect)."""
    async with console_client(w.d.admin.url, login=False) as c:
        async with c.http.get(c.base + "/console/login") as r:
            pre = csrf_of(await r.text())
        async with c.http.post(c.base + "/console/login", data={"token": token, "_csrf": pre},
                               allow_redirects=False) as r:
            assert r.status == 303, r.status
        status, page = await c.get("/messages")
        assert status == 200, page
        c.csrf = csrf_of(page)
        yield c


def ids_in(page: str) -> list[str]:
    """The queue ids of the #messages rows, in page order."""
    table = page.split('id="messages"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr id="msg-([0-9A-Z]+)"', table)


def link(page: str, element: str) -> str | None:
    found = re.search(rf'href="([^"]*)" id="{element}"', page)
    return html.unescape(found.group(1)).removeprefix("/console") if found else None



# -- search ---------------------------------------------------------------------------------

async def test_search_by_each_field_and_pages(world):
    w = world
    await w.destination("suspend")                      # nothing leaves: all stay queued
    one = await w.submit(["ok-1@a.test"])
    many = await w.submit([f"ok-{i}@b.test" for i in range(5)], sender="Other@sender.test")
    acme = await w.submit(["ok@c.test"], user="acme-app", sender="app@acme.test")
    async with session(w) as c:
        status, page = await c.get("/messages")
        assert status == 200 and ids_in(page) == [acme, many, one]       # newest first
        row = page.split(f'id="msg-{many}"', 1)[1].split("</tr>", 1)[0]
        assert "ok-0@b.test, ok-1@b.test, ok-2@b.test" in row and "+2" in row
        assert 'class="badge queued">queued 5' in row and ">default<" in row
        assert '<option value="acme">' in page                 # the operator's tenant choice
        for query, expected in [
                ("recipient=ok-1@a.test", [one]), ("recipient=OK-1@A.TEST", []),
                ("recipient=ok-1@A.test", [one]), ("recipient=b.test", [many]),
                ("recipient=%40B.TEST", [many]), ("recipient=nobody@a.test", []),
                ("sender=other@sender.test", [many]), ("sender=app@sender.test", [one]),
                ("sender=%3C%3E", []), (f"id={one.lower()}", [one]), ("id=0000", []),
                ("tenant=acme", [acme]), ("tenant=default", [many, one]), ("tenant=beta", []),
                ("state=queued", [acme, many, one]), ("state=active", [acme, many, one]),
                ("state=delivered", []), ("state=held", []),
                ("from=1h", [acme, many, one]), ("to=1h", []),
                ("from=2000-01-01", [acme, many, one]),
                ("from=2000-01-01&to=2000-01-02T00:00", []), ("from=2999-01-01", []),
                ("tenant=default&recipient=b.test&sender=other@sender.test&state=queued"
                 "&from=1d&to=2999-12-31", [many])]:
            status, page = await c.get("/messages?" + query)
            assert status == 200, (query, page)
            assert ids_in(page) == expected, query
        # received-time bounds around one message (seconds, UTC, what datetime-local sends)
        received = (await w.d.spool.get_message(many)).received_at
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(received)))
        _, page = await c.get(f"/messages?to={stamp}")
        assert many not in ids_in(page) and acme not in ids_in(page)
        _, page = await c.get(f"/messages?from={stamp}")
        assert many in ids_in(page) and acme in ids_in(page)
        # held: after a hold, only that one
        assert (await c.post(f"/messages/{one}/hold"))[0] == 303
        _, page = await c.get("/messages?state=held")
        assert ids_in(page) == [one]
        # pages of one, following "Next page" (the query is kept), then "First page"
        seen, path = [], "/messages?limit=1&state=all&tenant=default"
        while path:
            status, page = await c.get(path)
            assert status == 200
            seen += ids_in(page)
            path = link(page, "next-page")
            if seen[1:]:
                first = urlsplit(link(page, "first-page"))
                assert first.path == "/messages"
                assert parse_qs(first.query) == {"limit": ["1"], "state": ["all"],
                                                 "tenant": ["default"]}
        assert seen == [many, one]


async def test_a_tenant_searches_its_own_messages_only(world):
    w = world
    await w.destination("suspend")
    mine = await w.submit(["ok@c.test"], user="acme-app", sender="app@acme.test")
    theirs = await w.submit(["ok@d.test"], user="beta-app", sender="app@beta.test")
    default = await w.submit(["ok@c.test"])
    async with session(w, w.acme_key) as c:
        for query in ("", "?tenant=beta", "?tenant=default", "?recipient=ok@c.test",
                      f"?id={theirs}", f"?id={default}", "?state=queued"):
            status, page = await c.get("/messages" + query)
            assert status == 200, page
            assert ids_in(page) in ([mine], []), query
            assert "app@beta.test" not in page and "app@sender.test" not in page
            assert 'name="tenant"' not in page and "<th>Tenant</th>" not in page
        assert ids_in((await c.get("/messages"))[1]) == [mine]


# -- the message page -----------------------------------------------------------------------

async def test_message_page_shows_envelope_headers_attempts_and_timeline(world):
    w = world
    qid = await w.submit(["ok-1@a.test", "tempfail-9@b.test"],
                         headers="Subject: =?utf-8?q?Caf=C3=A9_cr=C3=A8me?=\r\n"
                                 "X-Folded: one\r\n two\r\nX-Evil: <script>alert(1)</script>\r\n",
                         body="BODY-MUST-NOT-SHOW\r\n")

    async def attempted():
        view = await w.d.spool.get_message(qid)
        return len(view.attempts) == 2 and view.recipients[1].attempts == 1
    await until(attempted)
    async with session(w) as c:
        status, page = await c.get(f"/messages/{qid}")
    assert status == 200
    assert "BODY-MUST-NOT-SHOW" not in page
    envelope = page.split('id="envelope"', 1)[1].split("</section>", 1)[0]
    for text in (qid, "app@sender.test", "default", "<dd>app</dd>", "a message"):
        assert text in envelope, text
    assert re.search(r'id="rcpt-state-0">delivered<', page)
    assert re.search(r'id="rcpt-state-1">queued<', page)
    assert re.search(r'id="rcpt-attempts-1">1<', page)
    assert "451 4.7.1" in page.split('id="rcpt-reply-1">', 1)[1].split("</span>", 1)[0]
    headers = page.split('id="headers"', 1)[1].split("</table>", 1)[0]
    assert "Café crème" in headers and "one two" in headers and ">Message-ID<" in headers
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in headers
    attempts = page.split('id="attempts"', 1)[1].split("</table>", 1)[0]
    assert "127.0.0.1" in attempts and "250" in attempts and "451" in attempts
    assert "TLSv1" in attempts and "(opportunistic)" in attempts    # the sink's STARTTLS
    timeline = page.split('id="timeline"', 1)[1].split("</table>", 1)[0]
    types = re.findall(r'<tr id="ev-\d+">.*?class="badge (\w+)"', timeline)
    assert types[:3] == ["received", "queued", "queued"]
    assert {"delivered", "deferred"} <= set(types)
    last = max(int(s) for s in re.findall(r'<tr id="ev-(\d+)"', timeline))
    assert f'data-stream="/console/messages/{qid}/live?after={last}"' in page
    assert 'id="live-status"' in page and "In flight" in page
    assert "via 127.0.0.1" in timeline and "next attempt" in timeline
    assert "(policy opportunistic)" in timeline


async def test_unknown_and_foreign_messages_are_404(world):
    w = world
    await w.destination("suspend")
    theirs = await w.submit(["ok@c.test"])                     # the default tenant's
    mine = await w.submit(["ok@c.test"], user="acme-app", sender="app@acme.test")
    async with session(w, w.acme_key) as c:
        assert (await c.get(f"/messages/{mine}"))[0] == 200
        assert 'id="actions"' not in (await c.get(f"/messages/{mine}"))[1]   # operator only
        for path in (f"/messages/{theirs}", f"/messages/{theirs}/live?after=0",
                     f"/messages/{theirs}/confirm?action=hold",
                     f"/messages/{mine}/confirm?action=hold", "/messages/0000000000000000"):
            status, page = await c.get(path)
            assert status == 404 and 'id="error-message"' in page, path
            assert "app@sender.test" not in page
        for action in ACTIONS:
            for qid in (theirs, mine):
                status, _, _ = await c.post(f"/messages/{qid}/{action}")
                assert status == 404, (action, qid)
    assert await w.states(theirs) == ["queued"] and await w.states(mine) == ["queued"]


# -- the live timeline ---------------------------------------------------------------------

class Stream:
    """A server-sent event stream read in the background: events as
    (kind, data, id) in arrival order; comments as ("comment", text, None)."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.r = response
        self.events: list[tuple[str, str, str | None]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        kind, data, eid = "message", [], None
        async for raw in self.r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.events.append(("comment", line, None))
            elif line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            elif line.startswith("id: "):
                eid = line[len("id: "):]
            elif line == "" and data:
                self.events.append((kind, "\n".join(data), eid))
                kind, data, eid = "message", [], None

    def states(self) -> dict[str, str]:
        out = {}
        for kind, data, _ in self.events:
            if kind == "state":
                change = json.loads(data)
                out[change["id"]] = change["text"]
        return out

    def rows(self) -> list[str]:
        return [data for kind, data, _ in self.events if kind == "row"]

    async def wait(self, cond, timeout: float = 20.0):
        async def check():
            assert not self.task.done() or cond(), f"stream ended: {self.events}"
            return cond()
        return await until(check, timeout)


async def test_live_timeline_follows_a_release_to_delivery_and_ends(world):
    w = world
    await w.destination("suspend")
    qid = await w.submit(["ok-live@a.test"])
    async with session(w) as c:
        assert (await c.post(f"/messages/{qid}/hold"))[0] == 303
        await w.destination("resume")                       # held: still nothing leaves
        _, page = await c.get(f"/messages/{qid}")
        stream_url = html.unescape(re.search(r'data-stream="([^"]+)"', page).group(1))
        after = int(stream_url.rpartition("=")[2])
        async with c.http.get(c.base + stream_url) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            s = Stream(r)
            await s.wait(lambda: s.states().get("rcpt-state-0") == "held")
            assert s.states()["live-status"].startswith("Live")
            assert s.rows() == []                             # nothing after the page's last
            status, page = await c.get(f"/messages/{qid}/confirm?action=release")
            assert status == 200 and 'id="confirm"' in page
            assert (await c.post(f"/messages/{qid}/release"))[0] == 303
            await asyncio.wait_for(s.task, 20)
    assert s.events[-1][:2] == ("end", "done")
    rows = s.rows()
    kinds = [re.search(r'class="badge (\w+)"', row).group(1) for row in rows]
    assert kinds[0] == "released" and "delivered" in kinds
    for row, (_, _, eid) in zip(rows, [e for e in s.events if e[0] == "row"]):
        assert re.fullmatch(r'<tr id="ev-(\d+)">.*</tr>', row) and "\n" not in row
        assert int(eid) > after and f'id="ev-{eid}"' in row
    assert s.states()["rcpt-state-0"] == "delivered"
    assert s.states()["rcpt-attempts-0"] == "1"
    assert s.states()["live-status"].startswith("Finished")
    assert [m.rcpt_tos for m in w.sink.messages] == [["ok-live@a.test"]]


async def test_live_stream_resumes_ends_at_once_and_is_bounded(world, monkeypatch):
    w = world
    await w.destination("suspend")
    qid = await w.submit(["ok@a.test"])
    async with session(w) as c:
        assert (await c.post(f"/messages/{qid}/delete"))[0] == 303       # done now
        async with c.http.get(c.base + f"/console/messages/{qid}/live?after=0",
                              headers={"Last-Event-ID": "2"}) as r:
            s = Stream(r)
            await asyncio.wait_for(s.task, 20)
        seqs = [int(e[2]) for e in s.events if e[0] == "row"]
        assert seqs and min(seqs) == 3 and s.events[-1][0] == "end"   # resumed after 2
        assert any('class="badge deleted"' in row for row in s.rows())
        # the bound: one stream at a time here
        monkeypatch.setattr(pages_messages_live, "MAX_STREAMS", 1)
        other = await w.submit(["ok@a.test"])                           # in the queue
        async with c.http.get(c.base + f"/console/messages/{other}/live?after=0") as r:
            s = Stream(r)
            await s.wait(lambda: "rcpt-state-0" in s.states())
            status, page = await c.get(f"/messages/{other}/live?after=0")
            assert status == 429 and "too many live timelines" in page
        # the client went away: its slot is free again within a poll or so

        async def reopened():
            async with c.http.get(c.base + f"/console/messages/{other}/live?after=0") as r:
                return r.status == 200
        assert await until(reopened)
        # an idle stream: keepalive comments, and it ends at its lifetime (no "end": the
        # message is still in flight, the browser reconnects)
        monkeypatch.setattr(pages_messages_live, "MAX_STREAMS", 50)
        monkeypatch.setattr(pages_messages_live, "KEEPALIVE", 0.2)
        monkeypatch.setattr(pages_messages_live, "LIFETIME", 1.5)
        async with c.http.get(c.base + f"/console/messages/{other}/live?after=0") as r:
            assert r.status == 200
            s = Stream(r)
            await asyncio.wait_for(s.task, 20)
        assert ("comment", ": keepalive", None) in s.events
        assert "end" not in [e[0] for e in s.events]


# -- operator actions -----------------------------------------------------------------------

async def _flashes(c, path: str) -> tuple[list[str], list[str]]:
    _, page = await c.get(path)
    return (re.findall(r'class="flash flash-ok"[^>]*>([^<]*)<', page),
            re.findall(r'class="flash flash-error"[^>]*>([^<]*)<', page))


async def test_actions_through_confirmation_and_post(world):
    w = world
    async with session(w) as c:
        # retry: a deferred recipient is tried again now, not in its next attempt's time
        deferred = await w.submit(["tempfail-9@r.test"])

        async def tried(n):
            return (await w.d.spool.get_message(deferred)).recipients[0].attempts >= n or None
        await until(lambda: tried(1))
        status, page = await c.get(f"/messages/{deferred}/confirm?action=retry")
        assert status == 200 and 'id="confirm"' in page and "1</strong> recipient" in page
        assert f'action="/console/messages/{deferred}/retry"' in page
        assert f'href="/console/messages/{deferred}" id="cancel"' in page
        assert (await w.d.spool.get_message(deferred)).recipients[0].attempts == 1
        status, _, location = await c.post(f"/messages/{deferred}/retry")
        assert (status, location) == (303, f"/console/messages/{deferred}")
        assert (await _flashes(c, location))[0] == [f"retry: 1 recipient of {deferred} changed"]
        await until(lambda: tried(2))

        await w.destination("suspend")
        qid = await w.submit(["ok-a@a.test", "ok-b@a.test"])
        for action, states in (("hold", ["held", "held"]), ("release", ["queued", "queued"]),
                               ("hold", ["held", "held"]), ("bounce", ["bounced", "bounced"])):
            status, page = await c.get(f"/messages/{qid}/confirm?action={action}")
            assert status == 200 and "2</strong> recipients" in page, action
            assert await w.states(qid) != states                      # the GET changes nothing
            status, _, location = await c.post(f"/messages/{qid}/{action}")
            assert (status, location) == (303, f"/console/messages/{qid}"), action
            assert await w.states(qid) == states, action
            ok, errors = await _flashes(c, location)
            assert ok == [f"{action}: 2 recipients of {qid} changed"] and not errors
        # nothing left to act on: the confirmation says so, the POST is a refusal notice
        status, page = await c.get(f"/messages/{qid}/confirm?action=delete")
        assert status == 200 and "would change nothing" in page
        status, _, location = await c.post(f"/messages/{qid}/delete")
        assert (status, location) == (303, f"/console/messages/{qid}")
        ok, errors = await _flashes(c, location)
        assert not ok and errors and errors[0].startswith("delete: nothing changed")
        # delete: gone from the queue, back to the search
        gone = await w.submit(["ok@a.test"])
        status, _, location = await c.post(f"/messages/{gone}/delete")
        assert (status, location) == (303, "/console/messages")
        assert await w.states(gone) == ["deleted"]
        _, page = await c.get("/messages?state=active")
        assert gone not in ids_in(page) and qid not in ids_in(page)
        # a DSN went to the sender of the bounced message
        _, page = await c.get("/messages?recipient=app@sender.test")
        dsn = ids_in(page)
        assert len(dsn) == 1 and ">DSN<" in page


async def test_posts_without_the_csrf_token_change_nothing(world):
    w = world
    await w.destination("suspend")
    qid = await w.submit(["ok@a.test"])
    async with session(w) as c:
        for action in ACTIONS:
            for token in (None, "forged", ""):
                status, page, _ = await c.post(f"/messages/{qid}/{action}", csrf=token)
                assert status == 403 and "CSRF" in page, (action, token)
        # a cross-origin form post is refused even with the token
        async with c.http.post(c.base + f"/console/messages/{qid}/hold",
                               data={"_csrf": c.csrf}, headers={"Origin": "http://evil.test"},
                               allow_redirects=False) as r:
            assert r.status == 403
    assert await w.states(qid) == ["queued"]


# -- hostile input --------------------------------------------------------------------------

async def test_hostile_values_are_refused_never_a_500(world, caplog):
    w = world
    await w.destination("suspend")
    qid = await w.submit(["ok@a.test"])
    big = "x" * 5_000            # (10 KB in a URL: aiohttp's 400 before any handler, below)
    queries = [f"recipient={big}", f"sender={big}", f"id={big}", f"tenant={big}", f"from={big}",
               f"cursor={big}", "recipient=a%01b@x.test", "sender=%00", "id=%7F", "tenant=%1b",
               "recipient=not an address", "recipient=a@b@", "recipient=%40", "sender=@x.test",
               "id=AB-CD", "id=%C3%A9", "tenant=Acme", "tenant=-x", "state=frozen",
               "state=ALL", "from=2026-13-45", "from=2026-02-30", "to=2026-01-01T25:00",
               "from=yesterday", "from=5", "from=-1h", "from=99999999d", "from=1h&to=2h",
               "from=2026-01-02&to=2026-01-01", "limit=0", "limit=201", "limit=-1",
               "limit=abc", "limit=1e3", "limit=%C2%B2", "limit=%D9%A1", "cursor=!!!",
               "cursor=AAAA", "cursor=" + "A" * 100,
               "state=all&state=held"]
    async with session(w) as c:
        for query in queries:
            status, page = await c.get("/messages?" + query)
            assert status == 400 and 'id="search-error"' in page, (query, status)
            assert big not in page and "Traceback" not in page
        status, page = await c.get("/messages?recipient=%F0%9F%92%A9@%E2%98%83.test")
        assert status == 200 and ids_in(page) == []              # UTF-8 is an address
        for raw in ("nan|AAAA", "1e999|A", "-inf|" + "Z" * 60, "0|\u00e9"):
            cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            status, page = await c.get(f"/messages?cursor={cursor}")  # well formed, odd values
            assert status in (200, 400) and "Traceback" not in page, raw
        for query in (f"recipient={'x' * 10_000}", f"cursor={'A' * 10_000}"):
            assert (await c.get("/messages?" + query))[0] == 400
        for path, expected in [
                (f"/messages/{'A' * 5_000}", 404), ("/messages/%00", 404),
                ("/messages/..%2F..%2Fetc", 404), ("/messages/0000000000000000", 404),
                (f"/messages/{qid}/live?after=-1", 400), (f"/messages/{qid}/live?after=abc", 400),
                (f"/messages/{qid}/live?after=%C2%B2", 400),
                (f"/messages/{qid}/live?after={2 ** 64}", 400),
                (f"/messages/{qid}/live?after={big}", 400),
                ("/messages/0000000000000000/live?after=0", 404),
                (f"/messages/{qid}/confirm?action=explode", 400),
                (f"/messages/{qid}/confirm", 400), ("/messages/ZZZZ/confirm?action=hold", 404)]:
            status, page = await c.get(path)
            assert status == expected and 'id="error-message"' in page, (path, status)
        for path in (f"/messages/{qid}/explode", "/messages/0000000000000000/hold",
                     f"/messages/{'A' * 5000}/hold"):
            status, _, _ = await c.post(path)
            assert status in (404, 405), path
    assert await w.states(qid) == ["queued"]
    assert "console_error" not in caplog.text          # no handler raised


async def test_an_open_stream_does_not_hold_up_shutdown(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    CredentialStore(state / "credentials.json").add("app", PASSWORD)
    port = free_port()
    # no route to anything that answers: the message stays in flight
    text = config_text(state, port, retry="1h", routes={"*": f"127.0.0.1:{free_port()}"})
    loop = asyncio.get_running_loop()
    async with Sink() as sink:
        async with running_daemon(text) as d:
            d.port = port
            w = World(d, sink, "")
            qid = await w.submit(["ok@a.test"])
            async with session(w) as c:
                async with c.http.get(c.base + f"/console/messages/{qid}/live?after=0") as r:
                    s = Stream(r)
                    await s.wait(lambda: "rcpt-state-0" in s.states())
                    stopping = loop.time()
                    await d.stop()
                    stopped = loop.time()
                    await asyncio.wait_for(s.task, 5)      # the stream ended with the server
        d.stop = _noop                                     # stopped already
    assert stopped - stopping < 30       # aiohttp would wait 60 s for a handler that never ends
    assert s.events[-1][0] != "end"       # not finished: the browser reconnects later


async def _noop() -> None:
    return None


# -- units -----------------------------------------------------------------------------------

def test_the_vocabularies_are_the_admin_apis():
    assert STATES == MESSAGE_STATES and ACTIONS == MESSAGE_ACTIONS


def test_times_in_a_search():
    now = 1_800_000_000.0
    day = 1_767_225_600.0                                    # 2026-01-01T00:00:00Z
    assert parse_time("", "from", now) is None
    assert parse_time("2026-01-01", "from", now) == day
    assert parse_time("2026-01-01", "to", now, end=True) == day + 86400
    assert parse_time("2026-01-01T09:30", "from", now) == day + 9.5 * 3600
    assert parse_time("2026-01-01 09:30:15", "to", now, end=True) == day + 9.5 * 3600 + 15
    assert parse_time("2026-01-01T09:30Z", "from", now) == day + 9.5 * 3600
    assert parse_time("30m", "from", now) == now - 1800
    assert parse_time("1h30m", "from", now) == now - 5400
    assert parse_time("7d", "from", now) == now - 7 * 86400
    for bad in ("2026-02-30", "2026-1-1", "26-01-01", "2026-01-01T24:00", "5", "soon",
                "-1h", "1h ago", "9999999999d", "2026-01-01T09", "0x10m"):
        with pytest.raises(ConsoleError) as e:
            parse_time(bad, "from", now)
        assert e.value.status == 400 and e.value.field == "from", bad


def test_a_search_query_is_checked():
    from multidict import MultiDict
    now = 1_800_000_000.0
    q = parse_query(MultiDict(recipient=" Bob@Example.COM ", sender="<>", id="abc123",
                              tenant="acme", state="held", limit="7"), OPERATOR, now)
    assert (q.recipient, q.domain, q.sender, q.queue_id, q.tenant, q.state, q.limit) == \
        ("Bob@example.com", None, "", "ABC123", "acme", "held", 7)
    q = parse_query(MultiDict(recipient="@Example.COM."), OPERATOR, now)
    assert (q.recipient, q.domain, q.state, q.limit) == (None, "example.com", "all", 50)
    # a tenant's viewer: its own tenant, whatever the query says (the value is not even read)
    q = parse_query(MultiDict(tenant="beta\x00"), ACME, now)
    assert q.tenant == "acme"
    assert parse_query(MultiDict(), OPERATOR, now).tenant is None
    for query, field in [({"recipient": "a b"}, "recipient"), ({"state": "x"}, "state"),
                         ({"limit": "201"}, "limit"), ({"id": "a/b"}, "id"),
                         ({"tenant": "Acme"}, "tenant"), ({"cursor": "a b"}, "cursor"),
                         ({"from": "2h", "to": "3h"}, "to"), ({"sender": "x" * 321}, "sender")]:
        with pytest.raises(ConsoleError) as e:
            parse_query(MultiDict(query), OPERATOR, now)
        assert (e.value.status, e.value.field) == (400, field), query
    with pytest.raises(ConsoleError) as e:
        parse_query(MultiDict([("state", "all"), ("state", "held")]), OPERATOR, now)
    assert "more than once" in e.value.message


def test_header_fields_are_decoded_text():
    raw = (b"From: =?utf-8?b?SsO2cmc=?= <j@x.test>\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n"
           b"X-Folded: a\r\n\tb\r\n  c\r\nX-Raw: caf\xc3\xa9 \xff\r\n"
           b"X-Bad-Charset: =?x-unknown?q?abc?=\r\nX-Broken: =?utf-8?q?abc\r\n"
           b"X-Control: a\x1b[31mb\x00c\r\nnot a field\r\n\r\nBody: not a header\r\n")
    fields, cut = header_fields(raw)
    assert not cut
    assert fields == [("From", "Jörg <j@x.test>"), ("Subject", "café"), ("X-Folded", "a b c"),
                      ("X-Raw", "café \ufffd"), ("X-Bad-Charset", "=?x-unknown?q?abc?="),
                      ("X-Broken", "=?utf-8?q?abc"), ("X-Control", "a [31mb c")]
    fields, cut = header_fields(b"A: 1\nB: 2\n\nbody")
    assert fields == [("A", "1"), ("B", "2")] and not cut
    fields, cut = header_fields(b"".join(b"X-%d: v\r\n" % i for i in range(300)))
    assert len(fields) == 200 and cut
    fields, cut = header_fields(b"X: " + b"y" * 70_000)
    assert cut and len(fields[0][1]) == 2000 and fields[0][1].endswith("…")


def test_timeline_summaries_show_known_keys_only():
    secret = "re_SECRET_KEY_0123456789"
    e = {"type": "deferred", "detail": {
        "reply": "451 4.7.1 try\nlater", "remote_host": "mx.x.test", "remote_ip": "192.0.2.1",
        "tls": "TLSv1.3", "tls_policy": "mta-sts", "tls_check": "verified", "reason": "greylist",
        "status": "4.7.1", "attempts": 2, "next_attempt": 1_767_225_600.0,
        "api_key": secret, "idempotency_key": secret, "credential": secret, "password": secret}}
    text = event_summary(e)
    assert secret not in text and "\n" not in text
    for part in ("451 4.7.1 try later", "via mx.x.test [192.0.2.1]",
                 "TLS TLSv1.3 (policy mta-sts, verified)", "category greylist 4.7.1",
                 "attempt 2", "next attempt 2026-01-01 00:00:00"):
        assert part in text, part
    assert event_summary({"type": "received", "detail": {"size": 12, "listener": "sub",
                                                         "idempotency_key": secret}}) == \
        "12 bytes · listener sub"
    for odd in ({}, {"detail": None}, {"detail": "raw"}, {"detail": {"reply": "x" * 5000}}):
        assert len(event_summary(odd)) <= 300


def test_a_server_sent_event_is_one_data_line():
    assert sse("row", "<tr>\n<td>a</td>\r\n</tr>", 7) == \
        b"id: 7\nevent: row\ndata: <tr> <td>a</td> </tr>\n\n"
    assert sse("end", "done") == b"event: end\ndata: done\n\n"


# -- the spool: received-time bounds and newest-first pages ---------------------------------

async def test_spool_pages_newest_first_within_received_bounds(tmp_path):
    t0 = 1_700_000_000.0
    s = await Spool.open(tmp_path, now=t0)
    try:
        ids = [await s.enqueue(NewMessage(f"s{i % 2}@x.test", (f"u{i}@d{i % 3}.test",),
                                          b"Subject: x\r\n\r\nx\r\n"), t0 + i)
               for i in range(10)]

        async def pages(f: MessageFilter, limit: int = 3) -> list[str]:
            out, cursor = [], None
            while True:
                views, cursor = await s.list_page(f, limit, cursor)
                out += [v.id for v in views]
                if cursor is None:
                    return out
        assert await pages(MessageFilter(newest_first=True)) == ids[::-1]
        assert await pages(MessageFilter()) == ids
        bounded = MessageFilter(since=t0 + 2, until=t0 + 7, newest_first=True)
        assert await pages(bounded) == ids[2:7][::-1]
        assert await pages(MessageFilter(since=t0 + 2, until=t0 + 7)) == ids[2:7]
        assert await pages(MessageFilter(since=t0 + 2.5, sender="s1@x.test",
                                         newest_first=True)) == [ids[9], ids[7], ids[5], ids[3]]
        assert await pages(MessageFilter(domain="d0.test", until=t0 + 6,
                                         newest_first=True), 1) == [ids[3], ids[0]]
        assert await pages(MessageFilter(since=t0 + 10)) == []
        # the bounds are a range of the walk's index, never a scan of the table
        with sqlite3.connect(tmp_path / "spool" / "index.sqlite3") as conn:
            for f in (bounded, MessageFilter(since=t0, include_done=True, newest_first=True),
                      MessageFilter(until=t0 + 5, sender="s0@x.test", newest_first=True),
                      MessageFilter(since=t0, domain="d1.test", newest_first=True),
                      MessageFilter(since=t0, tenant="acme", newest_first=True)):
                for drive in (False, True):
                    sql, params = filters.page_sql(f, (t0 + 5, ids[5]), 4, drive=drive)
                    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
                    assert not any(re.match(r"SCAN (r|m|recipients|messages)\b", row)
                                   for row in plan), (f, drive, plan)
                    assert any("received_at" in row or "recipients_" in row
                               for row in plan), (f, drive, plan)
        # moves honour the bounds too (one filter for pages and moves)
        assert await s.hold_messages(MessageFilter(since=t0 + 8), t0 + 20) == 2
    finally:
        await s.close()
