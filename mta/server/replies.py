"""Every reply the submission server sends, as `Reply` values, plus the
translator that gives aiosmtpd's built-in replies an enhanced status code.

API
    AUTH_REQUIRED, ENCRYPTION_REQUIRED, AUTH_OK, AUTH_INVALID, AUTH_LOCKED, …
    bad_sender(addr) / bad_recipient(addr) / sender_ok(addr) / recipient_ok(addr)
    queued(queue_id)
    with_esc(line) -> str     "503 Error: need RCPT command"
                              → "503 5.5.1 Error: need RCPT command"

Invariants
  * Every reply we send carries an RFC 3463 enhanced status code, except the
    ones RFC 2034 exempts or that cannot carry one: the 220 greeting, the
    EHLO/HELO response (the protocol adapter bypasses `with_esc` for those),
    334 AUTH challenges (base64) and the 354 DATA go-ahead.
  * Client-supplied text quoted in a reply is reduced to printable ASCII and
    truncated, so it can never break the reply line; an accepted address
    (sender_ok, recipient_ok) keeps its printable non-ASCII characters.
"""

from __future__ import annotations

import re

from mta.core import Reply

AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
# RFC 4954 §6: 538 is the reply for a mechanism that needs an encrypted channel.
ENCRYPTION_REQUIRED = Reply(538, "5.7.11",
                            "Encryption required for requested authentication mechanism")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_LOCKED = Reply(421, "4.7.0", "Too many failed authentication attempts, try again later")
AUTH_USER_LOCKED = Reply(454, "4.7.0", "Temporary authentication failure: too many failed "
                         "attempts for this user, try again later")
# RFC 4954 §4: 500 5.5.6 for an authentication exchange line that is too long.
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_AUTHZID = Reply(535, "5.7.8", "Authentication credentials invalid: the authorization "
                     "identity must be empty or equal to the user name")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
AUTH_ABORTED = Reply(501, "5.7.0", "Auth aborted")               # the client's "*"
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64 in AUTH response")
AUTH_BAD_ANSWER = Reply(501, "5.5.2", "Can't decode base64")     # a challenge's answer
AUTH_BAD_PLAIN = Reply(501, "5.5.2", "AUTH PLAIN response must be authzid NUL authcid NUL passwd")
TOO_BIG = Reply(552, "5.3.4", "Message too big")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too large (it must end within "
                       "the first MiB)")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
BARE_CR_LF = Reply(550, "5.5.2", "Message contains bare CR or LF characters (see SMTP smuggling)")
NUL_BYTES = Reply(550, "5.5.2", "Message contains NUL characters (see SMTP smuggling)")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later")
TOO_MANY_SESSIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_JUNK = Reply(421, "4.7.0", "Too many commands without mail, closing connection")
TRANSACTION_TIMEOUT = Reply(421, "4.4.2", "Transaction time limit exceeded, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
NO_FROM_DOMAIN = Reply(550, "5.7.1", "Message has no From: header with a sender domain; "
                       "one is needed to check the sending domain")
NULL_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax: <> is not a recipient")

_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def quote(text: str, limit: int = 100, *, utf8: bool = False) -> str:
    """Client text made safe for a reply line: printable ASCII (with `utf8`,
    printable Unicode too), anything else as "?"."""
    if utf8:
        s = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?"
                    for c in text)
    else:
        s = _PRINTABLE.sub("?", text)
    return s if len(s) <= limit else s[:limit] + "..."


def bad_sender(addr: str, why: str = "") -> Reply:
    extra = f" ({quote(why, 80)})" if why else ""
    return Reply(501, "5.1.7", f"Bad sender address syntax: {quote(addr)}{extra}")


def bad_recipient(addr: str, why: str = "") -> Reply:
    extra = f" ({quote(why, 80)})" if why else ""
    return Reply(501, "5.1.3", f"Bad recipient address syntax: {quote(addr)}{extra}")


# An accepted address is echoed as received: a non-ASCII one was accepted only
# in an SMTPUTF8 transaction, where replies may carry UTF-8 (RFC 6531 §3.7.4).
def sender_ok(addr: str) -> Reply:
    return Reply(250, "2.1.0", f"Sender <{quote(addr, 320, utf8=True)}> OK")


def recipient_ok(addr: str) -> Reply:
    return Reply(250, "2.1.5", f"Recipient <{quote(addr, 320, utf8=True)}> OK")


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


# aiosmtpd's built-in texts (1.4.x) → ours. Matched on the text after the code,
# exactly or by prefix (entries ending in "*").
_BUILTIN: dict[tuple[int, str], tuple[str, str]] = {
    (500, "Command line too long"): ("5.5.2", "Command line too long"),
    (500, "Error: bad syntax"): ("5.5.2", "Syntax error: empty or malformed command line"),
    (500, "Error: strict ASCII mode"): ("5.6.7", "Non-ASCII data requires SMTPUTF8"),
    (500, "Error: command 'AUTH' not recognized"): ("5.5.1", "AUTH requires EHLO, not HELO"),
    (500, "Line too long (see RFC5321 4.5.3.1.6)"):
        ("5.5.2", "Line too long (RFC 5321 4.5.3.1.6: at most 998 characters per line)"),
    (554, "Command refused due to lack of security"):
        ("5.7.0", "Command refused due to lack of security"),
    (503, "Already authenticated"): ("5.5.1", "Already authenticated"),
    (501, "Not enough value"): ("5.5.2", "Syntax: AUTH mechanism [initial-response]"),
    (501, "Too many values"): ("5.5.2", "Syntax: AUTH mechanism [initial-response]"),
    (552, "Error: message size exceeds fixed maximum message size"): ("5.3.4", "Message too big"),
    (552, "Error: Too much mail data"): ("5.3.4", "Message too big"),
    (454, "TLS not available"): ("4.7.0", "TLS not available"),
    (220, "Ready to start TLS"): ("2.0.0", "Ready to start TLS"),
    (250, "OK"): ("2.0.0", "OK"),
    (221, "Bye"): ("2.0.0", "Bye"),
    (502, "EXPN not implemented"): ("5.5.1", "EXPN not implemented"),
    (555, "MAIL FROM parameters not recognized or not implemented"):
        ("5.5.4", "MAIL FROM parameters not recognized or not implemented"),
    (555, "RCPT TO parameters not recognized or not implemented"):
        ("5.5.4", "RCPT TO parameters not recognized or not implemented"),
}
_PREFIX: tuple[tuple[int, str, str], ...] = (
    (500, "Error: command ", "5.5.1"),
    (501, "Error: BODY", "5.5.4"),
    (501, "Error: SMTPUTF8", "5.5.4"),
    (501, "Syntax: ", "5.5.2"),
    (503, "Error: ", "5.5.1"),
    (252, "Cannot VRFY", "2.0.0"),
    (502, "Could not VRFY", "5.5.1"),
)
# Fallback by code when a text is new to us (a newer aiosmtpd).
_DEFAULT_ESC = {214: "2.0.0", 221: "2.0.0", 235: "2.7.0", 250: "2.0.0",
                252: "2.0.0", 421: "4.3.0", 450: "4.0.0", 451: "4.3.0", 452: "4.3.1",
                454: "4.7.0", 500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1",
                504: "5.5.4", 530: "5.7.0", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0",
                552: "5.3.4", 553: "5.1.3", 554: "5.0.0", 555: "5.5.4"}
_LINE = re.compile(r"^(\d{3})([ -])(.*)$", re.DOTALL)
_HAS_ESC = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_NO_ESC_CODES = frozenset({220, 334, 354})  # 220: the greeting (RFC 2034)


def with_esc(line: str) -> str:
    m = _LINE.match(line)
    if not m:
        return line
    code, sep, text = int(m.group(1)), m.group(2), m.group(3)
    mapped = _BUILTIN.get((code, text))
    if mapped is None and (code in _NO_ESC_CODES or _HAS_ESC.match(text)):
        return line
    if mapped is not None:
        esc, text = mapped
    else:
        esc = ""
        for pcode, prefix, pesc in _PREFIX:
            if code == pcode and text.startswith(prefix):
                esc = pesc
                break
        if not esc:
            esc = _DEFAULT_ESC.get(code, f"{str(code)[0]}.0.0")
        text = text.removeprefix("Error: ")
    return f"{code}{sep}{esc} {text}"
