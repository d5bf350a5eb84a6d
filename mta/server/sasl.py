"""The AUTH exchange on the wire: SASL PLAIN and LOGIN parsed, decided elsewhere.

API (functions over the protocol instance, protocol.SubmissionSMTP, whose
auth_PLAIN / auth_LOGIN / challenge_auth methods call them)
    await plain(server, args) -> AuthResult      AUTH PLAIN [initial-response]
    await login(server, args) -> AuthResult      AUTH LOGIN [initial-response]
    await challenge(server, challenge, encode_to_b64=True) -> bytes | MISSING
                                                 a 334 challenge and its
                                                 decoded answer (MISSING:
                                                 refused, replied already)
    AUTH_LINE_LIMIT, AUTH_DRAIN_LIMIT

The handler (seams.SubmissionHooks) decides: `authenticate(server, session,
mechanism, login, password)` checks a password (async: the scrypt check
runs in a thread and the brute-force delay is awaited; aiosmtpd's own
authenticator hook is synchronous, so it cannot be used), `refuse_auth(…)`
answers an exchange refused before any password check.

Rules
  * RFC 4954 §4: an answer line of up to AUTH_LINE_LIMIT octets is read;
    a longer one gets "500 5.5.6", counts as a failed AUTH and is drained to
    its end, so the next line is read as a command again (aiosmtpd's readline
    raised, answered 451 with a traceback, and read the rest of the line as
    commands). Past AUTH_DRAIN_LIMIT without a line end the connection closes.
  * An aborted ("*") or garbled exchange gets one reply, not two (aiosmtpd
    1.4 sends a 501 and then a 535).
  * PLAIN with an authorization identity other than the login is refused
    (RFC 4616: acting as another identity needs authorization we do not
    grant; refusing beats silently ignoring it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult

from mta.server import replies

if TYPE_CHECKING:
    from mta.server.protocol import SubmissionSMTP

__all__ = ["AUTH_DRAIN_LIMIT", "AUTH_LINE_LIMIT", "challenge", "login", "plain"]

# RFC 4954 §4: AUTH exchange lines of up to 12288 octets must be accepted.
AUTH_LINE_LIMIT = 12288
AUTH_DRAIN_LIMIT = 64 * 1024   # past this without a line end: close, do not read on


async def challenge(server: SubmissionSMTP, text: str | bytes, encode_to_b64: bool = True) -> Any:
    """aiosmtpd's challenge_auth with a bounded answer line (see the rules)."""
    if isinstance(text, str):
        text = text.encode()
    await server.push(b"334 " + (base64.b64encode(text) if encode_to_b64 else text))
    line = await _answer_line(server)
    if line is None:
        return MISSING
    blob = line.strip()
    if blob == b"*":   # RFC 4954: the client cancels
        await server.push(replies.AUTH_ABORTED)
        return MISSING
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        await server.push(replies.AUTH_BAD_ANSWER)
        return MISSING


async def _answer_line(server: SubmissionSMTP) -> bytes | None:
    """One AUTH answer line, or None when it was refused (replied already)."""
    reader = server._reader
    assert reader is not None
    buf = bytearray()
    drained = 0
    while True:
        try:
            part = await reader.readuntil(b"\n")
            ended = True
        except asyncio.LimitOverrunError as e:
            part = await reader.read(e.consumed)
            ended = False
        except asyncio.IncompleteReadError:
            return None                      # the client went away
        if drained or len(buf) + len(part) > AUTH_LINE_LIMIT:
            drained += len(part)             # too long: keep reading, stop storing
            buf.clear()
            if not ended and drained > AUTH_DRAIN_LIMIT:
                break
        else:
            buf += part
        if ended:
            break
    if not drained:
        return bytes(buf)
    await server.event_handler.refuse_auth(server, server.current_session(),
                                           server.auth_mechanism, "line_too_long",
                                           replies.AUTH_LINE_TOO_LONG)
    if not ended and server.transport is not None:
        server.transport.close()             # no end in sight: do not read on
    return None


async def _response(server: SubmissionSMTP, text: bytes) -> bytes | None:
    """Send a 334 challenge and return the decoded answer (None: replied already)."""
    blob = await challenge(server, text, encode_to_b64=True)
    return None if blob is MISSING else blob


async def _initial(server: SubmissionSMTP, args: list[str], text: bytes) -> bytes | None:
    """The initial response (AUTH mech <base64>), or the answer to a
    challenge when there is none; None: refused (replied already)."""
    if len(args) == 1:
        return await _response(server, text)
    try:
        return base64.b64decode(args[1].encode(), validate=True)
    except (binascii.Error, ValueError):
        await server.push(replies.AUTH_BAD_BASE64)
        return None


async def plain(server: SubmissionSMTP, args: list[str]) -> AuthResult:
    server.auth_mechanism = "PLAIN"
    blob = await _initial(server, args, b"")
    if blob is None:
        return AuthResult(success=False, handled=True)
    parts = blob.split(b"\0")
    if len(parts) != 3:
        await server.push(replies.AUTH_BAD_PLAIN)
        return AuthResult(success=False, handled=True)
    authzid, name, password = parts
    if authzid and authzid != name:
        return await server.event_handler.refuse_auth(server, server.current_session(), "PLAIN",
                                                      "authzid", replies.AUTH_AUTHZID)
    return await server.event_handler.authenticate(server, server.current_session(), "PLAIN",
                                                   name, password)


async def login(server: SubmissionSMTP, args: list[str]) -> AuthResult:
    server.auth_mechanism = "LOGIN"
    name = await _initial(server, args, b"Username:")
    if name is None:
        return AuthResult(success=False, handled=True)
    password = await _response(server, b"Password:")
    if password is None:
        return AuthResult(success=False, handled=True)
    return await server.event_handler.authenticate(server, server.current_session(), "LOGIN",
                                                   name, password)
