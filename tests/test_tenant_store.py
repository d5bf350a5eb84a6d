"""The tenant store (issue 14): spool/tenants.py on real index files.

Two SqliteTenants on one state directory stand for the daemon and a CLI
process: each sees the other's writes. The default tenant exists without a
row; names are checked; ownership is first come and, for credentials, for
good; a tenant that still owns something cannot be removed.
"""

from __future__ import annotations

import os
import stat

import pytest

from mta.spool.tenants import (
    DEFAULT_TENANT,
    TENANT_NAME,
    SqliteTenants,
    TenantError,
    TenantStoreError,
    check_name,
)

T0 = 1_700_000_000.0


def test_default_is_synthesised_without_an_index(tmp_path):
    store = SqliteTenants(tmp_path)
    row = store.get(DEFAULT_TENANT)
    assert row is not None
    assert (row.name, row.status, row.auto_status, row.limits, row.policy, row.created) == \
        ("default", "active", "ok", {}, {}, 0.0)
    assert row.sending
    assert [r.name for r in store.rows()] == ["default"]
    assert store.get("acme") is None
    assert store.owner("credential", "alice") == DEFAULT_TENANT
    assert store.owned("default") == [] and store.ownership() == {}
    assert not store.paths.index.exists()      # reads create nothing


def test_add_get_rows_and_a_second_process_sees_them(tmp_path):
    a, b = SqliteTenants(tmp_path), SqliteTenants(tmp_path)
    row = a.add("acme", limits={"per_hour": 100}, policy={"level": "strict"}, now=T0)
    assert (row.name, row.limits, row.policy, row.created, row.updated) == \
        ("acme", {"per_hour": 100}, {"level": "strict"}, T0, T0)
    assert b.get("acme") == row
    b.add("zeta", limits={}, policy={}, now=T0 + 1)
    b.add("beta-1", limits={}, policy={}, now=T0 + 2)
    assert [r.name for r in a.rows()] == ["acme", "beta-1", "default", "zeta"]
    mode = stat.S_IMODE(os.stat(a.paths.index).st_mode)
    assert mode == 0o600


def test_add_conflicts_and_bad_names(tmp_path):
    store = SqliteTenants(tmp_path)
    store.add("acme", limits={}, policy={}, now=T0)
    with pytest.raises(TenantError) as e:
        SqliteTenants(tmp_path).add("acme", limits={}, policy={}, now=T0)
    assert (e.value.status, e.value.field) == (409, "name") and "exists" in str(e.value)
    with pytest.raises(TenantError) as e:
        store.add("default", limits={}, policy={}, now=T0)
    assert (e.value.status, e.value.field) == (409, "name")
    for bad in ("", "Acme", "-acme", "_a", "a b", "a" * 64, "acme\n", "ac.me", "é"):
        with pytest.raises(TenantError) as e:
            store.add(bad, limits={}, policy={}, now=T0)
        assert (e.value.status, e.value.field) == (422, "name"), bad
    with pytest.raises(TenantError) as e:
        store.add("bob", limits=[], policy={}, now=T0)    # type: ignore[arg-type]
    assert (e.value.status, e.value.field) == (422, "limits")
    assert [r.name for r in store.rows()] == ["acme", "default"]


def test_check_name_and_regex():
    assert check_name("a") == "a"
    assert check_name("0-a_b") == "0-a_b"
    assert check_name("a" * 63) == "a" * 63
    with pytest.raises(ValueError, match="a-z, 0-9"):
        check_name("A")
    with pytest.raises(ValueError):
        check_name("x\n")
    assert TENANT_NAME.pattern == r"^[a-z0-9][a-z0-9_-]{0,62}$"


def test_update_partial_and_default_gets_a_row_on_first_write(tmp_path):
    store = SqliteTenants(tmp_path)
    store.add("acme", limits={"per_hour": 5}, policy={"level": "standard"}, now=T0)
    row = store.update("acme", limits={"per_day": 9}, policy=None, now=T0 + 5)
    assert (row.limits, row.policy, row.created, row.updated) == \
        ({"per_day": 9}, {"level": "standard"}, T0, T0 + 5)
    row = store.update("acme", limits=None, policy=None, now=T0 + 6)
    assert row.limits == {"per_day": 9} and row.updated == T0 + 6
    with pytest.raises(TenantError) as e:
        store.update("nobody", limits={}, policy=None, now=T0)
    assert (e.value.status, e.value.field) == (404, "name")
    d = store.update("default", limits={"rate": 2.5}, policy=None, now=T0 + 7)
    assert (d.limits, d.updated) == ({"rate": 2.5}, T0 + 7)
    assert SqliteTenants(tmp_path).get("default") == d
    assert [r.name for r in store.rows()] == ["acme", "default"]   # once


def test_status_and_auto_status(tmp_path):
    store = SqliteTenants(tmp_path)
    store.add("acme", limits={}, policy={}, now=T0)
    row = store.set_status("acme", "paused", "unpaid invoice", T0 + 1)
    assert (row.status, row.status_reason, row.sending) == ("paused", "unpaid invoice", False)
    row = store.set_status("acme", "active", "paid", T0 + 2)
    assert row.sending and row.status_reason == "paid"
    row = store.set_auto("acme", "warn", "bounce rate 6%", T0 + 3)
    assert (row.auto_status, row.auto_reason, row.sending) == ("warn", "bounce rate 6%", True)
    row = store.set_auto("acme", "paused", "bounce rate 12%", T0 + 4)
    assert not row.sending and row.status == "active"
    assert SqliteTenants(tmp_path).get("acme") == row
    with pytest.raises(TenantError) as e:
        store.set_status("acme", "stopped", "", T0)
    assert (e.value.status, e.value.field) == (422, "status")
    with pytest.raises(TenantError) as e:
        store.set_auto("acme", "red", "", T0)
    assert (e.value.status, e.value.field) == (422, "auto_status")
    with pytest.raises(TenantError) as e:
        store.set_status("ghost", "paused", "", T0)
    assert e.value.status == 404
    d = store.set_status("default", "paused", "maintenance", T0 + 9)
    assert not d.sending and store.get("default") == d


def test_ownership_first_come_and_credentials_for_good(tmp_path):
    a, b = SqliteTenants(tmp_path), SqliteTenants(tmp_path)
    a.add("acme", limits={}, policy={}, now=T0)
    a.add("bolt", limits={}, policy={}, now=T0)
    a.own("credential", "alice", "acme", T0)
    a.own("credential", "alice", "acme", T0 + 1)          # again: a no-op
    a.own("credential", "api:ci", "acme", T0)
    a.own("domain", "acme.example", "acme", T0)
    a.own("webhook", "acme-hook", "acme", T0)
    a.own("credential", "legacy", DEFAULT_TENANT, T0)     # default's are rows too
    assert b.owner("credential", "alice") == "acme"
    assert b.owner("credential", "legacy") == "default"
    assert b.owner("domain", "other.example") == "default"
    with pytest.raises(TenantError) as e:
        b.own("credential", "alice", "bolt", T0)
    assert e.value.status == 409 and "acme" in str(e.value)
    with pytest.raises(TenantError) as e:
        b.own("credential", "legacy", "bolt", T0)
    assert e.value.status == 409
    with pytest.raises(TenantError) as e:
        b.own("domain", "x.example", "ghost", T0)
    assert (e.value.status, e.value.field) == (404, "name")
    assert b.owned("acme") == [("credential", "alice"), ("credential", "api:ci"),
                               ("domain", "acme.example"), ("webhook", "acme-hook")]
    assert b.owned("acme", "domain") == [("domain", "acme.example")]
    assert b.ownership()[("credential", "legacy")] == "default"
    assert len(b.ownership()) == 5
    with pytest.raises(ValueError, match="kept for good"):
        b.disown("credential", "alice")
    with pytest.raises(ValueError, match="kind"):
        b.own("mailbox", "x", "acme", T0)
    b.disown("domain", "acme.example")
    a.own("domain", "acme.example", "bolt", T0)           # a deleted domain is free again
    assert a.owner("domain", "acme.example") == "bolt"


def test_remove_busy_then_removed_keeping_credential_history(tmp_path):
    store = SqliteTenants(tmp_path)
    store.add("acme", limits={}, policy={}, now=T0)
    store.own("credential", "alice", "acme", T0)
    store.own("credential", "api:ci", "acme", T0)
    store.own("domain", "acme.example", "acme", T0)
    with pytest.raises(TenantError) as e:
        store.remove("acme", active_credentials=set())
    assert e.value.status == 409 and "domain acme.example" in str(e.value)
    store.disown("domain", "acme.example")
    with pytest.raises(TenantError) as e:
        store.remove("acme", active_credentials={"api:ci", "bob"})
    assert e.value.status == 409 and "credential api:ci" in str(e.value)
    assert "alice" not in str(e.value)
    store.remove("acme", active_credentials={"bob"})
    assert store.get("acme") is None
    assert store.owner("credential", "alice") == "acme"   # history stays attributed
    store.add("bolt", limits={}, policy={}, now=T0)
    with pytest.raises(TenantError):
        store.own("credential", "alice", "bolt", T0)
    with pytest.raises(TenantError) as e:
        store.remove("acme", active_credentials=set())
    assert (e.value.status, e.value.field) == (404, "name")
    with pytest.raises(TenantError) as e:
        store.remove("default", active_credentials=set())
    assert e.value.status == 409


def test_remove_without_an_index_is_unknown(tmp_path):
    with pytest.raises(TenantError) as e:
        SqliteTenants(tmp_path).remove("acme", active_credentials=set())
    assert e.value.status == 404


def test_refuses_to_create_an_index_beside_orphan_segments(tmp_path):
    store = SqliteTenants(tmp_path)
    store.paths.segments.mkdir(parents=True)
    (store.paths.segments / "00000001.seg").write_bytes(b"x")
    with pytest.raises(TenantStoreError, match="segments"):
        store.add("acme", limits={}, policy={}, now=T0)
