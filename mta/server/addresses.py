"""The MAIL FROM / RCPT TO address check, one for every listener (pure).

API
    check_sender(address, *, smtp_utf8) -> str | Reply
        "" for the null sender "<>", else the normalised address
        (core.parse_address: lower-case A-label domain), or the Reply refusing it
    check_recipient(address, *, smtp_utf8) -> str | Reply
        the normalised address, or the Reply refusing it ("<>" included)

Rules, in order (the submission and the inbound handler both use them, so
they cannot disagree):
  * an address that is not UTF-8 (aiosmtpd hands undecodable bytes over as
    surrogates) or does not parse → 501 5.1.7 (sender) / 501 5.1.3
    (recipient), naming the address and why;
  * a non-ASCII address — local part *or* domain, as received — outside an
    SMTPUTF8 transaction → 553 5.6.7 (RFC 6531 §3.4). The parsed form is not
    what counts: a non-ASCII domain parses to ASCII punycode, but the client
    still sent UTF-8 without announcing it.
"""

from __future__ import annotations

from mta.core import AddressError, Reply, parse_address
from mta.server import replies

__all__ = ["check_recipient", "check_sender"]


def check_sender(address: str, *, smtp_utf8: bool) -> str | Reply:
    if address == "<>":
        return ""
    return _check(address, smtp_utf8=smtp_utf8, sender=True)


def check_recipient(address: str, *, smtp_utf8: bool) -> str | Reply:
    if address == "<>":
        return replies.NULL_RECIPIENT
    return _check(address, smtp_utf8=smtp_utf8, sender=False)


def _check(address: str, *, smtp_utf8: bool, sender: bool) -> str | Reply:
    try:
        address.encode("utf-8")
        parsed = parse_address(address)
    except (AddressError, UnicodeError) as exc:
        why = str(exc) if isinstance(exc, AddressError) else "not UTF-8"
        return (replies.bad_sender if sender else replies.bad_recipient)(address, why)
    if not address.isascii() and not smtp_utf8:
        return replies.NEED_SMTPUTF8
    return str(parsed)
