"""Broadcast mail submitted over SMTP: the `X-Mta-Stream: broadcast` header.

One job: for a submission that says it is broadcast mail, check what
broadcast needs and add the RFC 8058 one-click unsubscribe headers before
DKIM signs the message (the API's twin is runtime/api_content.py; both use
the same token and checks).

API:
    StreamHeaders(cfg_of, domains, key_path)     key_path: the token key file (runtime/paths.py)
        await .apply(content, rcpts, credential, queue_id) -> bytes | Reply
            the message with our headers (or unchanged), or the refusal
    STREAM_HEADER, TOPIC_HEADER
    take_requiretls(mail_from_arg) -> (arg without REQUIRETLS, had it)   (RFC 8689)
    tls_flags(envelope, head) -> 0 | 1 (REQUIRETLS) | 2 ("TLS-Required: No")

Rules (the header is for us: always removed, with X-Mta-Topic):
  - "transactional", or absent and the credential not in [broadcast]
    credentials: the message is unchanged;
  - "broadcast": exactly one recipient (else 550 5.5.3), the public listener
    configured (else 550 5.3.3), a sending domain (the From: domain or its
    registered parent) whose state is "verified" — SPF, DKIM and DMARC pass
    (else 550 5.7.1); any List-Unsubscribe(-Post) the client wrote is
    replaced by ours; anything else: 550 5.6.0 naming the header.
Invariant: the added fields are single lines (the URL has no spaces) placed
at the top of the header section, so the DKIM signature that follows signs
them (mail/dkim.py SIGNED_HEADERS).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from mta.config import Config
from mta.config.content import default_stream, public_base
from mta.core.reply import Reply
from mta.mail.headers import from_domains, remove_header
from mta.mail.tokens import TokenKey, seal
from mta.spool.tenants import SqliteTenants

__all__ = ["STREAM_HEADER", "TOPIC_HEADER", "StreamHeaders", "take_requiretls", "tls_flags"]

STREAM_HEADER, TOPIC_HEADER = "X-Mta-Stream", "X-Mta-Topic"
_TOPIC = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_OURS = re.compile(rb"(?im)^x-mta-(?:stream|topic)[ \t]*:")


def _head_end(content: bytes) -> int:
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end


class DomainStates(Protocol):
    def registered(self, domain: str) -> str | None: ...
    def state(self, domain: str) -> str | None: ...


class StreamHeaders:
    def __init__(self, cfg_of: Callable[[], Config], domains: DomainStates | None,
                 key_path: Path):
        self.cfg_of, self.domains, self.key_path = cfg_of, domains, key_path
        self._key: TokenKey | None = None

    def _token_key(self) -> TokenKey:
        if self._key is None:
            self._key = TokenKey.load_or_create(self.key_path)
        return self._key

    async def apply(self, content: bytes, rcpts: Sequence[str], credential: str | None,
                    queue_id: str) -> bytes | Reply:
        cfg = self.cfg_of()
        if not _OURS.search(content, 0, _head_end(content)) \
                and default_stream(cfg, credential) == "transactional":
            return content                  # the common case: one scan, in C
        content, streams = remove_header(content, STREAM_HEADER)
        content, topics = remove_header(content, TOPIC_HEADER)
        stream = streams[0].strip().lower() if streams else default_stream(cfg, credential)
        if stream == "transactional":
            return content
        if stream != "broadcast":
            return Reply(550, "5.6.0", f"{STREAM_HEADER}: transactional or broadcast")
        topic = topics[0].strip() if topics else ""
        if topic and not _TOPIC.fullmatch(topic):
            return Reply(550, "5.6.0", f"{TOPIC_HEADER}: 1 to 64 letters, digits, _ - or .")
        refused = self._refusal(content, rcpts, cfg)
        if refused is not None:
            return refused
        tenant = await asyncio.to_thread(
            SqliteTenants(Path(cfg.server.state_dir)).owner, "credential", credential or "")
        key = await asyncio.to_thread(self._token_key)
        token = seal(key, "u", [tenant, rcpts[0], topic, queue_id])
        for name in ("List-Unsubscribe", "List-Unsubscribe-Post"):
            content, _ = remove_header(content, name)
        added = (f"List-Unsubscribe: <{public_base(cfg)}/u/{token}>\r\n"
                 "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode("ascii")
        return added + content

    def _refusal(self, content: bytes, rcpts: Sequence[str], cfg: Config) -> Reply | None:
        if len(rcpts) != 1:
            return Reply(550, "5.5.3", "broadcast mail goes to one recipient per message "
                                       "(its unsubscribe link names them)")
        if public_base(cfg) is None:
            return Reply(550, "5.3.3", "broadcast mail needs the public listener for its "
                                       "unsubscribe link ([public] address is not set)")
        domains = from_domains(content) or []
        domain = domains[0].lower() if domains else ""
        registered = self.domains.registered(domain) if self.domains and domain else None
        state = self.domains.state(registered) if self.domains and registered else None
        if state != "verified":
            shown = registered or domain or "(no From: domain)"
            return Reply(550, "5.7.1", f"broadcast mail needs a sending domain whose SPF, "
                                       f"DKIM and DMARC all pass: {shown} is "
                                       f"{state or 'not a sending domain'}")
        return None


# ---- RFC 8689 (REQUIRETLS, TLS-Required: No) -----------------------------------

class _Requiring(Protocol):
    requiretls: bool


_REQUIRETLS = re.compile(r"(?i)[ \t]+REQUIRETLS(?=[ \t]|$)")


def take_requiretls(arg: str | None) -> tuple[str | None, bool]:
    """MAIL FROM's argument without a REQUIRETLS parameter, and whether it
    had one (aiosmtpd refuses parameters it does not know)."""
    if not arg or "requiretls" not in arg.lower():
        return arg, False
    cut = arg.rfind(">")
    head, tail = (arg[:cut + 1], arg[cut + 1:]) if cut >= 0 else ("", arg)
    stripped, n = _REQUIRETLS.subn("", tail)
    return (head + stripped, True) if n else (arg, False)


_TLS_REQUIRED_NO = re.compile(rb"(?im)^tls-required[ \t]*:[ \t]*no[ \t]*\r?$")


def tls_flags(envelope: _Requiring, body: bytes) -> int:
    """RFC 8689: 1 for MAIL FROM … REQUIRETLS; else 2 when the header says
    "TLS-Required: No" (ignored beside REQUIRETLS, §5)."""
    if envelope.requiretls:
        return 1
    end = body.find(b"\r\n\r\n")
    return 2 if _TLS_REQUIRED_NO.search(body, 0, end if end >= 0 else len(body)) else 0
