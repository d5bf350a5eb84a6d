"""AUTH brute-force throttles shared on Redis by the nodes of a cluster (issue 19).

End to end (real daemons, real Redis, real SMTP over STARTTLS): failed
logins spread over nodes A and B lock the client out by their sum, on every
node; with Redis down each node falls back to its own throttle. Directly
(cluster/authlimit.py over a real Redis, two "nodes" as two SharedTurns
over the local throttles): the per-user count across nodes, a user's known
address getting in past the user's lockout, the in-flight budget across
nodes, and the lockout ending by itself.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiosmtplib
import pytest
import redis.asyncio as aioredis

from mta.cluster.authlimit import AuthLimits, SharedTurns
from mta.core import Clock
from mta.policy.authlimit import FREE, GO, LOCKED, AuthThrottle, UserThrottle
from mta.server.authcheck import AuthTurns
from mta.server.credentials import CredentialStore, valid_username
from tests.support.cluster import ClusterWorld, cluster_world, until
from tests.support.mtahelpers import no_verify_context

PASSWORD = "s3cret-passwd"


async def auth(w: ClusterWorld, node: str, password: str, user: str = "app") -> int:
    """The reply code to one AUTH on a new connection (STARTTLS first)."""
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=w.smtp_port(node), start_tls=True,
                        tls_context=no_verify_context(), timeout=15)
    await c.connect()
    try:
        await c.ehlo()
        resp = await c.auth_plain(user, password)
        return resp.code
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code
    finally:
        c.close()


def _limit_auth(w: ClusterWorld, states: dict[str, Path], failures: int) -> None:
    for name, text in w.texts.items():
        w.texts[name] = text.replace('name = "submission"',
                                     f'name = "submission"\nauth_max_failures = {failures}', 1)
        CredentialStore(states[name] / "credentials.json").add("app", PASSWORD)


async def test_failures_on_two_nodes_lock_the_client_out_by_their_sum(
        tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, start=False) as w:
        _limit_auth(w, w.states, 3)
        for name in ("A", "B", "C"):
            await w.start_node(name)
        assert await auth(w, "A", PASSWORD) == 235        # a success forgets nothing yet
        assert await auth(w, "A", "wrong-1") == 535
        assert await auth(w, "A", "wrong-2") == 535
        # the third failure, on another node: locked (one node alone would say 535)
        assert await auth(w, "B", "wrong-3") == 421
        # and every node refuses this address now, even the right password
        assert await auth(w, "C", PASSWORD) == 421
        assert await auth(w, "A", PASSWORD) == 421


async def test_a_success_forgets_the_addresss_failures_on_every_node(
        tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2, start=False) as w:
        _limit_auth(w, w.states, 3)
        for name in ("A", "B"):
            await w.start_node(name)
        assert await auth(w, "A", "wrong-1") == 535
        assert await auth(w, "B", "wrong-2") == 535
        assert await auth(w, "B", PASSWORD) == 235
        assert await auth(w, "A", "wrong-3") == 535       # counting starts again
        assert await auth(w, "B", "wrong-4") == 535
        assert await auth(w, "B", "wrong-5") == 421       # A's one + B's two



async def test_with_redis_down_each_node_throttles_on_its_own(tmp_path, pg_url, own_redis):
    async with cluster_world(tmp_path, pg_url, own_redis.url(0), n=2, start=False) as w:
        _limit_auth(w, w.states, 3)
        for name in ("A", "B"):
            await w.start_node(name)
        own_redis.stop()
        for name in ("A", "B"):
            node = w.nodes[name].cluster
            assert node is not None
            await until(lambda n=node: not n.redis_available, 10)
        assert await auth(w, "A", "wrong-1") == 535
        assert await auth(w, "A", "wrong-2") == 535
        assert await auth(w, "A", "wrong-3") == 421       # A's own throttle
        assert await auth(w, "B", PASSWORD) == 235        # B counted none of them


# -- cluster/authlimit.py directly, over a real Redis -------------------------------------


class _Clock(Clock):
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


def _node(rds: aioredis.Redis, lockout: float = 300.0, ip_max: int = 5,
          user_max: int = 3) -> SharedTurns:
    local = AuthTurns(_Clock(), AuthThrottle(ip_max, lockout), UserThrottle(user_max, lockout))
    return SharedTurns(local, rds, listener="submission",
                       limits=lambda: AuthLimits(ip_max, user_max, lockout, 0.0, 0.0),
                       valid_user=valid_username, clock=time.time, up=lambda: True,
                       down=lambda exc: None)


@pytest.fixture
async def rds(redis_url):
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_a_users_failures_add_up_and_its_known_address_still_gets_in(rds):
    a, b = _node(rds), _node(rds)
    assert await a.user_begin("alice", "192.0.2.1") == GO
    await a.user_end("alice", "192.0.2.1", GO, True)          # alice's own address
    for node, ip in ((a, "198.51.100.1"), (b, "198.51.100.2"), (a, "198.51.100.3")):
        assert await node.user_begin("alice", ip) == GO
        await node.user_end("alice", ip, GO, False)
    # three failures over two nodes: the user is locked, except from its good address
    assert await b.user_begin("alice", "198.51.100.9") == LOCKED
    assert await b.user_begin("alice", "192.0.2.1") == FREE
    assert await a.user_begin("bob", "198.51.100.9") == GO


async def test_checks_in_flight_on_one_node_hold_the_budget_of_another(rds):
    a, b = _node(rds, ip_max=2), _node(rds, ip_max=2)
    assert await a.ip_begin("203.0.113.5") == (GO, 0.0)
    assert await a.ip_begin("203.0.113.5") == (GO, 0.0)
    turn = asyncio.ensure_future(b.ip_begin("203.0.113.5"))   # no budget left: waits
    await asyncio.sleep(0.3)
    assert not turn.done()
    await a.ip_end("203.0.113.5", False)          # one failure, one check still running
    await asyncio.sleep(0.3)
    assert not turn.done()
    await a.ip_end("203.0.113.5", False)          # two failures: the address is locked
    assert await turn == (LOCKED, 0.0)
    assert await b.locked("203.0.113.5")


async def test_a_lockout_ends_by_itself(rds):
    a, b = _node(rds, lockout=0.5, ip_max=1), _node(rds, lockout=0.5, ip_max=1)
    assert (await a.ip_begin("203.0.113.7"))[0] == GO
    await a.ip_end("203.0.113.7", False)
    assert await b.locked("203.0.113.7")
    for _ in range(100):
        if not await b.locked("203.0.113.7"):
            break
        await asyncio.sleep(0.05)
    assert not await b.locked("203.0.113.7")
    assert (await b.ip_begin("203.0.113.7"))[0] == GO
