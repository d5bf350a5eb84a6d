"""Who may log in: the submission handler's AUTH decisions.

One job: answer an AUTH exchange that sasl.py parsed — check the password
against the credential store under the brute-force throttles, log the
outcome without secrets, count failures — and say when a client is locked
out. The handler (session.py) owns one and forwards its AUTH hooks to it.

API
    AuthTurns(clock, throttle, user_throttle)
        the throttles (policy.authlimit.AuthThrottle per client IP,
        UserThrottle per user name; either None: no limit) and the waiting for
        a turn; async methods (locked, ip_begin, user_begin, ip_end, user_end,
        failure) so a receiver process asks its owner's (runtime/remote.py)
    AuthCheck(*, listener, credentials, clock, turns, observer, log)
        credentials     credentials.CredentialCheck (its `verify` is sync and
                        CPU-bound: run in a thread)
        turns           an AuthTurns (or the owner's, remote)
        .listener       the listener's name, for logs and counts
    await .locked(server) -> bool        the client IP is locked out now
    await .lock_out(server)              421 AUTH_LOCKED and close
    await .authenticate(server, session, mechanism, login, password) -> AuthResult
    await .refuse(server, session, mechanism, reason, reply) -> AuthResult

Rules
  * Checks in flight count against the throttles (issue 10 item 1): N
    parallel connections cannot get more password checks than the budget;
    past it a check waits (at most AUTH_WAIT s) for a running one to end.
  * A locked client IP gets 421 and the connection closes; a user name
    locked by guesses from elsewhere gets 454 without a password check
    (its owner's known addresses still get in: UserThrottle).
  * The reply (success or 535) is delayed by the IP throttle's delay, on
    success too, so a guesser cannot tell early.
  * A refused exchange (overlong line, authorization identity) counts as a
    failed AUTH for the client IP, without a password check.
  * Logs: event=auth_ok / auth_failed / auth_locked_out; the login name only
    when it is a valid user name, never a password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiosmtpd.smtp import AuthResult

from mta.core import Clock, Observer, Reply
from mta.policy.authlimit import (
    FREE,
    GO,
    LOCKED,
    WAIT,
    AuthThrottle,
    UserThrottle,
    throttle_key,
)
from mta.server import replies
from mta.server.credentials import CredentialCheck, valid_username

if TYPE_CHECKING:
    from mta.server.seams import AuthTurns as Turns
    from mta.server.protocol import SubmissionSession, SubmissionSMTP

__all__ = ["AUTH_WAIT", "AuthCheck"]

AUTH_WAIT = 30.0   # longest wait for a turn to have a password checked


class AuthTurns:
    """The brute-force throttles as AuthCheck asks them, in this process: the
    IP throttle (policy.authlimit.AuthThrottle, or None: no limit) and the
    user throttle (UserThrottle or None), with the waiting for a turn. Every
    method is async so a receiver process can ask its owner's instead
    (runtime/remote.py): the budget then holds across every process."""

    def __init__(self, clock: Clock, throttle: AuthThrottle | None,
                 user_throttle: UserThrottle | None):
        self.clock, self.throttle, self.user_throttle = clock, throttle, user_throttle
        self._ended: dict[str, asyncio.Event] = {}   # throttle key -> a check ended

    async def locked(self, key: str) -> bool:
        return (self.throttle is not None
                and self.throttle.check(key, self.clock.now()) is None)

    async def ip_begin(self, key: str) -> tuple[str, float] | None:
        """(verdict, delay) from the IP throttle (waiting for a turn), None
        when there is none."""
        throttle = self.throttle
        if throttle is None:
            return None
        return await self._turn("ip " + key, lambda: throttle.begin(key, self.clock.now()))

    async def user_begin(self, name: str, key: str) -> str | None:
        """The user throttle's verdict for `name` (None: not counted)."""
        users = self.user_throttle
        if users is None or not valid_username(name):
            return None
        verdict, _ = await self._turn("user " + name,
                                      lambda: (users.begin(name, key, self.clock.now()), 0.0))
        return verdict

    async def ip_end(self, key: str, ok: bool) -> None:
        if self.throttle is not None:
            self.throttle.end(key, self.clock.now(), ok)
            self._end("ip " + key)

    async def user_end(self, name: str, key: str, verdict: str | None, ok: bool) -> None:
        if verdict in (GO, FREE) and self.user_throttle is not None:
            self.user_throttle.end(name, key, self.clock.now(), ok, counted=verdict == GO)
            self._end("user " + name)

    async def failure(self, key: str) -> None:
        if self.throttle is not None:
            self.throttle.failure(key, self.clock.now())

    async def _turn(self, key: str, begin: Callable[[], tuple[str, float]]) -> tuple[str, float]:
        """Ask a throttle's begin() until it says something else than WAIT
        (a check running for the same key ended), for at most AUTH_WAIT s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AUTH_WAIT
        while True:
            result = begin()
            if result[0] != WAIT:
                return result
            ev = self._ended.setdefault(key, asyncio.Event())
            try:
                async with asyncio.timeout_at(deadline):
                    await ev.wait()
            except TimeoutError:
                return LOCKED, 0.0

    def _end(self, key: str) -> None:
        ev = self._ended.pop(key, None)
        if ev is not None:
            ev.set()


class AuthCheck:
    def __init__(self, *, listener: str, credentials: CredentialCheck, clock: Clock,
                 turns: Turns, observer: Observer, log: logging.Logger):
        self.listener = listener
        self.credentials = credentials
        self.clock = clock
        self.turns = turns
        self.observer = observer
        self.log = log

    async def locked(self, server: SubmissionSMTP) -> bool:
        return await self.turns.locked(throttle_key(server.client_ip))

    async def lock_out(self, server: SubmissionSMTP) -> None:
        self.log.warning("event=auth_locked_out listener=%s client=%s",
                         self.listener, server.client_ip)
        await server.push(replies.AUTH_LOCKED)
        if server.transport is not None:
            server.transport.close()

    async def authenticate(self, server: SubmissionSMTP, session: SubmissionSession,
                           mechanism: str, login: bytes, password: bytes) -> AuthResult:
        ip = server.client_ip
        key = throttle_key(ip)
        try:
            name = login.decode("utf-8")
        except UnicodeError:
            name = ""
        shown = name if valid_username(name) else "<invalid>"
        turns = self.turns
        delay = 0.0
        began = await turns.ip_begin(key)
        if began is not None:
            verdict, delay = began
            if verdict == LOCKED:
                await self.lock_out(server)
                return AuthResult(success=False, handled=True)
        ip_go = began is not None
        user_verdict = None
        try:
            user_verdict = await turns.user_begin(name, key)
            if user_verdict == LOCKED:
                # Locked by guesses from elsewhere: no password check.
                self._failed(ip, mechanism, shown, reason="user_locked", level=logging.WARNING)
                ip_go = False
                await turns.ip_end(key, False)
                if delay > 0:
                    await asyncio.sleep(delay)
                return AuthResult(success=False, handled=False,
                                  message=str(replies.AUTH_USER_LOCKED))
            ok = await asyncio.to_thread(self.credentials.verify, login, password)
        except BaseException:
            if ip_go:
                await asyncio.shield(turns.ip_end(key, False))
            await asyncio.shield(turns.user_end(name, key, user_verdict, False))
            raise
        await turns.ip_end(key, ok)
        await turns.user_end(name, key, user_verdict, ok)
        if delay > 0:
            await asyncio.sleep(delay)
        return await self._answer(server, session, mechanism, name, shown, ok=ok)

    async def _answer(self, server: SubmissionSMTP, session: SubmissionSession, mechanism: str,
                      name: str, shown: str, *, ok: bool) -> AuthResult:
        ip = server.client_ip
        if ok:
            session.credential = name
            self.log.info("event=auth_ok listener=%s client=%s mechanism=%s credential=%s",
                          self.listener, ip, mechanism, shown)
            return AuthResult(success=True, auth_data=name, message=str(replies.AUTH_OK))
        self._failed(ip, mechanism, shown)
        if await self.locked(server):
            await self.lock_out(server)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=str(replies.AUTH_INVALID))

    def _failed(self, ip: str, mechanism: str, shown: str, *, reason: str = "",
                level: int = logging.INFO) -> None:
        self.log.log(level, "event=auth_failed listener=%s client=%s mechanism=%s credential=%s"
                     + (" reason=%s" if reason else ""), self.listener, ip, mechanism, shown,
                     *((reason,) if reason else ()))
        self.observer.auth_failure(self.listener)

    async def refuse(self, server: SubmissionSMTP, session: SubmissionSession, mechanism: str,
                     reason: str, reply: Reply) -> AuthResult:
        """An AUTH exchange refused before any password check (an overlong or
        malformed response, an authorization identity): counted as a failed
        AUTH for the client, answered with `reply` (or 421 once locked)."""
        ip = server.client_ip
        self.log.info("event=auth_failed listener=%s client=%s mechanism=%s reason=%s",
                      self.listener, ip, mechanism, reason)
        self.observer.auth_failure(self.listener)
        await self.turns.failure(throttle_key(ip))
        if await self.locked(server):
            await self.lock_out(server)
            return AuthResult(success=False, handled=True)
        await server.push(reply)
        return AuthResult(success=False, handled=True)
