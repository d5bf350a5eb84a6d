"""The sending API's `[api]` section (issue 13): the sandbox's first key,
TLS, and the rule that keys never cross a network in clear."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
import trustme

from mta.config import parse_config
from mta.core import ConfigError
from tests.support.mtahelpers import free_port, running_daemon


def sandbox_text(state, extra: str = "") -> str:
    return (f'[server]\nhostname = "mta.test"\nstate_dir = "{state}"\nmode = "sandbox"\n'
            f'[[listeners]]\nname = "submission"\naddress = "127.0.0.1:{free_port()}"\n'
            f'tls = "none"\ntrusted_networks = ["127.0.0.0/8"]\n'
            f'[admin]\naddress = "127.0.0.1:{free_port()}"\n'
            f'[api]\naddress = "127.0.0.1:{free_port()}"\n{extra}')


async def test_sandbox_prints_a_first_key_that_sends(tmp_path, capsys):
    state = tmp_path / "state"
    async with running_daemon(sandbox_text(state)) as d:
        saved = (state / "initial-api-key.txt").read_text()
        token = saved.split("key=")[1].strip()
        assert token.startswith("mta_live_")
        assert f"key={token}" in capsys.readouterr().out      # printed once, at start
        assert (state / "initial-api-key.txt").stat().st_mode & 0o777 == 0o600
        async with aiohttp.ClientSession() as s:
            async with s.post(d.api.url + "/emails", headers={"Authorization": f"Bearer {token}"},
                              json={"from": "me@example.com", "to": "you@example.net",
                                    "subject": "hi", "text": "first"}) as r:
                assert r.status == 200, await r.text()
                qid = (await r.json())["id"]
        new = state / "sandbox" / "new"
        for _ in range(100):
            if new.is_dir() and any(qid.encode() in f.read_bytes() for f in new.iterdir()):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("not captured in the sandbox")
    # a second start makes no new key
    async with running_daemon(sandbox_text(state)):
        assert capsys.readouterr().out.count("created the first API key") == 0


async def test_https(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    state = tmp_path / "state"
    text = sandbox_text(state, f'cert = "{cert_path}"\nkey = "{key_path}"\n')
    async with running_daemon(text) as d:
        assert d.api.url.startswith("https://")
        token = (state / "initial-api-key.txt").read_text().split("key=")[1].strip()
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        async with aiohttp.ClientSession() as s:
            async with s.get(d.api.url + "/emails", ssl=ctx,
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):        # clear text is not served
                async with s.get(d.api.url.replace("https", "http") + "/emails") as r:
                    await r.read()


@pytest.mark.parametrize("api, error", [
    ('address = "0.0.0.0:8080"', "needs TLS"),
    ('address = "192.0.2.10:8080"', "needs TLS"),
    ('address = "127.0.0.1:8080"\ncert = "/x.pem"', "set both cert and key"),
    ('address = "127.0.0.1:8025"', "admin API"),
])
def test_config_refuses(api, error):
    text = f'[admin]\naddress = "127.0.0.1:8025"\n[api]\n{api}\n'
    with pytest.raises(ConfigError, match=error):
        parse_config(text)


def test_config_allows_a_tls_proxy_and_defaults_off():
    cfg = parse_config('[api]\naddress = "0.0.0.0:8080"\nbehind_tls_proxy = true\n')
    assert cfg.api.address == "0.0.0.0:8080"
    assert parse_config("").api.address is None          # a config file: off unless set
    from mta.config import EMBEDDED_DEFAULT
    assert parse_config(EMBEDDED_DEFAULT).api.address == "127.0.0.1:8080"


async def test_request_bodies_held_at_once_are_bounded(tmp_path, monkeypatch):
    """Many large bodies at once: past the budget a request gets 503 with
    retry-after instead of the server holding them all; the budget is
    given back when each request ends (a later one succeeds)."""
    from mta.api import http as api_http
    monkeypatch.setattr(api_http, "BODY_BUDGET", 1)        # one max_request_size
    state = tmp_path / "state"
    text = sandbox_text(state, "max_request_size = \"200KiB\"\n")
    async with running_daemon(text) as d:
        token = (state / "initial-api-key.txt").read_text().split("key=")[1].strip()
        auth = {"Authorization": f"Bearer {token}"}
        body = {"from": "me@example.com", "to": "you@example.net", "subject": "big",
                "text": "x" * 150_000}
        async with aiohttp.ClientSession() as s:
            async def post():
                async with s.post(d.api.url + "/emails", headers=auth, json=body) as r:
                    return r.status, dict(r.headers)
            results = await asyncio.gather(*(post() for _ in range(8)))
            codes = sorted(c for c, _ in results)
            assert 200 in codes and 503 in codes, codes
            assert all(h.get("Retry-After") == "1" for c, h in results if c == 503)
            assert (await post())[0] == 200                  # nothing left held
        assert d.api.app[api_http._BUDGET].used == 0
