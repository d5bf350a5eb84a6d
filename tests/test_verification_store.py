"""The verifications table (mta.spool.verifications) in a real index file:
rows round-trip, tenants are apart, and `attempt` is one write transaction
(20 threads checking wrong codes at once: exactly max_attempts evaluated)."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from mta.core.clock import FakeClock
from mta.policy import otp
from mta.policy.otp import OtpPolicy, VerificationStatus
from mta.runtime.api_verifications import row_of, verification_of
from mta.spool.verifications import (SqliteVerifications, VerificationExists, VerificationRow,
                                     VerificationStoreError, new_verification_id)

SECRET = b"s" * 32
DEFAULT = OtpPolicy()


def fresh(clock: FakeClock, *, tenant: str = "acme", to: str = "u@example.com",
          policy: OtpPolicy = DEFAULT) -> tuple[VerificationRow, str]:
    v, code = otp.new_verification(new_verification_id(), tenant, to, salt=os.urandom(16),
                                   now=clock.now(), secret=SECRET, policy=policy,
                                   sender="app@acme.test")
    return row_of(v), code


def test_ids() -> None:
    ids = {new_verification_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"vrf_[0-9a-f]{20}", i) for i in ids)


def test_round_trip_and_tenants_apart(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    assert store.get("acme", "vrf_" + "0" * 20) is None          # no index: nothing made
    assert not store.paths.index.exists()
    row, _ = fresh(clock)
    store.insert(row)
    got = store.get("acme", row.id)
    assert got == row and isinstance(got.salt, bytes) and got.status == "pending"
    assert verification_of(got).status is VerificationStatus.PENDING
    assert store.get("other", row.id) is None
    assert store.attempt("other", row.id, lambda r: (r, "called")) is None
    with pytest.raises(VerificationExists):
        store.insert(row)


def test_no_code_in_the_database(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    row, code = fresh(clock)
    store.insert(row)
    with sqlite3.connect(store.paths.index) as db:
        dump = "\n".join(db.iterdump())
    assert row.id in dump and code not in dump


def test_pending_for_is_the_newest_unexpired_pending(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    old, _ = fresh(clock)
    store.insert(old)
    clock.advance(5)
    new, _ = fresh(clock)
    store.insert(new)
    store.insert(fresh(clock, to="else@example.com")[0])
    assert store.pending_for("acme", "u@example.com", clock.now()).id == new.id
    assert store.pending_for("beta", "u@example.com", clock.now()) is None
    store.attempt("acme", new.id,
                  lambda r: (row_of(otp.cancel(verification_of(r))), None))
    assert store.pending_for("acme", "u@example.com", clock.now()).id == old.id
    assert store.pending_for("acme", "u@example.com", old.expires) is None


def test_start_returns_the_pending_one_or_inserts(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    first, _ = fresh(clock)
    assert store.start(first, clock.now()) == (first, True)
    second, _ = fresh(clock)
    assert store.start(second, clock.now()) == (first, False)
    assert store.get("acme", second.id) is None
    clock.set(first.expires)
    third, _ = fresh(clock)
    assert store.start(third, clock.now()) == (third, True)


def test_attempt_writes_changes_and_refuses_a_new_identity(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    row, code = fresh(clock)
    store.insert(row)
    policy = OtpPolicy()

    def checked(r: VerificationRow) -> tuple[VerificationRow, str]:
        v, result = otp.check(verification_of(r), code, clock.now(), SECRET, policy)
        return row_of(v), result
    assert store.attempt("acme", row.id, checked) == "verified"
    assert store.get("acme", row.id).status == "verified"
    with pytest.raises(ValueError):
        store.attempt("acme", row.id,
                      lambda r: (replace(r, tenant="thief", status="pending"), None))
    assert store.get("acme", row.id).status == "verified"
    assert store.get("thief", row.id) is None


def test_twenty_parallel_wrong_checks_evaluate_exactly_max_attempts(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    policy = OtpPolicy(max_attempts=5)
    row, code = fresh(clock, policy=policy)
    store.insert(row)
    bad = str((int(code) + 1) % 10 ** 6).zfill(6)
    evaluated: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def check_once() -> None:
        def step(r: VerificationRow) -> tuple[VerificationRow, str]:
            v, result = otp.check(verification_of(r), bad, clock.now(), SECRET, policy)
            return row_of(v), result
        start.wait()
        result = store.attempt("acme", row.id, step)
        with lock:
            evaluated.append(result or "")

    threads = [threading.Thread(target=check_once) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(evaluated) == ["failed"] * 16 + ["wrong_code"] * 4
    final = store.get("acme", row.id)
    assert final.attempts == 5 and final.status == "failed"


def test_prune_removes_expired_rows_only(tmp_path: Path) -> None:
    store, clock = SqliteVerifications(tmp_path), FakeClock()
    assert store.prune(clock.now()) == 0
    old, _ = fresh(clock)
    store.insert(old)
    clock.advance(1000)
    young, _ = fresh(clock)
    store.insert(young)
    assert store.prune(clock.now()) == 1
    assert store.get("acme", old.id) is None and store.get("acme", young.id) == young


def test_refuses_to_create_an_index_beside_orphaned_segments(tmp_path: Path) -> None:
    store = SqliteVerifications(tmp_path)
    store.paths.segments.mkdir(parents=True)
    (store.paths.segments / "00000001.seg").write_bytes(b"x")
    with pytest.raises(VerificationStoreError):
        store.insert(fresh(FakeClock())[0])
