"""Log lines are safe whatever a client sends (issue 10 item 7): the real
daemon's stderr after hostile commands holds no raw control byte, and every
line is a record (timestamp first) or part of a traceback."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mta.core.logfmt import escape_controls, event
from mta.runtime.logs import LineFormatter
from tests.support.mtahelpers import config_text, free_port

ROOT = Path(__file__).resolve().parent.parent
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warning|error|critical) ")


def _format(msg, *args, exc=None) -> str:
    rec = logging.LogRecord("t", logging.WARNING, __file__, 1, msg, args,
                            (type(exc), exc, exc.__traceback__) if exc else None)
    return LineFormatter().format(rec)


def test_formatter_escapes_controls_in_message_and_traceback():
    line = _format("unknown command: %s", "\x1b[2J\x1b]0;owned\x07X\rY\nZ\x00\u2028")
    assert line.endswith(r"unknown command: \x1b[2J\x1b]0;owned\x07X\x0dY\x0aZ\x00\u2028")
    assert "\n" not in line and not RAW_CONTROL.search(line)
    try:
        raise ValueError("bad \x1b[31m\nvalue")
    except ValueError as e:
        out = _format("event=oops", exc=e)
    first, *tb = out.split("\n")
    assert RECORD.match(first) and tb[0] == "    Traceback (most recent call last):"
    assert tb[-2:] == [r"    ValueError: bad \x1b[31m", "    value"]
    assert all(x.startswith("    ") for x in tb)
    assert not RAW_CONTROL.search(out)


def test_event_quotes_values_that_could_forge_fields():
    log = logging.getLogger("t.event")
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    try:
        event(log, "received", sender='"a b" event=delivered@x', id="Q1")
    finally:
        log.removeHandler(h)
    assert buf.getvalue() == 'event=received sender="\\"a b\\" event=delivered@x" id=Q1\n'
    assert escape_controls("plain é text") == "plain é text"


def test_daemon_log_has_no_raw_control_bytes_after_hostile_commands(tmp_path):
    port = free_port()
    conf = tmp_path / "mta.toml"
    conf.write_text(config_text(tmp_path / "state", port))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTA_STATE_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config", str(conf)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "daemon did not start"
                time.sleep(0.1)
        with s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220 ")
            for line in (b"EHLO x", b"\x1b[2J\x1b]0;owned\x07EVIL", b"FOO\rBAR\x00BAZ",
                         b"\x9b31mC1", b"MAIL FROM:<a\x00b@x\x1b>", b"QUIT"):
                s.sendall(line + b"\r\n")
                while True:          # read the whole (possibly multi-line) reply
                    reply = f.readline()
                    if not reply or reply[3:4] != b"-":
                        break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    text = err.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "\\x1b[2J\\x1b]0;OWNED\\x07EVIL" in text     # logged (upper-cased), escaped
    assert not RAW_CONTROL.search(text), RAW_CONTROL.search(text)
    assert b"\r" not in err
    for line in text.splitlines():
        assert RECORD.match(line) or line.startswith("    "), line


async def test_daemon_start_and_submissions_log_each_thing_once(tmp_path, caplog):
    """Item 20: each listener (and the admin API) logs event=listening once;
    the spool's opening line is key=value; an idempotent repeat logs
    event=duplicate naming the original, not a second event=received.
    Item 18: a suppression refused at RCPT counts in mta_recipients_total."""
    import aiosmtplib
    from mta.server.credentials import CredentialStore
    from tests.support.mtahelpers import no_verify_context, running_daemon
    caplog.set_level(logging.INFO)
    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    CredentialStore(state / "credentials.json").add("app", "app-password-1")
    async with running_daemon(config_text(state, port, mode="sandbox")) as d:
        text = caplog.text
        assert text.count("event=listening listener=submission ") == 1, text
        assert text.count("event=listening listener=admin ") == 1, text
        opened = [ln for ln in text.splitlines() if "event=recovery_done" in ln]
        assert len(opened) == 1 and "{" not in opened[0] and " leased_reset=0" in opened[0]
        assert "event=spool_opened" not in text          # the same report, once (DEBUG)
        import time as _time
        from mta.spool import suppression_admin
        await asyncio.to_thread(suppression_admin.add, state, "gone@example.org",
                                reason="hard_bounce", now=_time.time())
        msg = (b"From: app@example.com\r\nSubject: once\r\nIdempotency-Key: k-1\r\n\r\nhi\r\n")
        ids = []
        for _ in range(2):
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                       tls_context=no_verify_context()) as c:
                await c.login("app", "app-password-1")
                _, resp = await c.sendmail("app@example.com", ["x@example.org"], msg)
                ids.append(resp.split()[-1])
        assert ids[0] == ids[1]
        text = caplog.text
        assert text.count(f"event=received id={ids[0]} ") == 1, text
        assert f"event=duplicate id={ids[0]} discarded_id=" in text
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                   tls_context=no_verify_context()) as c:
            await c.login("app", "app-password-1")
            await c.mail("app@example.com")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused):
                await c.rcpt("gone@example.org")
        metrics = d.metrics.render()[0].decode()
        assert 'mta_recipients_total{class="",outcome="suppressed"} 1.0' in metrics
