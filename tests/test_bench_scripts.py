"""The benchmark scripts' pure parts (issue 12): which cells run, how runs are
summarised, the ratio table and its goals, the ports a sink profile uses, and
bench_million's windows and rates. The benchmarks themselves report speed;
nothing here measures any."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402
import bench_million  # noqa: E402
import benchlib  # noqa: E402


def rec(e2e: float | None = 100.0, cpu: float = 2.0, *, n: int = 1000, stalled: bool = False,
        accepted: int | None = None, p50: float | None = None,
        p99: float | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "n": n, "accepted": n if accepted is None else accepted, "stalled": stalled,
        "e2e_mps": e2e, "accept_mps": 2 * (e2e or 0), "mta_cpu_per_1000": cpu,
        "host_busy_s": 10.0, "mta_cpu_s": 4.0, "sink_cpu_s": 1.0, "client_cpu_s": 1.0,
        "wall_s": 8.0}
    if p50 is not None:
        r["lat_dot_250_ms"] = {"p50": p50, "p99": p99}
    return r


# -- cells ---------------------------------------------------------------------------------


def test_all_cells_of_the_issue_by_default_in_order() -> None:
    keys = ["c10-20k", "c1-1k", "c50-1k", "c10-200k", "wan", "latency"]
    assert [c.key for c in benchlib.select_cells(None)] == keys
    assert [c.key for c in benchlib.select_cells("all")] == keys
    cells = {c.key: c for c in benchlib.CELLS}
    assert [(cells[k].c, cells[k].s) for k in keys] == [
        (10, 20480), (1, 1024), (50, 1024), (10, 204800), (10, 20480), (10, 20480)]
    assert cells["wan"].delay_ms == 20 and all(
        cells[k].delay_ms == 0 for k in keys if k != "wan")
    assert cells["latency"].client == "py" and cells["latency"].latency
    assert [k for k in keys if cells[k].latency] == ["latency"]


def test_200_kib_cell_runs_at_most_2000_messages() -> None:
    cells = {c.key: c for c in benchlib.CELLS}
    assert cells["c10-200k"].n(5000) == 2000
    assert cells["c10-200k"].n(500) == 500
    assert cells["c10-20k"].n(5000) == 5000


def test_cells_by_key_and_unknown_ones_refused() -> None:
    assert [c.key for c in benchlib.select_cells("wan,c1-1k")] == ["wan", "c1-1k"]
    with pytest.raises(ValueError, match="unknown cell.*nope"):
        benchlib.select_cells("c1-1k,nope")


def test_c_or_s_makes_one_custom_cell() -> None:
    [cell] = benchlib.select_cells(None, c=50)
    assert (cell.key, cell.c, cell.s, cell.delay_ms) == ("custom", 50, 20480, 0)
    [cell] = benchlib.select_cells(None, s=1024, delay_ms=20)
    assert (cell.c, cell.s, cell.delay_ms) == (10, 1024, 20)
    with pytest.raises(ValueError, match="not both"):
        benchlib.select_cells("all", c=10)


# -- summarising runs ------------------------------------------------------------------------


def test_medians_only_over_completed_runs() -> None:
    recs = [rec(100.0, 1.0), rec(300.0, 3.0), rec(200.0, 2.0),
            rec(None, 9.0, stalled=True), rec(1.0, 9.0, accepted=999), {"error": "boom", "n": 1000}]
    m = benchlib.medians(recs)
    assert (m["e2e"], m["cpu"], m["accept"]) == (200.0, 2.0, 400.0)
    assert (m["runs"], m["failed"], m["n"]) == (3.0, 3.0, 1000.0)
    assert m["rest"] == pytest.approx((10.0 - 4.0 - 1.0 - 1.0) / 8.0)
    assert math.isnan(m["p99"])                  # smtp-source runs carry no latency
    assert math.isnan(benchlib.medians([rec(None, stalled=True)])["e2e"])


def test_verdict_names_the_goals_missed() -> None:
    assert benchlib.verdict(1.5, 0.6) == "met"
    assert benchlib.verdict(1.49, 0.6) == "short: e2e"
    assert benchlib.verdict(2.0, 0.61) == "short: CPU"
    assert benchlib.verdict(0.5, 1.0) == "short: e2e, CPU"
    assert benchlib.verdict(math.nan, 0.5) == "–"


def test_ratio_table_rows_ratios_and_latency_row() -> None:
    cells = benchlib.select_cells("c10-20k,c1-1k,latency")
    med = {("c10-20k", "mta"): benchlib.medians([rec(1500.0, 0.9)]),
           ("c10-20k", "postfix"): benchlib.medians([rec(1000.0, 1.5)]),
           ("c1-1k", "mta"): benchlib.medians([rec(300.0, 2.8)]),
           ("c1-1k", "postfix"): benchlib.medians([rec(600.0, 1.4)]),
           ("latency", "mta"): benchlib.medians([rec(500.0, 1.0, p50=10.0, p99=30.0)]),
           ("latency", "postfix"): benchlib.medians([rec(400.0, 2.0, p50=5.0, p99=40.0)])}
    lines = benchlib.ratio_table(cells, med)
    assert lines[0].startswith("| cell | mta e2e msg/s | Postfix e2e msg/s | e2e ratio |")
    assert lines[2] == "| C=10, 20 KiB | 1500 | 1000 | 1.50x | 0.90 | 1.50 | 0.60x | met |"
    assert lines[3] == "| C=1, 1 KiB | 300 | 600 | 0.50x | 2.80 | 1.40 | 2.00x | short: e2e, CPU |"
    assert lines[4] == ("| C=10, 20 KiB, py client | 500 | 400 | 1.25x | 1.00 | 2.00 | 0.50x "
                        "| short: e2e |")
    assert lines[5] == ("| accept latency p50/p99 ms (C=10, 20 KiB, py client) | 10.0 / 30.0 "
                        "| 5.0 / 40.0 | p99 0.75x | | | | met |")
    assert len(lines) == 6


def test_ratio_table_without_postfix_shows_no_ratio() -> None:
    cells = benchlib.select_cells("c50-1k,latency")
    med = {("c50-1k", "mta"): benchlib.medians([rec(900.0, 1.0)]),
           ("latency", "mta"): benchlib.medians([rec(500.0, 1.0, p50=10.0, p99=50.0)])}
    lines = benchlib.ratio_table(cells, med)
    assert lines[2] == "| C=50, 1 KiB | 900 | – | –x | 1.00 | – | –x | – |"
    assert lines[4].endswith("| 10.0 / 50.0 | – / – | p99 –x | | | | – |")


def test_latency_row_short_when_p99_above_postfix() -> None:
    med = {("latency", "mta"): benchlib.medians([rec(p50=1.0, p99=41.0)]),
           ("latency", "postfix"): benchlib.medians([rec(p50=1.0, p99=40.0)])}
    assert benchlib.ratio_table(benchlib.select_cells("latency"), med)[-1].endswith(
        "| short: p99 |")


def test_detail_table_counts_runs() -> None:
    med = {("c1-1k", "mta"): benchlib.medians([rec(300.0), rec(None, stalled=True)])}
    lines = benchlib.detail_table(benchlib.select_cells("c1-1k"), med)
    assert lines[2] == "| C=1, 1 KiB | mta | 1000 | 1 (1) | 600 | 300 | 0.50 |"
    assert len(lines) == 3


# -- sink profiles ---------------------------------------------------------------------------


def test_sites_ports_and_harness_environment() -> None:
    plain = bench.Site(Path("/b"), 0)
    assert (plain.postfix_port, plain.sink_port, plain.mta_port, plain.admin_port) == (
        2525, 2526, 2535, 7535)
    env = plain.env
    assert (env["PFBENCH_BASE"], env["BENCH_RUN"], env["PFBENCH_CGROUP"], env["SINK_PORT"],
            env["SMTPD_PORT"], env["SINK_REPLY_DELAY_MS"]) == (
        "/tmp/pfbench", "/tmp/bench-run", "bench-postfix", "2526", "2525", "0")
    assert plain.mta_cgroup == "bench-mta"
    wan = bench.Site(Path("/b"), 20, offset=100)
    assert (wan.postfix_port, wan.sink_port, wan.mta_port) == (2665, 2666, 2675)
    assert (wan.env["PFBENCH_BASE"], wan.env["BENCH_RUN"], wan.env["SINK_REPLY_DELAY_MS"],
            wan.mta_cgroup) == ("/tmp/pfbench-wan-p100", "/tmp/bench-run-wan-p100", "20",
                                "bench-mta-wan-p100")
    assert wan.queue_cmd == "PFBENCH_BASE=/tmp/pfbench-wan-p100 /b/postfix-queue-count.sh"


def test_mta_config_routes_everything_to_its_sink() -> None:
    text = bench.mta_config(Path("/s"), bench.Site(Path("/b"), 20), None)
    assert '"*" = "127.0.0.1:2566"' in text and 'address = "127.0.0.1:2575"' in text
    assert "workers" not in text
    assert "workers = 2\n" in bench.mta_config(Path("/s"), bench.Site(Path("/b"), 0), 2)


# -- bench_million ----------------------------------------------------------------------------


def test_million_windows() -> None:
    W = bench_million.Window
    assert bench_million.windows(1_000_000, 50_000, 20_000) == (W(5000, 25000),
                                                                 W(950_000, 970_000))
    # a small run: the low window at n/2, the window at most half of it
    assert bench_million.windows(50_000, 50_000, 20_000) == (W(3125, 15625), W(25000, 37500))


def S(t: float, delivered: int, rss: int = 0, cpu: float = 0.0) -> bench_million.Sample:
    return bench_million.Sample(t, delivered, rss, rss, cpu)


def test_million_time_at_interpolates_between_polls() -> None:
    samples = [S(0.0, 0), S(1.0, 100), S(2.0, 100), S(3.0, 300)]
    assert bench_million.time_at(samples, 50) == 0.5
    assert bench_million.time_at(samples, 100) == 1.0
    assert bench_million.time_at(samples, 200) == 2.5
    with pytest.raises(ValueError):
        bench_million.time_at(samples, 301)


def test_million_measure_rate_rss_cpu() -> None:
    samples = [S(0.0, 0, 10, 0.0), S(1.0, 1000, 50, 1.0), S(2.0, 2000, 70, 2.0),
               S(3.0, 3000, 20, 4.0)]
    m = bench_million.measure(samples, bench_million.Window(1000, 3000))
    assert m["rate"] == 1000.0
    assert (m["rss_main"], m["rss_tree"]) == (70, 70)
    assert m["cpu_per_1000"] == 1.5


def test_million_message_size() -> None:
    body = bench_million.message(2048)
    assert len(body) == 2048 and body.endswith(b"\r\n") and b"\r\n\r\n" in body
