"""Header fixes for a submitted message: the one job is bytes → bytes.

API
    prepare_submission(body, *, hostname, helo, client_ip, protocol,
                       queue_id_hint, recipient, now, authenticated) -> bytes

What it does (Postfix cleanup(8) does the same for submissions):
  * prepends a trace header (RFC 5321 §4.4)::

        Received: from <helo> ([<client_ip>])
                by <hostname> (mta) with <protocol> id <queue_id_hint>
                for <recipient>; <RFC 5322 date>

    ``for <…>`` only when the transaction had exactly one recipient (the
    caller passes ``recipient=None`` otherwise: listing several would leak
    Bcc recipients to each other);
  * appends ``Message-ID: <…@hostname>`` and ``Date:`` at the end of the
    header block when the message has none (names compared case-insensitively).

Invariants
  * Only the header block is scanned — from the start up to the first empty
    line, or up to the first line that is not a header field (then a blank
    line is inserted so that line stays body). The body is never parsed or
    copied more than once (one ``b"".join``), so cost does not grow with the
    body beyond that copy.
  * Line endings follow the message: CRLF unless the first line ends in a
    bare LF. (The server only hands over CRLF-clean data; see
    mta/server/hygiene.py.)
  * Nothing from the client reaches a header unsanitised: HELO names are
    reduced to a safe character set, so a client cannot inject header syntax.
  * Pure: the time comes in as `now`; `authenticated` only picks the protocol
    suffix when the caller passed a bare "ESMTP"/"ESMTPS".
"""

from __future__ import annotations

import ipaddress
import os
import re
from email.utils import getaddresses
from datetime import datetime, timezone
from email.utils import format_datetime

from mta.core.address import PLAIN_MAILBOX

__all__ = ["prepare_submission", "format_date", "header_names", "header_values", "from_domains",
           "remove_header"]

# RFC 5322 field name: printable US-ASCII except ":"; obs-syntax allows WSP before ":".
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_SAFE_HELO = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_PROTOCOL = re.compile(r"^[A-Z0-9]{1,16}$")


def format_date(now: float) -> str:
    """RFC 5322 date-time in UTC, e.g. ``Tue, 14 Nov 2023 22:13:20 +0000``."""
    return format_datetime(datetime.fromtimestamp(now, timezone.utc))


def _header_block_end(body: bytes) -> tuple[int, int, set[bytes], bool]:
    """Scan the header block.

    Returns (insert_at, body_start, lower-cased field names, has_separator):
    `insert_at` is where new fields go (just after the last header line),
    `body_start` where the body (after the separator, if any) begins.
    """
    names: set[bytes] = set()
    pos, n = 0, len(body)
    first = True
    while pos < n:
        nl = body.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        line = body[pos:end]
        content = line.rstrip(b"\r\n")
        if not content:  # the empty line that separates header and body
            return pos, end, names, True
        if content[:1] in (b" ", b"\t") and not first:
            pass  # folded continuation of the previous field
        else:
            m = _FIELD.match(content)
            if not m:  # a body line where a header was expected
                return pos, pos, names, False
            names.add(content[:m.end()].rstrip(b": \t").lower())
        first = False
        pos = end
    return n, n, names, False


def header_names(body: bytes) -> set[str]:
    """Lower-cased names of the fields in the header block (for tests and checks)."""
    return {n.decode("ascii", "replace") for n in _header_block_end(body)[2]}


def header_values(body: bytes, name: str) -> list[str]:
    """Unfolded values of every `name` field of the header block (decoded
    as UTF-8 with replacement: addresses are compared, never re-emitted)."""
    want = name.lower().encode()
    end = _header_block_end(body)[0]
    out: list[str] = []
    current: list[bytes] | None = None
    for line in body[:end].splitlines():
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            out.append(b" ".join(x.strip() for x in current).decode("utf-8", "replace"))
            current = None
        field, sep, value = line.partition(b":")
        if sep and field.rstrip().lower() == want:
            current = [value]
    if current is not None:
        out.append(b" ".join(x.strip() for x in current).decode("utf-8", "replace"))
    return out


def remove_header(body: bytes, name: str) -> tuple[bytes, list[str]]:
    """Remove every `name` field (with its folded lines) from the header
    block; returns the new message and the removed fields' unfolded values."""
    want = name.lower().encode()
    end = _header_block_end(body)[0]
    lines = body[:end].splitlines(keepends=True)
    kept: list[bytes] = []
    values: list[str] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if dropping:
                values[-1] += " " + line.strip().decode("utf-8", "replace")
                continue
        else:
            field, sep, value = line.partition(b":")
            dropping = bool(sep) and field.rstrip().lower() == want
            if dropping:
                values.append(value.strip().decode("utf-8", "replace"))
                continue
        kept.append(line)
    if not values:
        return body, []
    return b"".join(kept) + body[end:], values


# One plain address, bare or after a display name without specials: the
# usual From:. Its domain is read without the stdlib's full parser (~40 µs).
_SIMPLE_FROM = re.compile(
    rf"[ \t]*(?:[A-Za-z0-9 \t.'-]*<{PLAIN_MAILBOX}>|{PLAIN_MAILBOX})[ \t]*\Z")


def from_domains(body: bytes) -> list[str] | None:
    """The domains of the From: header's addresses, lower-cased, in order;
    None when there is no From: or an address in it has no domain."""
    values = header_values(body, "From")
    if not values:
        return None
    if len(values) == 1:
        m = _SIMPLE_FROM.match(values[0])
        if m is not None:
            return [(m.group(1) or m.group(2)).lower()]
    domains = []
    for _, addr in getaddresses(values):
        local, at, domain = addr.rpartition("@")
        if not at or not domain:
            return None
        domains.append(domain.strip().rstrip(".").lower())
    return domains or None


def _tcp_info(client_ip: str) -> str:
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"[{ip.ipv4_mapped}]"
        return f"[IPv6:{ip.compressed}]"
    return f"[{ip}]"


def _protocol(protocol: str, authenticated: bool) -> str:
    p = protocol.upper()
    if not _PROTOCOL.match(p):
        p = "ESMTP"
    # RFC 3848: the A suffix marks an authenticated session.
    if authenticated and p in ("ESMTP", "ESMTPS"):
        p += "A"
    return p


def _received(*, hostname: str, helo: str, client_ip: str, protocol: str,
              queue_id_hint: str, recipient: str | None, now: float, eol: bytes) -> bytes:
    helo_s = _SAFE_HELO.sub("?", helo)[:255] or "unknown"
    fold = eol + b"\t"
    parts = [f"Received: from {helo_s} ({_tcp_info(client_ip)})".encode(),
             f"by {hostname} (mta) with {protocol} id {queue_id_hint}".encode()]
    tail = f"; {format_date(now)}".encode()
    if recipient:
        safe_rcpt = recipient.replace("\r", "").replace("\n", "").replace(">", "")
        parts.append(b"for <" + safe_rcpt.encode("utf-8", "surrogateescape") + b">" + tail)
    else:
        parts[-1] += tail
    return fold.join(parts) + eol


def prepare_submission(body: bytes, *, hostname: str, helo: str, client_ip: str,
                       protocol: str, queue_id_hint: str, recipient: str | None,
                       now: float, authenticated: bool) -> bytes:
    first_nl = body.find(b"\n")
    eol = b"\n" if first_nl > 0 and body[first_nl - 1:first_nl] != b"\r" else b"\r\n"
    if first_nl == 0:
        eol = b"\n"

    insert_at, body_start, names, has_sep = _header_block_end(body)
    added: list[bytes] = []
    if b"message-id" not in names:
        token = os.urandom(6).hex()
        added.append(f"Message-ID: <{queue_id_hint}.{token}@{hostname}>".encode() + eol)
    if b"date" not in names:
        added.append(f"Date: {format_date(now)}".encode() + eol)

    received = _received(hostname=hostname, helo=helo, client_ip=client_ip,
                         protocol=_protocol(protocol, authenticated),
                         queue_id_hint=queue_id_hint, recipient=recipient, now=now, eol=eol)

    head = body[:insert_at]
    if head and not head.endswith(b"\n"):
        head += eol  # last header line had no line ending (message without body)
    if has_sep:
        rest = body[insert_at:]
    elif body_start < len(body):
        rest = eol + body[body_start:]  # keep the non-header line in the body
    else:
        rest = b""
    return b"".join([received, head, *added, rest])
