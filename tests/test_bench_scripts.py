"""The benchmark scripts' pure parts (issue 12): which cells run, how runs are
summarised, the ratio table and its goals, the ports a sink profile uses, and
bench_million's windows and rates; bench_api's message, sink, summaries and
one tiny run of it (issue 13). The benchmarks themselves report speed;
nothing here measures any."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402
import bench_api  # noqa: E402
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


# -- bench_api (issue 13) ---------------------------------------------------------------------


def test_api_message_is_20_kib_and_what_the_api_builds() -> None:
    from mta.api.emails import parse_email
    msg = bench_api.message()
    assert abs(len(msg.mime) - 20480) <= 100
    assert json.loads(msg.http_body) == msg.params
    sent = base64.b64decode(msg.params["attachments"][0]["content"])
    parsed = email.message_from_bytes(msg.mime, policy=email.policy.default)
    [part] = [p for p in parsed.walk() if p.get_filename()]
    assert part.get_filename() == "report.bin" and part.get_content() == sent
    assert parsed["Subject"] == "bench_api" and parsed["To"] == bench_api.RECIPIENT
    # the API's own parser takes the HTTP body as it is
    req = parse_email(json.loads(msg.http_body))
    assert req.composition.attachments[0].content == sent
    assert msg.smtp_data.endswith(b"\r\n.\r\n") and msg.smtp_data[:-3] == msg.mime


def test_api_dot_stuffing() -> None:
    assert bench_api.dot_stuff(b".a\r\nb\r\n.c\r\n") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert bench_api.dot_stuff(b"no final line end") == b"no final line end\r\n.\r\n"


def test_api_percentile_summarise_and_table() -> None:
    assert bench_api.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert bench_api.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert math.isnan(bench_api.percentile([], 0.5))

    def run(proto: str, c: int, ok: int, seconds: float, lat: float,
            failed: int = 0) -> bench_api.Run:
        return bench_api.Run(proto, c, ok + failed, seconds, ok, failed,
                             "HTTP 500" if failed else "", [lat] * ok)
    cells = {1: {"http": bench_api.summarise([run("http", 1, 100, 1.0, 0.010),
                                              run("http", 1, 100, 0.5, 0.020),
                                              run("http", 1, 100, 2.0, 0.030)]),
                 "smtp": bench_api.summarise([run("smtp", 1, 100, 1.0, 0.005)])},
             10: {"http": bench_api.summarise([run("http", 10, 90, 1.0, 0.04, failed=10)]),
                  "smtp": bench_api.summarise([run("smtp", 10, 100, 0.5, 0.02)])}}
    h1 = cells[1]["http"]
    assert (h1["mps"], h1["runs"], h1["messages"], h1["failed"]) == (100.0, 3.0, 300.0, 0.0)
    assert (h1["p50_ms"], h1["p99_ms"]) == pytest.approx((20.0, 30.0))
    assert cells[10]["http"]["failed"] == 10.0
    sdk = bench_api.summarise([run("sdk", 1, 50, 1.0, 0.02)])
    lines = bench_api.table(cells, sdk)
    assert lines[0].startswith("| clients | HTTP msg/s | SMTP msg/s | HTTP/SMTP |")
    assert lines[2] == "| C=1 | 100 | 100 | 1.00x | 20.0 / 30.0 | 5.0 / 5.0 | met |"
    assert lines[3] == "| C=10 | 90 | 200 | 0.45x | 40.0 / 40.0 | 20.0 / 20.0 | short |"
    assert lines[4].startswith("Python SDK") and "50 msg/s" in lines[4]
    assert len(bench_api.table(cells)) == 4
    empty = bench_api.summarise([bench_api.Run("http", 1, 5)])
    assert math.isnan(bench_api.ratio(empty, cells[1]["smtp"]))


async def test_api_bench_sink_counts_pipelined_transactions() -> None:
    loop = asyncio.get_running_loop()
    bench_api.SinkSession.counts.update(messages=0, bytes=0)
    server = await loop.create_server(bench_api.SinkSession, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220")
        writer.write(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        got = [await reader.readline() for _ in range(5)]
        assert got == [b"250-sink\r\n", b"250 PIPELINING\r\n", b"250 ok\r\n", b"250 ok\r\n",
                       b"354 go ahead\r\n"]
        body = b"Subject: x\r\n\r\n" + b"..dot\r\n" + b"y" * 70_000 + b"\r\n"
        for i in range(0, len(body), 1000):           # in pieces, the terminator split too
            writer.write(body[i:i + 1000])
            await asyncio.sleep(0)
        writer.write(b".\r")
        await asyncio.sleep(0.01)
        writer.write(b"\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n.\r\nQUIT\r\n")
        got = [await reader.readline() for _ in range(6)]
        assert got == [b"250 2.0.0 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go ahead\r\n",
                       b"250 2.0.0 ok\r\n", b"221 bye\r\n"]
        assert bench_api.SinkSession.counts == {"messages": 2, "bytes": len(body)}
        writer.close()
    finally:
        server.close()


@pytest.mark.slow
def test_api_bench_tiny_run_end_to_end() -> None:
    """The whole script, -n 3: a real daemon, a key made by `mta key create`,
    both protocols and the SDK at every cell, every message at the sink."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_api.py"
    out = subprocess.run([sys.executable, str(script), "-n", "3", "--repeats", "1",
                          "--warmup", "2", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert [c["c"] for c in doc["cells"]] == [1, 10]
    for cell in doc["cells"]:
        for proto in ("http", "smtp"):
            assert cell[proto]["messages"] == 3 and cell[proto]["failed"] == 0
            assert cell[proto]["mps"] > 0 and cell[proto]["p99_ms"] >= cell[proto]["p50_ms"] > 0
        assert cell["ratio"] > 0
    extra = 0
    try:
        import resend  # noqa: F401
        assert doc["sdk"]["messages"] == 3 and doc["sdk"]["failed"] == 0
        extra = 3
    except ImportError:
        assert doc["sdk"] is None
    assert doc["sent"] == doc["delivered"] == 2 * 2 + 4 * 3 + extra
    assert doc["failed"] == 0 and abs(doc["message_bytes"] - 20480) <= 100


# -- bench_cluster (issue 19) ------------------------------------------------------------------


def test_cluster_report_adds_the_engines_cost_and_ratios() -> None:
    import bench_cluster

    def run(e2e: float, node: float, eng: float) -> dict[str, Any]:
        return {"accept_mps": e2e + 10, "e2e_mps": e2e, "node_cpu_ms_per_msg": node,
                "engine_cpu_ms_per_msg": eng}
    runs = {"sqlite": [run(600, 2.0, 0.0), run(580, 1.8, 0.0)],
            "cluster-1": [run(500, 2.2, 0.1)], "cluster-2": [run(750, 2.3, 0.2)],
            "cluster-3": [run(600, 2.6, 0.3)]}
    a = type("A", (), {"n": 10, "c": 2, "repeats": 2})()
    text = bench_cluster.report(a, runs)
    # sqlite's median node CPU is 1.9: the cluster adds 0.3 (+16 %), 0.1 in the engines
    assert "+0.30 CPU-ms (+16% of the SQLite node's 1.90)" in text
    assert "plus 0.10 CPU-ms in PostgreSQL and Redis" in text
    assert "cluster-2: e2e 1.50x cluster-1" in text and "cluster-3: e2e 1.20x" in text


def test_cluster_node_config_is_a_valid_single_or_cluster_config(tmp_path: Path) -> None:
    import bench_cluster
    from mta.config import parse_config
    key = tmp_path / "k"
    key.write_text("0" * 64)
    plain = bench_cluster.node_config(tmp_path / "s", 2600, 2601, 2602, "")
    cfg = parse_config(plain, "bench")
    assert cfg.cluster.database is None and cfg.server.workers == 0
    clustered = plain + ('[cluster]\ndatabase = "postgresql://mta@127.0.0.1:1/x"\n'
                         f'redis = "redis://127.0.0.1:2/0"\nnode = "n0"\nsecret_file = "{key}"\n')
    assert parse_config(clustered, "bench").cluster.node == "n0"
