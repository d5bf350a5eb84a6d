"""Draining a node (issue 19): the cluster view, drain and undrain, end to end.

Real daemons in one cluster (tests/support/cluster.py: one PostgreSQL, one
Redis, one sink), real sockets, and the real `mta` CLI against a node's
admin API. A drain refuses new mail at every door of that node (SMTP 421
4.3.2 at connect and at MAIL FROM, the sending API 421 node_draining,
/readyz not ready) while its delivery goes on until the queue is empty.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from mta.admin.handlers_cluster import NOT_IN_CLUSTER
from tests.support.cluster import ADMIN_TOKEN, ClusterWorld, cluster_world
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.test_admin_cli import Cli

MAIL = b"From: app@relay.test\r\nTo: x@sink.test\r\nSubject: drain\r\n\r\nhello\r\n"


async def poll(fn: Any, timeout: float = 15.0) -> Any:
    """Await `fn()` until it returns something true (then that), or fail."""
    end = asyncio.get_running_loop().time() + timeout
    while True:
        got = await fn()
        if got:
            return got
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.05)


async def greeting(port: int) -> bytes:
    """The first line a new SMTP connection gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def open_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SMTP session past EHLO (its last 250 line read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO client.test\r\n")
    while not (line := await asyncio.wait_for(reader.readline(), 10)).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    return reader, writer


def send_doc(to: str = "x@sink.test") -> dict[str, Any]:
    return {"from": "app@acme.test", "to": [to], "subject": "drain", "text": "hello"}


async def queued_on(w: ClusterWorld, node: str, rcpt: str) -> str:
    """Submit over SMTP to `node`; the queue id from the 250 reply."""
    _, reply = await w.smtp_send(node, "app@relay.test", [rcpt], MAIL)
    found = re.search(r"queued as (\S+)", reply)
    assert found, reply
    return found.group(1)


async def deferred(w: ClusterWorld, node: str, qid: str) -> bool:
    status, msg = await w.admin(node, "GET", f"/v1/messages/{qid}")
    return status == 200 and msg["recipients"][0]["attempts"] >= 1


async def metrics(w: ClusterWorld, node: str) -> str:
    d = w.nodes[node]
    assert d.admin is not None
    async with aiohttp.ClientSession() as s:
        async with s.get(d.admin.url + "/metrics") as r:
            return await r.text()


async def check_refusals(w: ClusterWorld, node: str, open_first: Any) -> None:
    """Every door of `node` refuses new mail (it is draining)."""
    line = await greeting(w.smtp_port(node))
    assert line.startswith(b"421 4.3.2 mta.test draining: try another node"), line
    reader, writer = open_first        # opened before the drain: MAIL FROM is refused
    writer.write(b"MAIL FROM:<app@relay.test>\r\n")
    line = await asyncio.wait_for(reader.readline(), 10)
    assert line.startswith(b"421 4.3.2 "), line
    assert await asyncio.wait_for(reader.read(), 10) == b""       # and the session closed
    writer.close()
    key = w.keys["acme"]
    for path, doc in (("/emails", send_doc()), ("/emails/batch", [send_doc()])):
        status, body = await w.api(node, key, "POST", path, json=doc)
        assert status == 421, (path, status, body)
        assert body["name"] == "node_draining" and body["statusCode"] == 421, body
    status, ready = await w.admin(node, "GET", "/readyz")
    assert status == 503 and ready["reason"].startswith("draining"), ready


async def check_accepting(w: ClusterWorld, node: str) -> None:
    assert (await greeting(w.smtp_port(node))).startswith(b"220")
    await queued_on(w, node, "ok-accepting@sink.test")
    status, body = await w.api(node, w.keys["acme"], "POST", "/emails", json=send_doc())
    assert status == 200 and body["id"], body
    status, ready = await w.admin(node, "GET", "/readyz")
    assert status == 200 and ready["ready"] is True, ready


async def test_drain_refuses_new_mail_and_delivers_the_queue(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        status, view = await w.admin("A", "GET", "/v1/cluster")
        assert status == 200, view
        rows = {r["name"]: r for r in view["nodes"]}
        assert sorted(rows) == ["A", "B", "C"] and all(r["up"] for r in rows.values())
        assert rows["A"]["this"] and not rows["B"]["this"] and view["node"]["node"] == "A"

        # Mail queued on B: deferred once by the sink, then held so the drain finds it.
        qid = await queued_on(w, "B", "tempfail-1-drain@sink.test")
        await poll(lambda: deferred(w, "B", qid))
        assert (await w.admin("B", "POST", f"/v1/messages/{qid}/hold"))[0] == 200
        before = await open_session(w.smtp_port("B"))

        status, node = await w.admin("B", "POST", "/v1/node/drain")
        assert status == 200, node
        assert node["draining"] and node["queue_depth"] == 1 and not node["drained"]
        await check_refusals(w, "B", before)
        await check_accepting(w, "A")         # the rest of the cluster takes the mail
        assert "mta_cluster_node_draining 1.0" in await metrics(w, "B")
        assert "mta_cluster_node_draining 0.0" in await metrics(w, "A")
        assert 'mta_cluster_engine_up{engine="database"} 1.0' in await metrics(w, "B")
        rows = {r["name"]: r for r in (await w.admin("A", "GET", "/v1/cluster"))[1]["nodes"]}
        assert rows["B"]["draining"] and not rows["A"]["draining"]

        # Delivery goes on while draining: the queue empties, B says "drained".
        assert (await w.admin("B", "POST", f"/v1/messages/{qid}/release"))[0] == 200

        async def drained() -> bool:
            return bool((await w.admin("B", "GET", "/v1/node"))[1]["drained"])
        await poll(drained)
        assert any("tempfail-1-drain@sink.test" in m.rcpt_tos for m in w.sink.messages)

        status, node = await w.admin("B", "POST", "/v1/node/undrain")
        assert status == 200 and not node["draining"] and not node["drained"], node
        await check_accepting(w, "B")
        assert "mta_cluster_node_draining 0.0" in await metrics(w, "B")


async def test_a_drain_survives_the_nodes_restart(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        assert (await w.admin("B", "POST", "/v1/node/drain"))[0] == 200
        await w.stop_node("B")
        rows = {r["name"]: r for r in (await w.admin("A", "GET", "/v1/cluster"))[1]["nodes"]}
        assert rows["B"]["draining"]
        b = await w.start_node("B")
        assert b.cluster is not None and b.cluster.draining
        line = await greeting(w.smtp_port("B"))
        assert line.startswith(b"421 4.3.2 "), line
        status, body = await w.api("B", w.keys["acme"], "POST", "/emails", json=send_doc())
        assert status == 421 and body["name"] == "node_draining"
        status, node = await w.admin("B", "GET", "/v1/node")
        assert status == 200 and node["draining"] and node["drained"], node
        assert (await w.admin("B", "POST", "/v1/node/undrain"))[0] == 200
        await check_accepting(w, "B")


def _cli_config(tmp_path: Path, admin_url: str) -> Path:
    path = tmp_path / f"cli-{free_port()}.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "cli-state"}"\n[admin]\n'
                    f'address = "{admin_url.split("://", 1)[1]}"\ntoken = "{ADMIN_TOKEN}"\n')
    return path


async def test_cli_cluster_status_drain_wait_and_undrain(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        b = w.nodes["B"]
        assert b.admin is not None
        cli = Cli(tmp_path, _cli_config(tmp_path, b.admin.url))
        r = await cli("cluster", "status")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert any(re.match(r"A\s+up\s", ln) for ln in lines), r.stdout
        assert any(re.match(r"B \*\s+up\s.*\bno$", ln) for ln in lines), r.stdout
        r = await cli("cluster", "status", "--json")
        assert [n["name"] for n in json.loads(r.stdout)["nodes"]] == ["A", "B"]

        qid = await queued_on(w, "B", "tempfail-1-cli@sink.test")
        await poll(lambda: deferred(w, "B", qid))
        assert (await w.admin("B", "POST", f"/v1/messages/{qid}/hold"))[0] == 200
        r = await cli("node", "drain", "--wait", "--timeout", "1s")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "draining: 1 message queued" in r.stdout and "timed out" in r.stderr
        r = await cli("cluster", "status")
        assert any(re.match(r"B \*\s+up\s.*\bdraining$", ln) for ln in r.stdout.splitlines())

        assert (await w.admin("B", "POST", f"/v1/messages/{qid}/release"))[0] == 200
        r = await cli("node", "drain", "--wait", "--timeout", "30s")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert r.stdout.rstrip().endswith("B drained: the queue is empty"), r.stdout
        r = await cli("node", "status", "--json")
        assert json.loads(r.stdout)["drained"] is True
        r = await cli("node", "undrain")
        assert r.returncode == 0 and "accepting mail" in r.stdout, (r.stdout, r.stderr)
        assert not (await w.admin("B", "GET", "/v1/node"))[1]["draining"]


async def test_a_single_node_is_not_in_a_cluster(tmp_path):
    text = config_text(tmp_path / "state", free_port())
    async with running_daemon(text) as d:
        assert d.admin is not None
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            for method, path in (("GET", "/v1/cluster"), ("GET", "/v1/node"),
                                 ("POST", "/v1/node/drain"), ("POST", "/v1/node/undrain")):
                async with s.request(method, d.admin.url + path) as r:
                    body = await r.json()
                    assert r.status == 501, (path, body)
                    assert body["error"]["message"] == NOT_IN_CLUSTER
            async with s.post(d.admin.url + "/v1/node/drain", json={"wait": True}) as r:
                assert r.status == 422 and "wait: unknown key" in (await r.json())["error"][
                    "message"]
            async with s.post(d.admin.url + "/v1/node/drain", data=b"[1") as r:
                assert r.status == 400
            async with s.get(d.admin.url + "/readyz") as r:
                assert r.status == 200
            async with s.get(d.admin.url + "/metrics") as r:
                assert "mta_cluster_node_draining" not in await r.text()
        cli = Cli(tmp_path, _cli_config(tmp_path, d.admin.url))
        for args in (("cluster", "status"), ("node", "drain", "--wait")):
            r = await cli(*args)
            assert r.returncode == 1 and "not in a cluster" in r.stderr, (args, r.stderr)


async def test_a_drain_refuses_the_api_with_receiver_processes(tmp_path, pg_url, redis_url):
    """`mta serve` hands API connections to receiver processes: a draining
    node's owner keeps new ones and refuses them (421), then hands them on
    again after the undrain."""
    async with cluster_world(tmp_path, pg_url, redis_url, n=1, start=False) as w:
        w.texts["A"] = w.texts["A"].replace("[server]\n", "[server]\nworkers = 1\n", 1)
        d = await w.start_node("A", processes=True)
        assert d.receivers is not None and d.receivers.pids
        key = w.keys["acme"]

        async def send() -> tuple[int, Any]:
            async with aiohttp.ClientSession() as s:     # a new connection each time
                async with s.post(d.api.url + "/emails", json=send_doc(),
                                  headers={"Authorization": f"Bearer {key}"}) as r:
                    return r.status, await r.json(content_type=None)
        assert (await send())[0] == 200
        status, _ = await w.admin("A", "POST", "/v1/node/drain", json={})
        assert status == 200
        for _ in range(5):
            status, body = await send()
            assert status == 421 and body["name"] == "node_draining", body
        status, _ = await w.admin("A", "POST", "/v1/node/undrain", json={})
        assert status == 200 and (await send())[0] == 200
