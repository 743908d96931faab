"""The benchmark's own accounting: median rounds, the knee, server counters, draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import loadgen, report, scrape
from bench.customers import Customers


def run(p99: float, errors: int = 0, sent: int = 1000) -> dict[str, Any]:
    return {
        "latency_ms": {"p50": p99 / 2, "p99": p99, "p999": p99 * 2, "max": p99 * 3},
        "errors": errors,
        "sent": sent,
        "scheduled": 1000,
    }


def test_a_rates_figure_is_its_median_round() -> None:
    rounds = [run(30), run(10), run(20)]
    assert report.median_run(rounds)["latency_ms"]["p99"] == 20
    # A round that answered nothing counts as the slowest, not the best.
    assert report.median_run([{"sent": 0}, run(10)])["latency_ms"]["p99"] == 10
    assert report.median_run([{"sent": 0}, run(10), {"sent": 0}]) == {"sent": 0}


def test_the_knee_is_the_highest_rate_held_in_every_round() -> None:
    def row(rate: int, *runs: dict[str, Any]) -> dict[str, Any]:
        return {"rate": rate, "rounds": {"service": list(runs)}, "service": runs[0]}

    store = {
        "rates": [
            row(500, run(5), run(6), run(5)),
            row(1000, run(9), run(12), run(8)),
            # One round over budget: not held, whatever the median says.
            row(2000, run(20), run(70), run(25)),
            row(3000, run(30), run(31), run(29)),
        ]
    }
    assert report.knee(store) == 1000
    store["rates"][2] = row(2000, run(20), run(21), run(22, errors=1))
    assert report.knee(store) == 1000
    store["rates"][2] = row(2000, run(20), run(21), run(22, sent=900))
    assert report.knee(store) == 1000
    store["rates"][2] = row(2000, run(20), run(21), run(22))
    assert report.knee(store) == 3000
    store["rates"][0] = row(500, run(60), run(6), run(5))
    assert report.knee(store) is None


EXPOSITION = """# HELP predictflow_memo_lookups_total x
# TYPE predictflow_memo_lookups_total counter
predictflow_memo_lookups_total{memo="redis_key",result="hit"} 30.0
predictflow_memo_lookups_total{memo="redis_key",result="miss"} 70.0
predictflow_batch_size_sum{source="rest"} 400.0
predictflow_batch_size_count{source="rest"} 100.0
predictflow_batch_size_sum{source="kafka"} 9.0
predictflow_batch_size_count{source="kafka"} 1.0
predictflow_gc_pause_seconds_bucket{generation="0",le="0.001"} 90.0
predictflow_gc_pause_seconds_bucket{generation="0",le="0.005"} 98.0
predictflow_gc_pause_seconds_bucket{generation="0",le="0.01"} 100.0
predictflow_gc_pause_seconds_bucket{generation="0",le="+Inf"} 100.0
predictflow_gc_pause_seconds_bucket{generation="2",le="0.001"} 0.0
predictflow_gc_pause_seconds_bucket{generation="2",le="0.005"} 1.0
predictflow_gc_pause_seconds_bucket{generation="2",le="0.01"} 1.0
predictflow_gc_pause_seconds_bucket{generation="2",le="+Inf"} 1.0
"""


def test_server_counters_are_read_as_differences_of_two_scrapes() -> None:
    after = scrape.parse(EXPOSITION)
    before = {k: v / 2 for k, v in after.items()}
    d = scrape.delta(after, before)
    counters = scrape.summary(d)
    assert counters["memo"] == {"redis_key": {"lookups": 50, "hit_ratio": 0.3}}
    assert counters["mean_batch_size"] == 4.0
    gc = counters["gc"]
    # 99 % of 50.5 pauses first reached at the 10 ms bucket (49.5 at 5 ms).
    assert gc["pauses"] == 50
    assert gc["p99_le_ms"] == 10.0
    assert gc["within_ms"]["5"] == round(49.5 / 50.5, 4)
    assert scrape.gc_pauses({})["p99_le_ms"] is None


def test_draws_are_uniform_seeded_and_cover_the_synthetic_ids(tmp_path: Path) -> None:
    listed = tmp_path / "synthetic_ids.txt"
    listed.write_text("".join(f"SYN-{i}\n" for i in range(9_000)))
    customers = Customers.of([f"T{i}" for i in range(1_000)], listed)
    assert len(customers.ids) == 10_000
    a = customers.draw(20_000, seed=1)
    assert a == customers.draw(20_000, seed=1)
    assert a != customers.draw(20_000, seed=2)
    synthetic = sum(cid.startswith("SYN-") for cid in a) / len(a)
    assert 0.88 < synthetic < 0.92
    assert len(set(a)) > 8_000


def live(rate: int, p99: float, missing: int = 0, errors: int = 0) -> dict[str, Any]:
    return {
        "rate": rate,
        "duration_s": 60,
        "latency_ms": {"p50": 1.0, "p99": p99, "max": p99},
        "missing": missing,
        "replied": rate * 60 - missing,
        "duplicates": 0,
        "error_replies": errors,
        "failed_sends": 0,
    }


def test_a_live_rate_is_held_only_with_every_request_answered_in_time() -> None:
    assert report.live_held(live(5_000, 20))
    assert not report.live_held(live(5_000, 60))
    assert not report.live_held(live(5_000, 20, missing=1))
    assert not report.live_held(live(5_000, 20, errors=1))
    assert not report.live_held({"rate": 5_000, "latency_ms": None, "missing": 300})


def test_the_live_target_reads_the_most_runners_and_names_the_failure() -> None:
    results = {
        "sections": ["kafka"],
        "kafka": {
            "throughput": {"msgs_per_s": 21_000, "runners": 2},
            "latency": {"rate": 1000, "latency_ms": {"p99": 20}, "missing": 0},
            "live_runs": [
                {
                    "runners": 1,
                    "held": 5_000,
                    "runs": [live(5_000, 9), live(10_000, 80)],
                },
                {
                    "runners": 2,
                    "held": 10_000,
                    "runs": [live(5_000, 8), live(10_000, 12), live(20_000, 30, 7)],
                },
            ],
        },
    }
    row = next(r for r in report.targets(results) if "live producer" in r["target"])
    assert row["met"] is False
    assert row["measured"].startswith("10,000 msg/s (20,000: P99 30 ms, 7 lost")
    assert row["baseline"].startswith("1 runner: 5,000 msg/s")
    assert "2 runner" in row["target"]


def test_the_live_target_is_compared_with_the_echo_floor_at_its_last_rate() -> None:
    results = {
        "sections": ["kafka"],
        "kafka": {
            "live_runs": [
                {
                    "runners": 2,
                    "held": 5_000,
                    "runs": [live(5_000, 20), live(10_000, 60)],
                }
            ],
            "live_floor": {
                "processes": 2,
                "runs": [live(5_000, 10), live(10_000, 30)],
            },
        },
    }
    row = next(r for r in report.targets(results) if "live producer" in r["target"])
    assert row["ratio"] == "2.00× (P99 at 10,000)"
    assert row["baseline"] == (
        "floor, 2 echo consumer(s), no scoring: P99 10 ms at 5,000, 30 ms at 10,000"
    )
    # A floor that crashed is named, and leaves the runners' row standing.
    results["kafka"]["live_floor"] = {"error": "RuntimeError: echo exited"}
    row = next(r for r in report.targets(results) if "live producer" in r["target"])
    assert (row["ratio"], row["baseline"]) == (
        "n/a",
        "floor failed: RuntimeError: echo exited",
    )
    assert row["measured"].startswith("5,000 msg/s")
    results["kafka"].pop("live_floor")
    row = next(r for r in report.targets(results) if "live producer" in r["target"])
    assert (row["ratio"], row["baseline"]) == ("n/a", "n/a")


def test_failed_requests_are_grouped_by_cause_not_by_connection() -> None:
    rows = [
        # timestamp, code, latency, bytes out, bytes in, error, body, attack, seq
        f'{1_000_000_000 + i},0,1000,0,0,"Post ""http://127.0.0.1:4001/predict"": '
        f"read tcp 127.0.0.1:{50000 + i}->127.0.0.1:4001: read: connection reset "
        f'by peer",,,{i}'
        for i in range(3)
    ]
    rows.append("1000000003,503,1000,0,0,503 Service Unavailable,,,3")
    rows.append("1000000004,200,1000,0,0,,,,4")
    summary = loadgen.summarize("\n".join(rows), rate=5, duration_s=1)
    assert summary["errors"] == 4 and summary["ok"] == 1
    assert summary["error_kinds"] == {
        '0 Post "http://<addr>/predict": read tcp <addr>-><addr>: read: '
        "connection reset by peer": 3,
        "503 503 Service Unavailable": 1,
    }
