"""Per-tenant metrics (issue 14): `mta_tenant_*` from a real daemon's
/metrics — a tenant's quota refusing a send through the real sending API,
its operator's pause through the admin API, its automatic status in the
store — and Metrics.refresh on its own: values, the refusal counter
advancing by differences, a removed tenant's series going away."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mta.admin.client import AdminClient
from mta.admin.metrics import Metrics
from mta.api.keys import StoreKeys
from mta.core import FakeClock
from mta.spool.apikeys import SqliteApiKeys
from tests.support.mtahelpers import config_text, free_port, running_daemon

TOKEN = "test-admin-token-0123456789"
T0 = 1_700_000_000.0


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value}, read by the client library's parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def v(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def tenant_series(samples, tenant: str) -> list[str]:
    return sorted(n for n, labels in samples if ("tenant", tenant) in labels)


# -- Metrics.refresh over a source --------------------------------------------------

class Source:
    def __init__(self, tenants):
        self.tenants = tenants

    async def gauges(self):
        return {"recipients_by_state": {}, "spool_bytes": 0, "spool_free_bytes": 1,
                "tenants": self.tenants}


def figures(name, **over):
    t = {"name": name, "sending": True, "auto_status": "ok", "sends": 0, "bounce_rate": 0.0,
         "complaint_rate": 0.0, "quota_hour": 0, "quota_day": 0, "refused": {}}
    t.update(over)
    return t


def render(m: Metrics):
    return parse(m.render()[0].decode())


async def test_refresh_sets_each_tenants_series():
    m = Metrics(clock=FakeClock(T0))
    src = Source([figures("acme", sending=False, auto_status="warn", sends=812,
                          bounce_rate=0.0625, complaint_rate=0.00125, quota_hour=40,
                          quota_day=900, refused={"per_hour": 3, "paused": 1}),
                  figures("default")])
    await m.refresh(src)
    s = render(m)
    assert v(s, "mta_tenant_sending", tenant="acme") == 0
    assert v(s, "mta_tenant_sending", tenant="default") == 1
    assert v(s, "mta_tenant_reputation_status", tenant="acme") == 1
    assert v(s, "mta_tenant_reputation_status", tenant="default") == 0
    assert v(s, "mta_tenant_bounce_rate", tenant="acme") == 0.0625
    assert v(s, "mta_tenant_complaint_rate", tenant="acme") == 0.00125
    assert v(s, "mta_tenant_outcomes", tenant="acme") == 812
    assert v(s, "mta_tenant_quota_used", tenant="acme", window="hour") == 40
    assert v(s, "mta_tenant_quota_used", tenant="acme", window="day") == 900
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="per_hour") == 3
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="paused") == 1
    for reason in ("domain", "per_day", "rate"):         # known reasons exist at zero
        assert v(s, "mta_tenant_refused_total", tenant="acme", reason=reason) == 0
        assert v(s, "mta_tenant_refused_total", tenant="default", reason=reason) == 0

    # Cumulative counts from the source: the counter follows them, it does not add them up.
    src.tenants = [figures("acme", auto_status="paused", refused={"per_hour": 5, "paused": 1})]
    await m.refresh(src)
    await m.refresh(src)
    s = render(m)
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="per_hour") == 5
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="paused") == 1
    assert v(s, "mta_tenant_reputation_status", tenant="acme") == 2
    assert v(s, "mta_tenant_sending", tenant="acme") == 1
    assert tenant_series(s, "default") == []             # removed: its series went away


async def test_promtool_accepts_the_tenant_series():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    m = Metrics(clock=FakeClock(T0))
    await m.refresh(Source([figures("acme", refused={"rate": 2}), figures("default")]))
    proc = subprocess.run([promtool, "check", "metrics"], input=m.render()[0],
                          capture_output=True, timeout=60)
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0 and not out.strip(), out


async def test_no_tenant_service_no_tenant_series():
    m = Metrics(clock=FakeClock(T0))
    await m.refresh(Source(None))
    assert not [k for k in render(m) if k[0].startswith("mta_tenant_")
                and not k[0].endswith(("_created",))]


# -- a real daemon -------------------------------------------------------------------

@pytest.fixture
async def daemon(tmp_path):
    state = tmp_path / "state"
    text = (config_text(state, free_port(), mode="sandbox", tls="none",
                        trusted=["127.0.0.0/8"])
            + f'[api]\naddress = "127.0.0.1:{free_port()}"\n')
    async with running_daemon(text) as d:
        yield d


async def scrape(d) -> dict[tuple[str, frozenset], float]:
    host, port = d.admin.sockname
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{host}:{port}/metrics") as r:
            assert r.status == 200
            return parse(await r.text())


async def send(d, key: str, n: int) -> int:
    body = {"from": "Acme <news@acme.test>", "to": [f"r{n}@rcpt.test"],
            "subject": f"hello {n}", "text": "Hello."}
    async with aiohttp.ClientSession() as s:
        async with s.post(d.api.url + "/emails", json=body,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            await r.read()
            return r.status


async def test_a_daemons_tenant_metrics(daemon):
    d = daemon
    host, port = d.admin.sockname
    admin = AdminClient(f"http://{host}:{port}", TOKEN)
    await asyncio.to_thread(admin.tenant_add, "acme", limits={"per_hour": 1})
    _, key = StoreKeys(SqliteApiKeys(d.cfg.server.state_dir)).create("shop", now=time.time())
    await d.tenants.own("credential", "api:shop", "acme")
    await d.tenants.own("domain", "acme.test", "acme")

    s = await scrape(d)
    assert v(s, "mta_tenant_sending", tenant="acme") == 1
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="per_hour") == 0
    assert v(s, "mta_tenant_quota_used", tenant="acme", window="hour") == 0

    assert await send(d, key, 1) == 200
    assert await send(d, key, 2) == 429              # over its hourly quota
    s = await scrape(d)
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="per_hour") == 1
    assert v(s, "mta_tenant_refused_total", tenant="default", reason="per_hour") == 0
    assert v(s, "mta_tenant_quota_used", tenant="acme", window="hour") == 1
    assert v(s, "mta_tenant_quota_used", tenant="acme", window="day") == 1
    assert v(s, "mta_tenant_sending", tenant="default") == 1

    await asyncio.to_thread(admin.tenant_pause, "acme", "unpaid invoice")
    assert await send(d, key, 3) == 403
    s = await scrape(d)
    assert v(s, "mta_tenant_sending", tenant="acme") == 0
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="paused") == 1
    assert v(s, "mta_tenant_refused_total", tenant="acme", reason="per_hour") == 1
    assert v(s, "mta_tenant_reputation_status", tenant="acme") == 0   # the operator's pause

    await d.tenants.set_auto("acme", "warn", "bounce rate 6% at or over 5%")
    s = await scrape(d)
    assert v(s, "mta_tenant_reputation_status", tenant="acme") == 1
    assert set(tenant_series(s, "acme")) == {
        "mta_tenant_sending", "mta_tenant_reputation_status", "mta_tenant_bounce_rate",
        "mta_tenant_complaint_rate", "mta_tenant_outcomes", "mta_tenant_quota_used",
        "mta_tenant_refused_total", "mta_tenant_refused_created"}
