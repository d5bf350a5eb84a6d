"""The domain store seam (issue 11 item 8) and the domain/selector state
machines on core.statemachine (item 4).

The service is driven over a second, in-memory implementation of the
`DomainStore` Protocol whose `key_path`s point nowhere: if the service read a
key file (or a private key) around the Protocol, these tests would fail. The
SQLite default is checked for the `event=transition` log lines and for
keeping private keys to itself."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from mta.config import parse_config
from mta.core.clock import FakeClock
from mta.core.statemachine import IllegalTransition
from mta.domains.model import (DOMAIN_MACHINE, SELECTOR_MACHINE, Domain, DomainExists,
                               DomainState, NewKey, Selector, SelectorStatus, UnknownDomain,
                               selector_subject)
from mta.domains.records import records_json
from mta.domains.service import DomainService, SendingDomains
from mta.domains.sqlite_store import SqliteDomainStore
from mta.domains.store import DomainStore
from mta.mail.dkim import SigningKey, generate_key, public_txt
from tests.test_spf import FakeResolver

CFG = ('[server]\nhostname = "mta.test"\nstate_dir = "/nonexistent/state"\n'
       'public_ips = ["127.0.0.9"]\n[domains]\nrotation_grace = "1h"\n')


class MemoryDomainStore:
    """`DomainStore` in dicts: what a networked store would be to the service."""

    def __init__(self) -> None:
        self.domains: dict[str, Domain] = {}
        self.keys: dict[tuple[str, str], bytes] = {}
        self.calls: list[str] = []

    def _sel(self, name: str, key: NewKey, now: float) -> Selector:
        self.keys[(name, key.selector)] = key.private_pem
        return Selector(name, key.selector, key.algorithm, now, key.status, None,
                        f"memory:{name}/{key.selector}")

    def add_domain(self, name, now, keys):
        if name in self.domains:
            raise DomainExists(name)
        self.domains[name] = Domain(name, DomainState.PENDING, now, None, None, now, 0,
                                    tuple(self._sel(name, NewKey(*k), now) for k in keys))
        return self.domains[name]

    def get(self, name):
        return self.domains.get(name)

    def list(self):
        return [self.domains[n] for n in sorted(self.domains)]

    def remove(self, name):
        if self.domains.pop(name, None) is None:
            raise UnknownDomain(name)

    def set_state(self, name, new, *, now, failure_reason, next_check, check_attempts):
        d = self.domains[name]
        DOMAIN_MACHINE.move(d.state, new, name)
        self.domains[name] = dataclasses.replace(
            d, state=new, last_checked=now, failure_reason=failure_reason,
            next_check=next_check, check_attempts=check_attempts)

    def due(self, now):
        return [d.name for d in self.list() if d.next_check is not None and d.next_check <= now]

    def add_selector(self, name, key, now):
        d = self.domains[name]
        self.domains[name] = dataclasses.replace(d, selectors=d.selectors
                                                 + (self._sel(name, key, now),))

    def _replace_selector(self, name, selector, change):
        d = self.domains[name]
        sels = tuple(s2 for s in d.selectors
                     if (s2 := change(s) if s.selector == selector else s) is not None)
        self.domains[name] = dataclasses.replace(d, selectors=sels)

    def set_selector_status(self, name, selector, new, retire_at=None):
        def change(s):
            SELECTOR_MACHINE.move(s.status, new, selector_subject(name, selector))
            return dataclasses.replace(s, status=new, retire_at=retire_at)
        self._replace_selector(name, selector, change)

    def delete_selector(self, name, selector):
        def change(s):
            SELECTOR_MACHINE.move(s.status, SelectorStatus.REMOVED,
                                  selector_subject(name, selector))
        self._replace_selector(name, selector, change)
        self.keys.pop((name, selector), None)

    def public_key(self, selector):
        self.calls.append(f"public_key {selector.selector}")
        return public_txt(self.keys[(selector.domain, selector.selector)], selector.algorithm)

    def signing_keys(self, name):
        self.calls.append(f"signing_keys {name}")
        d = self.domains.get(name)
        if d is None:
            return []
        return [SigningKey(name, s.selector, s.algorithm, self.keys[(name, s.selector)])
                for s in d.selectors if s.status is SelectorStatus.ACTIVE]


def _zone(plan) -> dict:
    zone: dict = {}
    for r in plan.records():
        if r.type == "MX":
            pref, host = r.value.split()
            value = (int(pref), host)
        elif r.type in ("TXT", "A", "AAAA"):
            value = r.value
        else:
            continue   # PTR: not in the domain's zone
        zone.setdefault(r.name.rstrip("."), {}).setdefault(r.type, []).append(value)
    return zone


def _typed(store: DomainStore) -> DomainStore:   # mypy: both implement the Protocol
    return store


async def test_the_service_works_over_any_store():
    _typed(SqliteDomainStore("/nonexistent"))
    store = MemoryDomainStore()
    clock = FakeClock(1_700_000_000.0)          # 2023-11
    resolver = FakeResolver({})
    svc = DomainService(parse_config(CFG, "test"), resolver=resolver, clock=clock,
                        store=_typed(store))
    sending: SendingDomains = svc
    d = svc.add("brand.test")
    assert [s.selector for s in d.selectors] == ["mta202311", "mta202311-ed"]
    assert all(s.key_path.startswith("memory:") for s in d.selectors)
    keys = sending.signing_keys("brand.test")
    assert [(k.selector, k.algorithm) for k in keys] == [("mta202311", "rsa-sha256"),
                                                         ("mta202311-ed", "ed25519-sha256")]
    plan = svc.plan("brand.test")
    assert [s.txt for s in plan.selectors] == [public_txt(k.private_pem, k.algorithm)
                                               for k in keys]

    resolver.zone.update(_zone(plan))
    assert (await sending.check("brand.test")).ok
    assert sending.get("brand.test").state is DomainState.VERIFIED

    svc.rotate("brand.test")
    resolver.zone.update(_zone(svc.plan("brand.test")))
    clock.advance(60)
    assert (await svc.check("brand.test")).ok
    assert [k.selector for k in svc.signing_keys("brand.test")] == ["mta202311b",
                                                                   "mta202311b-ed"]
    clock.advance(3600)
    assert sending.due_checks(clock.now() + 86400) == ["brand.test"]
    await svc.check("brand.test")
    assert [s.selector for s in svc.get("brand.test").selectors] == ["mta202311b",
                                                                    "mta202311b-ed"]
    assert set(store.keys) == {("brand.test", "mta202311b"), ("brand.test", "mta202311b-ed")}
    svc.remove("brand.test")
    assert svc.list() == [] and svc.signing_keys("brand.test") == []


def test_transitions_are_logged_once_committed(tmp_path, caplog):
    store = SqliteDomainStore(tmp_path)
    pem, _ = generate_key("ed25519-sha256")
    store.add_domain("a.test", 1.0, [NewKey("s", "ed25519-sha256", pem, SelectorStatus.ACTIVE)])
    caplog.set_level(logging.INFO, logger="mta.domains")
    store.set_state("a.test", DomainState.PENDING, now=2.0, failure_reason="x", next_check=3.0,
                    check_attempts=1)
    assert "event=transition" not in caplog.text            # an allowed self-move is silent
    store.set_state("a.test", DomainState.VERIFIED, now=2.0, failure_reason=None,
                    next_check=3.0, check_attempts=0)
    store.set_selector_status("a.test", "s", SelectorStatus.RETIRING, retire_at=5.0)
    store.delete_selector("a.test", "s")
    moves = [r.getMessage() for r in caplog.records if "event=transition" in r.getMessage()]
    assert moves == [
        "event=transition machine=domain subject=a.test from=pending to=verified",
        "event=transition machine=selector subject=s._domainkey.a.test from=active to=retiring",
        "event=transition machine=selector subject=s._domainkey.a.test from=retiring to=removed"]
    caplog.clear()
    with pytest.raises(IllegalTransition, match="domain a.test: illegal move verified -> pending"):
        store.set_state("a.test", DomainState.PENDING, now=4.0, failure_reason=None,
                        next_check=None, check_attempts=0)
    assert store.get("a.test").state is DomainState.VERIFIED and caplog.text == ""


def test_private_keys_stay_in_the_store(tmp_path):
    store = SqliteDomainStore(tmp_path)
    pem, _ = generate_key("ed25519-sha256")
    d = store.add_domain("a.test", 1.0, [NewKey("s", "ed25519-sha256", pem,
                                                 SelectorStatus.ACTIVE)])
    body = pem.decode().split("-----")[2].strip()
    assert body not in repr(d) and body not in json.dumps(d.to_dict())
    svc = DomainService(parse_config(CFG.replace("/nonexistent/state", str(tmp_path)), "test"),
                        store=store)
    assert body not in json.dumps(svc.show("a.test"))
    assert body not in json.dumps(records_json(svc.plan("a.test")))
    assert [k.private_pem for k in store.signing_keys("a.test")] == [pem]
    assert store.signing_keys("unknown.test") == []


def test_the_tables_are_the_documented_ones():
    assert {(a.value, b.value) for a, bs in DOMAIN_MACHINE.table.items() for b in bs} == {
        ("pending", "pending"), ("pending", "verified"), ("verified", "verified"),
        ("verified", "failed"), ("failed", "failed"), ("failed", "verified")}
    assert {(a.value, b.value) for a, bs in SELECTOR_MACHINE.table.items() for b in bs} == {
        ("pending", "active"), ("active", "retiring"), ("retiring", "removed")}
    assert DomainState.PENDING == "pending" and SelectorStatus("retiring") is SelectorStatus.RETIRING
