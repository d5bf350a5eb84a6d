"""The console in a cluster (issue 19), over HTTP against three real nodes
sharing a real PostgreSQL and Redis (tests/support/cluster.py), and on a
plain single node:

- every page's header names the node serving it ("node A of 3"), and the
  node-scoped pages (overview, messages, destinations) say "this node's
  queue"; a single node shows neither, nor the Cluster link, and
  /console/cluster is a 404 there;
- the Cluster page lists A, B and C (up, heartbeat, version, depth,
  draining) for the operator, and is a 404 for a tenant;
- drain through B's console (a confirmation page, then a CSRF-checked POST:
  without the token 403 and nothing changes) makes B answer SMTP with 421;
  undrain lets it take mail again;
- a message sent through C opens on A's console with its timeline from the
  shared ledger, "held by node C", read-only (no actions; the action routes
  are 404); its tenant sees it, another tenant gets 404.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiosmtplib

from tests.support.cluster import ADMIN_TOKEN, cluster_world
from tests.support.console import console_client
from tests.support.mtahelpers import config_text, free_port, running_daemon

MAIL = b"From: app@relay.test\r\nTo: x@sink.test\r\nSubject: drain\r\n\r\nhello\r\n"


async def eventually(fn: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    end = asyncio.get_running_loop().time() + timeout
    while True:
        got = await fn()
        if got:
            return got
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.05)


def _label(page: str) -> str | None:
    found = re.search(r'id="cluster-node"[^>]*>([^<]*)<', page)
    return found.group(1) if found else None


def _nav(page: str) -> str:
    found = re.search(r'<nav aria-label="Main">(.*?)</nav>', page, re.S)
    assert found, "no navigation"
    return found.group(1)


def _url(w: Any, node: str) -> str:
    admin = w.nodes[node].admin
    assert admin is not None
    return str(admin.url)


async def test_labels_and_the_cluster_page(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        for node in ("A", "B"):
            async with console_client(_url(w, node), ADMIN_TOKEN) as c:
                async def labelled(c=c, node=node):
                    _, page = await c.get("/messages")
                    return page if _label(page) == f"node {node} of 3" else None
                page = await eventually(labelled)
                assert 'id="scope"' in page and "This node's queue" in page
                for path in ("/", "/destinations"):
                    status, page = await c.get(path)
                    assert status == 200, (path, page)
                    assert _label(page) == f"node {node} of 3"
                    assert 'id="scope"' in page and "This node's queue" in page
                status, page = await c.get("/suppressions")      # the cluster's: no scope
                assert status == 200 and _label(page) == f"node {node} of 3"
                assert 'id="scope"' not in page
                assert 'href="/console/cluster"' in _nav(page)

        async with console_client(_url(w, "A"), ADMIN_TOKEN) as c:
            status, page = await c.get("/cluster")
            assert status == 200, page
            rows = re.findall(r'<tr id="node-([A-Z])" data-node', page)
            assert rows == ["A", "B", "C"]
            row_a = re.search(r'<tr id="node-A".*?</tr>', page, re.S).group(0)
            assert "this node" in row_a and ">up<" in row_a
            assert 'id="action-drain"' in page and 'id="degraded"' in page
            assert ADMIN_TOKEN not in page

        async with console_client(_url(w, "A"), w.keys["acme"]) as c:
            status, page = await c.get("/messages")
            assert status == 200 and _label(page) == "node A of 3"
            assert 'href="/console/cluster"' not in _nav(page)
            for path in ("/cluster", "/cluster/confirm?action=drain"):
                status, page = await c.get(path)
                assert status == 404, (path, status)
            status, _, _ = await c.post("/cluster/drain")
            assert status == 404
            assert not w.nodes["A"].cluster.draining


async def test_drain_and_undrain_this_node_from_its_console(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        b = w.nodes["B"].cluster
        async with console_client(_url(w, "B"), ADMIN_TOKEN) as c:
            status, page = await c.get("/cluster/confirm?action=drain")
            assert status == 200 and 'id="confirm-form"' in page
            assert 'action="/console/cluster/drain"' in page
            assert (await c.get("/cluster/confirm?action=explode"))[0] == 400

            status, page, _ = await c.post("/cluster/drain", csrf=None)
            assert status == 403, page
            status, _, _ = await c.post("/cluster/drain", csrf="not-the-token")
            assert status == 403
            assert not b.draining
            await w.smtp_send("B", "app@relay.test", ["x@sink.test"], MAIL)   # still open

            status, _, where = await c.post("/cluster/drain")
            assert status == 303 and where == "/console/cluster"
            assert b.draining
            try:
                await w.smtp_send("B", "app@relay.test", ["x@sink.test"], MAIL)
                raise AssertionError("a draining node took mail")
            except aiosmtplib.SMTPResponseException as exc:
                assert exc.code == 421 and "draining" in exc.message, exc
            status, page = await c.get("/cluster")
            assert "is draining" in page                           # the notice
            assert 'id="action-undrain"' in page
            assert "draining" in re.search(r'id="node-draining">(.*?)</dd>', page,
                                           re.S).group(1)
            assert "draining" in _label(page)

        async with console_client(_url(w, "A"), ADMIN_TOKEN) as c:   # seen from A
            async def b_draining():
                _, page = await c.get("/cluster")
                row = re.search(r'<tr id="node-B".*?</tr>', page, re.S).group(0)
                return "badge warn\">draining" in row
            assert await eventually(b_draining)

        async with console_client(_url(w, "B"), ADMIN_TOKEN) as c:
            status, page = await c.get("/cluster/confirm?action=undrain")
            assert status == 200 and 'action="/console/cluster/undrain"' in page
            status, _, where = await c.post("/cluster/undrain")
            assert status == 303 and where == "/console/cluster"
            assert not b.draining
            await w.smtp_send("B", "app@relay.test", ["x@sink.test"], MAIL)


async def test_a_message_held_by_another_node(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        acme = w.keys["acme"]
        status, body = await w.api("C", acme, "POST", "/emails", json={
            "from": "app@acme.test", "to": ["user@example.net"], "subject": "from C",
            "text": "hello"})
        assert status == 200, body
        qid = body["id"]
        assert await w.nodes["A"].spool.get_message(qid) is None       # C holds it

        async with console_client(_url(w, "A"), ADMIN_TOKEN) as c:
            async def delivered():
                status, page = await c.get(f"/messages/{qid}")
                return page if status == 200 and "badge delivered" in page else None
            page = await eventually(delivered)
            held = re.search(r'id="held-by">(.*?)</p>', page, re.S).group(1)
            assert "Held by node C" in held
            timeline = re.search(r'<table id="timeline".*?</table>', page, re.S).group(0)
            types = re.findall(r'<span class="badge (\w+)">\1</span>', timeline)
            assert types == ["received", "queued", "delivered"]
            assert "user@example.net" in page and "app@acme.test" in page
            assert 'id="actions"' not in page and "data-stream" not in page
            assert (await c.get(f"/messages/{qid}/confirm?action=hold"))[0] == 404
            status, _, _ = await c.post(f"/messages/{qid}/hold")
            assert status == 404
            assert (await c.get("/messages/NOSUCHID0000"))[0] == 404
            status, page = await c.get(f"/messages?id={qid}")          # not in A's queue
            assert status == 200 and f'href="/console/messages/{qid}"' in page

        async with console_client(_url(w, "C"), ADMIN_TOKEN) as c:       # C's own: local
            status, page = await c.get(f"/messages/{qid}")
            assert status == 200 and "Held by this node (C)" in page
            assert 'id="actions"' in page

        async with console_client(_url(w, "A"), acme) as c:
            status, page = await c.get(f"/messages/{qid}")
            assert status == 200 and "Held by node C" in page
        async with console_client(_url(w, "A"), w.keys["beta"]) as c:
            status, page = await c.get(f"/messages/{qid}")
            assert status == 404, page


async def test_a_single_node_shows_nothing_of_a_cluster(tmp_path):
    text = config_text(tmp_path / "state", free_port())
    async with running_daemon(text) as d:
        assert d.admin is not None
        async with console_client(d.admin.url, ADMIN_TOKEN) as c:
            for path in ("/", "/messages", "/destinations"):
                status, page = await c.get(path)
                assert status == 200, (path, page)
                assert 'id="cluster-node"' not in page and 'id="scope"' not in page
                assert 'href="/console/cluster"' not in _nav(page)
            for path in ("/cluster", "/cluster/confirm?action=drain"):
                assert (await c.get(path))[0] == 404
            status, _, _ = await c.post("/cluster/drain")
            assert status == 404
            assert (await c.get("/messages/NOSUCHID0000"))[0] == 404
