"""Opening one SMTP connection for a batch: MX walk, EHLO, STARTTLS under a TLS plan.

One job: connect to the first MX host and address that works and that the
batch's TLS plan (delivery/tlsguard.py) allows, greet it, upgrade it with
STARTTLS as the host's policy says, and prove what the policy asks of the
certificate — or say, for the whole batch, why nothing could be used.

API:
    Connector(hostname, connect_timeout, command_timeout, guard=None)
        await .open(destination, hops, plan) -> (Session, None) | (None, (Reply, health))
    MAX_DETAIL     failures named in the deferral's text

Per host (HostPolicy): not allowed (MTA-STS enforce and the host not listed;
dane-only without usable TLSA; a failed secure TLSA lookup) -> skipped and
named; "none" -> no STARTTLS at all; otherwise STARTTLS when offered, with a
verifying context for "pkix" (the CA store, the MX name) or none, then DANE
checks the chain against the TLSA records. When the host's policy (or the
shaping table's `tls = "required"`) requires TLS, a missing STARTTLS, a
failed handshake or a failed check is a failure for that host and nothing is
sent in clear; the batch defers with 451 4.7.5 when no host passed. Otherwise
a failed check (MTA-STS testing) is counted and the connection is made again
with unverified TLS; a failed handshake falls back to clear text, as before.
Every negotiation is counted for TLS-RPT (guard.outcome): "success" or the
RFC 8460 result type. The session's Peer carries the TLS version and the
policy's name (`Peer.policy`: opportunistic, mta-sts, mta-sts-testing, dane,
an override level), so the attempt records and the ledger show which applied.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

import aiosmtplib
from aiosmtplib import SMTPConnectResponseError, SMTPException, SMTPHeloError, SMTPResponseException

from mta.core.envelope import ConnectionOptions, Destination
from mta.core.logfmt import event
from mta.core.outcome import DestinationHealth
from mta.core.reply import Reply
from mta.delivery.mx import Hop
from mta.delivery.session import Session
from mta.delivery.settlement import HandshakeFailed, Peer, Throttled, describe, remote_reply
from mta.delivery.tlsguard import OPPORTUNISTIC, TlsGuard, TlsPlan, VerifyFailed
from mta.policy.tlspolicy import HostPolicy, failure_result

__all__ = ["Connector", "MAX_DETAIL"]

log = logging.getLogger("mta.delivery")
MAX_DETAIL = 6


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _family_fits(ip: str, source: str) -> bool:
    """Can a socket bound to `source` reach `ip`? ("" binds nothing: yes)."""
    if not source:
        return True
    try:
        return ipaddress.ip_address(ip).version == ipaddress.ip_address(source).version
    except ValueError:
        return True


def _plain_context() -> ssl.SSLContext:
    # Opportunistic TLS: encrypt against passive snooping, authenticate no one.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Connector:
    def __init__(self, *, hostname: str, connect_timeout: float, command_timeout: float,
                 guard: TlsGuard | None = None):
        self.hostname, self.guard = hostname, guard
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self._plain = _plain_context()
        self._certs: dict[tuple[str, str], ssl.SSLContext] = {}

    def _context(self, hp: HostPolicy, verified: bool,
                  options: ConnectionOptions) -> ssl.SSLContext:
        cert = (options.client_cert, options.client_key) if options.client_cert else None
        if self.guard is None:
            return self._plain if cert is None else self._with_cert(cert)
        return self.guard.context(hp if verified else OPPORTUNISTIC, cert)

    def _with_cert(self, cert: tuple[str, str]) -> ssl.SSLContext:
        ctx = self._certs.get(cert)
        if ctx is None:
            ctx = _plain_context()
            ctx.load_cert_chain(cert[0], cert[1] or None)
            self._certs[cert] = ctx
        return ctx

    def _count(self, plan: TlsPlan, hop: Hop, ip: str, result: str, source: str) -> None:
        if self.guard is not None:
            self.guard.outcome(plan, hop.host, ip, result, source)

    async def open(self, destination: Destination, hops: list[Hop], plan: TlsPlan
                   ) -> tuple[Session | None, tuple[Reply, DestinationHealth, Peer] | None]:
        """Connect to the first host/address that works and passes, in MX order;
        else the batch's reply, the destination's health, and a Peer naming
        the TLS policy that applied (for the deferral's record)."""
        failed = self._failed(destination, hops, plan)
        session, failure = await self._walk(destination, hops, plan)
        if failure is None:
            return session, None
        return None, (*failure, failed)

    def _failed(self, destination: Destination, hops: list[Hop], plan: TlsPlan) -> Peer:
        if self.guard is None or not hops:
            return Peer()
        return Peer(hops[0].host, "", "", plan.label(hops[0].host))

    async def _walk(self, destination: Destination, hops: list[Hop], plan: TlsPlan
                    ) -> tuple[Session | None, tuple[Reply, DestinationHealth] | None]:
        failures: list[str] = []
        throttled: Reply | None = None
        options = destination.options
        policy_failed = False
        for hop in hops:
            hp = plan.policy(hop.host)
            if not hp.allowed:
                failures.append(f"{hop.host} not tried: {plan.refusal(hop.host)}")
                policy_failed = True
                continue
            must = options.require_tls or hp.require_tls
            for ip in hop.addresses:
                if not _family_fits(ip, options.source):
                    continue
                try:
                    return await self._try(hop, ip, destination.port, options, plan, hp,
                                           must), None
                except HandshakeFailed as exc:
                    policy_failed = True
                    failures.append(f"{hop.host}[{ip}]:{destination.port} {exc} "
                                    f"({plan.label(hop.host)} policy: TLS required)")
                except Throttled as exc:
                    throttled = throttled or exc.reply
                    failures.append(f"{hop.host}[{ip}]:{destination.port} said {exc.reply}")
                except SMTPConnectResponseError as exc:
                    if exc.code == 421:
                        throttled = throttled or remote_reply(exc)
                    failures.append(f"{hop.host}[{ip}]:{destination.port} greeted with "
                                    f"{describe(exc)}")
                except (SMTPException, OSError) as exc:
                    failures.append(f"{hop.host}[{ip}]:{destination.port} {describe(exc)}")
        if throttled is not None:
            return None, (throttled, DestinationHealth.THROTTLING)
        if not failures:
            return None, (Reply(451, "4.4.4", f"no mail host address of {destination.name} "
                                              f"fits the egress source {options.source}; "
                                              f"will retry"), DestinationHealth.DOWN)
        shown = "; ".join(failures[:MAX_DETAIL])
        if len(failures) > MAX_DETAIL:
            shown += f"; and {len(failures) - MAX_DETAIL} more"
        code = "4.7.5" if options.require_tls or policy_failed else "4.4.1"
        return None, (Reply(451, code, f"could not connect to any mail host of "
                                       f"{destination.name}: {shown}; will retry"),
                      DestinationHealth.DOWN)

    async def _try(self, hop: Hop, ip: str, port: int, options: ConnectionOptions,
                   plan: TlsPlan, hp: HostPolicy, must: bool) -> Session:
        """One address: TLS as the policy says; raises HandshakeFailed when
        TLS was required and did not pass."""
        if hp.policy == "none":
            return await self._connect(hop, ip, port, options, plan, hp, tls=None)
        try:
            return await self._connect(hop, ip, port, options, plan, hp, tls=True,
                                       must=must)
        except VerifyFailed as exc:
            self._count(plan, hop, ip, exc.result or failure_result(hp.verify, str(exc)),
                        options.source)
            if must:
                raise
            event(log, "tls_check_failed", mx=hop.host, ip=ip, policy=plan.label(hop.host),
                  error=exc, next="unverified")
            result = exc.result or failure_result(hp.verify, str(exc))
            return await self._connect(hop, ip, port, options, plan, hp, tls=False,
                                       failed=f"failed: {result}")
        except HandshakeFailed as exc:
            self._count(plan, hop, ip, failure_result(hp.verify, str(exc)), options.source)
            if must:
                raise
            event(log, "starttls_failed", mx=hop.host, ip=ip, port=port, error=exc,
                  next="clear_text")
            return await self._connect(hop, ip, port, options, plan, hp, tls=None)

    async def _connect(self, hop: Hop, ip: str, port: int, options: ConnectionOptions,
                       plan: TlsPlan, hp: HostPolicy, *, tls: bool | None,
                       must: bool = False, failed: str = "") -> Session:
        """tls True: STARTTLS checked as `hp` says; False: unverified TLS;
        None: clear text. `failed`: the check an earlier try failed (the
        attempt records it)."""
        command_timeout = options.command_timeout or self.command_timeout
        smtp = aiosmtplib.SMTP(hostname=ip, port=port,
                               local_hostname=options.ehlo or self.hostname,
                               source_address=(options.source, 0) if options.source else None,
                               timeout=command_timeout, start_tls=False,
                               validate_certs=False, tls_context=self._plain)
        # connect() covers TCP connect and the 220 greeting.
        await smtp.connect(timeout=options.connect_timeout or self.connect_timeout)
        try:
            await self._hello(smtp, command_timeout)
            version = ""
            if tls is not None and smtp.supports_extension("starttls"):
                version = await self._starttls(smtp, hop, command_timeout,
                                               self._context(hp, bool(tls), options))
                if tls and hp.verify == "dane" and self.guard is not None:
                    self.guard.check_dane(plan, hop.host, smtp.get_transport_info("ssl_object"))
            if must and not version:
                raise HandshakeFailed("STARTTLS not offered" if not smtp.supports_extension(
                    "starttls") else "STARTTLS declined")
            if version and tls:
                self._count(plan, hop, ip, "success", options.source)
            label = plan.label(hop.host) if self.guard is not None else ""
            verified = bool(version) and bool(tls) and hp.verify in ("pkix", "dane")
            check = "verified" if verified else failed
            return Session(smtp, Peer(hop.host, ip, version, label, verified, check),
                           command_timeout)
        except BaseException:
            smtp.close()
            raise

    async def _hello(self, smtp: aiosmtplib.SMTP, timeout: float) -> None:
        try:
            await smtp.ehlo(timeout=timeout)
        except SMTPHeloError as exc:
            if exc.code == 421:
                raise Throttled(remote_reply(exc)) from None
            if not smtp.is_connected:
                raise
            try:
                await smtp.helo(timeout=timeout)
            except SMTPHeloError as exc2:
                if exc2.code == 421:
                    raise Throttled(remote_reply(exc2)) from None
                raise

    async def _starttls(self, smtp: aiosmtplib.SMTP, hop: Hop, timeout: float,
                        context: ssl.SSLContext) -> str:
        """Upgrade the connection; "" when the server declined and we go on
        in clear. A certificate the verifying context refused is VerifyFailed."""
        try:
            await smtp.starttls(server_hostname=None if _is_ip(hop.host) else hop.host,
                                tls_context=context, timeout=timeout)
        except SMTPResponseException as exc:
            if exc.code == 421:
                raise Throttled(remote_reply(exc)) from None
            if smtp.is_connected:
                return ""  # e.g. 454: the session is still usable in clear text
            raise HandshakeFailed(describe(exc)) from None
        except ssl.SSLCertVerificationError as exc:
            raise VerifyFailed(exc.verify_message or describe(exc)) from None
        except (SMTPException, OSError) as exc:   # ssl.SSLError is an OSError
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise VerifyFailed(cause.verify_message or describe(cause)) from None
            raise HandshakeFailed(describe(exc)) from None
        ssl_object = smtp.get_transport_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else "TLS"
        await self._hello(smtp, timeout)  # RFC 3207: forget pre-TLS extensions, ask again
        return version
