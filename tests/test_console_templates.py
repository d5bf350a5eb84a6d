"""The console's Templates pages (mta.console.pages_templates over
mta.runtime.console_templates) on a real daemon: each viewer's list (the
operator's across tenants, paged), a template's page with its versions,
and the preview — the sending API's render: variables in, html escaped,
missing and undeclared names reported, bounded — with hostile variables
refused (422, the form kept), another tenant's templates not found, and
CSRF-less posts refused."""

from __future__ import annotations

import json
import re
import time

import pytest

from mta.spool.templates import SqliteTemplates
from tests.support.accounts import World, accounts_world

VARIABLES = [{"key": "name", "type": "string"},
             {"key": "plan", "type": "string", "fallback_value": "free"},
             {"key": "count", "type": "number"}]


@pytest.fixture
async def world(tmp_path, monkeypatch):
    async with accounts_world(tmp_path, monkeypatch) as w:
        store = SqliteTemplates(w.state)
        now = time.time()
        w.acme = store.create("acme", {
            "name": "Welcome <acme>", "alias": "welcome", "subject": "Hi {{name}} ({{plan}})",
            "html": "<p>Hello {{name}}, {{count}} items {{extra}}</p>",
            "variables": VARIABLES}, now).id
        store.publish("acme", w.acme, now + 1)
        store.update("acme", w.acme, {"subject": "Draft hi {{name}}"}, now + 2)
        w.beta = store.create("beta", {"name": "Beta only", "html": "<p>beta</p>"}, now + 3).id
        yield w


async def _preview(c, tpl: str, variables, version: str = "draft") -> tuple[int, str]:
    text = variables if isinstance(variables, str) else json.dumps(variables)
    status, page, location = await c.post(f"/templates/{tpl}/preview",
                                          {"variables": text, "version": version})
    assert not location                                 # the page itself, never a redirect
    return status, page


def _text(page: str, element: str) -> str:
    found = re.search(rf'id="{element}"[^>]*>(.*?)</', page, re.S)
    assert found, element
    return found.group(1)


async def test_lists_and_a_templates_page(world):
    w = world
    async with w.console() as c:
        status, page = await c.get("/templates")
        assert status == 200 and 'id="templates"' in page
        assert f'id="tpl-{w.acme}"' in page and f'id="tpl-{w.beta}"' in page
        assert "Welcome &lt;acme&gt;" in page and "<acme>" not in page
        status, page = await c.get("/templates?tenant=beta")
        assert f'id="tpl-{w.beta}"' in page and f'id="tpl-{w.acme}"' not in page
        status, page = await c.get(f"/templates/{w.acme}")
        assert status == 200
        for element in ("template", "variables", "versions", "version-1", "preview-form"):
            assert f'id="{element}"' in page, element
        assert "Draft hi {{name}}" in page and "&lt;p&gt;Hello {{name}}" in page
        status, page = await c.get(f"/templates/{w.beta}")
        assert status == 200 and "Beta only" in page
    async with w.console(w.keys["acme"]) as c:
        status, page = await c.get("/templates?tenant=beta")      # a tenant sees its own
        assert f'id="tpl-{w.acme}"' in page and w.beta not in page
        status, page = await c.get("/templates/welcome")         # its alias works
        assert status == 200 and "Welcome &lt;acme&gt;" in page
        status, _ = await c.get(f"/templates/{w.beta}")
        assert status == 404
        status, _ = await _preview(c, w.beta, {})
        assert status == 404


async def test_preview_renders_escapes_and_reports(world):
    w = world
    async with w.console() as c:
        status, page = await _preview(c, w.acme, {"name": "<b>Bob</b> & co", "count": 3})
        assert status == 200 and 'id="preview"' in page
        assert _text(page, "preview-subject") == "Draft hi &lt;b&gt;Bob&lt;/b&gt; &amp; co"
        # the html as mustache escapes it, then escaped again as source for the page
        assert "Hello &amp;lt;b&amp;gt;Bob&amp;lt;/b&amp;gt; &amp;amp; co, 3 items" \
            in _text(page, "preview-html")
        assert "<b>Bob" not in page
        assert 'sandbox title=' in page and 'srcdoc="&lt;p&gt;Hello' in page
        assert "Bob" in _text(page, "preview-text")             # derived from the html
        assert "<code>extra</code>" in _text(page, "preview-undeclared") + "</code>"
        assert 'id="preview-missing"' in page and "<code>extra</code>" in page
        # a declared variable without a value nor fallback is missing; a fallback fills
        status, page = await _preview(c, w.acme, {})
        missing = re.search(r'id="preview-missing">(.*?)</p>', page, re.S).group(1)
        assert "<code>name</code>" in missing and "<code>count</code>" in missing
        assert "plan" not in missing
        # the published version (its subject had the plan in it)
        status, page = await _preview(c, w.acme, {"name": "Ann"}, "published")
        assert status == 200 and _text(page, "preview-subject") == "Hi Ann (free)"
        status, page = await _preview(c, w.acme, {"name": "Ann"}, "1")
        assert _text(page, "preview-subject") == "Hi Ann (free)"
        status, page = await _preview(c, w.acme, {"name": "Ann"}, "2")
        assert status == 404
        status, page = await _preview(c, w.beta, {}, "published")   # never published
        assert status == 404


DEEP = "[" * 10_000 + "]" * 10_000           # past json's recursion limit, under 64 KiB


@pytest.mark.parametrize("variables, version, field", [
    ('{"x": "' + "y" * 70_000 + '"}', "draft", "variables"),
    ("not json", "draft", "variables"),
    ("[1, 2]", "draft", "variables"),
    ('"text"', "draft", "variables"),
    ('{"name": NaN}', "draft", "variables"),
    (DEEP, "draft", "variables"),
    ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "draft", "variables"),
    ('{"count": "three"}', "draft", "variables.count"),
    ('{"n": ' + "9" * 5000 + "}", "draft", "variables"),
    ("{}", "latest", "version"),
    ("{}", "0", "version"),
    ("{}", "-1", "version"),
    ("{}", "9" * 30, "version"),
])
async def test_hostile_previews_are_422_with_the_form_kept(world, variables, version, field):
    w = world
    async with w.console() as c:
        status, page = await _preview(c, w.acme, variables, version)
        assert status == 422, page[:2000]       # over 64 KiB: the page's own limit
        assert "internal error" not in page
        if status == 422:
            assert f"{field}:" in page
        if len(variables) < 1000:
            assert 'id="preview-form"' in page and 'id="preview"' not in page


async def test_a_render_past_its_bounds_is_422(world):
    w = world
    store = SqliteTemplates(w.state)
    tpl = store.create("acme", {"name": "loops", "html": "{{#a}}{{#a}}{{#a}}x{{/a}}{{/a}}{{/a}}",
                                "variables": [{"key": "a", "type": "list"}]}, time.time()).id
    async with w.console() as c:
        status, page = await _preview(c, tpl, {"a": list(range(1000))})
        assert status == 422 and "template:" in page


async def test_pages_and_refusals(world):
    w: World = world
    store, now = SqliteTemplates(w.state), time.time()
    for i in range(55):
        store.create("beta", {"name": f"bulk {i:02d}", "html": "<p>x</p>"}, now + 10 + i)
    async with w.console(w.keys["beta"]) as c:
        status, page = await c.get("/templates")
        ids = re.findall(r'id="tpl-(tpl_[0-9a-f]{20})"', page)
        assert len(ids) == 50 and 'id="next-page"' in page and "bulk 54" in page
        nxt = re.search(r'id="next-page"', page) and re.search(r'after=(tpl_[0-9a-f]{20})',
                                                                page).group(1)
        status, page = await c.get(f"/templates?after={nxt}")
        rest = re.findall(r'id="tpl-(tpl_[0-9a-f]{20})"', page)
        assert len(rest) == 6 and w.beta in rest and 'id="next-page"' not in page
        # acme's id as a cursor names nothing in beta's list
        status, _ = await c.get(f"/templates?after={w.acme}")
        assert status == 400
        status, _, _ = await c.post(f"/templates/{w.beta}/preview", {"variables": "{}"},
                                    csrf=None)
        assert status == 403
    async with w.console() as c:
        for path in ("/templates?after=nope", "/templates?tenant=BAD%00",
                     "/templates?tenant=" + "a" * 100, "/templates?after=tpl_" + "0" * 20):
            status, page = await c.get(path)
            assert status == 400, path
        for path in ("/templates/welcome",                    # an alias: per tenant
                     "/templates/tpl_" + "0" * 20, "/templates/%00", "/templates/" + "a" * 70,
                     "/templates/<script>"):
            status, _ = await c.get(path)
            assert status == 404, path
