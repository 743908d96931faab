"""The option-costs arithmetic of the bench (bench.run.cost_summary, report rows)."""

from __future__ import annotations

from typing import Any

from bench.report import cost_rows
from bench.run import cost_summary


def _run(p50: float, p99: float, errors: int = 0, cpu: float = 1.0) -> dict[str, Any]:
    return {
        "latency_ms": {"p50": p50, "p99": p99},
        "errors": errors,
        "sent": 30_000,
        "scheduled": 30_000,
        "server_cpu_ms_per_request": cpu,
    }


def test_each_variant_is_compared_with_plain_of_the_same_round() -> None:
    rounds = [
        {"plain": _run(3, 10), "explain": _run(5, 20), "auth": _run(3.5, 11)},
        {"plain": _run(4, 20), "explain": _run(6, 30), "auth": _run(4.5, 19)},
    ]
    summary = cost_summary(rounds)["summary"]
    assert summary["explain"]["added_p99_ms"] == [10, 10]
    assert summary["explain"]["p99_ratio"] == [2.0, 1.5]
    assert summary["auth"]["added_p50_ms"] == [0.5, 0.5]
    assert summary["auth"]["added_p99_ms"] == [1, -1]
    assert "p99_ratio" not in summary["plain"]
    rows = cost_rows({"rate": 1000, **cost_summary(rounds)})
    explain, auth = rows
    assert explain["met"] is True and auth["met"] is True
    assert explain["measured"].startswith("P99 25.0 ms (20–30), 0 errors")


def test_an_error_or_a_slow_round_is_not_met() -> None:
    (failed,) = cost_rows({"error": "RuntimeError: the server exited (1)"})
    assert failed["met"] is False and "RuntimeError" in failed["measured"]
    rounds = [
        {"plain": _run(3, 10), "explain": _run(5, 60), "auth": _run(3, 10, errors=2)}
    ]
    explain, auth = cost_rows({"rate": 1000, **cost_summary(rounds)})
    assert explain["met"] is False  # P99 over 50 ms in one round
    assert auth["met"] is False  # errors


def test_a_section_that_crashed_or_never_ran_is_not_met() -> None:
    from bench.report import markdown, targets

    results: dict[str, Any] = {
        "sections": ["rest", "costs", "kafka"],
        "rest": {"redis": {"error": "TimeoutError: /readyz not 200 after 180s"}},
        "kafka": {"error": "CalledProcessError: scripts/kafka.sh up"},
    }
    rows = targets(results)
    failed = {r["target"]: r for r in rows if r["met"] is False}
    assert (
        "TimeoutError" in failed["REST redis: every target of the section"]["measured"]
    )
    assert failed["REST sqlite: every target of the section"]["measured"] == "not run"
    assert failed["REST redis: option costs: every target of the section"]
    assert "kafka.sh" in failed["Kafka: every target of the section"]["measured"]
    # A run of one section is not judged on the others.
    assert targets({"sections": ["costs"], "costs": {"error": "x"}})[0]["met"] is False
    assert targets({"sections": ["kafka"], "kafka": {"error": "x"}})[0]["target"] == (
        "Kafka: every target of the section"
    )
    page = markdown(
        {
            **results,
            "run_id": "t",
            "mode": "full",
            "plan": {"rate_s": 30},
            "machine": {"cpus": 2, "loadavg_start": [0, 0, 0]},
            "git": {"commit": "a" * 40, "dirty": True},
            "versions": {"python": "3.11.2", "kafka": "4.4.0"},
            "targets": rows,
        }
    )
    assert "commit `aaaaaaaaaaaa` **with uncommitted changes**" in page
    assert "**not met**" in page


def test_the_readme_table_is_the_latest_run() -> None:
    import json
    from pathlib import Path

    from bench.report import README_BEGIN, README_END, readme_block, rewrite_readme

    root = Path(__file__).resolve().parents[2]
    latest = json.loads((root / "bench" / "results" / "latest.json").read_text())
    readme = (root / "README.md").read_text()
    assert readme_block(latest) in readme, (
        "stale README table: run python -m bench.report README.md"
    )
    assert latest["git"]["dirty"] is False, "publish a run of a clean tree"
    # Rewriting replaces the block, and only the block.
    other = {**latest, "run_id": "X", "targets": []}
    text = f"before\n{README_BEGIN}\nold\n{README_END}\nafter\n"
    assert rewrite_readme(text, other) == f"before\n{readme_block(other)}\nafter\n"
