"""The test world for outbound TLS policy (issue 17): sinks with good and bad
certificates, DNS with MTA-STS and DANE records, an HTTPS policy host, a daemon.

One job: build, on loopback only, everything a delivery under MTA-STS, DANE
or an operator override meets on the way to a remote MX, so an end-to-end
test sends one message per (policy, sink) pair and reads the outcome from
the sink and the ledger.

Public API:
    KINDS      ("good", "expired", "wrongname", "selfsigned", "plain"): the sinks
    POLICIES   ("opportunistic", "sts-enforce", "sts-testing", "dane", "dane-bad",
                "verify", "encrypt", "none"): what each recipient domain publishes
                or what the operator's `[tls] policy` says for it
    domain(kind, policy) -> "<kind>.<policy>.test"     the recipient domain
    mx_name(kind, policy) -> "mx.<kind>.<policy>.test" its one MX host
    spki_sha256(cert_der) -> bytes   the DANE-EE "3 1 1" digest of a certificate
    async with tls_world(tmp_path, *, extra_config="", extra_zone=None,
                         extra_policies=None, extra_names=None, clock=None) as w:
        (extra_zone: more DNS names; extra_policies: {domain: policy text} the
        policy host also serves, its certificate naming mta-sts.<domain>;
        extra_names: {kind: [names]} more names on the good, expired and
        selfsigned sinks' certificates (wrongname keeps "other.example", plain
        has none); clock: the daemon's Clock, e.g. one a test moves forward)
        w.daemon           the running Daemon (in process, on this loop)
        w.sinks[kind]      the Sink playing each kind, all on port w.smtp_port
        w.dns              the DnsServer (its `zone` may be changed while running)
        w.ca / w.ca_file   the trusted CA ([tls] ca_file) and its PEM path
        w.leaf_der[kind]   the DER certificate each TLS sink presents
        w.sts_port         the policy host's port ([tls] mta_sts_port)
        w.policy_fetches   the Host of every policy request, in order
        await w.send(rcpt or [rcpts]) -> queue id   SMTP submission, trusted network
        await w.events(qid) -> [EventView]          the message's ledger events
        await w.wait(qid, kind or (kinds…), count=1, rcpt=None, timeout=15) -> EventView
                           the count-th event of one of those types (of that
                           recipient when given); TimeoutError naming what it saw
        w.received(rcpt) -> [SinkMessage]           what any sink got for rcpt

The world (what a test may rely on):
  - Sinks on 127.0.0.21…25 (good, expired, wrongname, selfsigned, plain), one
    shared port P, which is `[delivery] smtp_port`. good: a certificate from
    the trusted CA naming every MX host that points at it; expired: the same,
    valid 2019-2020 only; wrongname: from the CA, for "other.example" alone;
    selfsigned: a self-signed certificate naming its MX hosts; plain: no
    STARTTLS at all.
  - Each recipient domain has its own MX host (never shared), so each gets its
    own delivery queue and one row's outcome cannot leak into another's
    through MX rollup (a test that wants a shared site adds it: extra_zone).
  - sts-enforce / sts-testing: `_mta-sts` TXT "v=STSv1; id=1", the policy
    host mta-sts.<domain> (A 127.0.0.30) serves mode enforce / testing,
    "mx: <its MX host>", max_age 86400, over HTTPS with a certificate from
    the trusted CA. Policies for other domains are added with `sts_policy`.
  - dane: TLSA `_P._tcp.<MX host>` 3 1 1 of the sink's own leaf key (plain:
    of a key nobody serves); dane-bad: 3 1 1 of nothing anyone presents.
    Zones "dane.test" and "dane-bad.test" (domains and their MX hosts) are
    "signed": the DNS server sets AD on their answers; nothing else is.
  - verify / encrypt / none: `[tls] policy` overrides for the parent domains
    "verify.test", "encrypt.test", "none.test"; their DNS is as opportunistic.
  - The daemon: production mode, `[dns]` the test server only, a trusted
    SMTP listener without TLS on 127.0.0.1 to submit through, retry
    schedule 1s,2s,3s, `[tls] dane = true`, `ca_file`, `mta_sts_port`.
    `extra_config` is appended last (it may open new sections, not add keys
    to one the world already wrote). `clock` (default: the system clock) is
    the daemon's only time source: what it records, schedules and reports
    follows it, while TLS certificate dates are checked against real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mta.config import parse_config
from mta.core import Clock
from mta.core.stores import EventView
from mta.runtime.daemon import Daemon
from tests.support.dnsserver import DnsServer
from tests.support.mtahelpers import config_text, free_port, make_message, running_daemon
from tests.support.sink import Sink, SinkMessage

__all__ = ["KINDS", "POLICIES", "POLICY_IP", "SENDER", "SINK_IPS", "TlsWorld", "domain",
           "mx_name", "spki_sha256", "sts_policy", "tls_world"]

KINDS = ("good", "expired", "wrongname", "selfsigned", "plain")
POLICIES = ("opportunistic", "sts-enforce", "sts-testing", "dane", "dane-bad",
            "verify", "encrypt", "none")
SINK_IPS = {kind: f"127.0.0.{21 + i}" for i, kind in enumerate(KINDS)}
POLICY_IP = "127.0.0.30"
OVERRIDES = {"verify.test": "verify", "encrypt.test": "encrypt", "none.test": "none"}
SIGNED_ZONES = ("dane.test", "dane-bad.test")
SENDER = "app@sender.test"
STS_MODES = {"sts-enforce": "enforce", "sts-testing": "testing"}


def domain(kind: str, policy: str) -> str:
    return f"{kind}.{policy}.test"


def mx_name(kind: str, policy: str) -> str:
    return f"mx.{kind}.{policy}.test"


def spki_sha256(cert_der: bytes) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo: TLSA "3 1 1" data."""
    key = x509.load_der_x509_certificate(cert_der).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
                          ).digest()


def sts_policy(mode: str, mx: Sequence[str], max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
             f"max_age: {max_age}"]
    return "\n".join(lines) + "\n"


# ---- certificates ----

def _self_signed(names: Sequence[str], directory: Path) -> tuple[ssl.SSLContext, bytes]:
    """A real self-signed leaf (no CA anywhere) naming `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "selfsigned.pem", directory / "selfsigned.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx, cert.public_bytes(serialization.Encoding.DER)


def _from_ca(leaf: trustme.LeafCert) -> tuple[ssl.SSLContext, bytes]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    pem = leaf.cert_chain_pems[0].bytes()
    return ctx, x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _sink_certs(ca: trustme.CA, directory: Path,
                names: Mapping[str, list[str]]) -> dict[str, tuple[ssl.SSLContext, bytes]]:
    """{kind: (server context, leaf DER)} for every sink that offers STARTTLS."""
    old = (datetime.datetime(2019, 1, 1), datetime.datetime(2020, 1, 1))
    return {
        "good": _from_ca(ca.issue_cert(*names["good"])),
        "expired": _from_ca(ca.issue_cert(*names["expired"], not_before=old[0],
                                          not_after=old[1])),
        "wrongname": _from_ca(ca.issue_cert("other.example")),
        "selfsigned": _self_signed(names["selfsigned"], directory),
    }


# ---- DNS ----

def _zone(port: int, leaf_der: Mapping[str, bytes]) -> dict[str, dict[str, list[Any]]]:
    zone: dict[str, dict[str, list[Any]]] = {}
    nobody = hashlib.sha256(b"a key nobody presents").digest()
    for kind in KINDS:
        for policy in POLICIES:
            dom, mx = domain(kind, policy), mx_name(kind, policy)
            zone[dom] = {"MX": [(10, mx)]}
            zone[mx] = {"A": [SINK_IPS[kind]]}
            if policy in STS_MODES:
                zone[f"_mta-sts.{dom}"] = {"TXT": ["v=STSv1; id=1"]}
                zone[f"mta-sts.{dom}"] = {"A": [POLICY_IP]}
            if policy == "dane":
                der = leaf_der.get(kind)
                digest = spki_sha256(der) if der is not None else hashlib.sha256(
                    b"the plain sink has no key").digest()
                zone[f"_{port}._tcp.{mx}"] = {"TLSA": [(3, 1, 1, digest)]}
            elif policy == "dane-bad":
                zone[f"_{port}._tcp.{mx}"] = {"TLSA": [(3, 1, 1, nobody)]}
    return zone


# ---- the MTA-STS policy host ----

class _PolicyHost:
    def __init__(self, policies: dict[str, str]):
        self.policies = policies          # policy domain -> body
        self.fetches: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        self.fetches.append(host)
        body = self.policies.get(host.removeprefix("mta-sts."))
        if (request.path != "/.well-known/mta-sts.txt" or not host.startswith("mta-sts.")
                or body is None):
            return web.Response(status=404, text="no policy here")
        return web.Response(status=200, text=body, content_type="text/plain")


@contextlib.asynccontextmanager
async def _policy_server(ca: trustme.CA, host: _PolicyHost) -> AsyncIterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(f"mta-sts.{d}" for d in host.policies)).configure_cert(ctx)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", host.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, POLICY_IP, 0, ssl_context=ctx)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


# ---- sinks ----

async def _start_sinks(certs: Mapping[str, tuple[ssl.SSLContext, bytes]]) -> dict[str, Sink]:
    """Every sink on one port: the first picks it, the others follow; a clash
    on one address (another test's socket) starts the whole set again."""
    for _ in range(20):
        sinks: dict[str, Sink] = {}
        port = 0
        try:
            for kind in KINDS:
                cert = certs.get(kind)
                sink = Sink(SINK_IPS[kind], port, tls=cert is not None,
                            tls_context=cert[0] if cert else None,
                            hostname=f"sink-{kind}.tls.test")
                await sink.start()
                sinks[kind] = sink
                port = sink.port
            return sinks
        except OSError:
            for sink in sinks.values():
                await sink.stop()
    raise OSError("could not bind the sinks on one port")


# ---- the world ----

@dataclass
class TlsWorld:
    daemon: Daemon
    sinks: dict[str, Sink]
    dns: DnsServer
    ca: trustme.CA
    ca_file: Path
    smtp_port: int
    sts_port: int
    submit_port: int
    leaf_der: dict[str, bytes]
    policy_fetches: list[str] = field(default_factory=list)

    async def send(self, rcpts: str | Sequence[str], sender: str = SENDER) -> str:
        """Submit one message; its queue id (from "250 … queued as ID")."""
        to = [rcpts] if isinstance(rcpts, str) else list(rcpts)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.submit_port,
                                   start_tls=False, timeout=10) as smtp:
            _, resp = await smtp.sendmail(sender, to, make_message(sender, to))
        if "queued as" not in resp:
            raise AssertionError(f"submission not queued: {resp}")
        return resp.split()[-1]

    async def events(self, qid: str) -> list[EventView]:
        spool = self.daemon.spool
        assert spool is not None, "the daemon is not running"
        return await spool.ledger.message_events(qid)

    async def wait(self, qid: str, kind: str | tuple[str, ...], *, count: int = 1,
                   rcpt: str | None = None, timeout: float = 15.0) -> EventView:
        """The count-th ledger event of `qid` whose type is `kind` (or one of
        them), of recipient `rcpt` only when given."""
        kinds = (kind,) if isinstance(kind, str) else kind
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            found = [e for e in await self.events(qid)
                     if e.type in kinds and (rcpt is None or e.recipient == rcpt)]
            if len(found) >= count:
                return found[count - 1]
            if loop.time() > end:
                seen = [e.type for e in await self.events(qid)]
                raise TimeoutError(f"{qid}: no {count}× {kinds} in {timeout}s (saw {seen})")
            await asyncio.sleep(0.05)

    def received(self, rcpt: str) -> list[SinkMessage]:
        return [m for s in self.sinks.values() for m in s.messages if rcpt in m.rcpt_tos]


@contextlib.asynccontextmanager
async def _daemon_on(text: str, clock: Clock) -> AsyncIterator[Daemon]:
    """running_daemon (tests/support/mtahelpers.py), on the given clock."""
    daemon = Daemon(parse_config(text, "test"), clock)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def _tls_section(ca_file: Path, sts_port: int) -> str:
    table = ", ".join(f'"{d}" = "{lvl}"' for d, lvl in OVERRIDES.items())
    return (f'[tls]\npolicy = {{ {table} }}\nmta_sts = true\ndane = true\n'
            f'ca_file = "{ca_file}"\nmta_sts_port = {sts_port}\n')


@contextlib.asynccontextmanager
async def tls_world(tmp_path: Path, *, extra_config: str = "",
                    extra_zone: Mapping[str, Mapping[str, list[Any]]] | None = None,
                    extra_policies: Mapping[str, str] | None = None,
                    extra_names: Mapping[str, Sequence[str]] | None = None,
                    clock: Clock | None = None,
                    ) -> AsyncIterator[TlsWorld]:
    """The world described in the module docstring. `extra_zone` adds DNS
    names; `extra_policies` ({domain: policy text}) adds what the policy host
    serves for mta-sts.<domain> (the domain's `_mta-sts` TXT and the policy
    host's A record are the caller's, in extra_zone); `extra_names` adds
    names to the sinks' certificates; `clock` is the daemon's."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    names = {k: [mx_name(k, p) for p in POLICIES] + list((extra_names or {}).get(k, ()))
             for k in KINDS}
    certs = _sink_certs(ca, tmp_path, names)
    leaf_der = {kind: der for kind, (_, der) in certs.items()}
    policies = {domain(k, p): sts_policy(mode, [mx_name(k, p)])
                for k in KINDS for p, mode in STS_MODES.items()}
    policies.update(extra_policies or {})
    host = _PolicyHost(policies)
    async with contextlib.AsyncExitStack() as stack:
        sinks = await _start_sinks(certs)
        for sink in sinks.values():
            stack.push_async_callback(sink.stop)
        smtp_port = sinks["good"].port
        zone = _zone(smtp_port, leaf_der)
        zone.update({k: dict(v) for k, v in (extra_zone or {}).items()})
        dns = await stack.enter_async_context(DnsServer(zone, ad_zones=SIGNED_ZONES))
        sts_port = await stack.enter_async_context(_policy_server(ca, host))
        submit_port = free_port()
        text = (config_text(tmp_path / "state", submit_port, tls="none",
                            trusted=["127.0.0.0/8"], nameservers=[dns.nameserver],
                            smtp_port=smtp_port, retry="1s,2s,3s", lifetime="120s")
                + _tls_section(ca_file, sts_port) + extra_config)
        daemon = await stack.enter_async_context(
            running_daemon(text) if clock is None else _daemon_on(text, clock))
        yield TlsWorld(daemon=daemon, sinks=sinks, dns=dns, ca=ca, ca_file=ca_file,
                       smtp_port=smtp_port, sts_port=sts_port, submit_port=submit_port,
                       leaf_der=leaf_der, policy_fetches=host.fetches)
