"""Structured logging: one line per event, ``key=value`` pairs, to stderr.

`event(log, "delivered", id=…, rcpt=…)` renders
``2026-11-24T03:00:00.123Z info event=delivered id=… rcpt=…``; values with
spaces or quotes are JSON-quoted so a line is machine-splittable. Secrets are
never passed here (AUTH payloads, passwords).
"""

from __future__ import annotations

import json
import logging
import sys
import time

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@/+=<>[],")


def _fmt(v: object) -> str:
    s = "" if v is None else str(v)
    if s and all(c in _SAFE for c in s):
        return s
    return json.dumps(s, ensure_ascii=False)


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    if log.isEnabledFor(level):
        parts = [f"event={name}"] + [f"{k}={_fmt(v)}" for k, v in fields.items()]
        log.log(level, " ".join(parts))


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{t}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
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
