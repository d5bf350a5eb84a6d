"""CredentialStore: scrypt hashes in an atomically written 0600 JSON file."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import pytest

from mta.core import FakeClock
from mta.server.credentials import (MIN_PASSWORD, CredentialError, CredentialStore,
                                    generate_password)

PW, PW2 = "password-0001", "password-0002"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "credentials.json"


def test_add_and_verify(path):
    store = CredentialStore(path, clock=FakeClock(1_700_000_000.0))
    assert store.add("app@example.com", "correct horse") == "correct horse"
    assert store.verify("app@example.com", "correct horse")
    assert store.verify(b"app@example.com", b"correct horse")
    assert not store.verify("app@example.com", "wrong")
    assert not store.verify("nobody", "correct horse")
    assert store.names() == ["app@example.com"]
    assert store.list() == [{"name": "app@example.com", "created": 1_700_000_000.0,
                             "updated": 1_700_000_000.0, "domains": []}]


def test_generated_password_is_strong_and_returned(path):
    store = CredentialStore(path)
    pw = store.add("app")
    assert len(pw) >= 24
    assert store.verify("app", pw)
    assert store.add("app2") != pw


def test_file_is_0600_and_has_no_plaintext(path):
    store = CredentialStore(path)
    store.add("app", "s3cret-value")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    raw = path.read_text()
    assert "s3cret-value" not in raw
    doc = json.loads(raw)
    entry = doc["users"]["app"]
    assert (entry["scheme"], entry["n"], entry["r"], entry["p"]) == ("scrypt", 2 ** 14, 8, 1)
    assert len(entry["salt"]) == 24  # 16 bytes base64
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_same_password_different_salt(path):
    store = CredentialStore(path)
    store.add("a", "same-password")
    store.add("b", "same-password")
    users = json.loads(path.read_text())["users"]
    assert users["a"]["salt"] != users["b"]["salt"]
    assert users["a"]["hash"] != users["b"]["hash"]


def test_add_existing_is_an_error(path):
    store = CredentialStore(path)
    store.add("app", "first-password")
    with pytest.raises(CredentialError, match="already exists"):
        store.add("app", "second-password")
    assert store.verify("app", "first-password")


def test_passwd_and_remove(path):
    clock = FakeClock(100.0)
    store = CredentialStore(path, clock=clock)
    store.add("app", "old-password")
    clock.advance(50)
    assert store.passwd("app", "new-password") == "new-password"
    assert not store.verify("app", "old-password")
    assert store.verify("app", "new-password")
    assert store.list()[0]["created"] == 100.0 and store.list()[0]["updated"] == 150.0
    store.remove("app")
    assert store.names() == []
    assert not store.verify("app", "new-password")
    with pytest.raises(CredentialError, match="no such user"):
        store.remove("app")
    with pytest.raises(CredentialError, match="no such user"):
        store.passwd("ghost")


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "semi;colon", "ü", "a/b", "x\n"])
def test_invalid_names(path, name):
    store = CredentialStore(path)
    with pytest.raises(CredentialError, match="invalid user name"):
        store.add(name, "pw")
    assert not store.verify(name, "pw")


def test_valid_name_characters(path):
    store = CredentialStore(path)
    store.add("A-z_0.9+tag@host", PW)
    assert store.verify("A-z_0.9+tag@host", PW)


def test_empty_password_refused(path):
    with pytest.raises(CredentialError, match="empty"):
        CredentialStore(path).add("app", "")


def test_directory_path_means_credentials_json(tmp_path):
    store = CredentialStore(tmp_path)
    store.add("app", PW)
    assert (tmp_path / "credentials.json").exists()


def test_missing_file_is_empty(path):
    store = CredentialStore(path)
    assert store.names() == []
    assert not store.verify("app", "pw")


def test_reload_when_another_process_edits(path):
    daemon = CredentialStore(path)
    cli = CredentialStore(path)
    assert not daemon.verify("app", PW)
    cli.add("app", PW)
    assert daemon.verify("app", PW)
    cli.passwd("app", PW2)
    # a same-size rewrite within the mtime granularity is still seen (inode changes)
    assert daemon.verify("app", PW2)
    cli.remove("app")
    assert daemon.names() == []


def test_concurrent_editors_do_not_lose_updates(path):
    a, b = CredentialStore(path), CredentialStore(path)
    a.add("one", PW)
    b.add("two", PW)  # b had not seen "one": it must re-read under the lock
    assert CredentialStore(path).names() == ["one", "two"]


def test_corrupt_file_on_start_is_an_error(path):
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CredentialError, match="cannot read"):
        CredentialStore(path)


def test_corrupt_file_on_reload_keeps_last_good(path, caplog):
    store = CredentialStore(path)
    store.add("app", PW)
    time.sleep(0.01)
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING):
        assert store.verify("app", PW)
    assert "credentials_reload_failed" in caplog.text


def test_nothing_secret_is_logged(path, caplog):
    with caplog.at_level(logging.DEBUG):
        store = CredentialStore(path)
        store.add("app", "hunter2-secret")
        store.verify("app", "hunter2-secret")
        store.verify("app", "wrong-guess")
    assert "hunter2" not in caplog.text and "wrong-guess" not in caplog.text
    assert "event=credential_added name=app" in caplog.text


def test_verify_never_raises_on_garbage(path):
    store = CredentialStore(path)
    store.add("app", PW)
    assert not store.verify(b"\xff\xfe", PW.encode())
    assert not store.verify("app", b"\xff" * 10_000)


def test_generated_passwords_never_start_like_an_option():
    """swaks (and most CLIs) read a password starting with "-" as an option;
    "_" is refused too, so the first character is always a letter or digit."""
    firsts = {generate_password()[0] for _ in range(20_000)}
    assert firsts <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    assert len(firsts) == 62                      # and every other first character occurs


def test_store_generates_with_the_same_rule(path):
    """add/passwd without a password use generate_password (its output is
    what the store returns and accepts)."""
    store = CredentialStore(path)
    pw = store.add("app")
    assert pw[0].isalnum() and len(pw) == 24 and store.verify("app", pw)
    pw2 = store.passwd("app")
    assert pw2[0].isalnum() and pw2 != pw and store.verify("app", pw2)


@pytest.mark.parametrize("short", ["x", "hunter2", "a" * (MIN_PASSWORD - 1)])
def test_short_passwords_are_refused_on_add_and_passwd(path, short):
    store = CredentialStore(path)
    with pytest.raises(CredentialError, match=f"too short: use at least {MIN_PASSWORD} "
                                              f"characters \\(this one has {len(short)}\\)"):
        store.add("app", short)
    assert store.names() == []
    store.add("app", PW)
    with pytest.raises(CredentialError, match="too short"):
        store.passwd("app", short)
    assert store.verify("app", PW) and not store.verify("app", short)


def test_minimum_length_is_twelve_and_inclusive(path):
    assert MIN_PASSWORD == 12
    store = CredentialStore(path)
    assert store.add("app", "b" * 12) == "b" * 12
    assert store.verify("app", "b" * 12)
