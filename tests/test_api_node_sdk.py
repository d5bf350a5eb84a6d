"""The sending API driven by the official Resend Node SDK (npm `resend`,
pinned in tests/sdk/node) from pytest (issue 13): a real daemon with `[api]`
on loopback, mail delivered to a real SMTP sink, domains verified against
the test DNS server. Node takes camelCase (replyTo, scheduledAt, contentType,
contentId) and sends snake_case; Buffers become base64. Errors come back as
the SDK returns them: `error.statusCode` (from our body) and `error.name`."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import hashlib
import os
import time
from typing import Any

import pytest

from mta.api.keys import StoreKeys
from mta.spool.apikeys import SqliteApiKeys
from tests.support.resend_sdk import node_available, run_node
from tests.test_api_openapi import ApiWorld, api_world
from tests.test_dkim import dkimpy_results

_OK, _WHY = node_available()
pytestmark = pytest.mark.skipif(not _OK, reason=_WHY)

MAX_REQUEST = 1024 * 1024
SEND = {"from": "Acme <team@acme.test>", "to": "ok@rcpt.test", "subject": "hi", "text": "x"}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
async def world(tmp_path):
    async with api_world(tmp_path, "127.0.0.163", f"max_request_size = {MAX_REQUEST}\n") as w:
        async with w.running():
            yield w


async def node(w: ApiWorld, ops: list[dict[str, Any]], key: str | None = None,
               via: str = "option") -> list[dict[str, Any]]:
    out = await asyncio.to_thread(run_node, w.url, key or w.key, ops, 60, via)
    for result in out:
        assert "exception" not in result, result
    return out


def ok(result: dict[str, Any]) -> Any:
    assert result["error"] is None, result
    return result["data"]


def failed(result: dict[str, Any], status: int, name: str) -> dict[str, Any]:
    err = result["error"]
    assert result["data"] is None and err is not None, result
    assert (err["statusCode"], err["name"]) == (status, name), err
    assert isinstance(err["message"], str) and err["message"]
    return err


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


async def test_send_attachments_inline_tags_cc_bcc(world):
    blob, png, text = os.urandom(200_000), os.urandom(3000), "notes ✓\n".encode()
    html = '<p>Hello <b>there</b> <img src="cid:logo"></p>'
    (res,) = await node(world, [{"op": "emails.send", "args": {
        "from": "Acme Team <team@acme.test>", "to": ["ok-1@rcpt.test"],
        "cc": "ok-2@rcpt.test", "bcc": ["ok-3@rcpt.test"], "replyTo": "help@acme.test",
        "subject": "Welcome, Zoë", "html": html, "headers": {"X-Entity-Ref-ID": "n-1"},
        "tags": [{"name": "category", "value": "welcome"}],
        "attachments": [
            {"filename": "data.bin", "content_b64": base64.b64encode(blob).decode()},
            {"filename": "notes.txt", "content_b64": base64.b64encode(text).decode(),
             "contentType": "text/plain"},
            {"filename": "logo.png", "content_b64": base64.b64encode(png).decode(),
             "contentType": "image/png", "contentId": "logo"}]}}])
    qid = ok(res)["id"]
    assert res["headers"]["ratelimit-limit"]
    (m,) = await world.sink.wait_for(1, timeout=20)
    assert sorted(m.rcpt_tos) == ["ok-1@rcpt.test", "ok-2@rcpt.test", "ok-3@rcpt.test"]
    msg = parse(m.data)
    assert msg["Bcc"] is None and b"ok-3@rcpt.test" not in m.data
    assert msg["Subject"] == "Welcome, Zoë" and msg["X-Entity-Ref-ID"] == "n-1"
    assert msg["Reply-To"] == "help@acme.test" and msg["Cc"] == "ok-2@rcpt.test"
    assert qid in msg["Received"]
    parts = {p.get_filename(): p for p in msg.walk() if p.get_filename()}
    assert sha(parts["data.bin"].get_payload(decode=True)) == sha(blob)
    assert sha(parts["notes.txt"].get_payload(decode=True)) == sha(text)
    assert sha(parts["logo.png"].get_payload(decode=True)) == sha(png)
    assert parts["notes.txt"].get_content_type() == "text/plain"
    logo = parts["logo.png"]
    assert logo["Content-ID"] == "<logo>" and logo.get_content_type() == "image/png"
    related = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
    assert related and logo in related[0].iter_parts()
    assert "Hello there" in msg.get_body(("plain",)).get_content()   # derived from html

    got, events = await node(world, [{"op": "emails.get", "args": {"id": qid}},
                                     {"op": "emails.list", "args": {"limit": 5}}])
    got, listed = ok(got), ok(events)
    assert got["id"] == qid and got["object"] == "email" and got["subject"] == "Welcome, Zoë"
    assert got["tags"] == [{"name": "category", "value": "welcome"}]
    assert got["bcc"] == ["ok-3@rcpt.test"] and got["reply_to"] == ["help@acme.test"]
    assert got["html"] == html
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [qid]
    status, timeline, _ = await world.http("GET", f"/emails/{qid}/events")
    assert timeline["data"][0]["detail"]["tags"] == [{"name": "category", "value": "welcome"}]


async def test_idempotency_sequential_and_concurrent(world):
    once = {"op": "emails.send", "args": {**SEND, "subject": "once"},
            "options": {"idempotencyKey": "order-1"}}
    first, again, other = await node(world, [
        once, once, {**once, "args": {**SEND, "subject": "twice"}}])
    assert ok(first)["id"] == ok(again)["id"]
    failed(other, 409, "invalid_idempotent_request")
    (conc,) = await node(world, [{"op": "emails.send", "concurrent": 6,
                                  "args": {**SEND, "subject": "conc"},
                                  "options": {"idempotencyKey": "order-2"}}])
    ids = {r["data"]["id"] for r in conc["results"] if r["error"] is None}
    assert len(ids) == 1, conc
    for r in conc["results"]:
        if r["error"] is not None:
            failed(r, 409, "concurrent_idempotent_requests")
    await world.sink.wait_for(2, timeout=20)
    await asyncio.sleep(0.5)
    assert sorted(parse(m.data)["Subject"] for m in world.sink.messages) == ["conc", "once"]
    assert world.queued() == 2


async def test_batch_scheduled_cancel_and_reschedule(world):
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    batch, one, two = await node(world, [
        {"op": "batch.send", "args": [{**SEND, "to": f"ok-{i}@rcpt.test", "subject": f"b{i}"}
                                      for i in range(3)]},
        {"op": "emails.send", "args": {**SEND, "subject": "later-1", "scheduledAt": later}},
        {"op": "emails.send", "args": {**SEND, "subject": "later-2", "scheduledAt": later}}])
    ids = [x["id"] for x in ok(batch)["data"]]
    assert len(set(ids)) == 3
    await world.sink.wait_for(3, timeout=20)
    one, two = ok(one)["id"], ok(two)["id"]
    now = dt.datetime.now(dt.UTC).isoformat()
    got, cancel, after, update, again = await node(world, [
        {"op": "emails.get", "args": {"id": one}},
        {"op": "emails.cancel", "args": {"id": one}},
        {"op": "emails.get", "args": {"id": one}},
        {"op": "emails.update", "args": {"id": two, "scheduledAt": now}},
        {"op": "emails.cancel", "args": {"id": one}}])
    assert ok(got)["last_event"] == "scheduled" and ok(got)["scheduled_at"]
    assert ok(cancel) == {"object": "email", "id": one}
    assert ok(after)["last_event"] == "canceled"
    assert ok(update) == {"object": "email", "id": two}
    failed(again, 409, "invalid_state")
    await world.sink.wait_for(4, timeout=20)
    await asyncio.sleep(0.3)
    subjects = sorted(parse(m.data)["Subject"] for m in world.sink.messages)
    assert subjects == ["b0", "b1", "b2", "later-2"]         # the cancelled one never went


async def test_api_keys_create_list_remove(world):
    made, listed = await node(world, [
        {"op": "apiKeys.create", "args": {"name": "node-ci", "permission": "sending_access"}},
        {"op": "apiKeys.list", "args": {}}])
    made = ok(made)
    assert made["token"].startswith("mta_live_") and made["permission"] == "sending_access"
    names = {k["name"] for k in ok(listed)["data"]}
    assert {"full", "sender", "node-ci"} <= names
    assert made["token"] not in str(ok(listed))
    (sent,) = await node(world, [{"op": "emails.send", "args": SEND}], key=made["token"],
                         via="env")
    assert ok(sent)["id"]
    removed, gone = await node(world, [{"op": "apiKeys.remove", "args": {"id": made["id"]}},
                                       {"op": "apiKeys.remove", "args": {"id": made["id"]}}])
    assert ok(removed) == {"object": "api_key", "id": made["id"], "deleted": True}
    failed(gone, 404, "not_found")
    (refused,) = await node(world, [{"op": "emails.send", "args": SEND}], key=made["token"])
    failed(refused, 401, "invalid_api_key")


async def test_domains_create_verify_and_signed_mail(world):
    name = "node.acme.test"
    made, listed, got = await node(world, [
        {"op": "domains.create", "args": {"name": name}},
        {"op": "domains.list", "args": {}},
        {"op": "domains.get", "args": {"id": name}}])
    made = ok(made)
    assert made["id"] == name and made["status"] == "not_started" and made["records"]
    assert [d["id"] for d in ok(listed)["data"]] == [name]
    assert ok(got)["status"] == "not_started"
    world.publish(made["records"])
    verified, got = await node(world, [{"op": "domains.verify", "args": {"id": name}},
                                       {"op": "domains.get", "args": {"id": name}}])
    assert ok(verified)["id"] == name
    got = ok(got)
    assert got["status"] == "verified", got
    assert {r["status"] for r in got["records"]} == {"verified"}
    (sent,) = await node(world, [{"op": "emails.send", "args": {
        **SEND, "from": f"News <news@{name}>", "subject": "signed"}}])
    ok(sent)
    (m,) = await world.sink.wait_for(1, timeout=20)
    assert m.data.count(b"DKIM-Signature:") >= 1
    assert all(dkimpy_results(m.data, world.dns)), "the DKIM signatures must verify"
    missing, removed = await node(world, [{"op": "domains.get", "args": {"id": "nope.test"}},
                                          {"op": "domains.remove", "args": {"id": name}}])
    failed(missing, 404, "not_found")
    assert ok(removed)["deleted"] is True


async def test_every_error_status(world):
    store = StoreKeys(SqliteApiKeys(str(world.state)))
    pinned = store.create("pinned", domains=["other.test"], rate_limit=1000,
                          now=time.time())[1]
    slow = store.create("slow", rate_limit=1, now=time.time())[1]
    (bad_key,) = await node(world, [{"op": "emails.send", "args": SEND}],
                            key="mta_live_aaaaaaaaaaaa_" + "x" * 43)
    failed(bad_key, 401, "invalid_api_key")
    (scope,) = await node(world, [{"op": "emails.list", "args": {}}], key=world.sending)
    failed(scope, 403, "restricted_api_key")
    (domain,) = await node(world, [{"op": "emails.send", "args": SEND}], key=pinned)
    assert failed(domain, 403, "validation_error")["message"].find("acme.test") >= 0
    missing, first, reused, big, crlf, bad_att = await node(world, [
        {"op": "emails.get", "args": {"id": "0000000000000000"}},
        {"op": "emails.send", "args": SEND, "options": {"idempotencyKey": "e-1"}},
        {"op": "emails.send", "args": {**SEND, "subject": "other"},
         "options": {"idempotencyKey": "e-1"}},
        {"op": "emails.send", "args": {**SEND, "attachments": [
            {"filename": "big.bin", "content_b64": base64.b64encode(
                os.urandom(MAX_REQUEST)).decode()}]}},
        {"op": "emails.send", "args": {**SEND, "subject": "hi\r\nBcc: x@evil.test"}},
        {"op": "emails.send", "args": {**SEND, "attachments": [
            {"filename": "a.pdf", "path": "https://evil.test/a.pdf"}]}}])
    failed(missing, 404, "not_found")
    ok(first)
    failed(reused, 409, "invalid_idempotent_request")
    failed(big, 413, "payload_too_large")
    assert "subject" in failed(crlf, 422, "validation_error")["message"]
    assert "attachments[0].path" in failed(bad_att, 422, "invalid_attachment")["message"]
    (burst,) = await node(world, [{"op": "emails.list", "concurrent": 5, "args": {}}],
                          key=slow)
    limited = [r for r in burst["results"] if r["error"] is not None]
    assert limited, burst
    for r in limited:
        failed(r, 429, "rate_limit_exceeded")
        assert int(r["headers"]["retry-after"]) >= 1 and r["headers"]["ratelimit-limit"] == "1"
    await world.sink.wait_for(1, timeout=20)
    await asyncio.sleep(0.3)
    assert world.queued() == 1 and len(world.sink.messages) == 1


async def test_templates_lifecycle_and_a_templated_send(world):
    variables = [{"key": "NAME", "type": "string", "fallbackValue": "friend"},
                 {"key": "CODE", "type": "number"}]          # the SDK sends fallback_value
    made, got, listed = await node(world, [
        {"op": "templates.create", "args": {
            "name": "Welcome", "alias": "welcome-node", "from": "Acme <team@acme.test>",
            "subject": "Hi {{{NAME}}}", "replyTo": "help@acme.test",
            "html": "<p>Hi {{NAME}}</p>", "variables": variables}},
        {"op": "templates.get", "args": {"id": "welcome-node"}},
        {"op": "templates.list", "args": {"limit": 10}}])
    made = ok(made)
    tid = made["id"]
    assert made == {"id": tid, "object": "template"} and tid.startswith("tpl_")
    got = ok(got)
    assert (got["id"], got["object"], got["name"], got["alias"], got["status"]) == (
        tid, "template", "Welcome", "welcome-node", "draft")
    assert (got["from"], got["reply_to"], got["published_at"]) == (
        "Acme <team@acme.test>", ["help@acme.test"], None)
    assert [(v["key"], v["type"], v.get("fallback_value")) for v in got["variables"]] == [
        ("NAME", "string", "friend"), ("CODE", "number", None)]
    listed = ok(listed)
    assert listed["object"] == "list" and listed["has_more"] is False
    assert [(t["id"], t["alias"], t["status"]) for t in listed["data"]] == [
        (tid, "welcome-node", "draft")]

    html = "<p>Hello {{NAME}}, your code is {{CODE}}</p>"
    updated, published, after, copy = await node(world, [
        {"op": "templates.update", "args": {"id": tid, "subject": "Welcome, {{{NAME}}}",
                                            "html": html}},
        {"op": "templates.publish", "args": {"id": "welcome-node"}},
        {"op": "templates.get", "args": {"id": tid}},
        {"op": "templates.duplicate", "args": {"id": tid}}])
    assert ok(updated) == {"id": tid, "object": "template"}
    assert ok(published)["id"] == tid and ok(published)["object"] == "template"
    after = ok(after)
    assert (after["status"], after["subject"], after["html"]) == (
        "published", "Welcome, {{{NAME}}}", html)
    assert after["published_at"] is not None
    copy_id = ok(copy)["id"]
    assert copy_id != tid and copy_id.startswith("tpl_") and ok(copy)["object"] == "template"

    name = '<b>Zoë & "co"</b>'
    copied, draft, by_alias, by_id = await node(world, [
        {"op": "templates.get", "args": {"id": copy_id}},
        {"op": "templates.update", "args": {"id": tid, "subject": "DRAFT {{{NAME}}}"}},
        {"op": "emails.send", "args": {"to": "ok-1@rcpt.test", "template": {
            "id": "welcome-node", "variables": {"NAME": name, "CODE": 1234}}}},
        {"op": "emails.send", "args": {"to": "ok-2@rcpt.test", "template": {
            "id": tid, "variables": {"CODE": 7}}}}])
    assert (ok(copied)["name"], ok(copied)["alias"], ok(copied)["status"]) == (
        "Welcome (copy)", None, "draft")
    ok(draft)
    assert ok(by_alias)["id"] and ok(by_id)["id"]
    await world.sink.wait_for(2, timeout=20)
    got_mail = {m.rcpt_tos[0]: parse(m.data) for m in world.sink.messages}
    first, second = got_mail["ok-1@rcpt.test"], got_mail["ok-2@rcpt.test"]
    # the published version, not the later draft; raw in the subject, escaped in html
    assert first["Subject"] == f"Welcome, {name}" and second["Subject"] == "Welcome, friend"
    assert first["From"] == "Acme <team@acme.test>" and first["Reply-To"] == "help@acme.test"
    assert first.get_body(("html",)).get_content().strip() == (
        "<p>Hello &lt;b&gt;Zoë &amp; &quot;co&quot;&lt;/b&gt;, your code is 1234</p>")
    assert "<b>" not in first.get_body(("html",)).get_content()
    assert second.get_body(("html",)).get_content().strip() == (
        "<p>Hello friend, your code is 7</p>")

    removed, gone, kept = await node(world, [
        {"op": "templates.remove", "args": {"id": "welcome-node"}},
        {"op": "templates.get", "args": {"id": tid}},
        {"op": "templates.get", "args": {"id": copy_id}}])
    assert ok(removed) == {"id": tid, "object": "template", "deleted": True}
    assert "Template not found" in failed(gone, 404, "not_found")["message"]
    assert ok(kept)["id"] == copy_id
