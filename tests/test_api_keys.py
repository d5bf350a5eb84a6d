"""API keys (issue 13): the token format, checks, the SQLite store in the
spool index (also across processes and while a Spool has it open),
authentication and the KeyCache (ttl, negative entries, bounds)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mta.api.keys import (CACHE_MAX, ApiKey, KeyCache, KeyNameTaken, StoreKeys, authenticate,
                          check_domains, check_name, check_permission, check_rate_limit,
                          new_token, parse_prefix, parse_token, token_hash)
from mta.core.clock import FakeClock
from mta.spool import Spool
from mta.spool.apikeys import ApiKeyConflict, ApiKeyStoreError, SqliteApiKeys
from tests.test_spool import msg

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def keys(state) -> StoreKeys:
    return StoreKeys(SqliteApiKeys(state))


# -- the token -----------------------------------------------------------------------

@pytest.mark.parametrize("test", [False, True])
def test_new_token_round_trips_through_parse_token(test):
    mode = "test" if test else "live"
    seen_underscore = seen_dash = False
    for _ in range(300):
        key_id, token = new_token(test)
        assert parse_token(token) == (mode, key_id)
        assert token.startswith(f"mta_{mode}_{key_id}_") and len(token) == 54
        secret = token.split("_", 3)[3]
        assert len(secret) == 32 and len(key_id) == 12
        assert set(key_id) <= set("abcdefghijklmnopqrstuvwxyz234567")
        assert parse_prefix(f"mta_{mode}_{key_id}") == (mode, key_id)
        seen_underscore |= "_" in secret
        seen_dash |= "-" in secret
    assert seen_underscore and seen_dash      # the split at the first three "_" was exercised


def test_tokens_are_unique():
    tokens = [new_token(False) for _ in range(2000)]
    assert len({t for _, t in tokens}) == len({i for i, _ in tokens}) == 2000


_, GOOD = new_token(False)
JUNK = [
    None, 42, 4.2, b"mta_live_", GOOD.encode(), [GOOD], {"t": GOOD},
    "", "mta", "mta_", "mta_live", "mta_live_", "mta_live__", "mta_live_abc_def",
    GOOD + "x", GOOD[:-1], " " + GOOD, GOOD + "\n", GOOD + "\x00", "\n" + GOOD[1:],
    GOOD.replace("mta_live_", "mta_prod_"), GOOD.replace("mta_live_", "MTA_LIVE_"),
    GOOD.replace("mta_live_", "re_live_x"), GOOD.replace("_", "-", 3),
    GOOD[:9] + GOOD[9:21].upper() + GOOD[21:],              # id upper-case
    GOOD[:9] + "0" + GOOD[10:],                             # 0, 1, 8, 9 are not base32
    GOOD[:9] + "1" + GOOD[10:], GOOD[:9] + "8" + GOOD[10:],
    GOOD[:9] + "\u0430" + GOOD[10:],                        # Cyrillic a
    GOOD[:9] + "\u00e9" + GOOD[10:],                        # é
    GOOD[:9] + "\ud800" + GOOD[10:],                        # a lone surrogate
    GOOD[:22] + "+" + GOOD[23:], GOOD[:22] + "/" + GOOD[23:], GOOD[:22] + "=" + GOOD[23:],
    GOOD[:22] + "\uff10" + GOOD[23:],                       # a full-width digit
    GOOD[:22] + " " + GOOD[23:], GOOD[:-1] + "\u00df",
    "mta_live_" + "a" * 12 + "_" + "b" * 31, "mta_live_" + "a" * 11 + "_" + "b" * 33,
    "x" * 54, "_" * 54, "\x00" * 54, "é" * 54, "mta_live_" * 6,
    "mta_live_" + "a" * 12 + "_" + "b" * 10_000_000,          # 10 MB
    "Bearer " + GOOD,
]


@pytest.mark.parametrize("junk", JUNK, ids=range(len(JUNK)))
def test_parse_token_refuses_junk_and_never_raises(junk):
    assert parse_token(junk) is None
    assert parse_prefix(junk) is None


def test_parse_token_accepts_what_new_token_makes_only():
    assert parse_token(GOOD) is not None
    assert parse_prefix(GOOD) is None                       # a token is not a prefix
    assert parse_prefix(GOOD[:21]) == parse_token(GOOD)


def test_token_hash_is_sha256_hex_of_the_whole_token():
    import hashlib
    h = token_hash(GOOD)
    assert h == hashlib.sha256(GOOD.encode()).hexdigest() and len(h) == 64
    assert token_hash(GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")) != h
    assert token_hash("\ud800") != h                       # does not raise on junk either


# -- checks --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["app", "x" * 100, "billing service (prod)", "Büro-Schlüssel",
                                  "a b"])
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "x" * 101, "a\nb", "a\tb", "a\x00b", "a\x7fb",
                                  "a\u2028b", " lead", "trail ", None, 5, b"bytes"])
def test_check_name_refuses(name):
    with pytest.raises(ValueError):
        check_name(name)


def test_check_domains_normalises_like_core_address():
    assert check_domains(["Example.COM.", "*.Bücher.Example", "example.com"]) == \
        ("example.com", "*.xn--bcher-kva.example")
    assert check_domains([]) == ()
    for bad in (["bad domain"], ["-x.example"], [""], ["*."], ["a..b"], [5]):
        with pytest.raises(ValueError, match="invalid sending domain"):
            check_domains(bad)


def test_check_permission_and_rate_limit():
    assert check_permission("sending_access") == "sending_access"
    for bad in ("admin", "", None, "FULL_ACCESS"):
        with pytest.raises(ValueError, match="permission"):
            check_permission(bad)
    assert check_rate_limit(0) == 0.0 and check_rate_limit(2.5) == 2.5
    for bad in (-1, float("nan"), float("inf"), True, "5", None, 1e7):
        with pytest.raises(ValueError, match="rate limit"):
            check_rate_limit(bad)


def test_api_key_json_shape():
    k = ApiKey(id="abcdefghijkl", name="app", permission="sending_access",
               domains=("example.com",), test=True, rate_limit=5.0, created_at=T0 + 0.25)
    j = k.as_json()
    assert set(j) == {"id", "name", "created_at", "prefix", "permission", "domains", "mode",
                      "rate_limit", "last_used_at", "revoked_at"}
    assert j["prefix"] == "mta_test_abcdefghijkl" == k.prefix and j["mode"] == "test"
    assert dt.datetime.fromisoformat(j["created_at"]).timestamp() == T0 + 0.25
    assert j["created_at"].endswith("+00:00") and j["last_used_at"] is None
    assert k.credential == "api:app" and k.scopes == ("example.com",)
    assert ApiKey(id="x", name="n", permission="full_access", domains=(), test=False,
                  rate_limit=0, created_at=T0).scopes is None


# -- the store -----------------------------------------------------------------------

def test_create_get_list_revoke(tmp_path):
    store = keys(tmp_path)
    k1, tok1 = store.create("app", permission="sending_access",
                            domains=["Example.com", "*.example.org"], rate_limit=5, now=T0)
    k2, tok2 = store.create("ci", test=True, now=T0 + 1)
    assert (k1.permission, k1.domains, k1.rate_limit, k1.test) == \
        ("sending_access", ("example.com", "*.example.org"), 5.0, False)
    assert parse_token(tok1) == ("live", k1.id) and parse_token(tok2) == ("test", k2.id)
    got = store.get(k1.id)
    assert got == (k1, token_hash(tok1))
    assert [k.name for k in store.list()] == ["app", "ci"]
    assert store.get("nosuchidxxxx") is None

    assert store.revoke("app", T0 + 5).revoked_at == T0 + 5
    assert store.revoke("app", T0 + 6) is None                 # no active key of that name
    assert store.revoke(k2.id, T0 + 7).name == "ci"
    assert store.list() == []
    assert [(k.name, k.revoked_at) for k in store.list(include_revoked=True)] == \
        [("app", T0 + 5), ("ci", T0 + 7)]


def test_names_are_unique_among_active_keys_only(tmp_path):
    store = keys(tmp_path)
    store.create("app", now=T0)
    with pytest.raises(KeyNameTaken, match="named 'app'"):
        store.create("app", test=True, now=T0)
    store.revoke("app", T0 + 1)
    k, _ = store.create("app", now=T0 + 2)                      # reusable once revoked
    assert [x.id for x in store.list()] == [k.id]
    with pytest.raises(ApiKeyConflict) as info:                 # the row store says which
        SqliteApiKeys(tmp_path).insert(id=k.id, name="other", hash="h", permission="full_access",
                                       domains=(), test=False, rate_limit=0, created=T0)
    assert info.value.column == "id"


def test_create_checks_its_inputs_and_writes_nothing_when_bad(tmp_path):
    store = keys(tmp_path)
    for kw in ({"name": "a\nb"}, {"name": "ok", "permission": "root"},
               {"name": "ok", "domains": ["not a domain"]}, {"name": "ok", "rate_limit": -2}):
        with pytest.raises(ValueError):
            store.create(now=T0, **kw)
    assert not (tmp_path / "spool" / "index.sqlite3").exists()


def test_revoke_by_prefix_needs_the_right_mode(tmp_path):
    store = keys(tmp_path)
    k, _ = store.create("app", now=T0)
    assert store.revoke(f"mta_test_{k.id}", T0) is None
    assert store.revoke(k.prefix, T0).id == k.id


def test_touch_is_coarse(tmp_path):
    store = keys(tmp_path)
    k, _ = store.create("app", now=T0)
    store.touch(k.id, T0 + 10)
    store.touch(k.id, T0 + 40)                                  # within a minute: kept
    assert store.get(k.id)[0].last_used_at == T0 + 10
    store.touch(k.id, T0 + 71)
    assert store.get(k.id)[0].last_used_at == T0 + 71
    store.revoke(k.id, T0 + 100)
    store.touch(k.id, T0 + 500)
    assert store.get(k.id)[0].last_used_at == T0 + 71


def test_reads_never_create_the_index(tmp_path):
    store = keys(tmp_path)
    assert store.list() == [] and store.get("abcdefghijkl") is None
    assert store.revoke("app", T0) is None
    store.touch("abcdefghijkl", T0)
    assert not (tmp_path / "spool").exists()


def test_an_index_from_before_api_keys_reads_empty(tmp_path):
    (tmp_path / "spool").mkdir()
    sqlite3.connect(tmp_path / "spool" / "index.sqlite3").execute(
        "CREATE TABLE messages (x)").connection.close()
    store = keys(tmp_path)
    assert store.list() == [] and store.get("abcdefghijkl") is None
    store.touch("abcdefghijkl", T0)
    k, _ = store.create("app", now=T0)                          # a write adds the table
    assert store.list() == [k]


def test_refuses_to_create_an_index_next_to_orphan_segments(tmp_path):
    seg = tmp_path / "spool" / "segments"
    seg.mkdir(parents=True)
    (seg / "00000001.seg").write_bytes(b"x" * 64)
    with pytest.raises(ApiKeyStoreError, match="segments"):
        keys(tmp_path).create("app", now=T0)
    assert not (tmp_path / "spool" / "index.sqlite3").exists()


def test_the_index_is_private_and_holds_no_token(tmp_path):
    _, token = keys(tmp_path).create("app", now=T0)
    index = tmp_path / "spool" / "index.sqlite3"
    assert oct(index.stat().st_mode & 0o777) == "0o600"
    secret = token.split("_", 3)[3].encode()
    for f in index.parent.iterdir():
        assert secret not in f.read_bytes(), f
    row = sqlite3.connect(index).execute("SELECT hash FROM api_keys").fetchone()
    assert row[0] == token_hash(token)


def test_concurrent_creates_from_threads(tmp_path):
    store = keys(tmp_path)
    errors, made = [], []

    def work(n):
        try:
            for i in range(10):
                made.append(store.create(f"k{n}-{i}", now=T0)[0].id)
            made.append(store.create("shared", now=T0)[0].id)
        except KeyNameTaken:
            errors.append(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 7                                     # one thread got "shared"
    assert len(made) == len(set(made)) == 81 == len(store.list())


async def test_keys_live_beside_a_running_spool(tmp_path):
    """Created before the first start, the table survives Spool.open; and
    created while the spool is open, keys and messages do not disturb each
    other."""
    k1, tok1 = keys(tmp_path).create("before", now=T0)
    spool = await Spool.open(tmp_path, now=T0)
    try:
        qid = await spool.enqueue(msg(1), T0)
        k2, tok2 = await asyncio.to_thread(keys(tmp_path).create, "during", now=T0 + 1)
        assert await spool.enqueue(msg(2), T0 + 1) != qid
        store = keys(tmp_path)
        assert authenticate(store.get, tok1) == k1 and authenticate(store.get, tok2) == k2
    finally:
        await spool.close()
    spool = await Spool.open(tmp_path, now=T0 + 2)              # recovery keeps the table
    await spool.close()
    assert [k.name for k in keys(tmp_path).list()] == ["before", "during"]


def _cli(state, *args):
    env = dict(os.environ, MTA_STATE_DIR=str(state), PYTHONPATH=str(ROOT), MTA_DEFAULT_CONFIG="")
    env.pop("MTA_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mta", "key", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def test_two_processes_the_cli_creates_while_the_daemon_side_reads(tmp_path):
    spool = await Spool.open(tmp_path, now=T0)                  # the daemon holds the index
    try:
        store = keys(tmp_path)
        assert store.list() == []
        r = await asyncio.to_thread(_cli, tmp_path, "create", "from-cli", "--test")
        assert r.returncode == 0, r.stderr
        token = r.stdout.split("token:", 1)[1].split()[0]
        key = authenticate(store.get, token)
        assert key is not None and key.name == "from-cli" and key.test
        await spool.enqueue(msg(3), T0)
        r = await asyncio.to_thread(_cli, tmp_path, "revoke", "from-cli")
        assert r.returncode == 0, r.stderr
        assert authenticate(store.get, token) is None
    finally:
        await spool.close()


# -- authentication ------------------------------------------------------------------

def test_authenticate_refuses_wrong_secret_revoked_and_swapped_mode(tmp_path):
    store = keys(tmp_path)
    k, token = store.create("app", now=T0)
    assert authenticate(store.get, token) == k
    mode, key_id = parse_token(token)
    secret = token.split("_", 3)[3]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert authenticate(store.get, f"mta_live_{key_id}_{wrong}") is None
    assert authenticate(store.get, f"mta_test_{key_id}_{secret}") is None
    _, other = new_token(False)
    assert authenticate(store.get, other) is None                # unknown id
    for junk in JUNK[:12]:
        assert authenticate(store.get, junk) is None
    store.revoke("app", T0 + 1)
    assert authenticate(store.get, token) is None


class Counting:
    """A KeyStore wrapper that counts the calls reaching the real store."""

    def __init__(self, inner):
        self.inner, self.gets, self.touches, self.threads = inner, 0, 0, set()

    def get(self, key_id):
        self.gets += 1
        self.threads.add(threading.get_ident())
        return self.inner.get(key_id)

    def touch(self, key_id, now):
        self.touches += 1
        self.threads.add(threading.get_ident())
        return self.inner.touch(key_id, now)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_key_cache_revocation_by_another_process_takes_effect_within_ttl(tmp_path):
    clock = FakeClock(T0)
    counting = Counting(keys(tmp_path))
    k, token = counting.create("app", now=T0)
    cache = KeyCache(counting, clock, ttl=2.0)
    assert cache.authenticate(token) == k and counting.gets == 1
    for _ in range(5):
        assert cache.authenticate(token) == k
    assert counting.gets == 1
    keys(tmp_path).revoke("app", T0 + 0.5)                       # "another process"
    clock.advance(1.9)
    assert cache.authenticate(token) == k                        # still cached
    clock.advance(0.1)
    assert cache.authenticate(token) is None and counting.gets == 2


def test_key_cache_wrong_secret_is_refused_from_the_cache_too(tmp_path):
    clock = FakeClock(T0)
    store = keys(tmp_path)
    k, token = store.create("app", now=T0)
    cache = KeyCache(store, clock)
    assert cache.authenticate(token) == k
    assert cache.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert cache.authenticate(token.replace("mta_live_", "mta_test_")) is None


def test_key_cache_negative_entries_and_forget(tmp_path):
    clock = FakeClock(T0)
    counting = Counting(keys(tmp_path))
    cache = KeyCache(counting, clock, ttl=2.0)
    _, unknown = new_token(False)
    for _ in range(3):
        assert cache.authenticate(unknown) is None
    assert counting.gets == 1
    assert cache.authenticate("junk") is None and counting.gets == 1   # malformed: no lookup
    k, token = counting.create("app", now=T0)
    assert cache.authenticate(token) == k
    counting.revoke("app", T0)
    cache.forget(k.id)                                           # a revocation in-process
    assert cache.authenticate(token) is None


def test_key_cache_clock_stepping_back_drops_entries(tmp_path):
    clock = FakeClock(T0)
    counting = Counting(keys(tmp_path))
    _, token = counting.create("app", now=T0)
    cache = KeyCache(counting, clock)
    cache.authenticate(token)
    clock.set(T0 - 3600)
    cache.authenticate(token)
    assert counting.gets == 2


class MemoryKeys:
    """A KeyStore in a dict (for the bound test: 10,000+ lookups)."""

    def __init__(self):
        self.rows, self.gets = {}, 0

    def get(self, key_id):
        self.gets += 1
        return self.rows.get(key_id)

    def touch(self, key_id, now):
        pass


def test_key_cache_memory_is_bounded_under_random_tokens():
    clock, store = FakeClock(T0), MemoryKeys()
    key_id, token = new_token(False)
    key = ApiKey(id=key_id, name="app", permission="full_access", domains=(), test=False,
                 rate_limit=0, created_at=T0)
    store.rows[key_id] = (key, token_hash(token))
    cache = KeyCache(store, clock)
    assert cache.authenticate(token) == key
    for _ in range(CACHE_MAX + 500):
        assert cache.authenticate(new_token(False)[1]) is None
    assert CACHE_MAX == 10_000
    assert len(cache._unknown) == CACHE_MAX and len(cache) <= CACHE_MAX + 1
    gets = store.gets
    assert cache.authenticate(token) == key and store.gets == gets   # the real key stayed


def test_key_cache_records_use_once_a_minute(tmp_path):
    clock = FakeClock(T0)
    counting = Counting(keys(tmp_path))
    k, token = counting.create("app", now=T0)
    cache = KeyCache(counting, clock)
    cache.authenticate(token)
    assert keys(tmp_path).get(k.id)[0].last_used_at == T0
    for _ in range(20):
        clock.advance(2.5)
        cache.authenticate(token)
    assert counting.touches == 1
    clock.advance(20)
    cache.authenticate(token)
    assert counting.touches == 2 and keys(tmp_path).get(k.id)[0].last_used_at == clock.now()


def test_key_cache_a_failing_touch_is_logged_not_fatal(tmp_path, caplog):
    class Broken(Counting):
        def touch(self, key_id, now):
            raise ApiKeyStoreError("disk on fire")

    store = Broken(keys(tmp_path))
    k, token = store.create("app", now=T0)
    with caplog.at_level(logging.WARNING, logger="mta.api"):
        assert KeyCache(store, FakeClock(T0)).authenticate(token) == k
    assert "event=api_key_touch_failed" in caplog.text


async def test_key_cache_async_does_store_work_off_the_loop(tmp_path):
    clock = FakeClock(T0)
    counting = Counting(keys(tmp_path))
    k, token = counting.create("app", now=T0)
    cache = KeyCache(counting, clock)
    results = await asyncio.gather(*(cache.authenticate_async(token) for _ in range(5)),
                                   cache.authenticate_async(new_token(True)[1]),
                                   cache.authenticate_async("mta_live_nope"))
    assert results == [k] * 5 + [None, None]
    assert threading.get_ident() not in counting.threads and counting.threads
    gets = counting.gets
    assert await cache.authenticate_async(token) == k and counting.gets == gets
