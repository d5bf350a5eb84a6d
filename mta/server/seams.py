"""What the submission server needs from the parts around it, as Protocols.

One job: name each seam of the server once, typed, so the runtime can hand in
any implementation (the spool, the domain cache, a cluster's store, a test's
fake) and a type checker sees what is expected.

API
    SubmissionSpool     the spool as the handler sees it:
                        await enqueue(msg, now) -> queue id (the commit point;
                        an idempotent repeat returns the original's id),
                        await append_events(events) (ledger, no state change)
    MessageFactory      (sender=, recipients=, body=, credential=, listener=,
                        client_ip=, is_dsn=, queue_id=[, suppressed=,
                        idempotency_key=, tail=]) -> the message enqueue takes
    Signer              DKIM signing: keys_for(domain) -> keys (empty: the
                        message goes unsigned; cheap, asked on the loop),
                        sign(message, domain, tail=None) -> the signed message
                        (CPU work: called in a thread)
    RcptCheck           await check(recipient, credential) -> the Reply refusing
                        the recipient (the suppression list), or None
    SessionHooks        what the protocol asks every handler: may_transact
    SubmissionHooks     … and a submission handler: authenticate, refuse_auth
    AuthTurns           the AUTH throttles as AuthCheck asks them (async:
                        locked, ip_begin, user_begin, ip_end, user_end,
                        failure; authcheck.AuthTurns here, or a receiver's
                        proxy to its owner's)
    SessionLimits       the listener's gate as a session sees it: admit (a 421
                        Reply, or None), release, limit_hit(reason)

The credential store's seams (CredentialCheck, Credentials) live with its
embedded default in credentials.py.

Invariants: Protocols and type aliases only; every import is for types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from aiosmtpd.smtp import AuthResult

from mta.core import LedgerEvent, Reply

if TYPE_CHECKING:
    from mta.server.protocol import SubmissionSession, SubmissionSMTP
    from mta.spool import NewMessage

__all__ = ["AuthTurns", "MessageFactory", "RcptCheck", "SessionHooks", "SessionLimits", "Signer",
           "SubmissionHooks", "SubmissionSpool"]

RcptCheck = Callable[[str, "str | None"], Awaitable["Reply | None"]]
MessageFactory = Callable[..., "NewMessage"]


class SubmissionSpool(Protocol):
    async def enqueue(self, msg: NewMessage, now: float) -> str: ...

    async def append_events(self, events: Sequence[LedgerEvent]) -> None: ...


class Signer(Protocol):
    def keys_for(self, domain: str) -> Sequence[object]: ...

    def sign(self, message: bytes, domain: str, tail: Iterable[bytes] | None = None) -> bytes: ...


class SessionHooks(Protocol):
    def may_transact(self, server: SubmissionSMTP, session: SubmissionSession) -> bool: ...


class SubmissionHooks(SessionHooks, Protocol):
    async def authenticate(self, server: SubmissionSMTP, session: SubmissionSession,
                           mechanism: str, login: bytes, password: bytes) -> AuthResult: ...

    async def refuse_auth(self, server: SubmissionSMTP, session: SubmissionSession,
                          mechanism: str, reason: str, reply: Reply) -> AuthResult: ...


class AuthTurns(Protocol):
    async def locked(self, key: str) -> bool: ...

    async def ip_begin(self, key: str) -> tuple[str, float] | None: ...

    async def user_begin(self, name: str, key: str) -> str | None: ...

    async def ip_end(self, key: str, ok: bool) -> None: ...

    async def user_end(self, name: str, key: str, verdict: str | None, ok: bool) -> None: ...

    async def failure(self, key: str) -> None: ...


class SessionLimits(Protocol):
    def admit(self, proto: SubmissionSMTP) -> Reply | None: ...

    def release(self, proto: SubmissionSMTP) -> None: ...

    def limit_hit(self, proto: SubmissionSMTP, reason: str) -> None: ...
