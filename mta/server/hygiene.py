"""DATA hygiene against SMTP smuggling: a pure check of the received content.

API
    check_data(content: bytes) -> Reply | None    None: clean

Why: a bare LF or bare CR lets "<LF>.<LF>" (and its relatives) end the
message for one MTA but not for the next, so one submission becomes two
downstream (CVE-2023-51764/51765/51766, aiosmtpd CVE-2024-27305). aiosmtpd
≥ 1.4.5 only ends DATA at "<CRLF>.<CRLF>", so every other end-of-data form
reaches us inside the content; rejecting any bare CR or LF rejects them all,
and the whole transaction is refused rather than "repaired".

Invariants
  * Content is clean iff every CR is immediately followed by LF and every LF
    is immediately preceded by CR, and there is no NUL byte. Proof of the
    count test: CRLF pairs are disjoint, so count(CRLF) == count(CR) ==
    count(LF) holds exactly when no CR or LF stands outside a pair.
  * Linear time in C (three `bytes.count` and one `in`), no copies.
"""

from __future__ import annotations

from mta.core import Reply
from mta.server.replies import BARE_CR_LF, NUL_BYTES

__all__ = ["check_data"]


def check_data(content: bytes) -> Reply | None:
    pairs = content.count(b"\r\n")
    if content.count(b"\r") != pairs or content.count(b"\n") != pairs:
        return BARE_CR_LF
    if b"\0" in content:
        return NUL_BYTES
    return None
