"""scripts/crash_run.py's pure parts (issue 12): the kill schedule, charging
duplicates to kills, the in-flight bound read from the sink's log, and the
verdict. The run itself is a script (it loads the machine); nothing here
measures speed."""

from __future__ import annotations

import argparse
import collections
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import crash_run  # noqa: E402
from crash_run import Kill, Killer, Load, SinkLog  # noqa: E402


def test_schedule_has_an_equal_share_of_each_kind() -> None:
    sched = crash_run.kill_schedule(24, crash_run.KINDS, random.Random(1))
    assert collections.Counter(sched) == {"receiver": 8, "owner": 8, "group": 8}
    assert len(crash_run.kill_schedule(25, crash_run.KINDS, random.Random(1))) == 25
    assert set(crash_run.kill_schedule(6, ("owner", "group"), random.Random(1))) == {"owner", "group"}


def test_a_duplicate_is_charged_to_the_kill_it_straddles() -> None:
    kills = [Kill("owner", at=10.0, submissions_in_flight=0, ready_at=12.0),
             Kill("group", at=20.0, submissions_in_flight=0, ready_at=22.0)]
    per_kill, unexplained = crash_run.duplicates_by_kill(
        {"a": [9.0, 13.0],           # before the first kill, after it
         "b": [11.0, 14.0],          # answered by the sink after the owner died, resent
         "c": [9.0, 21.0, 23.0],     # twice
         "d": [13.0, 14.0]},         # no kill between: a bug
        kills)
    assert per_kill == {0: 3, 1: 1}     # c: resent after the first kill, then after the second
    assert unexplained == ["d"]


def test_in_flight_counts_deliveries_on_connections_open_at_the_kill(tmp_path: Path) -> None:
    f = tmp_path / "sink"
    f.write_text("O 1 1.0\nD a 2.0 1\nD b 3.0 1\nO 2 2.0\nD c 2.5 2\nC 2 4.0\n"
                 "O 3 4.5\nD d 5.0 3\nC 1 6.0\nO 4 9.0\nD e 9.5 4\n")
    log = SinkLog.read(f)
    assert [t for t, _, _ in log.deliveries] == ["a", "b", "c", "d", "e"]
    assert log.in_flight_at(5.5) == 3        # conns 1 and 3 open; 2 closed 1.5 s before
    assert log.in_flight_at(4.4) == 3        # conn 2 closed 0.4 s before: still counted
    assert log.in_flight_at(0.5) == 0


def verdict(acked: list[str], sink: str, tmp_path: Path, kills: list[Kill]):
    load = Load(port=0, size=0)
    load.acked.extend(acked)
    killer = Killer(daemon=None, load=load, rng=random.Random(0))  # type: ignore[arg-type]
    killer.kills.extend(kills)
    f = tmp_path / "sink"
    f.write_text(sink)
    args = argparse.Namespace(concurrency=20, per_connection=100)
    return crash_run.judge(load, killer, SinkLog.read(f), args)


def test_verdict_ok_when_every_acked_token_arrived(tmp_path: Path) -> None:
    kill = Kill("owner", at=5.0, submissions_in_flight=2, ready_at=6.0)
    v = verdict(["a", "b"], "O 1 1.0\nD a 2.0 1\nD b 3.0 1\nO 2 7.0\nD b 8.0 2\nD x 8.1 2\n",
                tmp_path, [kill])
    assert not v.failed
    assert "LOST (acked, never delivered): 0" in v.lines
    assert any(line.startswith("duplicates: 1 tokens") for line in v.lines)


def test_verdict_fails_on_a_lost_token(tmp_path: Path) -> None:
    v = verdict(["a", "b"], "O 1 1.0\nD a 2.0 1\n", tmp_path, [])
    assert v.failed and "LOST b" in v.lines


def test_verdict_fails_on_more_duplicates_than_in_flight(tmp_path: Path) -> None:
    # b and c were delivered on a connection that closed long before the kill:
    # the daemon had recorded them, so resending them is a bug.
    kill = Kill("owner", at=10.0, submissions_in_flight=0, ready_at=11.0)
    v = verdict(["b", "c"], "O 1 1.0\nD b 2.0 1\nD c 2.1 1\nC 1 3.0\n"
                "O 2 12.0\nD b 12.5 2\nD c 12.6 2\n", tmp_path, [kill])
    assert v.failed and any(line.startswith("OVER") for line in v.lines)


def test_verdict_fails_when_a_receiver_outlived_its_owner(tmp_path: Path) -> None:
    load = Load(port=0, size=0)
    killer = Killer(daemon=None, load=load, rng=random.Random(0))  # type: ignore[arg-type]
    killer.survivors.append(4242)
    f = tmp_path / "sink"
    f.write_text("")
    args = argparse.Namespace(concurrency=20, per_connection=100)
    assert crash_run.judge(load, killer, SinkLog.read(f), args).failed
