"""The console's Suppressions pages (issue 18) over HTTP against a real
daemon: an address added from the page is listed and the very next SMTP
RCPT to it is refused; removed with a note it is gone and accepted again
(the note logged as its length only); search (exact, substring, reason,
paging by keyset); export → import round trip; imports report bad lines
and are bounded; tenants work on their own list only (404 for any other),
the operator on every list; hostile inputs are 422 and CSRF-less posts
403, with nothing changed. The CSV codec is tested on its own too."""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from urllib.parse import unquote

import aiohttp
import aiosmtplib
import pytest

from mta.console import pages_suppressions
from mta.console.suppression_csv import MAX_IMPORT_ROWS, export_lines, parse_import
from mta.server.credentials import CredentialStore
from mta.spool import suppression_admin
from mta.spool.suppression_search import add_many, is_address, search
from tests.support.console import console_client
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_console_domains import tenant_key

TOKEN = "test-admin-token-0123456789"
PASSWORD = "app-password-1"


@pytest.fixture
async def world(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    creds = CredentialStore(state / "credentials.json")
    for user in ("app", "acme-app"):
        creds.add(user, PASSWORD)
    port = free_port()
    # A sink as every recipient's MX: deliveries succeed, so nothing but the
    # pages' own additions tells the RCPT lookup that the list is not empty.
    async with Sink() as sink, running_daemon(
            config_text(state, port, routes={"*": f"127.0.0.1:{sink.address[1]}"})) as d:
        d.port = port
        d.acme = await tenant_key(d, "acme", "acme-admin")
        d.beta = await tenant_key(d, "beta", "beta-admin")
        await d.tenants.own("credential", "acme-app", "acme")
        yield d


async def rcpt(d, rcpt: str, user: str = "app") -> str:
    """The reply to one SMTP submission to `rcpt` as `user`: "250" or the refusal."""
    body = f"From: a@sender.test\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                                   tls_context=no_verify_context()) as c:
            await c.login(user, PASSWORD)
            await c.sendmail("a@sender.test", [rcpt], body)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        (err,) = exc.recipients
        return f"{err.code} {err.message}"
    return "250"


def entries(d, scope: str | None = None) -> list[tuple[str, str, str]]:
    """(address, scope, reason) of every active entry, from the store itself."""
    return sorted((v.address, v.scope, v.reason)
                  for v in suppression_admin.list_entries(d.cfg.server.state_dir, scope=scope))


def listed(page: str) -> list[str]:
    return re.findall(r'id="sup-\d+-address">([^<]*)<', page)


async def test_add_refuses_the_next_rcpt_and_remove_accepts_again(world, caplog):
    d = world
    caplog.set_level(logging.INFO)
    assert await rcpt(d, "blocked@rcpt.test") == "250"
    async with console_client(d.admin.url, TOKEN) as c:
        status, _, location = await c.post("/suppressions", {
            "address": "blocked@RCPT.test", "reason": "manual", "scope": ""})
        assert status == 303
        assert unquote(location) == "/console/suppressions?scope=&q=blocked@rcpt.test"
        status, page = await c.get(location.removeprefix("/console"))
        assert status == 200 and listed(page) == ["blocked@rcpt.test"]
        assert "blocked@rcpt.test suppressed (global list)." in page
        assert entries(d) == [("blocked@rcpt.test", "", "manual")]
        reply = await rcpt(d, "blocked@rcpt.test")          # the very next RCPT
        assert reply.startswith("550") and "suppress" in reply.lower(), reply
        # Adding it again changes nothing and says so.
        _, _, _ = await c.post("/suppressions", {"address": "blocked@rcpt.test",
                                                 "reason": "complaint", "scope": ""})
        _, page = await c.get("/suppressions?scope=")
        assert "was already on the global list (unchanged)" in page
        assert entries(d) == [("blocked@rcpt.test", "", "manual")]
        # Remove: a page asks why; without a note nothing happens.
        link = re.search(r'href="(/console/suppressions/remove\?[^"]*)"', page).group(1)
        status, page = await c.get(link.replace("&amp;", "&").removeprefix("/console"))
        assert status == 200 and 'id="remove-suppression"' in page
        assert 'name="scope" value=""' in page and 'id="remove-note"' in page
        form = {"address": "blocked@rcpt.test", "scope": ""}
        status, body, _ = await c.post("/suppressions/remove", form)
        assert status == 422 and "note: required" in body
        assert entries(d) == [("blocked@rcpt.test", "", "manual")]
        status, _, location = await c.post("/suppressions/remove",
                                           {**form, "note": "customer asked, ticket 4711"})
        assert (status, location) == (303, "/console/suppressions?scope=")
        assert entries(d) == []
        assert await rcpt(d, "blocked@rcpt.test") == "250"
        status, body, _ = await c.post("/suppressions/remove", {**form, "note": "again"})
        assert status == 404
    console = [r.getMessage() for r in caplog.records if r.name == "mta.console"]
    logged = [m for m in console if "console_unsuppress" in m]
    assert len(logged) == 1 and "domain=rcpt.test" in logged[0]
    assert "note_length=27" in logged[0] and "scope=global" in logged[0]
    assert "ticket 4711" not in caplog.text
    assert not any("blocked@" in m for m in console if "unsuppress" in m)


async def test_tenants_work_on_their_own_list_only(world):
    d = world
    state = d.cfg.server.state_dir
    now = time.time()
    suppression_admin.add(state, "theirs@rcpt.test", scope="beta", now=now)
    suppression_admin.add(state, "everyone@rcpt.test", scope="", now=now)
    async with console_client(d.admin.url, d.acme) as a, \
            console_client(d.admin.url, TOKEN) as op:
        _, page = await a.get("/suppressions")
        assert listed(page) == [] and 'id="sup-scope"' not in page and 'name="scope"' not in page
        status, _, location = await a.post("/suppressions", {"address": "x@rcpt.test"})
        assert status == 303
        assert unquote(location) == "/console/suppressions?scope=acme&q=x@rcpt.test"
        assert entries(d, "acme") == [("x@rcpt.test", "acme", "manual")]
        assert (await rcpt(d, "x@rcpt.test", user="acme-app")).startswith("550")
        assert await rcpt(d, "x@rcpt.test", user="app") == "250"     # not the default's list
        _, page = await a.get("/suppressions")
        assert listed(page) == ["x@rcpt.test"]
        assert 'href="/console/suppressions/export?scope=acme"' in page
        # Any other list is not there for acme: reads and changes alike.
        for path in ("/suppressions?scope=", "/suppressions?scope=beta", "/suppressions?scope=*",
                     "/suppressions/export?scope=beta", "/suppressions/export?scope=",
                     "/suppressions/remove?address=theirs%40rcpt.test&scope=beta"):
            assert (await a.get(path))[0] == 404, path
        for path, form in (("/suppressions", {"address": "y@rcpt.test", "scope": ""}),
                           ("/suppressions", {"address": "y@rcpt.test", "scope": "beta"}),
                           ("/suppressions/remove", {"address": "theirs@rcpt.test",
                                                     "scope": "beta", "note": "mine now"}),
                           ("/suppressions/remove", {"address": "everyone@rcpt.test",
                                                     "scope": "", "note": "mine now"}),
                           ("/suppressions/import", {"csv": "z@rcpt.test", "scope": "beta"})):
            assert (await a.post(path, form))[0] == 404, (path, form)
        assert entries(d) == [("everyone@rcpt.test", "", "manual"),
                              ("theirs@rcpt.test", "beta", "manual"),
                              ("x@rcpt.test", "acme", "manual")]
        # The operator sees every list, and picks one.
        _, page = await op.get("/suppressions")
        assert listed(page) == ["everyone@rcpt.test", "theirs@rcpt.test", "x@rcpt.test"]
        assert re.search(r'id="sup-1".*?>global<', page, re.S)
        _, page = await op.get("/suppressions?scope=beta")
        assert listed(page) == ["theirs@rcpt.test"]
        status, _, _ = await op.post("/suppressions", {"address": "y@rcpt.test", "scope": "beta"})
        assert status == 303 and ("y@rcpt.test", "beta", "manual") in entries(d)
        status, body, _ = await op.post("/suppressions", {"address": "y@rcpt.test",
                                                          "scope": "ghost"})
        assert status == 422 and "scope: no such tenant" in body


async def test_search_and_paging(world):
    d = world
    state = d.cfg.server.state_dir
    now = time.time()
    rows = [(f"u{i:03d}@dom{i % 3}.test", "hard_bounce" if i % 2 else "manual", None, None)
            for i in range(120)]
    assert add_many(state, rows, scope="default", now=now) == (120, 0)
    assert add_many(state, rows[:60], scope="", now=now) == (60, 0)     # same addresses, global
    assert add_many(state, [("Old@dom0.test", "manual", now - 100, now - 1)], scope="default",
                    now=now) == (1, 0)                          # expired: never shown
    async with console_client(d.admin.url, TOKEN) as c:
        seen, path = [], "/suppressions?scope=*"
        while path:
            status, page = await c.get(path)
            assert status == 200
            scopes = re.findall(r'<td data-label="List">([^<]*)</td>', page)
            seen += list(zip(listed(page), scopes))
            found = re.search(r'href="/console([^"]*)" id="next"', page)
            path = found.group(1).replace("&amp;", "&") if found else ""
        assert len(seen) == 180 and len(set(seen)) == 180          # every entry once
        assert seen == sorted(seen, key=lambda p: (p[0], "" if p[1] == "global" else p[1]))
        _, page = await c.get("/suppressions?scope=default&q=dom1.TEST")   # substring, any case
        assert len(listed(page)) == 40 and all("@dom1.test" in a for a in listed(page))
        _, page = await c.get("/suppressions?scope=default&q=u007%40dom1.test")   # exact
        assert listed(page) == ["u007@dom1.test"]
        _, page = await c.get("/suppressions?scope=default&q=u007%40dom1.tes")   # a substring
        assert listed(page) == []
        _, page = await c.get("/suppressions?scope=default&q=%25")    # LIKE's % is literal
        assert listed(page) == [] and "Nothing matches." in page
        _, page = await c.get("/suppressions?scope=default&reason=manual&q=dom2")
        assert len(listed(page)) == 20
        _, page = await c.get("/suppressions?scope=default&q=Old")
        assert listed(page) == []
        assert add_many(state, [("Old@dom0.test", "manual", None, None)], scope="default",
                        now=now) == (1, 0)                      # an expired entry is replaced
        _, page = await c.get("/suppressions?scope=default&q=Old")
        assert listed(page) == ["Old@dom0.test"]
    assert is_address("a@b.test") and not is_address("@b.test") and not is_address("a@")


async def test_export_imports_back(world, monkeypatch):
    d = world
    monkeypatch.setattr(pages_suppressions, "_EXPORT_BATCH", 3)     # several reads
    state = d.cfg.server.state_dir
    now = time.time()
    made = [suppression_admin.add(state, a, reason=r, scope="acme", now=now - 60, expires=e)
            for a, r, e in (("=cmd@rcpt.test", "hard_bounce", None),
                            ("+tag@rcpt.test", "complaint", None),
                            ("-dash@rcpt.test", "unsubscribed", now + 86400),
                            ('"quoted,comma"@rcpt.test', "manual", None))]
    async with console_client(d.admin.url, TOKEN) as c:
        async with c.http.get(d.admin.url + "/console/suppressions/export?scope=acme") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
            assert r.headers["Content-Disposition"].startswith(
                'attachment; filename="suppressions-acme-')
            exported = await r.text()
        table = list(csv.reader(io.StringIO(exported)))
        assert table[0] == ["address", "reason", "origin", "created", "expires"]
        cells = {row[0] for row in table[1:]}
        assert {"'=cmd@rcpt.test", "'+tag@rcpt.test", "'-dash@rcpt.test",
                '"quoted,comma"@rcpt.test'} == cells                 # no formula starts a cell
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[3]) for row in table[1:])
        for v in made:
            suppression_admin.remove(state, v.address, "acme")
        upload = aiohttp.FormData()
        upload.add_field("scope", "acme")
        upload.add_field("file", exported.encode(), filename="export.csv",
                         content_type="text/csv")
        status, page, _ = await c.post("/suppressions/import", upload)
        assert status == 200
        counts = dict(re.findall(r'id="import-(added|present|invalid)">(\d+)<', page))
        assert counts == {"added": "4", "present": "0", "invalid": "0"}
        back = {v.address: v for v in suppression_admin.list_entries(state, scope="acme")}
        for v in made:
            assert back[v.address].reason == v.reason
            assert back[v.address].created == int(v.created)
            assert (back[v.address].expires is None) == (v.expires is None)
            assert v.expires is None or back[v.address].expires == int(v.expires)
        status, page, _ = await c.post("/suppressions/import", {"csv": exported,
                                                                "scope": "acme"})
        counts = dict(re.findall(r'id="import-(added|present|invalid)">(\d+)<', page))
        assert counts == {"added": "0", "present": "4", "invalid": "0"}


async def test_import_reports_bad_lines_and_is_bounded(world):
    d = world
    text = ("good@rcpt.test\n"
            "not-an-address\n"
            "x@rcpt.test,spite\n"
            ",manual\n"
            "y@rcpt.test,manual,extra\n"
            '"q@rcpt.test",complaint\n'
            "\n"
            "good@rcpt.test\n")
    async with console_client(d.admin.url, d.acme) as c:
        status, page, _ = await c.post("/suppressions/import", {"csv": text})
        assert status == 200
        counts = dict(re.findall(r'id="import-(added|present|invalid)">(\d+)<', page))
        assert counts == {"added": "2", "present": "1", "invalid": "4"}
        errors = re.search(r'<table id="import-errors".*?</table>', page, re.S).group(0)
        lines = re.findall(r'data-label="Line" class="num">(\d+)<', errors)
        assert lines == ["2", "3", "4", "5"]
        assert "not an email address" in errors and "unknown reason" in errors
        assert "no address" in errors and "3 cells" in errors
        assert entries(d, "acme") == [("good@rcpt.test", "acme", "manual"),
                                      ("q@rcpt.test", "acme", "complaint")]
        # Refused as a whole: too many rows, an unknown column, no input, bad bytes.
        many = aiohttp.FormData()            # multipart: the admin server takes 64 KiB
        many.add_field("csv", "a@b.c\n" * (MAX_IMPORT_ROWS + 1), content_type="text/plain")
        status, body, _ = await c.post("/suppressions/import", many)
        assert status == 422 and "more than 10,000 rows" in body
        status, body, _ = await c.post("/suppressions/import",
                                       {"csv": "address,colour\na@b.test,red\n"})
        assert status == 422 and "unknown column" in body
        status, body, _ = await c.post("/suppressions/import", {"csv": "  "})
        assert status == 422
        bad = aiohttp.FormData()
        bad.add_field("file", b"\xff\xfeb@rcpt.test\n", filename="x.csv")
        status, body, _ = await c.post("/suppressions/import", bad)
        assert status == 422 and "not UTF-8" in body
        huge = aiohttp.FormData()
        huge.add_field("file", b"h@rcpt.test\n" * 100_000, filename="big.csv")
        status, body, _ = await c.post("/suppressions/import", huge)
        assert status == 413
        assert entries(d, "acme") == [("good@rcpt.test", "acme", "manual"),
                                      ("q@rcpt.test", "acme", "complaint")]


@pytest.mark.parametrize("query", [
    "q=%00", "q=" + "a" * 400, "reason=spite", "scope=a%20b", "scope=" + "s" * 70,
    "after=" + "x" * 500, "after=a&after_scope=%01"])
async def test_hostile_queries(world, query):
    async with console_client(world.admin.url, TOKEN) as c:
        status, body = await c.get("/suppressions?" + query)
        assert status == 422, query
        assert "Traceback" not in body


async def test_hostile_forms_and_csrf(world):
    d = world
    suppression_admin.add(d.cfg.server.state_dir, "kept@rcpt.test", now=time.time())
    before = entries(d)
    async with console_client(d.admin.url, TOKEN) as c:
        for form in ({"address": "a@b.test\r\nX: y", "scope": ""},
                     {"address": "nope", "scope": ""},
                     {"address": "a" * 400 + "@b.test", "scope": ""},
                     {"address": "a@b.test", "reason": "soft_bounce", "scope": ""},
                     {"address": "a@b.test", "reason": "x" * 100, "scope": ""},
                     {"address": "a@b.test", "scope": "two words"},
                     {"address": "a@b.test", "scope": "*"},
                     {"address": "a@b.test", "scope": "ghost"}):
            status, body, _ = await c.post("/suppressions", form)
            assert status == 422, form
        wrong = aiohttp.FormData()
        wrong.add_field("address", b"a@b.test", filename="a.txt")
        assert (await c.post("/suppressions", wrong))[0] == 422
        for form in ({"address": "kept@rcpt.test", "scope": "", "note": "x" * 600},
                     {"address": "kept@rcpt.test", "scope": "", "note": "a\x00b"},
                     {"address": "kept@rcpt.test", "scope": "", "note": "   "}):
            assert (await c.post("/suppressions/remove", form))[0] == 422, form
        for path, form in (("/suppressions", {"address": "new@rcpt.test", "scope": ""}),
                           ("/suppressions/remove", {"address": "kept@rcpt.test", "scope": "",
                                                     "note": "no token"}),
                           ("/suppressions/import", {"csv": "new@rcpt.test", "scope": ""})):
            assert (await c.post(path, form, csrf=None))[0] == 403, path
            assert (await c.post(path, form, csrf="forged"))[0] == 403, path
        assert (await c.get("/suppressions/remove?address=nope&scope="))[0] == 422
        assert (await c.get("/suppressions/remove?address=no%40rcpt.test&scope="))[0] == 404
        assert (await c.get("/suppressions/export?scope=*"))[0] == 422
    assert entries(d) == before


def test_csv_codec():
    entries_ = [{"address": a, "reason": "manual", "origin": "manual", "created": 0.0,
                 "expires": None} for a in ("=1+2@x.test", "@at@x.test", "plain@x.test")]
    text = export_lines(entries_, header=True)
    assert text.splitlines()[1].startswith("'=1+2@x.test,")
    plan = parse_import(text, now=1.0)
    assert [r[0] for r in plan.rows] == ["=1+2@x.test", "plain@x.test"]
    assert plan.invalid_count == 1                      # "@at@x.test" is no address
    assert parse_import("a@b.test,manual,1\n", 0).invalid_count == 1
    plan = parse_import("address,expires\na@b.test,2000-01-01T00:00:00Z\nb@b.test,nan\n"
                        "c@b.test,2999-01-01\n", now=time.time())
    assert [r[0] for r in plan.rows] == ["c@b.test"] and plan.invalid_count == 2
    assert "in the past" in plan.invalid[0][2] and "out of range" in plan.invalid[1][2]
    with pytest.raises(ValueError, match="named twice"):
        parse_import("address,address\n", 0)
    with pytest.raises(ValueError, match="not valid CSV"):
        parse_import('a@b.test,"' + "x" * 200_000 + '"\n', 0)      # over csv's field limit


async def test_search_reads_nothing_without_an_index(tmp_path):
    assert search(tmp_path, now=0.0) == ([], False)
    with pytest.raises(Exception, match="does not exist"):
        add_many(tmp_path, [("a@b.test", "manual", None, None)], scope="", now=0.0)
