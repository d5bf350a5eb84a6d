"""`[admin] cert`/`key`: the admin API and the console over HTTPS. The
console's session cookie is then Secure, the `mta` commands reach the
daemon over HTTPS trusting that certificate, and a config with only one of
the two, or files that do not load, is refused with a message naming them."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme

from mta.config import file_errors, parse_config
from mta.core.errors import ConfigError
from tests.support.console import csrf_of
from tests.support.mtahelpers import config_text, free_port, running_daemon

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-admin-token-0123456789"


@pytest.fixture
def cert_files(tmp_path):
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "admin-cert.pem", tmp_path / "admin-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ca, cert, key


def _with_admin_tls(text: str, cert: Path, key: Path) -> str:
    return text.replace('[admin]\n', f'[admin]\ncert = "{cert}"\nkey = "{key}"\n', 1)


async def test_console_over_https_sets_a_secure_cookie_and_the_cli_follows(tmp_path, cert_files):
    ca, cert, key = cert_files
    text = _with_admin_tls(config_text(tmp_path / "state", free_port()), cert, key)
    (tmp_path / "mta.toml").write_text(text)
    async with running_daemon(text) as d:
        assert d.admin.url.startswith("https://127.0.0.1:")
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(d.admin.url + "/console/login", ssl=client_ctx) as r:
                pre = csrf_of(await r.text())
            async with http.post(d.admin.url + "/console/login", ssl=client_ctx,
                                 data={"token": TOKEN, "_csrf": pre},
                                 allow_redirects=False) as r:
                assert r.status == 303
                cookie = [v for k, v in r.headers.items() if k == "Set-Cookie"
                          and v.startswith("mta_console=")][0]
                assert "Secure" in cookie and "HttpOnly" in cookie
            # Plain HTTP to the TLS port gets nowhere near a page.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(d.admin.url.replace("https:", "http:") + "/console/login"):
                    pass
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for name in ("MTA_CONFIG", "MTA_STATE_DIR"):
            env.pop(name, None)
        r = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "mta", "queue", "summary", "--json",
                             "--config", str(tmp_path / "mta.toml")],
            env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().startswith("[")


def test_cert_and_key_go_together_and_must_load(tmp_path, cert_files):
    _, cert, key = cert_files
    base = config_text(tmp_path / "state", free_port())
    with pytest.raises(ConfigError, match="admin: set both cert and key"):
        parse_config(base.replace("[admin]\n", f'[admin]\ncert = "{cert}"\n', 1), "t")
    cfg = parse_config(_with_admin_tls(base, cert, tmp_path / "missing.pem"), "t")
    assert [e for e in file_errors(cfg) if e.startswith("admin.key: ")
            and "missing.pem" in e]
    cfg = parse_config(_with_admin_tls(base, key, cert), "t")      # swapped
    assert [e for e in file_errors(cfg) if e.startswith("admin.cert/key: ")]
    assert file_errors(parse_config(_with_admin_tls(base, cert, key), "t")) == []
