"""The markdown report of one run: the issue's targets first, then the detail."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

STORES = ("redis", "sqlite")
#: The issue's targets.
REST_RATE = 1000
REST_P99_MS = 50.0
#: Redis at 10^6 random customers, at REST_RATE (the second issue's targets).
REDIS_P99_MS = 15.0
REDIS_P999_MS = 30.0
#: The highest rate held (P99 < REST_P99_MS, 0 errors, every round), Redis.
KNEE_RATE = 3000
SATURATION_RATIO = 0.8
KAFKA_THROUGHPUT = 20_000
KAFKA_P99_MS = 50.0
COLD_START_S = 3.0
RSS_MB = 500.0
GC_P99_MS = 5.0
#: Seconds `bootstrap --synthetic 1000000` may take, per online store.
SYNTHETIC_LOAD_S = {"redis": 300.0, "sqlite": 900.0}


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, int) or (isinstance(x, float) and x >= 1000):
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "n/a"
    return f"{a / b:.2f}×"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median P99 (the lower middle of an even count);
    rounds without an answered request count as the slowest."""

    def p99(run: Mapping[str, Any]) -> float:
        return float((run.get("latency_ms") or {}).get("p99", math.inf))

    ordered = sorted(runs, key=p99)
    return ordered[(len(ordered) - 1) // 2]


def knee(store: Mapping[str, Any]) -> int | None:
    """The highest rate of the sweep held in every round (P99 budget, 0 errors,
    all sent), with every lower rate held too; None if not even the lowest."""
    held = None
    for row in sorted(store.get("rates", []), key=lambda r: r["rate"]):
        runs = (row.get("rounds") or {}).get("service") or [row.get("service")]
        if not all(rest_rate_ok(r) for r in runs):
            break
        held = row["rate"]
    return held


def _baseline_view(store: Mapping[str, Any]) -> dict[str, Any]:
    """`store` with the baseline's runs where the service's are (for `knee`)."""
    return {
        "rates": [
            {
                "rate": row["rate"],
                "service": row.get("baseline"),
                "rounds": {"service": (row.get("rounds") or {}).get("baseline") or []},
            }
            for row in store.get("rates", [])
        ]
    }


def _p(run: Mapping[str, Any] | None, q: str) -> float | None:
    return ((run or {}).get("latency_ms") or {}).get(q)


def _round_spread(row: Mapping[str, Any] | None, kind: str, q: str) -> str:
    runs = ((row or {}).get("rounds") or {}).get(kind) or []
    values = [v for v in (_p(r, q) for r in runs) if v is not None]
    return _spread(values) if values else _num(_p((row or {}).get(kind), q))


def _live_fmt(live: Mapping[str, Any]) -> str:
    """The highest rate held, and how the first rate not held failed."""
    text = "none" if live["held"] is None else f"{live['held']:,} msg/s"
    failed = [r for r in live["runs"] if not live_held(r)]
    if failed:
        r = failed[0]
        p99 = (r.get("latency_ms") or {}).get("p99")
        text += (
            f" ({r['rate']:,}: P99 {_num(p99)} ms, {r['missing']:,} lost, "
            f"{r.get('error_replies', 0):,} errors)"
        )
    return text


def _floor_fmt(floor: Mapping[str, Any]) -> str:
    """The echo consumers' P99 at each rate: the floor of the live latency."""
    if "error" in floor:
        return f"floor failed: {floor['error']}"
    runs = ", ".join(
        f"{_num((r.get('latency_ms') or {}).get('p99'))} ms at {r['rate']:,}"
        for r in floor["runs"]
    )
    return f"floor, {floor['processes']} echo consumer(s), no scoring: P99 {runs}"


def _floor_ratio(live: Mapping[str, Any], floor: Mapping[str, Any] | None) -> str:
    """The runners' P99 over the floor's, at the last rate the runners were tried."""
    if not floor or "error" in floor or not live["runs"]:
        return "n/a"
    last = live["runs"][-1]
    base = {r["rate"]: r for r in floor["runs"]}.get(last["rate"])
    ours = (last.get("latency_ms") or {}).get("p99")
    theirs = ((base or {}).get("latency_ms") or {}).get("p99")
    if not ours or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}× (P99 at {last['rate']:,})"


def _floor_as_live(kafka: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The floor's runs in the live table, named by their echo consumers."""
    floor = kafka.get("live_floor")
    if not floor or "error" in floor:
        return []
    return [{"runners": f"echo ×{floor['processes']}", "runs": floor["runs"]}]


def _rate_fmt(row: Mapping[str, Any], kind: str) -> str:
    """A rate's figure for one server: median round, range across rounds."""
    r = row.get(kind)
    if not r or "latency_ms" not in r:
        return "n/a"
    text = f"P99 {_round_spread(row, kind, 'p99')} ms"
    if _p(r, "p999") is not None:
        text += f", P99.9 {_round_spread(row, kind, 'p999')} ms"
    return f"{text}, {r['errors']} errors"


def _saturation_fmt(store: Mapping[str, Any], kind: str) -> str:
    """Saturated throughput and its P99, median and range across rounds."""
    rounds = store.get("saturation_rounds") or []
    tp = [r[kind]["ok_throughput"] for r in rounds if kind in r]
    p99 = [r[kind]["latency_ms"]["p99"] for r in rounds if kind in r]
    if not tp:
        sat = store.get("saturation", {}).get(kind, {})
        return f"{_num(sat.get('ok_throughput'))} req/s"
    return f"{_spread(tp, ' req/s')}, P99 {_spread(p99, ' ms')}"


def live_held(run: Mapping[str, Any]) -> bool:
    """A live-producer rate is held: P99 under budget, nothing lost, no error."""
    p99 = (run.get("latency_ms") or {}).get("p99")
    return bool(
        p99 is not None
        and p99 < KAFKA_P99_MS
        and run.get("missing") == 0
        and run.get("error_replies", 0) == 0
        and run.get("failed_sends", 0) == 0
    )


def _at_rate(store: Mapping[str, Any], rate: int) -> dict[str, Any] | None:
    for row in store.get("rates", []):
        if row["rate"] == rate:
            return dict(row)
    return None


def rest_rate_ok(run: Mapping[str, Any] | None) -> bool | None:
    if not run or "latency_ms" not in run:
        return None
    complete = run["sent"] >= 0.999 * run["scheduled"]
    return bool(
        run["latency_ms"]["p99"] < REST_P99_MS and run["errors"] == 0 and complete
    )


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per target: measured, baseline, ratio, goal, met."""
    rows: list[dict[str, Any]] = []
    sections = results.get("sections") or ()
    rest = results.get("rest") or {}
    setup = results.get("setup") or {}
    population = (
        f"random ids over {setup['customers']:,} customers"
        if "customers" in setup
        else "ids cycled over the 7,043 Telco customers"
    )
    for store in STORES:
        load = setup.get(f"synthetic_{store}")
        if load is None:
            continue
        rows.append(
            {
                "target": f"Setup {store}: bootstrap --synthetic {load['customers']:,}",
                "measured": f"{_num(load['seconds'])} s"
                if load["written"]
                else "n/a (already loaded: a reused workspace)",
                "baseline": "n/a",
                "ratio": "n/a",
                "goal": f"≤ {SYNTHETIC_LOAD_S[store]:.0f} s at 10^6",
                "met": None
                if not load["written"] or load["customers"] < 1_000_000
                else load["seconds"] <= SYNTHETIC_LOAD_S[store],
            }
        )
    for store in STORES:
        s = rest.get(store)
        if not s or "error" in s:
            if "rest" in sections:
                rows.append(_failed(f"REST {store}", s))
            continue
        at = _at_rate(s, REST_RATE) or {}
        svc, base = at.get("service"), at.get("baseline")
        redis = store == "redis"

        ok = rest_rate_ok(svc)
        if ok and redis:
            p999 = _p(svc, "p999")
            ok = (_p(svc, "p99") or math.inf) <= REDIS_P99_MS and (
                p999 is not None and p999 <= REDIS_P999_MS
            )
        rows.append(
            {
                "target": f"REST {store}: {REST_RATE:,} req/s constant, "
                f"{population} (median of rounds)",
                "measured": _rate_fmt(at, "service"),
                "baseline": _rate_fmt(at, "baseline"),
                "ratio": _ratio(_p(svc, "p99"), _p(base, "p99")) + " (P99)",
                "goal": f"P99 ≤ {REDIS_P99_MS:.0f} ms, P99.9 ≤ {REDIS_P999_MS:.0f} "
                "ms, 0 errors"
                if redis
                else f"P99 < {REST_P99_MS:.0f} ms, 0 errors",
                "met": ok,
            }
        )
        if any("rounds" in row for row in s.get("rates", [])):
            held = knee(s)
            rates = [row["rate"] for row in s["rates"]]
            rows.append(
                {
                    "target": f"REST {store}: knee (highest of "
                    f"{', '.join(f'{r:,}' for r in rates)} req/s held: P99 < "
                    f"{REST_P99_MS:.0f} ms, 0 errors, every round)",
                    "measured": "none" if held is None else f"{held:,} req/s",
                    "baseline": _num(knee(_baseline_view(s)), 0) + " req/s",
                    "ratio": "n/a",
                    "goal": f"≥ {KNEE_RATE:,} req/s" if redis else "report",
                    "met": (held is not None and held >= KNEE_RATE) if redis else None,
                }
            )
        sat = s.get("saturation", {})
        a = sat.get("service", {}).get("ok_throughput")
        b = sat.get("baseline", {}).get("ok_throughput")
        rows.append(
            {
                "target": f"REST {store}: saturated throughput (closed loop)",
                "measured": _saturation_fmt(s, "service"),
                "baseline": _saturation_fmt(s, "baseline"),
                "ratio": _ratio(a, b),
                "goal": f"≥ {SATURATION_RATIO}× baseline",
                "met": None if a is None or not b else a / b >= SATURATION_RATIO,
            }
        )
        gc = (s.get("service_counters") or {}).get("gc_at_budget_rate")
        if gc is not None:
            bound = gc.get("p99_le_ms")
            rows.append(
                {
                    "target": f"REST {store}: GC pauses at {REST_RATE:,} req/s "
                    "(P99, histogram bucket bound)",
                    "measured": "no pause"
                    if not gc["pauses"]
                    else f"P99 ≤ {_num(bound, 1)} ms ({gc['pauses']:,} pauses)",
                    "baseline": "n/a",
                    "ratio": "n/a",
                    "goal": f"P99 ≤ {GC_P99_MS:.0f} ms",
                    "met": not gc["pauses"]
                    or (bound is not None and bound <= GC_P99_MS),
                }
            )
        cs = s.get("cold_start_s", {})
        rows.append(
            {
                "target": f"REST {store}: cold start (start → /readyz 200, "
                "median of starts)",
                "measured": f"{_num(cs.get('service'), 2)} s",
                "baseline": f"{_num(cs.get('baseline'), 2)} s",
                "ratio": _ratio(cs.get("service"), cs.get("baseline")),
                "goal": f"< {COLD_START_S:.0f} s",
                "met": None
                if cs.get("service") is None
                else cs["service"] < COLD_START_S,
            }
        )
        rss = s.get("rss_after_load", {})
        a = (rss.get("service") or {}).get("worker_rss_mb_max")
        b = (rss.get("baseline") or {}).get("worker_rss_mb_max")
        rows.append(
            {
                "target": f"REST {store}: RSS per worker (after load)",
                "measured": f"{_num(a)} MB",
                "baseline": f"{_num(b)} MB",
                "ratio": _ratio(a, b),
                "goal": f"< {RSS_MB:.0f} MB",
                "met": None if a is None else a < RSS_MB,
            }
        )
    costs = results.get("costs")
    if "costs" in sections and not costs:
        rows.append(_failed("REST redis: option costs", costs))
    rows += cost_rows(costs)
    k = results.get("kafka") or {}
    if "kafka" in sections and (not k or "error" in k):
        rows.append(_failed("Kafka", k))
    if k and "error" not in k:
        t = k.get("throughput", {})
        tp = t.get("msgs_per_s")
        runs = k.get("throughput_runs") or [t]
        one = next((r for r in runs if r.get("runners") == 1 and r is not t), None)
        one_tp = None if one is None else one.get("msgs_per_s")
        rows.append(
            {
                "target": "Kafka: drain throughput (requests published first) "
                f"({t.get('partitions', 'n/a')} partitions, "
                f"{t.get('runners', 1)} runner process(es))",
                "measured": f"{_num(tp)} msg/s",
                "baseline": "n/a"
                if one_tp is None
                else f"1 runner: {_num(one_tp)} msg/s",
                "ratio": "n/a" if one_tp is None else _ratio(tp, one_tp),
                "goal": f"≥ {KAFKA_THROUGHPUT:,} msg/s",
                "met": None if tp is None else tp >= KAFKA_THROUGHPUT,
            }
        )
        lat = k.get("latency", {})
        p99 = (lat.get("latency_ms") or {}).get("p99")
        other = next(
            (
                r
                for r in k.get("latency_runs") or []
                if r["runners"] != k.get("latency_runners")
            ),
            None,
        )
        one_p99 = ((other or {}).get("latency", {}).get("latency_ms") or {}).get("p99")
        rows.append(
            {
                "target": f"Kafka: request→reply at {lat.get('rate', 0):,} msg/s "
                f"({k.get('latency_runners', 1)} runner process(es))",
                "measured": f"P99 {_num(p99)} ms, {lat.get('missing', 'n/a')} missing",
                "baseline": f"{other['runners']} runners: P99 {_num(one_p99)} ms"
                if other is not None and one_p99 is not None
                else "n/a",
                "ratio": _ratio(p99, one_p99) if one_p99 is not None else "n/a",
                "goal": f"P99 < {KAFKA_P99_MS:.0f} ms",
                "met": None
                if p99 is None
                else p99 < KAFKA_P99_MS and not lat["missing"],
            }
        )
        live = {run["runners"]: run for run in k.get("live_runs") or []}
        floor = k.get("live_floor")
        if live:
            most = live[max(live)]
            fewest = live[min(live)] if len(live) > 1 else None
            rates = [run["rate"] for run in most["runs"]]
            baseline = (
                []
                if fewest is None
                else [f"{fewest['runners']} runner: {_live_fmt(fewest)}"]
            )
            if floor:
                baseline.append(_floor_fmt(floor))
            rows.append(
                {
                    "target": f"Kafka: live producer, highest rate held for "
                    f"{_num(most['runs'][0]['duration_s'], 0)} s (P99 < "
                    f"{KAFKA_P99_MS:.0f} ms, 0 lost, 0 errors; tried "
                    f"{', '.join(f'{r:,}' for r in rates)} msg/s), "
                    f"{most['runners']} runner process(es)",
                    "measured": _live_fmt(most),
                    "baseline": "; ".join(baseline) or "n/a",
                    "ratio": _floor_ratio(most, floor),
                    "goal": f"≥ {KAFKA_THROUGHPUT:,} msg/s",
                    "met": (most["held"] or 0) >= KAFKA_THROUGHPUT,
                }
            )
        rss_runs = k.get("runner_rss") or []
        if isinstance(rss_runs, dict):  # results written before several runners
            rss_runs = [rss_runs]
        sizes = [r.get("worker_rss_mb_max") for r in rss_runs]
        rss = max((x for x in sizes if x is not None), default=None)
        rows.append(
            {
                "target": "Kafka: RSS per standalone runner (after load)",
                "measured": f"{_num(rss)} MB",
                "baseline": "n/a",
                "ratio": "n/a",
                "goal": f"< {RSS_MB:.0f} MB",
                "met": None if rss is None else rss < RSS_MB,
            }
        )
    return rows


def provenance(results: Mapping[str, Any]) -> str:
    """Which code, on what machine, with which versions the figures are of."""
    git = results.get("git") or {}
    commit = git.get("commit")
    state = "unknown commit" if not commit else f"commit `{commit[:12]}`"
    if git.get("dirty"):
        state += " **with uncommitted changes**"
    versions = results.get("versions") or {}
    names = ("python", "bentoml", "feast", "xgboost", "aiokafka", "kafka")
    listed = ", ".join(f"{n} {versions[n]}" for n in names if n in versions)
    machine = results.get("machine") or {}
    return (
        f"Measured at {state}; {machine.get('cpu_model') or 'CPU model unknown'}, "
        f"{machine.get('cpus')} CPUs; {listed}."
    )


def _failed(what: str, section: Mapping[str, Any] | None) -> dict[str, Any]:
    """A section that crashed or never ran: not met, with the reason."""
    reason = (section or {}).get("error") or "not run"
    return {
        "target": f"{what}: every target of the section",
        "measured": f"failed: {reason}" if section else "not run",
        "baseline": "n/a",
        "ratio": "n/a",
        "goal": "the section runs",
        "met": False,
    }


def _spread(values: list[float], unit: str = "", digits: int = 1) -> str:
    """The median, and the range across rounds when there are several."""
    mid = _num(statistics.median(values), digits)
    if len(values) < 2:
        return f"{mid}{unit}"
    return f"{mid}{unit} ({_num(min(values), digits)}–{_num(max(values), digits)})"


def _holds_rest_budget(variant: Mapping[str, Any]) -> bool:
    """Every round under the REST P99 budget, no error, every request sent."""
    return bool(
        max(variant["p99_ms"]) < REST_P99_MS
        and variant["errors"] == 0
        and variant["complete"]
    )


def cost_rows(costs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The request options' costs (bench.run.rest_costs) against plain requests."""
    if not costs:
        return []
    if "error" in costs:
        return [
            {
                "target": "REST redis: explain=3 and auth costs",
                "measured": f"failed: {costs['error']}",
                "baseline": "",
                "ratio": "n/a",
                "goal": f"P99 < {REST_P99_MS:.0f} ms",
                "met": False,
            }
        ]
    rate = costs["rate"]
    summary = costs["summary"]
    plain = summary["plain"]
    base = f"plain: P99 {_spread(plain['p99_ms'], ' ms')}"
    rows = []
    explain = summary["explain"]
    rows.append(
        {
            "target": f"REST redis: `explain: 3` at {rate:,} req/s",
            "measured": f"P99 {_spread(explain['p99_ms'], ' ms')}, "
            f"{explain['errors']} errors",
            "baseline": base,
            "ratio": _spread(explain["p99_ratio"], "×", 2) + " (P99)",
            "goal": f"P99 < {REST_P99_MS:.0f} ms, 0 errors",
            "met": _holds_rest_budget(explain),
        }
    )
    auth = summary["auth"]
    rows.append(
        {
            "target": f"REST redis: bearer-token auth at {rate:,} req/s",
            "measured": f"P99 {_spread(auth['p99_ms'], ' ms')}; added P50 "
            f"{_spread(auth['added_p50_ms'], ' ms', 2)}, P99 "
            f"{_spread(auth['added_p99_ms'], ' ms', 2)}",
            "baseline": base,
            "ratio": _spread(auth["p99_ratio"], "×", 2) + " (P99)",
            "goal": f"P99 < {REST_P99_MS:.0f} ms, 0 errors",
            "met": _holds_rest_budget(auth),
        }
    )
    api = summary.get("api_path")
    if api is not None:
        cpu = [c for c in api["cpu_ms_per_request"] if c is not None]
        plain_cpu = [c for c in plain["cpu_ms_per_request"] if c is not None]
        rows.append(
            {
                "target": f"REST redis: fast path off (API handler) at {rate:,} req/s",
                "measured": f"P99 {_spread(api['p99_ms'], ' ms')}; server CPU "
                f"{_spread(cpu, ' ms', 2)}/request"
                if cpu
                else f"P99 {_spread(api['p99_ms'], ' ms')}",
                "baseline": f"fast path: CPU {_spread(plain_cpu, ' ms', 2)}/request"
                if plain_cpu
                else base,
                "ratio": _spread(api["p99_ratio"], "×", 2) + " (P99)",
                "goal": "report: keep the fast path only if it pays",
                "met": None,
            }
        )
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def targets_table(results: Mapping[str, Any]) -> list[str]:
    """The targets of a run as a markdown table, one line per row."""
    return _table(
        ["target", "PredictFlow", "baseline", "ratio", "goal", "met"],
        [
            [
                r["target"],
                r["measured"],
                r["baseline"],
                r["ratio"],
                r["goal"],
                _met(r["met"]),
            ]
            for r in results.get("targets", [])
        ],
    )


#: The README's generated block: `python -m bench.report README.md` rewrites it.
README_BEGIN = "<!-- bench:targets (python -m bench.report README.md) -->"
README_END = "<!-- /bench:targets -->"


def readme_block(results: Mapping[str, Any]) -> str:
    """What the README shows of a run: where it came from, and its targets."""
    git = results.get("git") or {}
    commit = str(git.get("commit") or "unknown")[:7]
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    return "\n".join(
        [
            README_BEGIN,
            f"Run `{results['run_id']}` ({results['mode']}) at commit "
            f"`{commit}`{dirty}: bench/results/{results['run_id']}.md",
            "",
            *targets_table(results),
            README_END,
        ]
    )


def rewrite_readme(text: str, results: Mapping[str, Any]) -> str:
    """`text` with its generated block replaced by the one of `results`."""
    start = text.index(README_BEGIN)
    end = text.index(README_END, start) + len(README_END)
    return text[:start] + readme_block(results) + text[end:]


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.report README.md`: the table from results/latest.json."""
    import json
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    readme = Path(args[0] if args else "README.md")
    latest = Path(__file__).resolve().parent / "results" / "latest.json"
    results = json.loads(latest.read_text())
    readme.write_text(rewrite_readme(readme.read_text(), results))
    return 0


def markdown(results: Mapping[str, Any]) -> str:
    plan = results["plan"]
    workers = results["machine"].get("workers", 1)
    lines = [
        f"# PredictFlow benchmark {results['run_id']} ({results['mode']})",
        "",
        f"{results['machine']['cpus']} CPUs, load average at start "
        f"{results['machine']['loadavg_start']}; wall time "
        f"{_num(results.get('wall_s'))} s. PredictFlow = `bentoml serve "
        f"service:ChurnPredictor` ({workers} workers); baseline = "
        f"`bench/baseline_app.py` (FastAPI on uvicorn, {workers} workers, same "
        "Scorer, micro-batcher, features and model). Generator and servers "
        "share the machine.",
        "",
        provenance(results),
    ]
    if results["mode"] == "quick":
        lines += [
            "",
            f"**Quick run** ({plan['rate_s']} s per rate): a smoke test; the "
            "targets are judged on the full run.",
        ]
    lines += ["", "## Targets", ""]
    lines += targets_table(results)
    rest = results.get("rest") or {}
    check = rest.get("generator_check")
    if check:
        lines += [
            "",
            "## Load generator check",
            "",
            f"vegeta at {check['rate']:,} req/s for {check['duration_s']} s against a "
            f"static aiohttp target: sent {_num(check['send_rate'])} req/s, "
            f"{check['errors']} errors, lag behind schedule P50 "
            f"{_num(check['generator_lag_ms']['p50'], 2)} / P99 "
            f"{_num(check['generator_lag_ms']['p99'], 2)} / max "
            f"{_num(check['generator_lag_ms']['max'], 2)} ms, generator CPU "
            f"{_num(check['generator_cpu_pct'])} % of a core; latency P50/P99 "
            f"{_num(check['latency_ms']['p50'], 2)} / "
            f"{_num(check['latency_ms']['p99'], 2)} ms (the machine's floor).",
        ]
    for store in STORES:
        s = rest.get(store)
        if not s:
            continue
        lines += ["", f"## REST, Feast {store}", ""]
        if "error" in s:
            lines.append(f"Failed: `{s['error']}`")
            continue
        rows = []
        for row in s["rates"]:
            for kind in ("service", "baseline"):
                runs = (row.get("rounds") or {}).get(kind) or [row[kind]]
                for r in runs:
                    if "latency_ms" not in r:
                        continue
                    rows.append(
                        [
                            f"{row['rate']:,}",
                            kind,
                            str(r.get("round", 1)),
                            _num(r["send_rate"]),
                            _num(r["latency_ms"]["p50"], 2),
                            _num(r["latency_ms"]["p99"], 2),
                            _num(r["latency_ms"].get("p999"), 2),
                            _num(r["latency_ms"]["max"], 2),
                            str(r["errors"]),
                            str(r["not_sent"]),
                            _num(r.get("server_cpu_pct")),
                            _num(r.get("server_cpu_ms_per_request"), 2),
                            _num(r["generator_cpu_pct"]),
                            _num(r["generator_lag_ms"]["p99"], 2),
                            _num((r.get("machine") or {}).get("steal_pct")),
                        ]
                    )
        lines += [
            f"Open-loop sweep, {plan['rate_s']} s per run, "
            f"{plan.get('rate_rounds', 1)} round(s) per rate (vegeta; latency "
            "from the scheduled send time; ids drawn at random from every "
            "customer in the store, the same draw for both servers of a round; "
            "a rate's figure is its median round):",
            "",
        ]
        lines += _table(
            [
                "req/s",
                "server",
                "round",
                "sent/s",
                "P50 ms",
                "P99 ms",
                "P99.9 ms",
                "max ms",
                "errors",
                "not sent",
                "server CPU %",
                "CPU ms/req",
                "gen CPU %",
                "gen lag P99 ms",
                "steal %",
            ],
            rows,
        )
        sat_rows = []
        for i, rnd in enumerate(s.get("saturation_rounds") or [s["saturation"]]):
            for kind in ("service", "baseline"):
                r = rnd.get(kind)
                if not r or "latency_ms" not in r:
                    continue
                sat_rows.append(
                    [
                        f"{kind} (round {i + 1})",
                        _num(r["ok_throughput"]),
                        _num(r["latency_ms"]["p50"], 2),
                        _num(r["latency_ms"]["p99"], 2),
                        _num(r["latency_ms"]["max"], 2),
                        str(r["errors"]),
                        _num(r.get("server_cpu_pct")),
                        _num(r.get("server_cpu_ms_per_request"), 2),
                        _num(r["generator_cpu_pct"]),
                        _num((r.get("machine") or {}).get("steal_pct")),
                    ]
                )
        lines += [
            "",
            f"Saturation, {plan['saturation_s']} s per round (wrk, 1 thread, "
            f"{plan['connections']} connections); the targets use the mean of "
            "the rounds:",
            "",
        ]
        lines += _table(
            [
                "server",
                "req/s",
                "P50 ms",
                "P99 ms",
                "max ms",
                "errors",
                "server CPU %",
                "CPU ms/req",
                "gen CPU %",
                "steal %",
            ],
            sat_rows,
        )
        counters = s.get("service_counters")
        if counters:
            memo = ", ".join(
                f"{name} {_num(100 * m['hit_ratio'])} % of {m['lookups']:,}"
                for name, m in sorted(counters["memo"].items())
                if m["hit_ratio"] is not None
            )
            gc = counters.get("gc_at_budget_rate") or {}
            lines += [
                "",
                "The service's own counters over the sweep: memo hits "
                f"{memo or 'n/a'} (each memo holds at most 65,536 entries); "
                f"mean micro-batch {_num(counters['mean_batch_size'], 2)} requests; "
                f"GC at {REST_RATE:,} req/s: {gc.get('pauses', 0):,} pauses, "
                f"share within each bucket (ms) {gc.get('within_ms') or 'n/a'}.",
            ]
    k = results.get("kafka")
    if k:
        lines += ["", "## Kafka (standalone runner, Feast redis)", ""]
        if "error" in k:
            lines.append(f"Failed: `{k['error']}`")
        else:
            lat = k["latency"]
            lines += [
                f"- Throughput with {t['runners']} runner process(es): "
                f"{t['messages']:,} requests published first "
                f"({_num(t['publish_msgs_per_s'])} msg/s), then the runners "
                f"started; {_num(t['msgs_per_s'])} msg/s from the moment every "
                f"runner owned its partitions ({_num(t['startup_s'], 2)} s after "
                f"start; {t['committed_before_ready']:,} requests committed "
                f"before it are not counted) to the last committed offset "
                f"({_num(t['seconds'], 2)} s); runner CPU "
                f"{_num(t['runner_cpu_pct'])} % (summed), broker CPU "
                f"{_num(t.get('broker_cpu_pct'))} %."
                for t in k.get("throughput_runs") or [k["throughput"]]
                if "committed_before_ready" in t
            ]
            runs = k.get("latency_runs") or [
                {
                    "runners": k.get("latency_runners", 1),
                    "latency": lat,
                    "runner_cpu_pct": k.get("latency_runner_cpu_pct"),
                    "broker_cpu_pct": k.get("latency_broker_cpu_pct"),
                }
            ]
            lines += [
                f"- Latency at {r['latency']['rate']:,} msg/s for "
                f"{r['latency']['duration_s']} s with {r['runners']} runner "
                f"process(es) (separate producer/consumer process): P50 "
                f"{_num(r['latency']['latency_ms']['p50'], 2)} / P99 "
                f"{_num(r['latency']['latency_ms']['p99'], 2)} / max "
                f"{_num(r['latency']['latency_ms']['max'], 2)} ms from the "
                f"scheduled send (P99 "
                f"{_num(r['latency']['latency_from_send_ms']['p99'], 2)} ms from "
                f"the actual send); {r['latency']['replied']:,} of "
                f"{r['latency']['sent']:,} replied, "
                f"{r['latency']['duplicates']} duplicates; producer lag P99 "
                f"{_num(r['latency']['send_lag_ms']['p99'], 2)} ms; runner CPU "
                f"{_num(r.get('runner_cpu_pct'))} % (summed), broker CPU "
                f"{_num(r.get('broker_cpu_pct'))} %, client CPU "
                f"{_num(r['latency']['client_cpu_pct'])} %."
                for r in runs
            ]
            live_rows = [
                [
                    str(live["runners"]),
                    f"{r['rate']:,}",
                    _num(r.get("send_rate")),
                    _num((r.get("latency_ms") or {}).get("p50"), 2),
                    _num((r.get("latency_ms") or {}).get("p99"), 2),
                    _num((r.get("latency_ms") or {}).get("max"), 2),
                    f"{r['replied']:,}",
                    f"{r['missing']:,}",
                    str(r["duplicates"]),
                    str(r.get("error_replies", "n/a")),
                    _num(r.get("runner_cpu_pct")),
                    _num(r.get("broker_cpu_pct")),
                    _num(r.get("client_cpu_pct")),
                    "yes" if live_held(r) else "**no**",
                ]
                for live in [*(k.get("live_runs") or []), *_floor_as_live(k)]
                for r in live["runs"]
            ]
            if live_rows:
                lines += [
                    "",
                    "Live producer (a separate process publishing at a fixed "
                    "rate while the runners consume; latency from the scheduled "
                    "send; every request accounted for by its correlation id; "
                    "rates tried in order until one is not held; `echo` rows: "
                    "the floor, consumers that answer at once without scoring, "
                    "at the rates the runners were tried):",
                    "",
                ]
                lines += _table(
                    [
                        "runners",
                        "msg/s",
                        "sent/s",
                        "P50 ms",
                        "P99 ms",
                        "max ms",
                        "replied",
                        "lost",
                        "duplicates",
                        "error replies",
                        "runner CPU %",
                        "broker CPU %",
                        "client CPU %",
                        "held",
                    ],
                    live_rows,
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
