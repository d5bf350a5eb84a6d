"""Structured logging: one line per event, ``key=value`` pairs, to stderr.

`event(log, "delivered", id=…, rcpt=…)` (mta.core.logfmt) renders
``2026-11-24T03:00:00.123Z info event=delivered id=… rcpt=…``; values with
spaces or quotes are JSON-quoted so a line is machine-splittable. Secrets are
never passed here (AUTH payloads, passwords).

The formatter escapes control characters (core.logfmt.escape_controls) in
every record's message, and in each line of an attached traceback, which it
indents: a record is one line starting with its timestamp (plus its
traceback's indented lines) whatever a client sent.
"""

from __future__ import annotations

import logging
import sys
import time

from mta.core.logfmt import escape_controls, event

__all__ = ["LineFormatter", "event", "setup_logging"]


class LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        try:
            message = record.getMessage()
        except Exception as exc:   # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r} (format error: {exc})"
        line = (f"{t}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} "
                f"{escape_controls(message)}")
        if record.exc_info:
            tb = self.formatException(record.exc_info)
            # Indented: only a record's first line starts at column 0, so
            # an exception message with line breaks cannot pose as a record.
            line += "".join("\n    " + escape_controls(x) for x in tb.split("\n"))
        return line


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command line at DEBUG, including AUTH payloads
    # (base64 credentials): keep it at WARNING whatever our level is.
    mail_log = logging.getLogger("mail.log")
    mail_log.setLevel(logging.WARNING)
    # aiosmtpd itself sets the deprecated Session.login_data on every AUTH
    # and warns about it: noise in every session, nothing an operator can fix.
    mail_log.addFilter(lambda r: "login_data is deprecated" not in r.getMessage())
    logging.getLogger("aiosmtpd").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # one line per SQL call at DEBUG
