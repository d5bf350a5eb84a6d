"""MTA-STS discovery end to end: a real DNS server on 127.0.0.153
(tests/support/dnsserver.py) serving `_mta-sts` TXT and `mta-sts.<domain>`
A records, a real HTTPS policy host on 127.0.0.1 with a trustme CA, the real
SQLite cache in tmp_path, and a fake clock for max_age and expiry."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import trustme
from aiohttp import web

from mta.delivery.mtasts_fetch import RETRY_AFTER, TOUCH_EVERY, StsLookup, StsResolver
from mta.delivery.resolver import DnsResolver
from mta.policy.mtasts import MAX_POLICY_BYTES, StsPolicy
from mta.spool.mtasts_cache import SqliteStsCache
from tests.support.dnsserver import DnsServer

T0 = 1_700_000_000.0
DAY = 86400.0
DOMAINS = ("a.test", "b.test", "none.test", "redirect.test", "gone.test", "ctype.test",
           "big.test", "bad.test", "slow.test", "param.test", "nodns.test", "chunked.test")
ENFORCE = b"version: STSv1\nmode: enforce\nmx: mx.a.test\nmx: *.backup.a.test\nmax_age: 604800\n"
TESTING = b"version: STSv1\r\nmode: testing\r\nmx: mx2.a.test\r\nmax_age: 86400\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class PolicyHost:
    """An HTTPS server answering per Host: `responses[host] = (status, content
    type, body)` or an async handler; anything else 404. `seen` lists (host, path)."""

    def __init__(self) -> None:
        self.responses: dict[str, object] = {}
        self.seen: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.port = 0

    def hits(self, host: str) -> int:
        return sum(1 for h, _ in self.seen if h == host)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = request.host.rsplit(":", 1)[0]
        self.seen.append((host, request.path))
        spec = self.responses.get(host)
        if spec is None or request.path != "/.well-known/mta-sts.txt":
            return web.Response(status=404, text="not here")
        if callable(spec):
            return await spec(request)
        status, ctype, body = spec
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def host(ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # every test domain's policy host except wrongname.test's
    ca.issue_cert(*(f"mta-sts.{d}" for d in DOMAINS)).configure_cert(ctx)
    srv = PolicyHost()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    srv.port = runner.addresses[0][1]
    yield srv
    srv.release.set()
    await runner.cleanup()


def sts_zone(domains, txt="v=STSv1; id=1"):
    zone: dict[str, dict[str, list]] = {}
    for d in domains:
        zone[f"_mta-sts.{d}"] = {"TXT": [txt]}
        zone[f"mta-sts.{d}"] = {"A": ["127.0.0.1"]}
    return zone


@pytest.fixture
async def dns():
    zone = sts_zone([*DOMAINS, "wrongname.test"])
    del zone["mta-sts.nodns.test"]
    zone["plain.test"] = {"TXT": ["v=spf1 -all"]}
    zone["_mta-sts.other.test"] = {"TXT": ["v=spf1 -all", "something else"]}
    zone["_mta-sts.twice.test"] = {"TXT": ["v=STSv1; id=1", "v=STSv1; id=2"]}
    async with DnsServer(zone) as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(dns, host, tmp_path, clock, ca_file):
    def make(*, ca: str | None = ca_file, timeout: float = 5.0) -> StsResolver:
        resolver = DnsResolver([dns.nameserver], timeout=0.5, cache=False)
        return StsResolver(resolver, SqliteStsCache(tmp_path), ca_file=ca, timeout=timeout,
                           port=host.port, clock=clock)
    return make


def serve(host: PolicyHost, domain: str, body: bytes, *, status: int = 200,
          ctype: str = "text/plain") -> None:
    host.responses[f"mta-sts.{domain}"] = (status, ctype, body)


def set_txt(dns: DnsServer, domain: str, txt: str | None) -> None:
    records = dns.zone[f"_mta-sts.{domain}"]
    records["TXT"] = [txt] if txt is not None else []


# ---- fetch and cache --------------------------------------------------------------------

async def test_fetch_parses_and_caches_durably(make, host, tmp_path):
    serve(host, "a.test", ENFORCE)
    sts = make()
    got = await sts.policy("A.Test.")
    assert got == StsLookup(StsPolicy("enforce", ("mx.a.test", "*.backup.a.test"), 604800,
                                      id="1"), None)
    assert got.policy is not None and got.policy.matches("mx9.backup.a.test")
    assert host.seen == [("mta-sts.a.test", "/.well-known/mta-sts.txt")]
    row = SqliteStsCache(tmp_path).get("a.test")
    assert row is not None
    assert (row.policy_id, row.policy_text, row.fetched_at, row.expires_at, row.checked_at) == \
        ("1", ENFORCE.decode(), T0, T0 + 604800, T0)
    # a new resolver over the same state dir (a restart) uses the stored policy
    host.responses.clear()
    again = await make().policy("a.test")
    assert again == got
    assert host.hits("mta-sts.a.test") == 1


async def test_same_id_uses_the_cache_and_a_changed_id_refetches(make, host, dns, clock,
                                                                  tmp_path):
    serve(host, "a.test", ENFORCE)
    sts = make()
    first = await sts.policy("a.test")
    clock.now += 3600
    assert await sts.policy("a.test") == first
    assert host.hits("mta-sts.a.test") == 1
    set_txt(dns, "a.test", "v=STSv1; id=2")
    serve(host, "a.test", TESTING)
    changed = await sts.policy("a.test")
    assert changed.policy == StsPolicy("testing", ("mx2.a.test",), 86400, id="2")
    assert host.hits("mta-sts.a.test") == 2
    row = SqliteStsCache(tmp_path).get("a.test")
    assert row is not None and (row.policy_id, row.expires_at) == ("2", clock.now + 86400)


async def test_concurrent_lookups_share_one_fetch(make, host):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(body=ENFORCE, content_type="text/plain")
    host.responses["mta-sts.a.test"] = slow
    sts = make()
    got = await asyncio.gather(*(sts.policy("a.test") for _ in range(5)))
    assert all(g.policy is not None and g.policy.mode == "enforce" for g in got)
    assert host.hits("mta-sts.a.test") == 1


async def test_mode_none_is_returned_as_such(make, host):
    serve(host, "none.test", b"version: STSv1\nmode: none\nmax_age: 86400\n")
    got = await make().policy("none.test")
    assert got.error is None and got.policy is not None
    assert (got.policy.mode, got.policy.mx) == ("none", ())


async def test_content_type_parameters_are_allowed(make, host):
    serve(host, "param.test", ENFORCE.replace(b"a.test", b"param.test"),
          ctype="text/plain; charset=utf-8")
    got = await make().policy("param.test")
    assert got.error is None and got.policy is not None and got.policy.mode == "enforce"


# ---- no policy ----------------------------------------------------------------------------

@pytest.mark.parametrize("domain", ["plain.test", "other.test", "missing.test", "[127.0.0.1]",
                                    "127.0.0.1", ""])
async def test_no_sts_record_means_no_policy_and_no_fetch(make, host, domain):
    assert await make().policy(domain) == StsLookup(None, None)
    assert host.seen == []


async def test_two_sts_records_are_invalid_and_not_fetched(make, host):
    got = await make().policy("twice.test")
    assert got.policy is None
    assert got.error is not None and got.error.startswith("sts-policy-invalid: ")
    assert "exactly one" in got.error
    assert host.seen == []


# ---- fetch failures -----------------------------------------------------------------------

async def test_redirect_is_a_fetch_error_and_not_followed(make, host):
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(
            f"https://mta-sts.a.test:{host.port}/.well-known/mta-sts.txt")
    host.responses["mta-sts.redirect.test"] = moved
    serve(host, "a.test", ENFORCE)
    got = await make().policy("redirect.test")
    assert got.policy is None
    assert got.error is not None and got.error.startswith("sts-policy-fetch-error: ")
    assert "301" in got.error
    assert host.hits("mta-sts.a.test") == 0


async def test_404_is_a_fetch_error(make):
    got = await make().policy("gone.test")
    assert got == StsLookup(None, "sts-policy-fetch-error: HTTP 404")


async def test_wrong_content_type_is_invalid(make, host):
    serve(host, "ctype.test", ENFORCE, ctype="text/html")
    got = await make().policy("ctype.test")
    assert got.policy is None
    assert got.error == "sts-policy-invalid: Content-Type 'text/html' is not text/plain"


async def test_oversize_policy_is_invalid(make, host):
    serve(host, "big.test", ENFORCE + b"x" * MAX_POLICY_BYTES)

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(80):   # no Content-Length: the read must stop by itself
            await resp.write(b"#" * 1024)
        await resp.write_eof()
        return resp
    host.responses["mta-sts.chunked.test"] = chunked
    sts = make()
    for domain in ("big.test", "chunked.test"):
        got = await sts.policy(domain)
        assert got == StsLookup(None, "sts-policy-invalid: the policy is larger than "
                                      f"{MAX_POLICY_BYTES} bytes"), domain


async def test_invalid_policy_names_the_field(make, host):
    serve(host, "bad.test", b"version: STSv1\nmode: strict\nmx: mx.bad.test\nmax_age: 86400\n")
    got = await make().policy("bad.test")
    assert got.policy is None
    assert got.error is not None and got.error.startswith("sts-policy-invalid: mode: ")


async def test_untrusted_certificate_is_webpki_invalid(make, host):
    serve(host, "a.test", ENFORCE)
    got = await make(ca=None).policy("a.test")   # the system's CAs do not know trustme's
    assert got.policy is None
    assert got.error is not None and got.error.startswith("sts-webpki-invalid: mta-sts.a.test: ")
    assert host.seen == []   # the handshake failed: no request was made


async def test_certificate_for_another_name_is_webpki_invalid(make, host):
    host.responses["mta-sts.wrongname.test"] = (200, "text/plain", ENFORCE)
    got = await make().policy("wrongname.test")
    assert got.policy is None
    assert got.error is not None and got.error.startswith("sts-webpki-invalid: ")
    assert "mismatch" in got.error
    assert host.seen == []


async def test_policy_host_is_resolved_through_our_dns(make, host, dns):
    got = await make().policy("nodns.test")
    assert got.policy is None
    assert got.error is not None and got.error.startswith("sts-policy-fetch-error: ")
    assert "mta-sts.nodns.test" in got.error
    assert ("mta-sts.nodns.test", "A") in dns.queries


async def test_timeout_is_a_fetch_error(make, host):
    async def stall(request: web.Request) -> web.Response:
        await host.release.wait()
        return web.Response(body=ENFORCE, content_type="text/plain")
    host.responses["mta-sts.slow.test"] = stall
    got = await make(timeout=0.2).policy("slow.test")
    assert got == StsLookup(None, "sts-policy-fetch-error: mta-sts.slow.test: "
                                  "no answer within 0.2s")


async def test_a_failed_fetch_is_not_retried_before_the_pause(make, host, clock):
    sts = make()
    first = await sts.policy("gone.test")
    assert first.error == "sts-policy-fetch-error: HTTP 404"
    clock.now += RETRY_AFTER - 1
    assert await sts.policy("gone.test") == first
    assert host.hits("mta-sts.gone.test") == 1
    clock.now += 2
    serve(host, "gone.test", ENFORCE.replace(b"a.test", b"gone.test"))
    healed = await sts.policy("gone.test")
    assert healed.error is None and healed.policy is not None
    assert host.hits("mta-sts.gone.test") == 2


# ---- the cached policy outlives failures --------------------------------------------------

async def test_cached_policy_survives_fetch_failure_and_missing_txt(make, host, dns, clock,
                                                                    tmp_path, caplog):
    serve(host, "a.test", ENFORCE)
    sts = make()
    good = await sts.policy("a.test")
    assert good.policy is not None
    # a new id whose policy cannot be fetched: keep the cached one (RFC 8461 §5.1)
    set_txt(dns, "a.test", "v=STSv1; id=2")
    serve(host, "a.test", b"oops", status=500)
    clock.now += DAY
    with caplog.at_level(logging.WARNING, logger="mta.delivery.mtasts"):
        assert await sts.policy("a.test") == good
    assert "event=mtasts_refresh_failed domain=a.test id=2" in caplog.text
    assert host.hits("mta-sts.a.test") == 2
    # the record removed: the policy still holds until its max_age
    set_txt(dns, "a.test", None)
    clock.now = T0 + 604800 - 1
    assert await sts.policy("a.test") == good
    assert await make().policy("a.test") == good          # and so after a restart
    # past max_age without a record: no policy, and the row is gone
    clock.now = T0 + 604800
    assert await sts.policy("a.test") == StsLookup(None, None)
    assert SqliteStsCache(tmp_path).get("a.test") is None


async def test_expired_policy_is_not_used_when_the_refetch_fails(make, host, clock):
    serve(host, "a.test", ENFORCE)
    sts = make()
    assert (await sts.policy("a.test")).policy is not None
    serve(host, "a.test", b"", status=503)
    clock.now = T0 + 604800
    assert await sts.policy("a.test") == StsLookup(None, "sts-policy-fetch-error: HTTP 503")


async def test_checked_at_is_written_at_most_every_touch_interval(make, host, clock, tmp_path):
    serve(host, "a.test", ENFORCE)
    sts = make()
    await sts.policy("a.test")
    clock.now += TOUCH_EVERY - 1
    await sts.policy("a.test")
    row = SqliteStsCache(tmp_path).get("a.test")
    assert row is not None and row.checked_at == T0
    clock.now += 1
    await sts.policy("a.test")
    row = SqliteStsCache(tmp_path).get("a.test")
    assert row is not None and row.checked_at == T0 + TOUCH_EVERY
    assert host.hits("mta-sts.a.test") == 1


# ---- purge and refresh ----------------------------------------------------------------------

async def test_purge_forgets_and_the_next_lookup_refetches(make, host, tmp_path):
    serve(host, "a.test", ENFORCE)
    sts = make()
    await sts.policy("a.test")
    assert await sts.purge("A.test") is True
    assert await sts.purge("a.test") is False
    assert SqliteStsCache(tmp_path).domains() == []
    serve(host, "a.test", TESTING)
    got = await sts.policy("a.test")
    assert got.policy is not None and got.policy.mode == "testing"
    assert host.hits("mta-sts.a.test") == 2


async def test_refresh_due_refetches_only_what_expires_soon(make, host, dns, clock, tmp_path):
    serve(host, "a.test", ENFORCE)                                        # max_age 7 days
    serve(host, "b.test", TESTING.replace(b"a.test", b"b.test"))          # max_age 1 day
    serve(host, "gone.test", TESTING.replace(b"a.test", b"gone.test"))
    sts = make()
    for d in ("a.test", "b.test", "gone.test"):
        assert (await sts.policy(d)).policy is not None
    assert await sts.refresh_due(within=3600) == 0
    assert len(host.seen) == 3
    set_txt(dns, "gone.test", None)           # its record removed: not refetched
    clock.now = T0 + DAY - 1800
    assert await sts.refresh_due(within=3600) == 1
    assert [h for h, _ in host.seen[3:]] == ["mta-sts.b.test"]
    cache = SqliteStsCache(tmp_path)
    row = cache.get("b.test")
    assert row is not None and (row.fetched_at, row.expires_at) == (clock.now, clock.now + DAY)
    assert cache.get("a.test").expires_at == T0 + 604800                  # type: ignore[union-attr]
    # once expired, the recordless domain is dropped by the next run
    clock.now = T0 + DAY
    assert await sts.refresh_due(within=3600) == 0
    assert cache.domains() == ["a.test", "b.test"]
