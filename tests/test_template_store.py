"""The template store (mta/spool/templates.py) on a real index file in
tmp_path: drafts and immutable versions, publish semantics, tenant
isolation, refs by alias, newest-first paging, limits and refusals."""

from __future__ import annotations

import sqlite3

import pytest

from mta.spool import templates as tmod
from mta.spool.templates import (MAX_TEMPLATES, TEMPLATE_ID, SqliteTemplates, TemplateExists,
                                 TemplateRefused, TemplateStoreError)

T0 = 1_700_000_000.0
VARS = [{"key": "NAME", "type": "string", "fallback_value": "friend"}]


def fields(**kw):
    base = {"name": "Welcome", "html": "<p>Hi {{{NAME}}}</p>", "subject": "Hi {{{NAME}}}",
            "sender": "App <app@example.com>", "reply_to": ["help@example.com"],
            "variables": VARS}
    base.update(kw)
    return base


@pytest.fixture
def store(tmp_path):
    return SqliteTemplates(tmp_path / "state")


def test_reads_without_an_index_create_nothing(tmp_path, store):
    assert store.get("default", "tpl_" + "0" * 20) is None
    assert store.list("default", 10) == ([], False)
    assert store.versions("default", "x") is None and store.version("default", "x") is None
    assert store.update("default", "x", {"name": "n"}, T0) is None
    assert store.publish("default", "x", T0) is None
    assert store.duplicate("default", "x", T0) is None
    assert store.delete("default", "x") is False
    assert not (tmp_path / "state").exists()


def test_create_then_get_by_id_and_alias(store):
    row = store.create("acme", fields(alias="welcome", text=None), T0)
    assert TEMPLATE_ID.fullmatch(row.id)
    assert (row.name, row.alias, row.sender, row.subject) == (
        "Welcome", "welcome", "App <app@example.com>", "Hi {{{NAME}}}")
    assert row.reply_to == ("help@example.com",) and row.variables == tuple(VARS)
    assert row.text is None and row.status == "draft" and row.published_version == 0
    assert (row.created, row.updated, row.published_at) == (T0, T0, None)
    assert store.get("acme", row.id) == row == store.get("acme", "welcome")
    assert store.create("acme", fields(text=""), T0).text == ""   # "" is kept: no text part


def test_publish_makes_immutable_versions_and_status_follows_the_draft(store):
    row = store.create("acme", fields(alias="w"), T0)
    v1 = store.publish("acme", "w", T0 + 1)
    assert (v1.version, v1.html, v1.published_at) == (1, row.html, T0 + 1)
    got = store.get("acme", row.id)
    assert (got.status, got.published_version, got.published_at) == ("published", 1, T0 + 1)
    # publishing an unchanged draft answers the latest version, no new row
    assert store.publish("acme", row.id, T0 + 2) == v1
    assert len(store.versions("acme", row.id)) == 1
    # editing the draft leaves version 1 as it was and makes the template a draft
    edited = store.update("acme", "w", {"html": "<p>Bye</p>"}, T0 + 3)
    assert (edited.status, edited.updated, edited.html) == ("draft", T0 + 3, "<p>Bye</p>")
    assert store.version("acme", "w") == v1 and store.version("acme", "w", 1).html == row.html
    # renaming is not a content change
    assert store.update("acme", "w", {"html": row.html, "name": "New"}, T0 + 4).status \
        == "published"
    store.update("acme", "w", {"html": "<p>Bye</p>"}, T0 + 5)
    v2 = store.publish("acme", "w", T0 + 6)
    assert v2.version == 2 and v2.html == "<p>Bye</p>"
    assert [v.version for v in store.versions("acme", "w")] == [2, 1]
    assert store.version("acme", "w") == v2 and store.version("acme", "w", 1) == v1
    assert store.version("acme", "w", 3) is None
    assert store.get("acme", "w").published_version == 2


def test_versions_are_never_updated_in_the_table(store, tmp_path):
    store.create("acme", fields(alias="w"), T0)
    store.publish("acme", "w", T0)
    db = sqlite3.connect(tmp_path / "state" / "spool" / "index.sqlite3")
    before = db.execute("SELECT * FROM template_versions").fetchall()
    store.update("acme", "w", {"html": "x", "subject": "y", "variables": []}, T0 + 1)
    assert db.execute("SELECT * FROM template_versions").fetchall() == before


def test_unpublished_template_has_no_version(store):
    store.create("acme", fields(alias="w"), T0)
    assert store.version("acme", "w") is None and store.versions("acme", "w") == []


def test_tenants_never_see_each_other(store):
    a = store.create("a", fields(alias="same"), T0)
    b = store.create("b", fields(alias="same"), T0)      # aliases are per tenant
    assert store.get("a", "same").id == a.id and store.get("b", "same").id == b.id
    assert store.get("b", a.id) is None
    assert store.update("b", a.id, {"name": "x"}, T0) is None
    assert store.publish("b", a.id, T0) is None and store.duplicate("b", a.id, T0) is None
    assert store.delete("b", a.id) is False and store.versions("b", a.id) is None
    assert [r.id for r in store.list("a", 10)[0]] == [a.id]
    store.publish("a", a.id, T0)
    assert store.version("b", a.id) is None
    with pytest.raises(TemplateRefused) as e:
        store.list("b", 10, after=a.id)          # another tenant's id is no cursor
    assert e.value.field == "after"


def test_alias_unique_per_tenant_and_well_formed(store):
    store.create("acme", fields(alias="w"), T0)
    with pytest.raises(TemplateExists, match="alias"):
        store.create("acme", fields(alias="w"), T0)
    other = store.create("acme", fields(), T0)
    with pytest.raises(TemplateExists):
        store.update("acme", other.id, {"alias": "w"}, T0)
    for bad in ("Caps", "has space", "x" * 65, "", "tpl_0123456789abcdef0123"):
        with pytest.raises(TemplateRefused) as e:
            store.create("acme", fields(alias=bad), T0)
        assert e.value.field == "alias"
    # an alias can be cleared and then reused
    store.update("acme", "w", {"alias": None}, T0)
    assert store.update("acme", other.id, {"alias": "w"}, T0).alias == "w"


def test_bad_fields_are_refused_by_name(store):
    cases = [({"name": ""}, "name"), ({"name": "a\nb"}, "name"), ({"name": 5}, "name"),
             ({"html": None}, "html"), ({"bogus": 1}, "bogus"), ({"reply_to": "x"}, "reply_to"),
             ({"variables": [1]}, "variables"), ({"subject": 3}, "subject")]
    for change, field in cases:
        with pytest.raises(TemplateRefused) as e:
            store.create("acme", fields(**change), T0)
        assert e.value.field == field and str(e.value).startswith(f"{field}: ")
    with pytest.raises(TemplateRefused) as e:
        store.create("acme", {"name": "x"}, T0)
    assert e.value.field == "html"


def test_list_is_newest_first_with_cursors(store):
    ids = [store.create("acme", fields(name=f"t{i}"), T0 + i).id for i in range(7)]
    newest = ids[::-1]
    page, more = store.list("acme", 3)
    assert [r.id for r in page] == newest[:3] and more
    page2, more2 = store.list("acme", 3, after=page[-1].id)
    assert [r.id for r in page2] == newest[3:6] and more2
    page3, more3 = store.list("acme", 3, after=page2[-1].id)
    assert [r.id for r in page3] == newest[6:] and not more3
    back, more_back = store.list("acme", 2, before=page2[0].id)
    assert [r.id for r in back] == newest[1:3] and more_back
    assert store.list("acme", 10, before=newest[0]) == ([], False)
    assert [r.id for r in store.list("acme", 100)[0]] == newest


def test_list_orders_ties_by_id(store):
    ids = sorted(store.create("acme", fields(), T0).id for _ in range(4))
    page, _ = store.list("acme", 2)
    assert [r.id for r in page] == ids[::-1][:2]
    assert [r.id for r in store.list("acme", 5, after=page[-1].id)[0]] == ids[::-1][2:]


def test_list_refuses_bad_cursors(store):
    store.create("acme", fields(), T0)
    with pytest.raises(TemplateRefused) as e:
        store.list("acme", 10, before="tpl_" + "f" * 20)
    assert e.value.field == "before"
    with pytest.raises(TemplateRefused):
        store.list("acme", 0)


def test_duplicate_copies_the_draft_as_a_new_unpublished_template(store):
    row = store.create("acme", fields(alias="w"), T0)
    store.publish("acme", "w", T0)
    store.update("acme", "w", {"html": "<p>draft</p>"}, T0 + 1)
    copy = store.duplicate("acme", "w", T0 + 2)
    assert copy.id != row.id and copy.name == "Welcome (copy)" and copy.alias is None
    assert (copy.html, copy.status, copy.published_version, copy.created) == (
        "<p>draft</p>", "draft", 0, T0 + 2)
    assert copy.variables == row.variables and store.versions("acme", copy.id) == []
    long = store.create("acme", fields(name="n" * 255), T0)
    assert len(store.duplicate("acme", long.id, T0).name) == 255


def test_delete_takes_the_versions_with_it(store, tmp_path):
    row = store.create("acme", fields(alias="w"), T0)
    store.publish("acme", "w", T0)
    assert store.delete("acme", "w") is True
    assert store.get("acme", row.id) is None and store.delete("acme", row.id) is False
    db = sqlite3.connect(tmp_path / "state" / "spool" / "index.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM template_versions").fetchone() == (0,)
    # the alias is free again
    assert store.create("acme", fields(alias="w"), T0).alias == "w"


def test_at_most_max_templates_per_tenant(store, monkeypatch):
    monkeypatch.setattr(tmod, "MAX_TEMPLATES", 3)
    made = [store.create("acme", fields(), T0) for _ in range(3)]
    with pytest.raises(TemplateRefused, match="at most 3 templates") as e:
        store.create("acme", fields(), T0)
    assert e.value.field == "templates"
    with pytest.raises(TemplateRefused):
        store.duplicate("acme", made[0].id, T0)
    store.create("other", fields(), T0)             # per tenant
    store.delete("acme", made[0].id)
    store.create("acme", fields(), T0)
    assert MAX_TEMPLATES == 1000


def test_refuses_to_create_an_index_beside_orphan_segments(tmp_path, store):
    seg = tmp_path / "state" / "spool" / "segments"
    seg.mkdir(parents=True)
    (seg / "00000001.seg").write_bytes(b"x")
    with pytest.raises(TemplateStoreError, match="repair"):
        store.create("acme", fields(), T0)


def test_versions_are_bounded(store, monkeypatch):
    monkeypatch.setattr(tmod, "MAX_VERSIONS", 2)
    t = store.create("acme", fields(), 1.0)
    for n in (1, 2):
        store.update("acme", t.id, {"html": f"<p>{n}</p>"}, 1.0 + n)
        assert store.publish("acme", t.id, 2.0 + n).version == n
    store.update("acme", t.id, {"html": "<p>3</p>"}, 9.0)
    with pytest.raises(TemplateRefused) as info:
        store.publish("acme", t.id, 10.0)
    assert "at most 2 versions" in str(info.value)
    assert [v.version for v in store.versions("acme", t.id)] == [2, 1]
