"""The store seams (issue 11 item 8, the spool's share): the embedded
SQLite implementations have every method of the core.stores Protocols, with
the same parameters, so a networked backend can replace them without
touching callers; `Spool` has one name per noun (spool.ledger, spool.suppressions)."""

from __future__ import annotations

import inspect
import io

import pytest

from mta.core import stores
from mta.spool import Ledger, Spool
from mta.spool.suppression_admin import SqliteSuppressionList
from mta.spool.suppressions import Suppressions

T0 = 1_700_000_000.0


def protocol_methods(proto: type) -> dict[str, object]:
    return {name: fn for name, fn in vars(proto).items()
            if inspect.isfunction(fn) and not name.startswith("_")}


def params(fn: object) -> list[tuple[str, object, bool]]:
    return [(p.name, p.kind, p.default is inspect.Parameter.empty)
            for p in inspect.signature(fn).parameters.values()]   # type: ignore[arg-type]


@pytest.mark.parametrize("impl, proto", [
    (Ledger, stores.EventLedger),
    (Ledger, stores.WebhookCursors),
    (Ledger, stores.IdempotencyKeys),
    (Suppressions, stores.SuppressionLookup),
    (SqliteSuppressionList, stores.SuppressionList),
])
def test_implementation_matches_its_protocol(impl, proto):
    for name, fn in protocol_methods(proto).items():
        mine = getattr(impl, name)
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(fn), name
        assert params(mine) == params(fn), name


async def test_spool_nouns_are_the_store_implementations(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert isinstance(s.ledger, Ledger) and isinstance(s.suppressions, Suppressions)
        await s.ledger.set_webhook_state("crm", cursor=3)
        assert (await s.ledger.webhook_state("crm"))["cursor"] == 3
        assert await s.ledger.last_event_seq() == 0
        for old in ("append_events", "events_after", "suppressed", "webhook_state"):
            assert not hasattr(s, old), f"Spool.{old}: one name per noun (spool.ledger/.suppressions)"
    finally:
        await s.close()


def test_sqlite_suppression_list_round_trip(tmp_path):
    lst: stores.SuppressionList = SqliteSuppressionList(tmp_path)
    assert lst.entries() == []
    v = lst.add("Gone@Example.ORG", reason="manual", now=T0)
    assert v.address == "Gone@example.org"
    assert [e.address for e in lst.entries(now=T0)] == ["Gone@example.org"]
    assert lst.get("gone@example.org") == []                     # local part as given
    assert lst.get("Gone@example.org") == [v]
    assert lst.soft_failures("Gone@example.org") is None
    out = io.StringIO()
    assert lst.export_csv(out) == 1 and "Gone@example.org" in out.getvalue()
    assert lst.remove("Gone@example.org") is True
    assert lst.entries() == []
