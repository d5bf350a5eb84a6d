"""Operators look across tenants (issue 14): `--tenant` on `mta queue list|
hold|release|retry|bounce|delete` and `mta events tail`, and `tenant` on
/v1/messages, the bulk moves' bodies and /v1/events, against a real daemon.

Two tenants (acme, beta) and the default tenant each submit over SMTP AUTH
(real loopback sockets, STARTTLS) with a credential the tenant owns; the
destination is suspended first, so every recipient stays queued and no
attempt leases one while the moves run. The CLI is the real entry point in
a subprocess (tests.test_admin_cli.Cli)."""

from __future__ import annotations

import asyncio
import json
import time

import aiosmtplib
import pytest

from mta.admin.client import AdminClient, AdminError
from mta.server.credentials import CredentialStore
from mta.spool.tenants import SqliteTenants
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.test_admin_cli import Cli, _ok

TOKEN = "test-admin-token-0123456789"
PASSWORD = "tenant-password-1"
# user -> (tenant, sender); "ops-app" is owned by nobody: the default tenant's
SENDERS = {"acme-app": ("acme", "app@acme.test"), "beta-app": ("beta", "app@beta.test"),
           "ops-app": ("default", "ops@ops.test")}


class World:
    def __init__(self, d, mta: Cli, port: int):
        self.d, self.mta, self.port = d, mta, port
        host, admin_port = d.admin.sockname
        self.client = AdminClient(f"http://{host}:{admin_port}", TOKEN)
        self.ids: dict[str, list[str]] = {"acme": [], "beta": [], "default": []}

    async def submit(self, user: str, rcpts: list[str]) -> str:
        tenant, sender = SENDERS[user]
        body = f"From: {sender}\r\nTo: {rcpts[0]}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=True,
                                   tls_context=no_verify_context()) as c:
            await c.login(user, PASSWORD)
            _, reply = await c.sendmail(sender, rcpts, body)
        qid = reply.split()[-1]
        self.ids[tenant].append(qid)
        return qid

    async def api(self, fn, *args, **kw):
        return await asyncio.to_thread(fn, *args, **kw)


@pytest.fixture
async def world(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    creds, tenants = CredentialStore(state / "credentials.json"), SqliteTenants(state)
    for name in ("acme", "beta"):
        tenants.add(name, limits={}, policy={}, now=now)
        tenants.own("domain", f"{name}.test", name, now)
    for user, (tenant, _) in SENDERS.items():
        creds.add(user, PASSWORD)
        if tenant != "default":
            tenants.own("credential", user, tenant, now)
    port, mx = free_port(), free_port()               # nothing listens on mx
    text = config_text(state, port, retry="1h", lifetime="5d",
                       routes={"*": f"127.0.0.1:{mx}"})
    path = tmp_path / "mta.toml"
    path.write_text(text)
    async with running_daemon(text) as d:
        w = World(d, Cli(tmp_path, path), port)
        await w.api(w.client.destination_action, f"[127.0.0.1]:{mx}", "suspend")
        await w.submit("acme-app", ["a1@rcpt.test", "a2@rcpt.test"])
        await w.submit("beta-app", ["b1@rcpt.test"])
        await w.submit("acme-app", ["a3@rcpt.test"])
        await w.submit("ops-app", ["o1@rcpt.test"])
        await w.submit("beta-app", ["b2@rcpt.test"])
        yield w


def _listed(out: str) -> list[str]:
    return [m["id"] for m in json.loads(out)]


def _one_line_error(r, *words):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("mta: ") and r.stderr.count("\n") == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


async def test_queue_list_by_tenant(world):
    w = world
    every = _listed(_ok(await w.mta("queue", "list", "--json")))
    assert sorted(every) == sorted(w.ids["acme"] + w.ids["beta"] + w.ids["default"])
    for tenant in ("acme", "beta", "default"):
        got = _listed(_ok(await w.mta("queue", "list", "--tenant", tenant, "--json")))
        assert got == w.ids[tenant], tenant                   # arrival order kept
    # combined with another filter (AND), and with paging through the API
    got = _listed(_ok(await w.mta("queue", "list", "--tenant", "acme", "--recipient",
                                  "a3@rcpt.test", "--json")))
    assert got == w.ids["acme"][1:]
    page, cursor = await w.api(w.client.list_messages, tenant="beta", limit=1)
    assert [m["id"] for m in page] == w.ids["beta"][:1] and cursor
    page, cursor = await w.api(w.client.list_messages, tenant="beta", limit=1, cursor=cursor)
    assert [m["id"] for m in page] == w.ids["beta"][1:]
    # a tenant with no mail (well formed, no such tenant): nothing matches
    out = _ok(await w.mta("queue", "list", "--tenant", "ghost"))
    assert out.strip() == "No matching messages"


async def test_events_by_tenant(world):
    w = world
    out = _ok(await w.mta("events", "tail", "--tenant", "beta", "--json"))
    events = [json.loads(line) for line in out.splitlines()]
    assert events and {e["queue_id"] for e in events} == set(w.ids["beta"])
    assert {e["credential"] for e in events} == {"beta-app"}
    queued = [e for e in events if e["type"] == "queued"]
    assert len(queued) == 2                                   # one per beta recipient
    everything = (await w.api(w.client.events, limit=1000))["events"]
    assert {e["queue_id"] for e in everything} >= set(w.ids["acme"] + w.ids["default"])
    table = _ok(await w.mta("events", "tail", "--tenant", "acme"))
    assert all(line.split()[4] in w.ids["acme"] for line in table.splitlines()), table
    assert len(table.splitlines()) >= 3                       # a queued event per recipient
    page = await w.api(w.client.events, tenant="default", types="queued")
    assert [e["queue_id"] for e in page["events"]] == w.ids["default"]


async def test_hold_release_and_delete_by_tenant(world):
    w = world
    out = _ok(await w.mta("queue", "hold", "--tenant", "acme"))
    assert out.strip() == "held: 3 recipient(s)"               # a1, a2, a3; nobody else's
    held = _listed(_ok(await w.mta("queue", "list", "--state", "held", "--json")))
    assert held == w.ids["acme"]
    for qid in w.ids["beta"] + w.ids["default"]:
        m = await w.api(w.client.get_message, qid)
        assert {r["state"] for r in m["recipients"]} == {"queued"}, m
    result = json.loads(_ok(await w.mta("queue", "release", "--tenant", "acme", "--json")))
    assert result["affected"] == 3
    assert _listed(_ok(await w.mta("queue", "list", "--state", "held", "--json"))) == []
    # the bulk body through the client, then the CLI's delete of one tenant's mail
    result = await w.api(w.client.bulk_action, "hold", tenant="beta", recipient="b2@rcpt.test")
    assert result["affected"] == 1
    assert _ok(await w.mta("queue", "delete", "--tenant", "default")).strip() == \
        "deleted: 1 recipient(s)"
    left = _listed(_ok(await w.mta("queue", "list", "--json")))
    assert sorted(left) == sorted(w.ids["acme"] + w.ids["beta"])


async def test_a_bad_tenant_name_is_one_line_and_moves_nothing(world):
    w = world
    for args in (("queue", "list", "--tenant", "Acme"),
                 ("queue", "hold", "--tenant", "acme!"),
                 ("queue", "bounce", "--all", "--tenant=-x"),
                 ("events", "tail", "--tenant", "a" * 64)):
        _one_line_error(await w.mta(*args), "tenant", "not a tenant name")
    for qid in w.ids["acme"] + w.ids["beta"] + w.ids["default"]:
        m = await w.api(w.client.get_message, qid)
        assert {r["state"] for r in m["recipients"]} == {"queued"}, m
    # the API: a 400 naming the field, for the query and the bulk body alike
    for call in (lambda: w.client.list_messages(tenant="Nope"),
                 lambda: w.client.events(tenant="x y"),
                 lambda: w.client.bulk_action("retry", tenant="_x")):
        with pytest.raises(AdminError) as err:
            await asyncio.to_thread(call)
        assert (err.value.status, err.value.code) == (400, "invalid_filter")
        assert err.value.message.startswith("tenant: not a tenant name"), err.value.message
    with pytest.raises(AdminError) as err:
        await asyncio.to_thread(w.client._object, "POST", "/v1/messages/hold",
                                body={"tenant": 7})
    assert err.value.status == 400 and err.value.message.startswith("tenant must be a string")
