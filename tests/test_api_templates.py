"""The sending API's /templates (mta/api/templates.py over
mta/runtime/api_templates.py over mta/spool/templates.py): a real aiohttp app
(mta.api.http.create_app, a real KeyCache over the real key store) served on
127.0.0.1 port 0, driven by a plain aiohttp client and by the official
Resend Python SDK; tenants from the real tenant store in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest

from mta.api.http import ApiServer, create_app
from mta.api.keys import KeyCache, StoreKeys
from mta.api.templates import template_routes
from mta.config.sections import ApiConfig
from mta.core.clock import SystemClock
from mta.runtime.api_templates import RuntimeTemplates
from mta.spool import templates as tmod
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.templates import SqliteTemplates
from mta.spool.tenants import SqliteTenants
from tests.support.resend_sdk import python_resend

resend = pytest.importorskip("resend", reason="the Resend Python SDK (pip install resend)")

HTML = "<p>Hello {{{NAME}}}, your code is {{{CODE}}}</p>"
VARIABLES = [{"key": "NAME", "type": "string", "fallback_value": "friend"},
             {"key": "CODE", "type": "number"}]


class World:
    """An API app with the template routes, keys of two tenants, and the
    send path seam recording what a test send hands it."""

    def __init__(self, tmp_path: Path):
        state = tmp_path / "state"
        keys = StoreKeys(SqliteApiKeys(state))
        now = time.time()
        self.key = keys.create("admin", rate_limit=10_000, now=now)[1]
        self.test_key = keys.create("tester", test=True, rate_limit=10_000, now=now)[1]
        self.sending = keys.create("sender", permission="sending_access", now=now)[1]
        self.acme = keys.create("acme-admin", rate_limit=10_000, now=now)[1]
        tenants = SqliteTenants(state)
        tenants.add("acme", limits={}, policy={}, now=now)
        tenants.own("credential", "api:acme-admin", "acme", now)
        self.store = SqliteTemplates(state)
        self.sent: list[tuple[str, dict]] = []

        async def tenant_of(credential: str) -> str:
            return await asyncio.to_thread(tenants.owner, "credential", credential)

        async def send_test(key, doc: dict) -> str:
            self.sent.append((key.name, doc))
            return "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"

        clock = SystemClock()
        self.backend = RuntimeTemplates(self.store, tenant_of, clock, send_test)
        app = create_app(template_routes(self.backend), settings_of=lambda: ApiConfig(),
                         keys=KeyCache(keys, clock), clock=clock)
        self.server = ApiServer(app, "127.0.0.1:0")
        self.url = ""

    async def http(self, method: str, path: str, body: object = None, *,
                   key: str | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=headers,
                                 json=body) as r:
                assert r.headers["Content-Type"].startswith("application/json")
                return r.status, await r.json()

    async def sdk(self, fn, *args, key: str | None = None):
        def call():
            with python_resend(self.url, key or self.key):
                return fn(*args)
        return await asyncio.to_thread(call)

    async def create(self, key: str | None = None, **fields) -> str:
        body = {"name": "Welcome", "html": HTML, "variables": VARIABLES, **fields}
        status, doc = await self.http("POST", "/templates", body, key=key)
        assert status == 200, doc
        return doc["id"]


@contextlib.asynccontextmanager
async def world(tmp_path):
    w = World(tmp_path)
    await w.server.start()
    w.url = w.server.url
    try:
        yield w
    finally:
        await w.server.stop()


async def test_the_python_sdk_drives_the_whole_lifecycle(tmp_path):
    async with world(tmp_path) as w:
        made = await w.sdk(resend.Templates.create, {
            "name": "Welcome", "alias": "welcome", "from": "App <app@example.com>",
            "subject": "Hi {{{NAME}}}", "reply_to": "help@example.com", "html": HTML,
            "variables": VARIABLES})
        assert made["object"] == "template" and made["id"].startswith("tpl_")
        got = await w.sdk(resend.Templates.get, "welcome")
        assert {k: got[k] for k in ("id", "name", "alias", "status", "from", "subject",
                                    "reply_to", "html", "text", "version",
                                    "has_unpublished_changes")} == {
            "id": made["id"], "name": "Welcome", "alias": "welcome", "status": "draft",
            "from": "App <app@example.com>", "subject": "Hi {{{NAME}}}",
            "reply_to": ["help@example.com"], "html": HTML, "text": None, "version": None,
            "has_unpublished_changes": True}
        assert [v["key"] for v in got["variables"]] == ["NAME", "CODE"]
        assert got["published_at"] is None and got["created_at"].endswith("+00:00")
        listed = await w.sdk(resend.Templates.list, {"limit": 10})
        assert listed["has_more"] is False
        assert [(t["id"], t["status"]) for t in listed["data"]] == [(made["id"], "draft")]
        updated = await w.sdk(resend.Templates.update, {"id": made["id"], "subject": "Yo"})
        assert (updated["id"], updated["object"]) == (made["id"], "template")
        published = await w.sdk(resend.Templates.publish, made["id"])
        assert published["id"] == made["id"] and published["version"] == 1
        got = await w.sdk(resend.Templates.get, made["id"])
        assert (got["status"], got["subject"], got["version"]) == ("published", "Yo", 1)
        assert got["published_at"] is not None and not got["has_unpublished_changes"]
        copy = await w.sdk(resend.Templates.duplicate, "welcome")
        assert copy["id"] != made["id"]
        copied = await w.sdk(resend.Templates.get, copy["id"])
        assert (copied["name"], copied["alias"], copied["status"]) == (
            "Welcome (copy)", None, "draft")
        removed = await w.sdk(resend.Templates.remove, "welcome")
        assert (removed["id"], removed["object"], removed["deleted"]) == (made["id"], "template",
                                                                           True)
        with pytest.raises(resend.exceptions.ResendError) as e:
            await w.sdk(resend.Templates.get, made["id"])
        assert "Template not found" in str(e.value)


async def test_publish_versions_and_draft_status(tmp_path):
    async with world(tmp_path) as w:
        tid = await w.create(alias="w")
        assert (await w.http("POST", "/templates/w/publish"))[1]["version"] == 1
        # publishing an unchanged draft again answers the same version
        assert (await w.http("POST", f"/templates/{tid}/publish"))[1] == {
            "id": tid, "object": "template", "version": 1}
        status, _ = await w.http("PATCH", "/templates/w", {"html": "<p>v2 {{{NAME}}}</p>"})
        assert status == 200
        _, got = await w.http("GET", "/templates/w")
        assert (got["status"], got["version"], got["has_unpublished_changes"]) == (
            "draft", 1, True)
        status, _ = await w.http("PUT", "/templates/w", {"name": "Renamed"})   # PUT = PATCH
        assert status == 200 and (await w.http("GET", "/templates/w"))[1]["name"] == "Renamed"
        assert (await w.http("POST", "/templates/w/publish"))[1]["version"] == 2
        status, versions = await w.http("GET", "/templates/w/versions")
        assert status == 200 and versions["object"] == "list"
        assert [(v["version"], v["html"]) for v in versions["data"]] == [
            (2, "<p>v2 {{{NAME}}}</p>"), (1, HTML)]


async def test_preview_renders_draft_or_a_version_and_lists_gaps(tmp_path):
    async with world(tmp_path) as w:
        await w.create(alias="w", subject="For {{{NAME}}}")
        await w.http("POST", "/templates/w/publish")
        await w.http("PATCH", "/templates/w", {"html": "<p>New {{{NAME}}} {{{EXTRA}}}</p>"})
        status, out = await w.http("POST", "/templates/w/preview", {})
        assert status == 200 and out["object"] == "preview"
        assert out["subject"] == "For friend"                # the fallback
        assert "New friend" in out["html"] and out["undeclared"] == ["EXTRA"]
        status, out = await w.http("POST", "/templates/w/preview",
                                   {"version": 1, "variables": {"NAME": "Ann"}})
        assert status == 200 and "Hello Ann" in out["html"] and out["missing"] == ["CODE"]
        status, out = await w.http("POST", "/templates/w/preview",
                                   {"version": "published", "variables": {"CODE": 42}})
        assert status == 200 and "your code is 42" in out["html"] and out["missing"] == []
        for bad in ({"version": 0}, {"version": "latest"}, {"version": True}):
            status, err = await w.http("POST", "/templates/w/preview", bad)
            assert status == 422 and err["message"].startswith("version:")
        status, err = await w.http("POST", "/templates/w/preview", {"variables": [1]})
        assert status == 422 and err["message"].startswith("variables")
        status, err = await w.http("POST", "/templates/w/preview", {"version": 7})
        assert status == 404 and err["message"] == "Template not found"


async def test_test_send_renders_the_draft_strictly(tmp_path):
    async with world(tmp_path) as w:
        await w.create(alias="w", subject="Code {{{CODE}}}", reply_to=["help@example.com"],
                       **{"from": "App <app@example.com>"})
        status, err = await w.http("POST", "/templates/w/test", {"to": "a@example.org"})
        assert status == 422 and "CODE" in err["message"] and w.sent == []
        status, err = await w.http("POST", "/templates/w/test", {"variables": {"CODE": 1}})
        assert status == 422 and err["message"] == "to: required"
        status, out = await w.http("POST", "/templates/w/test",
                                   {"to": "a@example.org", "variables": {"CODE": 7}})
        assert status == 200 and out == {"id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"}
        name, doc = w.sent[-1]
        assert name == "admin"
        assert (doc["from"], doc["to"], doc["subject"], doc["reply_to"]) == (
            "App <app@example.com>", ["a@example.org"], "[Test] Code 7", ["help@example.com"])
        assert "Hello friend, your code is 7" in doc["html"]
        # a test key may send a test (its mail is captured), with its own from
        status, _ = await w.http("POST", "/templates/w/test",
                                 {"to": "b@example.org", "from": "x@example.com",
                                  "variables": {"CODE": 1}}, key=w.test_key)
        assert status == 200 and w.sent[-1][0] == "tester"
        assert w.sent[-1][1]["from"] == "x@example.com"
        nofrom = await w.create()
        status, err = await w.http("POST", f"/templates/{nofrom}/test",
                                   {"to": "a@example.org", "variables": {"CODE": 1}})
        assert status == 422 and err["message"].startswith("from:")


async def test_validation_names_the_field(tmp_path):
    async with world(tmp_path) as w:
        cases = [({"html": HTML}, 422, "missing_required_field", "name: required"),
                 ({"name": "x"}, 422, "missing_required_field", "html: required"),
                 ({"name": "x", "html": HTML, "alias": "Bad Alias"}, 422, "validation_error",
                  "alias:"),
                 ({"name": "x", "html": HTML, "from": "not an address"}, 422,
                  "validation_error", "from:"),
                 ({"name": "x", "html": HTML, "reply_to": ["ok@example.com", "nope"]}, 422,
                  "validation_error", "reply_to[1]:"),
                 ({"name": "x", "html": HTML, "subject": "a\r\nBcc: x@y.z"}, 422,
                  "validation_error", "subject:"),
                 ({"name": "x", "html": HTML, "variables": "NAME"}, 422, "validation_error",
                  "variables"),
                 ({"name": 7, "html": HTML}, 422, "validation_error", "name:"),
                 ({"name": "x", "html": "<p>{{#A}}</p>"}, 422, "validation_error",
                  "html: unclosed section"),
                 ({"name": "x", "html": HTML, "variables": [{"key": "bad key"}]}, 422,
                  "validation_error", "variables[0].key:")]
        for body, status, name, message in cases:
            got_status, err = await w.http("POST", "/templates", body)
            assert (got_status, err["name"]) == (status, name), (body, err)
            assert err["message"].startswith(message), (body, err)
        status, err = await w.http("POST", "/templates", [1])
        assert status == 422 and err["message"].startswith("body:")
        tid = await w.create(alias="taken")
        status, err = await w.http("POST", "/templates",
                                   {"name": "x", "html": HTML, "alias": "taken"})
        assert status == 409 and "alias" in err["message"]
        status, err = await w.http("PATCH", f"/templates/{tid}", {"html": None})
        assert status == 422 and err["message"].startswith("html:")
        # an update is checked on the draft it makes: a fallback needs its variable's type
        status, err = await w.http("PATCH", f"/templates/{tid}", {"variables": [
            {"key": "CODE", "type": "number", "fallback_value": "seven"}]})
        assert status == 422 and err["message"].startswith("variables[0].fallback_value:")
        status, err = await w.http("PATCH", f"/templates/{tid}", {"text": "{{/A}}"})
        assert status == 422 and err["message"].startswith("text:")
        assert w.store.get("default", tid).text is None and w.store.get(
            "default", tid).variables == tuple(VARIABLES)
        status, err = await w.http("GET", "/templates/tpl_" + "0" * 20)
        assert (status, err["name"], err["message"]) == (404, "not_found", "Template not found")
        status, err = await w.http("GET", "/templates/NOT%20A%20REF")
        assert status == 404


async def test_list_pages_newest_first_with_cursors(tmp_path):
    async with world(tmp_path) as w:
        ids = [await w.create(name=f"t{i}") for i in range(5)]
        status, page = await w.http("GET", "/templates?limit=2")
        assert status == 200 and page["has_more"] is True
        assert [t["id"] for t in page["data"]] == ids[::-1][:2]
        _, page2 = await w.http("GET", f"/templates?limit=2&after={page['data'][-1]['id']}")
        assert [t["id"] for t in page2["data"]] == ids[::-1][2:4]
        _, back = await w.http("GET", f"/templates?limit=5&before={page2['data'][0]['id']}")
        assert [t["id"] for t in back["data"]] == ids[::-1][:2] and back["has_more"] is False
        assert set(back["data"][0]) == {"id", "name", "alias", "status", "published_at",
                                        "created_at", "updated_at"}
        for query, field in (("limit=0", "limit"), ("limit=101", "limit"), ("bogus=1", "bogus"),
                             (f"after={ids[0]}&before={ids[1]}", "before"),
                             ("after=tpl_ffffffffffffffffffff", "after")):
            status, err = await w.http("GET", f"/templates?{query}")
            assert status == 422 and err["message"].startswith(f"{field}:"), (query, err)


async def test_keys_permissions_and_tenants(tmp_path):
    async with world(tmp_path) as w:
        tid = await w.create(alias="mine")
        # a test key reads and previews, never changes
        assert (await w.http("GET", f"/templates/{tid}", key=w.test_key))[0] == 200
        assert (await w.http("POST", f"/templates/{tid}/preview", {}, key=w.test_key))[0] == 200
        for method, path, body in (("POST", "/templates", {"name": "x", "html": "y"}),
                                   ("PATCH", f"/templates/{tid}", {"name": "z"}),
                                   ("DELETE", f"/templates/{tid}", None),
                                   ("POST", f"/templates/{tid}/publish", None),
                                   ("POST", f"/templates/{tid}/duplicate", None)):
            status, err = await w.http(method, path, body, key=w.test_key)
            assert (status, err["name"]) == (403, "restricted_api_key"), (method, path)
        # a sending key gets nothing here
        status, err = await w.http("GET", "/templates", key=w.sending)
        assert (status, err["name"]) == (403, "restricted_api_key")
        # another tenant's key sees nothing of the default tenant's templates
        assert (await w.http("GET", f"/templates/{tid}", key=w.acme))[0] == 404
        assert (await w.http("GET", "/templates/mine", key=w.acme))[0] == 404
        assert (await w.http("DELETE", f"/templates/{tid}", key=w.acme))[0] == 404
        assert (await w.http("GET", "/templates", key=w.acme))[1]["data"] == []
        theirs = await w.create(key=w.acme, alias="mine")          # aliases are per tenant
        assert theirs != tid
        assert (await w.http("GET", "/templates/mine", key=w.acme))[1]["id"] == theirs
        assert w.store.get("acme", theirs) is not None and w.store.get("default", theirs) is None


async def test_published_for_the_send_path(tmp_path):
    async with world(tmp_path) as w:
        tid = await w.create(alias="w", subject="S1", **{"from": "a@example.com"})
        assert await w.backend.published("api:admin", "w") is None       # never published
        await w.http("POST", "/templates/w/publish")
        await w.http("PATCH", "/templates/w", {"subject": "S2"})
        await w.http("POST", "/templates/w/publish")
        latest = await w.backend.published("api:admin", "w")
        assert latest == {"id": tid, "version": 2, "name": "Welcome", "from": "a@example.com",
                          "subject": "S2", "reply_to": [], "html": HTML, "text": None,
                          "variables": latest["variables"]}
        assert [v["key"] for v in latest["variables"]] == ["NAME", "CODE"]
        assert (await w.backend.published("api:admin", tid, 1))["subject"] == "S1"
        assert await w.backend.published("api:admin", tid, 3) is None
        assert await w.backend.published("api:acme-admin", tid) is None   # another tenant


async def test_too_many_templates_is_a_clear_422(tmp_path, monkeypatch):
    monkeypatch.setattr(tmod, "MAX_TEMPLATES", 2)
    async with world(tmp_path) as w:
        tid = await w.create()
        await w.create()
        status, err = await w.http("POST", "/templates", {"name": "x", "html": "y"})
        assert status == 422 and err["message"].startswith("templates: at most 2")
        status, err = await w.http("POST", f"/templates/{tid}/duplicate")
        assert status == 422 and err["message"].startswith("templates:")
