"""Webhooks across the cluster (issue 19): every endpoint follows the shared
ledger from its cursor in PostgreSQL, delivered by one node at a time (a
lease); a node SIGKILLed loses the endpoint at the lease's expiry and
another node resumes it: no event id missing, each once after dedupe."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from mta.cluster import ledger as shared
from mta.cluster.db import SharedDb
from tests.support.cluster import cluster_world, until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Hooks:
    """A webhook endpoint on 127.0.0.1 keeping (webhook-id, payload)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _post(self, request: web.Request) -> web.Response:
        self.got.append((request.headers["webhook-id"], json.loads(await request.read())))
        return web.Response(status=204)

    async def __aenter__(self) -> "Hooks":
        app = web.Application()
        app.router.add_post("/hook", self._post)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def ids(self) -> list[str]:
        return [i for i, _ in self.got]

    def delivered(self) -> set[str]:
        return {p["queue_id"] for _, p in self.got if p["type"] == "delivered"}


def _hook(url: str) -> str:
    return (f'[[webhooks]]\nname = "hook"\nurl = "{url}"\nevents = ["*"]\n'
            f'secret = "{SECRET}"\ntimeout = "2s"\n')


async def _db(url: str) -> SharedDb:
    return await SharedDb.open(url, timeout=5, migrations=shared.MIGRATIONS)


async def _poll(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        got = await cond()
        if got:
            return got
        assert time.monotonic() < end, f"timed out: {what}"
        await asyncio.sleep(0.1)


async def _cursor0(db: SharedDb) -> int:
    """Once an endpoint's deliverer has made its cursor: where it started."""
    async def made():
        return await db.call(lambda c: shared.webhook_state(c, "hook"))
    return int((await _poll(made, 15, "the endpoint's cursor"))["cursor"])


async def _shared_after(db: SharedDb, after: int) -> dict[int, str]:
    async def read(c):
        rows = await c.fetch("SELECT seq, node FROM events WHERE seq > $1", after)
        return {r["seq"]: r["node"] for r in rows}
    return await db.call(read)


def _mail(to: str) -> dict:
    return {"from": "app@acme.test", "to": [to], "subject": "hook", "text": "hello"}


async def _send(w, node: str, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        status, body = await w.api(node, w.keys["acme"], "POST", "/emails",
                                   json=_mail(f"{tag}{i}@example.net"))
        assert status == 200, body
        ids.append(body["id"])
    return ids


async def test_every_event_of_every_node_once(tmp_path, pg_url, redis_url):
    async with Hooks() as rx:
        async with cluster_world(tmp_path, pg_url, redis_url, extra=_hook(rx.url)) as w:
            db = await _db(pg_url)
            try:
                start = await _cursor0(db)
                holders = [n for n, d in w.nodes.items() if "hook" in d.cluster.webhook_leases.held]
                assert len(holders) == 1, holders
                ids = []
                for node in "ABC":
                    ids += await _send(w, node, 2, node.lower())
                await until(lambda: rx.delivered() >= set(ids), 20)
                seqs = await _shared_after(db, start)
                await until(lambda: {p["seq"] for _, p in rx.got} >= set(seqs), 10)
                got = [p["seq"] for _, p in rx.got]
                assert len(got) == len(set(got)), "an event was delivered twice"
                assert set(got) == set(seqs)
                assert rx.ids() == [f"evt_{s}" for s in got]
                assert got == sorted(got)                     # in global seq order
                assert {seqs[s] for s in got} == {"A", "B", "C"}
                # the other nodes do not deliver it; every node shows its status
                for name, d in w.nodes.items():
                    st = (await d.webhooks.statuses())[0]
                    assert st["running"] == (name == holders[0])
            finally:
                await db.close()


async def test_a_clean_stop_hands_the_lease_back_at_once(tmp_path, pg_url, redis_url):
    async with Hooks() as rx:
        async with cluster_world(tmp_path, pg_url, redis_url, extra=_hook(rx.url)) as w:
            db = await _db(pg_url)
            try:
                holder = [n for n, d in w.nodes.items()
                          if "hook" in d.cluster.webhook_leases.held][0]
                await w.stop_node(holder)
                # Released at stop: no lease names the stopped node, even
                # though its expiry (node_timeout) has not passed.
                owner, left = (await db.call(shared.leases)).get("hook", ("", 0.0))
                assert owner != holder or left <= 0, (owner, left)
                await until(lambda: any("hook" in d.cluster.webhook_leases.held
                                        for d in w.nodes.values()), 5)
                ids = await _send(w, next(iter(w.nodes)), 1, "after")
                await until(lambda: rx.delivered() >= set(ids), 20)
            finally:
                await db.close()


def _serve(text: str, state: Path) -> subprocess.Popen:
    cfg = state / "serve.toml"
    cfg.write_text(text.replace("[server]\n", "[server]\nworkers = 0\n", 1))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTA_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=open(state / "serve.log", "ab"))


async def test_a_node_sigkilled_hands_the_endpoint_over(tmp_path, pg_url, redis_url):
    async with Hooks() as rx:
        async with cluster_world(tmp_path, pg_url, redis_url, extra=_hook(rx.url),
                                 start=False) as w:
            db = await _db(pg_url)
            proc = _serve(w.texts["C"], w.states["C"])
            try:
                async def c_holds():
                    return (await db.call(shared.leases)).get("hook", ("", 0))[0] == "C"
                await _poll(c_holds, 30, "node C (mta serve) to take the endpoint")
                start = await _cursor0(db)
                for name in "AB":
                    await w.start_node(name)
                assert not any("hook" in d.cluster.webhook_leases.held
                               for d in w.nodes.values())
                first = await _send(w, "A", 2, "a") + await _send(w, "B", 2, "b")
                await until(lambda: rx.delivered() >= set(first), 20)    # C delivered them
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                later = await _send(w, "A", 2, "x") + await _send(w, "B", 2, "y")
                await until(lambda: rx.delivered() >= set(later), 30)    # A or B took over
                holders = [n for n, d in w.nodes.items()
                           if "hook" in d.cluster.webhook_leases.held]
                assert len(holders) == 1, holders
                seqs = await _shared_after(db, start)
                await until(lambda: {p["seq"] for _, p in rx.got} >= set(seqs), 10)
                by_id: dict[str, dict] = {}
                for wid, payload in rx.got:
                    assert by_id.setdefault(wid, payload) == payload   # a repeat is the same
                    assert wid == f"evt_{payload['seq']}"
                assert {p["seq"] for p in by_id.values()} == set(seqs)   # none missing
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                await db.close()


async def test_postgres_away_then_back_every_event_arrives(tmp_path, redis_url):
    from tests.support.engines import MISSING_ENGINES, PostgresServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    pg = await asyncio.to_thread(PostgresServer().start)
    try:
        url = await asyncio.to_thread(pg.new_database)
        async with Hooks() as rx:
            async with cluster_world(tmp_path, url, redis_url, extra=_hook(rx.url)) as w:
                db = await _db(url)
                start = await _cursor0(db)
                await db.close()
                await asyncio.to_thread(pg.stop)
                for i, node in enumerate("ABC"):
                    await w.smtp_send(node, "ops@relay.test", [f"d{i}@example.org"],
                                      b"Subject: s\r\n\r\nbody\r\n")
                await until(lambda: w.sink.transactions >= 3, 20)
                assert rx.got == []                 # nothing to follow while it is away
                await asyncio.to_thread(pg.start)
                db = await _db(url)
                try:
                    await until(lambda: len(rx.delivered()) >= 3, 30)
                    seqs = await _shared_after(db, start)
                    await until(lambda: {p["seq"] for _, p in rx.got} >= set(seqs), 10)
                    assert {seqs[p["seq"]] for _, p in rx.got} == {"A", "B", "C"}
                finally:
                    await db.close()
    finally:
        await asyncio.to_thread(pg.destroy)


async def test_a_replay_asked_on_another_node_is_delivered_by_the_holder(
        tmp_path, pg_url, redis_url):
    async with Hooks() as rx:
        async with cluster_world(tmp_path, pg_url, redis_url, extra=_hook(rx.url)) as w:
            db = await _db(pg_url)
            try:
                start = await _cursor0(db)
                holder = [n for n, d in w.nodes.items()
                          if "hook" in d.cluster.webhook_leases.held][0]
                other = next(n for n in w.nodes if n != holder)
                ids = await _send(w, other, 2, "replay")
                await until(lambda: rx.delivered() >= set(ids), 20)
                seqs = sorted(await _shared_after(db, start))
                await until(lambda: {p["seq"] for _, p in rx.got} >= set(seqs), 10)
                before = len(rx.got)
                # Replay from the first event, asked on a node that does not deliver it.
                status, body = await w.admin(other, "POST", "/v1/webhooks/hook/replay",
                                             json={"from": seqs[0]})
                assert status == 200, body
                await until(lambda: len(rx.got) >= before + len(seqs), 15)
                again = [p["seq"] for _, p in rx.got[before:]]
                assert again[:len(seqs)] == seqs        # each event once more, in order
            finally:
                await db.close()


async def test_with_postgres_away_a_replay_is_429_not_500(tmp_path, own_pg, redis_url):
    async with Hooks() as rx:
        async with cluster_world(tmp_path, own_pg.new_database(), redis_url, n=2,
                                 extra=_hook(rx.url)) as w:
            own_pg.stop()
            try:
                for node in w.nodes:
                    status, body = await w.admin(node, "POST", "/v1/webhooks/hook/replay",
                                                 json={"from": 1})
                    assert status == 429 and body["error"]["code"] == "unavailable", body
            finally:
                own_pg.start()
