"""`make bench`: start everything, drive load from this machine, stop, report.

    python -m bench.run            # the full run (~40 min here, 10 loading the stores)
    python -m bench.run --quick    # a smoke run (~5 min)
    python -m bench.run --only rest|costs|kafka

Writes bench/results/<UTC timestamp>.json (every figure), <timestamp>.md and
latest.md (the table), and prints the table. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import kafka_bench, loadgen, report, scrape
from bench.customers import Customers
from bench.procs import (
    CpuMeter,
    page_cache_share,
    rss_mb,
    vmstat,
    wait_idle,
    wait_machine_quiet,
)
from devtools.processes import (
    KEEP_ALIVE_S,
    ROOT,
    BentoServer,
    ConsumerProcess,
    KafkaBroker,
    RedisServer,
    Workspace,
    free_port,
    stop_group,
    wait_for,
)
from devtools.topics import Topics
from predictflow.data import load_telco

RESULTS = Path(__file__).resolve().parent / "results"
#: What a run measures, in order (`--only` picks one).
SECTIONS = ("rest", "costs", "kafka")
READY_TIMEOUT_S = 180
#: Worker processes of both servers: one per core of this 2-core machine.
WORKERS = 2
#: Starts per server for the cold-start figure (their median).
COLD_STARTS = 3


@dataclass(frozen=True, kw_only=True)
class Plan:
    rates: tuple[int, ...]
    rate_s: float
    warmup_s: float
    saturation_s: float
    saturation_rounds: int
    connections: int
    check_s: float
    kafka_messages: int
    kafka_rate: int
    kafka_latency_s: float
    #: Standalone runners (one process each) measured, in order; the last is
    #: the deployment the targets are read on: one runner per core.
    kafka_runners: tuple[int, ...]
    #: Requests put through the broker and runners first, not measured: a
    #: fresh broker's JIT compiles its hot paths for the first minute or so,
    #: on the cores the runners need (a broker in service is long warm).
    kafka_warmup: int
    #: Seconds of the constant-rate client before each latency run, not
    #: measured: its one-record produce requests are a path of their own,
    #: which a fresh broker took 30-40 s to compile (broker CPU at 1,000
    #: msg/s fell from 105 % to 45 %, P99 from 101 ms to 26-31 ms).
    kafka_latency_warmup_s: float
    #: Rounds of the request-option costs (auth, explain), each variant once
    #: per round in a rotating order; the spread across rounds is reported.
    cost_rounds: int = 3
    #: Live producer: rates (msg/s) tried in order while the runners consume,
    #: each for `kafka_live_s`, until one is not held; producer batching.
    kafka_live_rates: tuple[int, ...] = (5_000, 10_000, 20_000, 30_000)
    kafka_live_s: float = 60
    kafka_live_linger_ms: int = 5
    #: Synthetic customers loaded beside the Telco ones (`bootstrap
    #: --synthetic`); every load draws its ids from all of them at random.
    synthetic: int = 1_000_000
    #: Rounds of the open-loop sweep over `rates`; the figure of a rate is its
    #: median round, the spread across rounds is reported.
    rate_rounds: int = 3


FULL = Plan(
    rates=(500, 1000, 2000, 3000),
    rate_s=15,
    warmup_s=5,
    saturation_s=20,
    saturation_rounds=3,
    connections=32,
    check_s=10,
    kafka_messages=300_000,
    kafka_rate=1000,
    kafka_latency_s=30,
    kafka_runners=(1, 2),
    kafka_warmup=150_000,
    kafka_latency_warmup_s=30,
    cost_rounds=3,
    synthetic=1_000_000,
    rate_rounds=3,
)
QUICK = replace(
    FULL,
    rates=(1000, 3000),
    rate_s=5,
    warmup_s=2,
    saturation_s=5,
    saturation_rounds=1,
    check_s=5,
    kafka_messages=100_000,
    kafka_latency_s=5,
    kafka_warmup=60_000,
    kafka_latency_warmup_s=15,
    cost_rounds=1,
    synthetic=50_000,
    rate_rounds=1,
    kafka_live_rates=(5_000, 20_000),
    kafka_live_s=10,
)


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- servers -----------------------------------------------------------------


class Server:
    """A server under test: its URL, its root pid, and how it stops."""

    def __init__(self, url: str, pid: int, stop: Callable[[], None]) -> None:
        self.url = url
        self.pid = pid
        self.stop = stop


class Baseline:
    """`uvicorn bench.baseline_app:app --workers WORKERS` on a free port."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.baseline_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(WORKERS),
                # As `bentoml serve` is run (devtools.processes.BentoServer).
                "--timeout-keep-alive",
                str(KEEP_ALIVE_S),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


def wait_ready(url: str, proc: subprocess.Popen[Any], started: float) -> float:
    """Seconds from `started` until GET /readyz answers 200 (50 ms polls)."""
    deadline = started + READY_TIMEOUT_S
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/readyz").status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
    raise TimeoutError(f"{url}/readyz not 200 after {READY_TIMEOUT_S}s")


def start_service(
    ws: Workspace, name: str, extra_env: Mapping[str, str] | None = None
) -> tuple[Server, float]:
    started = time.monotonic()
    srv = BentoServer(
        ws,
        name,
        extra_env={"PREDICTFLOW_SERVING__WORKERS": str(WORKERS), **(extra_env or {})},
    )
    try:
        seconds = wait_ready(srv.url, srv.proc, started)
    except Exception:
        log(f"service {name} failed to start: {srv.logs()[-3000:]}")
        srv.stop()
        raise
    return Server(srv.url, srv.proc.pid, srv.stop), seconds


def start_baseline(ws: Workspace, name: str) -> tuple[Server, float]:
    started = time.monotonic()
    base = Baseline(ws.env, ws.root / f"baseline-{name}.log")
    try:
        seconds = wait_ready(base.url, base.proc, started)
    except Exception:
        base.stop()
        log(f"baseline {name} failed: {(ws.root / f'baseline-{name}.log').read_text()}")
        raise
    return Server(base.url, base.proc.pid, base.stop), seconds


# -- REST ----------------------------------------------------------------------


def _brief(r: Mapping[str, Any]) -> str:
    lat = r["latency_ms"]
    return (
        f"sent {r['send_rate']}/s p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} "
        f"ms, errors {r['errors']}, server CPU {r.get('server_cpu_pct')}%, "
        f"gen CPU {r['generator_cpu_pct']}%, gen lag p99 "
        f"{r['generator_lag_ms']['p99']} ms"
    )


def generator_check(
    tools: loadgen.Tools, plan: Plan, tmp: Path, ids: list[str]
) -> dict[str, Any]:
    """vegeta at the highest rate against a static target: does it keep up?"""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.static_target", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, proc, time.monotonic())
        targets = loadgen.write_targets(tmp / "static.targets", url + "/predict", ids)
        rate = max(plan.rates)
        result = loadgen.constant_rate(
            tools, targets, rate, plan.check_s, tmp, proc.pid
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log(f"generator check at {rate}/s: {_brief(result)}")
    return result


def same_scores(servers: Mapping[str, Server], ids: list[str]) -> bool:
    """Do the service and the baseline answer the same (same work)?"""
    replies = {
        kind: [
            httpx.post(srv.url + "/predict", json={"customer_id": c}, timeout=10).json()
            for c in ids
        ]
        for kind, srv in servers.items()
    }
    same = replies["service"] == replies["baseline"]
    if not same:
        log(f"service and baseline differ: {replies}")
    return same


def sweep(
    store: str,
    servers: Mapping[str, Server],
    customers: Customers,
    tools: loadgen.Tools,
    plan: Plan,
    tmp: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The open-loop sweep: each rate in `plan.rate_rounds` rounds, service and
    baseline turn about on the same random ids; the median round is a rate's
    figure. The service's own counters are read around its runs: memo hit
    ratios and batch sizes over the sweep, GC pauses at the budget rate.
    """
    pids = [srv.pid for srv in servers.values()]
    url = servers["service"].url
    rows: dict[int, dict[str, Any]] = {
        rate: {"rate": rate, "rounds": {"service": [], "baseline": []}}
        for rate in plan.rates
    }
    sweep_before = scrape.scrape(url)
    gc: scrape.Samples = {}
    for rnd in range(plan.rate_rounds):
        for i, rate in enumerate(plan.rates):
            ids = customers.draw(
                int(rate * plan.rate_s) + rate, seed=rnd * 10_000 + rate
            )
            # Alternate who goes first, so drift does not favour one side.
            first = (
                ("service", "baseline")
                if (i + rnd) % 2 == 0
                else ("baseline", "service")
            )
            for kind in first:
                targets = loadgen.write_targets(
                    tmp / f"{store}-{kind}.targets", servers[kind].url + "/predict", ids
                )
                idle = wait_idle(pids)
                before = scrape.scrape(url) if kind == "service" else None
                result = loadgen.constant_rate(
                    tools, targets, rate, plan.rate_s, tmp, servers[kind].pid
                )
                if before is not None and rate == report.REST_RATE:
                    d = scrape.delta(scrape.scrape(url), before)
                    gc = {k: gc.get(k, 0.0) + v for k, v in d.items()}
                result["idle_wait_s"] = idle
                result["round"] = rnd + 1
                rows[rate]["rounds"][kind].append(result)
                log(f"{store} {kind} {rate}/s round {rnd + 1}: {_brief(result)}")
                targets.unlink()
    for row in rows.values():
        for kind, runs in row["rounds"].items():
            row[kind] = report.median_run(runs)
    counters = scrape.summary(scrape.delta(scrape.scrape(url), sweep_before))
    counters["gc_at_budget_rate"] = scrape.gc_pauses(gc)
    return list(rows.values()), counters


def rest_store(
    ws: Workspace,
    store: str,
    tools: loadgen.Tools,
    plan: Plan,
    tmp: Path,
    customers: Customers,
) -> dict[str, Any]:
    """Service and baseline on one online store, measured turn about."""
    out: dict[str, Any] = {
        "cold_start_s": {},
        "rss_ready": {},
        "rates": [],
        "saturation": {},
        "rss_after_load": {},
    }
    servers: dict[str, Server] = {}
    # A SQLite read of a customer whose pages are not cached waits on the
    # disk: how much of the store file was cached, before and after.
    store_file = (
        Path(ws.env["PREDICTFLOW_FEAST__REPO_PATH"]) / "data" / "online_store.db"
    )
    if store == "sqlite":
        out["store_file_cached"] = {"start": page_cache_share(store_file)}
    try:
        # Cold start: COLD_STARTS starts on a quiet machine, the median is the
        # figure (single starts here ranged 3.6-6.5 s for the same build);
        # the last one stays up for the load phases.
        out["cold_start_runs_s"] = {}
        for kind, start in (("service", start_service), ("baseline", start_baseline)):
            runs = out["cold_start_runs_s"][kind] = []
            for i in range(COLD_STARTS):
                wait_machine_quiet()
                srv, seconds = start(ws, store)
                runs.append(round(seconds, 2))
                log(f"{store} {kind} ready in {seconds:.2f} s at {srv.url}")
                if i < COLD_STARTS - 1:
                    srv.stop()
            servers[kind] = srv
            out["cold_start_s"][kind] = statistics.median(runs)
            out["rss_ready"][kind] = rss_mb(srv.pid)
        out["same_scores"] = same_scores(servers, customers.draw(50, seed=1))
        warm = customers.draw(int(250 * plan.warmup_s), seed=2)
        for kind, srv in servers.items():
            targets = loadgen.write_targets(
                tmp / f"{store}-{kind}.targets", srv.url + "/predict", warm
            )
            loadgen.constant_rate(tools, targets, 250, plan.warmup_s, tmp, None)
        out["rates"], out["service_counters"] = sweep(
            store, servers, customers, tools, plan, tmp
        )
        ids_file = customers.write(tmp / f"{store}-saturation.ids", 200_000, seed=3)
        pids = [srv.pid for srv in servers.values()]
        # Rounds, alternating who goes first: a closed-loop run depends on how
        # the workers split wrk's connections (they share one listening
        # socket), so one 20 s run is luck. The headline is the mean.
        out["saturation_rounds"] = []
        for i in range(plan.saturation_rounds):
            rnd: dict[str, Any] = {}
            order = ("service", "baseline") if i % 2 == 0 else ("baseline", "service")
            for kind in order:
                idle = wait_idle(pids)
                result = loadgen.saturate(
                    tools,
                    servers[kind].url + "/predict",
                    ids_file,
                    plan.saturation_s,
                    plan.connections,
                    servers[kind].pid,
                )
                result["idle_wait_s"] = idle
                rnd[kind] = result
                log(
                    f"{store} {kind} saturation round {i + 1}: "
                    f"{result['ok_throughput']} req/s, "
                    f"p99 {result['latency_ms']['p99']} ms, errors {result['errors']}, "
                    f"server CPU {result.get('server_cpu_pct')}%"
                )
            out["saturation_rounds"].append(rnd)
        for kind in ("service", "baseline"):
            rounds = [r[kind]["ok_throughput"] for r in out["saturation_rounds"]]
            out["saturation"][kind] = {
                "ok_throughput": round(sum(rounds) / len(rounds), 1)
            }
        for kind, srv in servers.items():
            out["rss_after_load"][kind] = rss_mb(srv.pid)
    finally:
        for srv in servers.values():
            srv.stop()
        if store == "sqlite":
            out["store_file_cached"]["end"] = page_cache_share(store_file)
    return out


def rest_costs(
    ws: Workspace, tools: loadgen.Tools, plan: Plan, tmp: Path, ids: list[str]
) -> dict[str, Any]:
    """What a request option costs at 1,000 req/s, against the same load without it.

    Three services on one store: one open, one with a tokens file, one with
    the `/predict` fast path off. Variants: `plain` (open), `explain` (open,
    `"explain": 3`), `auth` (locked, with a bearer token), `api_path` (fast
    path off: BentoML's API handler). Each round runs every variant once, in
    a rotating order; each is compared with `plain` of the same round.
    """
    from predictflow.auth import new_token

    made = new_token("bench")
    tokens = tmp / "tokens"
    tokens.write_text(made.line + "\n")
    bearer = {"Authorization": f"Bearer {made.token}"}
    servers: dict[str, Server] = {}
    try:
        servers["open"], _ = start_service(ws, "costs-open")
        servers["locked"], _ = start_service(
            ws, "costs-locked", {"PREDICTFLOW_AUTH__TOKENS_FILE": str(tokens)}
        )
        servers["api"], _ = start_service(
            ws, "costs-api", {"PREDICTFLOW_SERVING__FAST_PATH": "false"}
        )
        url = {name: srv.url + "/predict" for name, srv in servers.items()}
        # The variants do what they say, or the figures mean nothing.
        one = {"customer_id": ids[0]}
        reasons = httpx.post(url["open"], json={**one, "explain": 3}, timeout=10)
        refused = httpx.post(url["locked"], json=one, timeout=10)
        admitted = httpx.post(url["locked"], json=one, headers=bearer, timeout=10)
        if (
            len(reasons.json().get("reasons") or ()) != 3
            or refused.status_code != 401
            or admitted.status_code != 200
        ):
            raise RuntimeError(
                "the variants do not do what they say: "
                f"{reasons.text} / {refused.status_code} / {admitted.text}"
            )
        variants = {
            "plain": ("open", {}, {}),
            "explain": ("open", {"explain": 3}, {}),
            "auth": ("locked", {}, bearer),
            "api_path": ("api", {}, {}),
        }
        targets = {
            name: loadgen.write_targets(
                tmp / f"costs-{name}.targets",
                url[server],
                ids,
                fields=fields,
                headers=headers,
            )
            for name, (server, fields, headers) in variants.items()
        }
        pids = [srv.pid for srv in servers.values()]
        for name in variants:
            loadgen.constant_rate(tools, targets[name], 250, plan.warmup_s, tmp, None)
        names = list(variants)
        rounds: list[dict[str, Any]] = []
        for i in range(plan.cost_rounds):
            rnd: dict[str, Any] = {}
            for name in names[i % len(names) :] + names[: i % len(names)]:
                idle = wait_idle(pids)
                server = servers[variants[name][0]]
                result = loadgen.constant_rate(
                    tools, targets[name], REST_COST_RATE, plan.rate_s, tmp, server.pid
                )
                result["idle_wait_s"] = idle
                rnd[name] = result
                log(f"costs round {i + 1} {name} {REST_COST_RATE}/s: {_brief(result)}")
            rounds.append(rnd)
        return {"rate": REST_COST_RATE, "rounds": rounds, **cost_summary(rounds)}
    finally:
        for srv in servers.values():
            srv.stop()


#: The rate the option costs are measured at (the REST target's).
REST_COST_RATE = 1000


def cost_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: P50/P99 per round, and against `plain` of the same round."""
    out: dict[str, Any] = {}
    for name in rounds[0]:
        p50 = [r[name]["latency_ms"]["p50"] for r in rounds]
        p99 = [r[name]["latency_ms"]["p99"] for r in rounds]
        row: dict[str, Any] = {
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": sum(r[name]["errors"] for r in rounds),
            "cpu_ms_per_request": [
                r[name].get("server_cpu_ms_per_request") for r in rounds
            ],
            "complete": all(
                r[name]["sent"] >= 0.999 * r[name]["scheduled"] for r in rounds
            ),
        }
        if name != "plain":
            base50 = [r["plain"]["latency_ms"]["p50"] for r in rounds]
            base99 = [r["plain"]["latency_ms"]["p99"] for r in rounds]
            row["added_p50_ms"] = [
                round(a - b, 2) for a, b in zip(p50, base50, strict=True)
            ]
            row["added_p99_ms"] = [
                round(a - b, 2) for a, b in zip(p99, base99, strict=True)
            ]
            row["p99_ratio"] = [
                round(a / b, 3) for a, b in zip(p99, base99, strict=True)
            ]
        out[name] = row
    return {"summary": out}


# -- Kafka ---------------------------------------------------------------------


def run_kafka(
    ws: Workspace, plan: Plan, tmp: Path, customers: Customers, kafka_load: str
) -> dict[str, Any]:
    """For 1..N standalone runners: throughput, then latency at a constant rate.

    Each runner count gets fresh topics and its own runner processes. The
    throughput target is read on the most runners, the latency target on the
    fewest; the other count's figure is reported beside each.
    """
    broker = KafkaBroker(tmp / "kafka")
    started = time.monotonic()
    broker.up()
    out: dict[str, Any] = {"broker_start_s": round(time.monotonic() - started, 1)}
    broker_pid = int((tmp / "kafka" / "kafka.pid").read_text().strip())
    log(f"kafka broker up at {broker.bootstrap} in {out['broker_start_s']} s")
    runners: list[ConsumerProcess] = []
    try:
        bootstrap = broker.bootstrap
        warmup = replace(plan, kafka_messages=plan.kafka_warmup)
        out["warmup"] = _kafka_throughput(
            ws,
            warmup,
            tmp,
            customers,
            bootstrap,
            Topics.fresh("warmup", bootstrap),
            max(plan.kafka_runners),
            broker_pid,
            runners,
        )
        log(f"kafka warm-up (not measured): {out['warmup']}")
        while runners:
            runners.pop().terminate()
        out["throughput_runs"] = []
        out["latency_runs"] = []
        for count in plan.kafka_runners:
            topics = Topics.fresh(f"bench{count}", bootstrap)
            result = _kafka_throughput(
                ws, plan, tmp, customers, bootstrap, topics, count, broker_pid, runners
            )
            out["throughput_runs"].append(result)
            log(f"kafka throughput, {count} runner(s): {result}")
            client = ClientRun(
                plan, tmp, bootstrap, topics, broker_pid, runners, kafka_load
            )
            latency = _kafka_latency(client)
            out["latency_runs"].append(latency)
            log(f"kafka latency, {count} runner(s): {latency}")
            out.setdefault("live_runs", []).append(_kafka_live(client))
            while runners:
                runners.pop().terminate()
        try:
            out["live_floor"] = _kafka_floor(
                plan, tmp, bootstrap, broker_pid, runners, out["live_runs"], kafka_load
            )
        except Exception as exc:  # noqa: BLE001 - a baseline must not drop our figures
            log(f"kafka floor failed: {traceback.format_exc()}")
            out["live_floor"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        while runners:
            runners.pop().terminate()
        # Throughput is read on the most runners, latency at 1,000 msg/s on
        # the fewest: what a deployment scaled on lag runs at each load.
        out["throughput"] = max(out["throughput_runs"], key=lambda r: r["runners"])
        first = min(out["latency_runs"], key=lambda r: r["runners"])
        out["latency"] = first["latency"]
        out["latency_runners"] = first["runners"]
        out["latency_runner_cpu_pct"] = first["runner_cpu_pct"]
        out["latency_broker_cpu_pct"] = first["broker_cpu_pct"]
        out["runner_rss"] = [
            rss for run in out["latency_runs"] for rss in run["runner_rss"]
        ]
    finally:
        for r in runners:
            r.terminate()
        broker.down()
    return out


def _kafka_latency(client: ClientRun) -> dict[str, Any]:
    """Request->reply latency at a constant rate, from a separate process.

    A first, shorter run at the same rate warms the path up and is dropped.
    """
    client.run(client.plan.kafka_latency_warmup_s, "latency-warmup")
    measured = client.run(client.plan.kafka_latency_s, "latency")
    return {
        "runners": len(client.runners),
        "runner_cpu_pct": measured.pop("runner_cpu_pct"),
        "broker_cpu_pct": measured.pop("broker_cpu_pct"),
        "latency": measured,
        "runner_rss": [rss_mb(r.proc.pid) for r in client.runners],
    }


def _kafka_floor(
    plan: Plan,
    tmp: Path,
    bootstrap: str,
    broker_pid: int,
    runners: list[ConsumerProcess],
    live_runs: list[dict[str, Any]],
    kafka_load: str,
) -> dict[str, Any]:
    """The live producer against echo consumers (no scoring): the baseline.

    As many echo processes as the most runners measured, at each rate the
    runners were tried at: what the broker, aiokafka and the client cost here.
    """
    count = max(plan.kafka_runners)
    topics = Topics.fresh("floor", bootstrap)
    for i in range(count):
        runners.append(
            ConsumerProcess(
                {**os.environ},
                tmp / f"echo-{i}.log",
                command=kafka_bench.echo_command(
                    bootstrap, topics.request, topics.reply, topics.group
                ),
            )
        )
    wait_for(functools.partial(_all_assigned, runners), 120, "echo consumers")
    client = ClientRun(plan, tmp, bootstrap, topics, broker_pid, runners, kafka_load)
    rates = sorted({r["rate"] for live in live_runs for r in live["runs"]})
    runs = []
    for rate in rates:
        result = client.run(
            plan.kafka_live_s, "floor", rate=rate, linger_ms=plan.kafka_live_linger_ms
        )
        runs.append(result)
        log(f"kafka floor (echo), {count} process(es), {rate}/s: {result}")
    return {"processes": count, "runs": runs}


def _all_assigned(runners: list[ConsumerProcess]) -> bool:
    """Every partition owned once by the consumers; raises if one has exited."""
    for r in runners:
        if r.proc.poll() is not None:
            raise RuntimeError(f"consumer exited: {r.logs()[-3000:]}")
    return kafka_bench.assignment_complete(
        [r.logs() for r in runners], kafka_bench.PARTITIONS
    )


@dataclass(frozen=True)
class ClientRun:
    """The live Kafka client (`kafka_bench.live`) against running runners: its
    figures, plus the runners' and the broker's CPU meanwhile."""

    plan: Plan
    tmp: Path
    bootstrap: str
    topics: Topics
    broker_pid: int
    runners: list[ConsumerProcess]
    #: tools/kafka-load, built (`loadgen.ensure_tools`).
    kafka_load: str

    def run(
        self, seconds: float, name: str, *, rate: int | None = None, linger_ms: int = 0
    ) -> dict[str, Any]:
        cpus = [CpuMeter(r.proc.pid).start() for r in self.runners]
        broker_cpu = CpuMeter(self.broker_pid).start()
        result = kafka_bench.live(
            self.kafka_load,
            self.bootstrap,
            self.topics.request,
            self.topics.reply,
            self.tmp / "ids.txt",
            rate or self.plan.kafka_rate,
            seconds,
            self.tmp / f"kafka-{name}-{len(self.runners)}-{rate}",
            linger_ms=linger_ms,
        )
        result["runner_cpu_pct"] = round(sum(c.stop()["cpu_pct"] for c in cpus), 1)
        result["broker_cpu_pct"] = broker_cpu.stop()["cpu_pct"]
        return result


def _kafka_live(client: ClientRun) -> dict[str, Any]:
    """A live producer at each of `plan.kafka_live_rates` in turn, while the
    runners consume; stops after the first rate not held (P99 < budget, no
    request lost, no error reply): a higher one would not be either.
    """
    plan, count = client.plan, len(client.runners)
    runs = []
    held = None
    for rate in plan.kafka_live_rates:
        result = client.run(
            plan.kafka_live_s, "live", rate=rate, linger_ms=plan.kafka_live_linger_ms
        )
        runs.append(result)
        log(f"kafka live, {count} runner(s), {rate}/s: {result}")
        if not report.live_held(result):
            break
        held = rate
    return {"runners": count, "held": held, "runs": runs}


def _kafka_throughput(
    ws: Workspace,
    plan: Plan,
    tmp: Path,
    customers: Customers,
    bootstrap: str,
    topics: Topics,
    count: int,
    broker_pid: int,
    runners: list[ConsumerProcess],
) -> dict[str, Any]:
    """Publish the requests, start `count` runners (into `runners`), time them."""
    n = plan.kafka_messages
    messages = customers.draw(n, seed=zlib.crc32(topics.request.encode()))
    publish_s = asyncio.run(
        kafka_bench.publish_all(bootstrap, topics.request, messages)
    )
    log(f"published {n:,} requests in {publish_s:.1f} s")
    env = {**ws.env, **topics.env(bootstrap)}
    spawned = time.time()
    for i in range(count):
        runners.append(
            ConsumerProcess(
                {
                    **env,
                    "PREDICTFLOW_KAFKA__INSTANCE_ID": f"bench-{i}",
                    "PREDICTFLOW_KAFKA__METRICS_PORT": str(free_port()),
                },
                tmp / f"runner-{topics.request}-{i}.log",
            )
        )
    cpus = [CpuMeter(r.proc.pid).start() for r in runners]
    broker_cpu = CpuMeter(broker_pid).start()

    done = asyncio.run(
        kafka_bench.watch_completion(
            bootstrap,
            topics.request,
            topics.reply,
            topics.group,
            n,
            functools.partial(_all_assigned, runners),
            timeout_s=max(120.0, n / 500),
        )
    )
    runner_cpu = sum(c.stop()["cpu_pct"] for c in cpus)
    seconds = done["done_at"] - done["ready_at"]
    counted = n - done["committed_at_ready"]
    return {
        "runners": count,
        "messages": n,
        "partitions": kafka_bench.PARTITIONS,
        "replies_in_topic": done["replies"],
        "publish_msgs_per_s": round(n / publish_s, 1),
        "startup_s": round(done["ready_at"] - spawned, 2),
        "committed_before_ready": done["committed_at_ready"],
        "seconds": round(seconds, 2),
        "msgs_per_s": round(counted / seconds, 1),
        "runner_cpu_pct": round(runner_cpu, 1),
        "broker_cpu_pct": broker_cpu.stop()["cpu_pct"],
        "poll_resolution_s": 0.05,
    }


# -- the run -------------------------------------------------------------------


@contextlib.contextmanager
def redis_address(tmp: Path) -> Iterator[tuple[str, str]]:
    """PREDICTFLOW_BENCH_REDIS (host:port), else a redis-server of our own."""
    if address := os.environ.get("PREDICTFLOW_BENCH_REDIS"):
        yield address, "PREDICTFLOW_BENCH_REDIS"
        return
    server = RedisServer(tmp / "redis")
    try:
        yield server.address, "redis-server on a free port"
    finally:
        server.stop()


def _versions(tools: loadgen.Tools) -> dict[str, str]:
    names = (
        "bentoml",
        "feast",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "xgboost-cpu",
        "aiokafka",
        "redis",
        "psutil",
    )
    out = {name: importlib.metadata.version(name) for name in names}
    out["python"] = sys.version.split()[0]
    out["xgboost"] = importlib.metadata.version("xgboost-cpu")
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    kafka = pom.split("<kafka.version>", 1)[1].split("<", 1)[0]
    out["kafka"] = os.environ.get("KAFKA_VERSION", kafka)
    out.update(tools.versions())
    redis_server = shutil.which("redis-server")
    if redis_server:
        out["redis-server"] = subprocess.run(
            [redis_server, "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[2]
    return out


def _section(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001 - report it, go on with the rest
        traceback.print_exc(file=sys.stderr)
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}


def write(results: dict[str, Any]) -> Path:
    results["targets"] = report.targets(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / str(results["run_id"])
    text = json.dumps(results, indent=2) + "\n"
    stem.with_suffix(".json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    md = report.markdown(results)
    stem.with_suffix(".md").write_text(md)
    (RESULTS / "latest.md").write_text(md)
    return stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--only", choices=SECTIONS)
    parser.add_argument(
        "--no-fail",
        action="store_true",
        help="exit 0 even when a target is not met (only report)",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        help="reuse (or create) this workspace instead of a temporary one",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "run_id": started_at.strftime("%Y%m%dT%H%M%SZ"),
        "mode": "quick" if args.quick else "full",
        "started_at": started_at.isoformat(),
        "plan": asdict(plan),
        "sections": [args.only] if args.only else list(SECTIONS),
        "git": git_state(),
        "machine": {
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "workers": WORKERS,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            # Times the kernel's page cache was dropped since boot (by the
            # environment); compared with the count at the end.
            "drop_pagecache_start": vmstat("drop_pagecache"),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        },
    }
    tools = loadgen.ensure_tools()
    results["versions"] = _versions(tools)
    telco = load_telco()["customer_id"].tolist()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pf-bench-")))
        if args.workspace and (args.workspace / "feature_repo").exists():
            ws = Workspace.create(tmp / "ignored")
            ws = Workspace(args.workspace, {**ws.env, **_workspace_env(args.workspace)})
        else:
            ws = Workspace.create(args.workspace or tmp / "ws")
        redis, redis_from = stack.enter_context(redis_address(tmp))
        redis_env = {
            "PREDICTFLOW_FEAST__ONLINE_STORE": "redis",
            "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING": redis,
        }
        redis_ws = Workspace(ws.root, {**ws.env, **redis_env})
        setup: dict[str, Any] = {"redis": f"{redis} ({redis_from})"}
        results["setup"] = setup
        for name, w in (("sqlite", ws), ("redis", redis_ws)):
            t = time.monotonic()
            log(f"bootstrap ({name}) in {ws.root}")
            setup[f"synthetic_{name}"] = load_synthetic(w, plan.synthetic)
            setup[f"bootstrap_{name}_s"] = round(time.monotonic() - t, 1)
            log(f"synthetic customers ({name}): {setup[f'synthetic_{name}']}")
        customers = Customers.of(
            telco, Path(ws.env["PREDICTFLOW_DATA_DIR"]) / "synthetic_ids.txt"
        )
        setup["customers"] = len(customers.ids)
        # wrk and the Kafka clients cycle through a file of random draws.
        customers.write(tmp / "ids.txt", 200_000, seed=0)
        try:
            if args.only in (None, "rest"):
                rest: dict[str, Any] = {}
                results["rest"] = rest
                _section(
                    rest,
                    "generator_check",
                    lambda: generator_check(tools, plan, tmp, telco),
                )
                for store, w in (("redis", redis_ws), ("sqlite", ws)):
                    _section(
                        rest,
                        store,
                        functools.partial(
                            rest_store, w, store, tools, plan, tmp, customers
                        ),
                    )
            if args.only in (None, "costs"):
                cost_ids = customers.draw(int(1000 * plan.rate_s) + 1000, seed=4)
                _section(
                    results,
                    "costs",
                    lambda: rest_costs(redis_ws, tools, plan, tmp, cost_ids),
                )
            if args.only in (None, "kafka"):
                _section(
                    results,
                    "kafka",
                    lambda: run_kafka(redis_ws, plan, tmp, customers, tools.kafka_load),
                )
        finally:
            results["finished_at"] = datetime.now(UTC).isoformat()
            results["machine"]["drop_pagecache_end"] = vmstat("drop_pagecache")
            results["wall_s"] = round(time.monotonic() - t0, 1)
            stem = write(results)
    sys.stdout.write(report.markdown(results))
    sys.stdout.write(f"\nwrote {stem}.json and {stem}.md\n")
    missed = [t["target"] for t in results["targets"] if t["met"] is False]
    if missed:
        sys.stderr.write(f"not met: {'; '.join(missed)}\n")
        return 0 if args.no_fail else 1
    return 0


def load_synthetic(ws: Workspace, n: int) -> dict[str, Any]:
    """`predictflow bootstrap --synthetic n`: the workspace's bootstrap, then
    n synthetic customers into its store, their load timed by bootstrap.

    A rerun on a reused workspace (`--workspace`) finds them and says so: its
    time is not a load time.
    """
    try:
        done = ws.run("bootstrap", "--synthetic", str(n), timeout=3600)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"bootstrap --synthetic failed: {exc.stderr[-3000:]}"
        ) from exc
    found = SYNTHETIC_LINE.search(done.stdout)
    if found is None:
        raise RuntimeError(
            f"bootstrap did not report the synthetic load: {done.stdout}"
        )
    return {
        "customers": int(found["customers"]),
        "seconds": float(found["seconds"]),
        "written": found["how"] == "written",
    }


#: What `predictflow bootstrap --synthetic` prints of the load.
SYNTHETIC_LINE = re.compile(
    r"synthetic: (?P<customers>\d+) customers \((?P<how>written|already there)\) "
    r"in (?P<seconds>[\d.]+) s"
)


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the tree differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(  # noqa: S603 - git, fixed arguments
            ["git", *args],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # Results written by earlier runs are not the code measured.
        changes = git("status", "--porcelain", "--", ".", ":!bench/results")
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"commit": None, "dirty": None, "error": str(exc)}
    return {"commit": commit, "dirty": bool(changes)}


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _workspace_env(root: Path) -> dict[str, str]:
    return {
        "PREDICTFLOW_DATA_DIR": str(root / "var"),
        "PREDICTFLOW_FEAST__REPO_PATH": str(root / "feature_repo"),
        "BENTOML_HOME": str(root / "bentoml"),
    }


if __name__ == "__main__":
    sys.exit(main())
