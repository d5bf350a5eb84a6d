"""Helpers for end-to-end tests: free ports, config text, in-process daemon,
and SMTP clients over real loopback sockets."""

from __future__ import annotations

import collections
import contextlib
import email
import email.policy
import socket
import ssl
from pathlib import Path

from mta.config import parse_config
from mta.runtime.daemon import Daemon


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=512)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, and not one this process handed out recently: the
    kernel may give the same ephemeral port to two calls in a row (seen: a
    config's API and admin addresses on one port, refused as a clash)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def config_text(state_dir: Path, port: int, *, routes: dict | None = None, mode="production",
                tls="starttls", trusted=(), nameservers=(), extra_delivery="", smtp_port=25,
                retry="1s,2s,3s", lifetime="60s", hostname="mta.test",
                require_verified=False, public_ips=()) -> str:
    lines = [
        "[server]", f'hostname = "{hostname}"', f'state_dir = "{state_dir}"', f'mode = "{mode}"',
        'shutdown_timeout = "5s"', 'log_level = "debug"',
        f"public_ips = {list(public_ips)!r}".replace("'", '"'),
        "[[listeners]]", 'name = "submission"', f'address = "127.0.0.1:{port}"',
        f'tls = "{tls}"', f"trusted_networks = {list(trusted)!r}".replace("'", '"'),
        "[delivery]", f'retry_schedule = "{retry}"', f'max_queue_lifetime = "{lifetime}"',
        'connect_timeout = "3s"', 'command_timeout = "10s"', 'destination_backoff = "0.2s,0.5s,1s"',
        f"smtp_port = {smtp_port}", extra_delivery,
        "[dns]", f"nameservers = {list(nameservers)!r}".replace("'", '"'), 'timeout = "2s"',
        "[policy]", f"require_verified_domain = {'true' if require_verified else 'false'}",
        "[admin]", f'address = "127.0.0.1:{free_port()}"',
        'token = "test-admin-token-0123456789"',
        "[routes]",
    ]
    for dom, hop in (routes or {}).items():
        lines.append(f'"{dom}" = "{hop}"')
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def running_daemon(text: str):
    cfg = parse_config(text, "test")
    d = Daemon(cfg)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


def no_verify_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_message(sender: str, rcpts: list[str], subject: str = "test", body: str = "Hello.\r\n",
                 extra_headers: str = "") -> bytes:
    return (f"From: {sender or 'nobody@example.com'}\r\nTo: {', '.join(rcpts)}\r\n"
            f"Subject: {subject}\r\n{extra_headers}\r\n{body}").encode()


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)
