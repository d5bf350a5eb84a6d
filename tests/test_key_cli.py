"""`mta key create|list|revoke` through the real entry point (issue 13): the
token is printed once and never again, errors and exit codes."""

from __future__ import annotations

import json

import pytest

from mta.api.keys import StoreKeys, authenticate, parse_token, token_hash
from mta.spool.apikeys import SqliteApiKeys
from tests.test_cli import mta


def create(tmp_path, *args):
    r = mta(tmp_path, "key", "create", *args)
    assert r.returncode == 0, r.stderr
    token = r.stdout.split("token:", 1)[1].split()[0]
    return r, token


def test_create_prints_the_token_once_and_it_authenticates(tmp_path):
    r, token = create(tmp_path, "app")
    mode, key_id = parse_token(token)
    assert mode == "live"
    assert r.stdout.count(token) == 1 and token not in r.stderr
    assert f"prefix: mta_live_{key_id}" in r.stdout
    assert "cannot be shown again" in r.stdout
    store = StoreKeys(SqliteApiKeys(tmp_path / "state"))
    key = authenticate(store.get, token)
    assert key is not None and key.name == "app" and key.permission == "full_access"
    assert store.get(key_id)[1] == token_hash(token)


def test_create_json_with_every_option(tmp_path):
    r = mta(tmp_path, "key", "create", "ci bot", "--permission", "sending_access",
            "--domain", "Example.COM", "--domain", "*.Bücher.example", "--test",
            "--rate-limit", "7.5", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert parse_token(j["token"]) == ("test", j["id"])
    assert {k: j[k] for k in ("name", "permission", "domains", "mode", "rate_limit", "prefix",
                              "last_used_at", "revoked_at")} == {
        "name": "ci bot", "permission": "sending_access",
        "domains": ["example.com", "*.xn--bcher-kva.example"], "mode": "test",
        "rate_limit": 7.5, "prefix": f"mta_test_{j['id']}", "last_used_at": None,
        "revoked_at": None}
    assert "cannot be shown again" in r.stderr and j["token"] not in r.stderr


def test_list_never_shows_a_secret_or_hash(tmp_path):
    _, t1 = create(tmp_path, "app")
    _, t2 = create(tmp_path, "other", "--test", "--domain", "example.com")
    for args in (("list",), ("list", "--json"), ("list", "--all"), ("list", "--all", "--json")):
        r = mta(tmp_path, "key", *args)
        assert r.returncode == 0, r.stderr
        out = r.stdout + r.stderr
        for token in (t1, t2):
            assert token.split("_", 3)[3] not in out and token_hash(token) not in out
            assert token[:21] in out                               # the prefix is shown
    r = mta(tmp_path, "key", "list")
    lines = r.stdout.splitlines()
    assert lines[-1] == "-- 2 keys"
    assert lines[1].split("\t")[1:5] == ["other", "full_access", "test", "domains example.com"]
    assert "last used never" in lines[0]
    j = json.loads(mta(tmp_path, "key", "list", "--json").stdout)
    assert [k["name"] for k in j] == ["app", "other"]
    assert not any("token" in k or "hash" in k for k in j)


def test_revoke_by_name_id_or_prefix_and_list_all(tmp_path):
    _, t1 = create(tmp_path, "a")
    _, t2 = create(tmp_path, "b")
    _, t3 = create(tmp_path, "c", "--test")
    id2, prefix3 = parse_token(t2)[1], t3[:21]
    for what in ("a", id2, prefix3):
        r = mta(tmp_path, "key", "revoke", what)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("revoked mta_")
    r = mta(tmp_path, "key", "revoke", "a")
    assert r.returncode == 1 and "no active API key" in r.stderr
    assert mta(tmp_path, "key", "list").stdout.strip() == "-- 0 keys"
    r = mta(tmp_path, "key", "list", "--all")
    assert r.stdout.count("\trevoked ") == 3
    store = StoreKeys(SqliteApiKeys(tmp_path / "state"))
    assert all(authenticate(store.get, t) is None for t in (t1, t2, t3))


@pytest.mark.parametrize("args,code,message", [
    (("create", ""), 1, "must not be empty"),
    (("create", "x" * 101), 1, "at most 100"),
    (("create", "a\tb"), 1, "printable"),
    (("create", "a\x1bb"), 1, "printable"),
    (("create", "ok", "--domain", "not a domain"), 1, "invalid sending domain"),
    (("create", "ok", "--rate-limit", "-1"), 1, "rate limit"),
    (("create", "ok", "--rate-limit", "nan"), 1, "rate limit"),
    (("create", "ok", "--rate-limit", "fast"), 2, "invalid float"),
    (("create", "ok", "--permission", "root"), 2, "invalid choice"),
    (("create",), 2, "required"),
    (("revoke", "nobody"), 1, "no active API key"),
    (("rotate",), 2, "invalid choice"),
])
def test_errors_and_exit_codes(tmp_path, args, code, message):
    r = mta(tmp_path, "key", *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "token:" not in r.stdout


def test_duplicate_name_fails_and_the_first_key_still_works(tmp_path):
    _, token = create(tmp_path, "app")
    r = mta(tmp_path, "key", "create", "app", "--test")
    assert r.returncode == 1 and "named 'app' exists" in r.stderr and "token" not in r.stdout
    store = StoreKeys(SqliteApiKeys(tmp_path / "state"))
    assert authenticate(store.get, token).name == "app" and len(store.list()) == 1


def test_list_on_a_fresh_state_dir_creates_nothing(tmp_path):
    r = mta(tmp_path, "key", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert not (tmp_path / "state" / "spool").exists()
