"""`--tenant` on `mta user add`, `mta key create` and `mta domain add` through
the real entry point, over the real tenant store (issue 14): ownership is
recorded at creation, an unknown tenant or another tenant's name creates
nothing, `domain remove` disowns, and the lists show each thing's tenant."""

from __future__ import annotations

import json
import time

import pytest

from mta.api.keys import StoreKeys
from mta.cli import owner
from mta.server.credentials import CredentialStore
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.test_cli import mta


def tenants(tmp_path, *names):
    store = SqliteTenants(tmp_path / "state")
    for name in names:
        store.add(name, limits={}, policy={}, now=time.time())
    return store


def users(tmp_path):
    return [u["name"] for u in CredentialStore(tmp_path / "state" / "credentials.json").list()]


def keys(tmp_path, include_revoked=True):
    return StoreKeys(SqliteApiKeys(tmp_path / "state")).list(include_revoked=include_revoked)


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


def refused(r, *words):
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = [line for line in r.stderr.splitlines() if not line.startswith("mta: config ")]
    assert len(err) == 1, r.stderr                 # one line says why
    assert all(w in err[0] for w in words), err[0]
    return err[0]


def test_user_add_with_a_tenant_records_the_owner_and_list_shows_it(tmp_path):
    store = tenants(tmp_path, "acme")
    ok(mta(tmp_path, "user", "add", "app1", "--tenant", "acme"))
    ok(mta(tmp_path, "user", "add", "app2"))
    assert store.owner("credential", "app1") == "acme"
    # without --tenant the default tenant's ownership is a row (SqliteTenants.own)
    assert store.ownership()[("credential", "app2")] == "default"
    listed = json.loads(ok(mta(tmp_path, "user", "list", "--json")).stdout)
    assert [(u["name"], u["tenant"]) for u in listed] == [("app1", "acme"), ("app2", "default")]
    assert all("created" in u and "domains" in u for u in listed)      # kept keys
    lines = ok(mta(tmp_path, "user", "list")).stdout.splitlines()
    assert lines[0].startswith("app1\tcreated ") and lines[0].endswith("\ttenant acme")
    assert lines[1].split("\t")[2] == "domains (any verified domain)"
    assert lines[1].endswith("\ttenant default")


def test_unknown_tenant_creates_nothing(tmp_path):
    store = tenants(tmp_path, "acme")
    refused(mta(tmp_path, "user", "add", "app1", "--tenant", "nope"), "no tenant", "'nope'")
    refused(mta(tmp_path, "key", "create", "k1", "--tenant", "nope"), "no tenant", "'nope'")
    refused(mta(tmp_path, "domain", "add", "a.example", "--algorithm", "ed25519",
                "--tenant", "nope"), "no tenant", "'nope'")
    assert users(tmp_path) == [] and keys(tmp_path) == []
    assert json.loads(ok(mta(tmp_path, "domain", "list", "--json")).stdout) == []
    assert store.ownership() == {}


def test_a_user_name_once_used_by_a_tenant_is_refused_for_another(tmp_path):
    store = tenants(tmp_path, "a", "b")
    ok(mta(tmp_path, "user", "add", "bob", "--tenant", "a"))
    ok(mta(tmp_path, "user", "remove", "bob"))
    refused(mta(tmp_path, "user", "add", "bob", "--tenant", "b"),
            "'bob'", "tenant 'a'")
    refused(mta(tmp_path, "user", "add", "bob"), "'bob'", "tenant 'a'")    # nor default's
    assert users(tmp_path) == []
    ok(mta(tmp_path, "user", "add", "bob", "--tenant", "a"))             # a gets it back
    assert users(tmp_path) == ["bob"] and store.owner("credential", "bob") == "a"
    # and a name the default tenant used is not a named tenant's to take
    ok(mta(tmp_path, "user", "add", "carol"))
    ok(mta(tmp_path, "user", "remove", "carol"))
    refused(mta(tmp_path, "user", "add", "carol", "--tenant", "a"), "tenant 'default'")
    assert users(tmp_path) == ["bob"]


def test_key_create_with_a_tenant_and_a_name_kept_for_its_tenant(tmp_path):
    store = tenants(tmp_path, "a", "b")
    r = ok(mta(tmp_path, "key", "create", "app", "--tenant", "a", "--json"))
    made = json.loads(r.stdout)
    assert made["tenant"] == "a" and store.owner("credential", "api:app") == "a"
    assert "tenant default\n" in ok(mta(tmp_path, "key", "create", "other")).stdout
    assert store.ownership()[("credential", "api:other")] == "default"
    listed = json.loads(ok(mta(tmp_path, "key", "list", "--json")).stdout)
    assert [(k["name"], k["tenant"]) for k in listed] == [("app", "a"), ("other", "default")]
    assert listed[0]["id"] == made["id"] and listed[0]["revoked_at"] is None   # kept keys
    lines = ok(mta(tmp_path, "key", "list")).stdout.splitlines()
    assert lines[0].split("\t")[1] == "app" and lines[0].endswith("\ttenant a")
    assert lines[1].endswith("\ttenant default") and lines[-1] == "-- 2 keys"

    ok(mta(tmp_path, "key", "revoke", "app"))
    refused(mta(tmp_path, "key", "create", "app", "--tenant", "b"), "'api:app'", "tenant 'a'")
    assert [(k.name, k.revoked_at is not None) for k in keys(tmp_path)] == [
        ("app", True), ("other", False)]                    # nothing created
    ok(mta(tmp_path, "key", "create", "app", "--tenant", "a"))
    line = [x for x in ok(mta(tmp_path, "key", "list", "--all")).stdout.splitlines()
            if "\tapp\t" in x and "revoked" in x][0]
    assert "\ttenant a\trevoked " in line                   # a column, before the revocation


def test_domain_add_with_a_tenant_remove_disowns(tmp_path):
    store = tenants(tmp_path, "a", "b")
    ok(mta(tmp_path, "domain", "add", "Mail.Example.COM", "--algorithm", "ed25519",
           "--tenant", "a"))
    assert store.owner("domain", "mail.example.com") == "a"        # the normalised name
    refused(mta(tmp_path, "domain", "add", "mail.example.com", "--algorithm", "ed25519",
                "--tenant", "b"), "'mail.example.com'", "tenant 'a'")
    ok(mta(tmp_path, "domain", "add", "other.example", "--algorithm", "ed25519"))
    listed = json.loads(ok(mta(tmp_path, "domain", "list", "--json")).stdout)
    assert [(d["domain"], d["state"], d["tenant"]) for d in listed] == [
        ("mail.example.com", "pending", "a"), ("other.example", "pending", "default")]
    text = ok(mta(tmp_path, "domain", "list")).stdout.splitlines()
    assert text[0].startswith("mail.example.com\tpending\t") and "\ttenant a" in text[0]

    ok(mta(tmp_path, "domain", "remove", "MAIL.example.com"))
    assert ("domain", "mail.example.com") not in store.ownership()
    ok(mta(tmp_path, "domain", "add", "mail.example.com", "--algorithm", "ed25519",
           "--tenant", "b"))
    assert store.owner("domain", "mail.example.com") == "b"


def test_record_undoes_the_creation_when_the_store_refuses(tmp_path):
    """The race `check` cannot see: another process took the name between
    the check and the record."""
    state = tmp_path / "state"
    store = tenants(tmp_path, "a", "b")
    owner.check(state, "credential", "x", "b")                     # free when checked
    store.own("credential", "x", "a", time.time())                # taken meanwhile
    undone: list[str] = []
    with pytest.raises(owner.OwnerError, match="tenant 'a'"):
        owner.record(state, "credential", "x", "b", lambda: undone.append("x"))
    assert undone == ["x"] and store.owner("credential", "x") == "a"
    store.remove("b", active_credentials=frozenset())             # a tenant gone meanwhile
    with pytest.raises(owner.OwnerError, match="no tenant named 'b'"):
        owner.record(state, "domain", "d.example", "b", lambda: undone.append("d"))
    assert undone == ["x", "d"] and ("domain", "d.example") not in store.ownership()
    owner.record(state, "domain", "d.example", "a", lambda: undone.append("never"))
    assert undone == ["x", "d"] and store.owner("domain", "d.example") == "a"
