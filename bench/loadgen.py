"""Load generators: vegeta (open loop, constant rate) and wrk (saturation).

vegeta fires request i at t0 + i/rate whether or not earlier ones were
answered (open loop). Each result carries its sequence number and the time it
was actually sent, so the lag behind schedule is measured, and latency is
reported from the *scheduled* time (no coordinated omission): a generator or
server that falls behind shows up in the latency, not as a lower rate.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.procs import CpuMeter, MachineMeter, wait_child
from devtools.gobuild import go_binary, go_build

HERE = Path(__file__).resolve().parent
TOOLS = HERE / ".tools" / "bin"
VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
VEGETA_VERSION = "v12.13.0"
WRK_SCRIPT = HERE / "wrk_post.lua"
KAFKA_LOAD_SOURCE = HERE.parent / "tools" / "kafka-load"
#: Most concurrent requests vegeta may have open (bounded fds under overload;
#: past it, sends fall behind schedule, which the lag figures show).
MAX_WORKERS = 4096
TIMEOUT_S = 10


@dataclass(frozen=True)
class Tools:
    vegeta: str
    wrk: str
    #: The live Kafka client (tools/kafka-load, built from the project's source).
    kafka_load: str

    def versions(self) -> dict[str, str]:
        wrk = subprocess.run(
            [self.wrk, "--version"], capture_output=True, text=True, check=False
        )
        franz = next(
            line.split()[1]
            for line in (KAFKA_LOAD_SOURCE / "go.mod").read_text().splitlines()
            if line.strip().startswith("github.com/twmb/franz-go ")
        )
        return {
            "vegeta": f"{VEGETA_MODULE}@{VEGETA_VERSION}",
            "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].strip(),
            "kafka-load": f"tools/kafka-load (franz-go {franz})",
        }


def ensure_tools() -> Tools:
    """wrk (Debian package), vegeta (Go module) and tools/kafka-load (built
    from its source), the Go ones into bench/.tools."""
    wrk = shutil.which("wrk")
    if wrk is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise RuntimeError("wrk is missing: apt-get install wrk")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True)
        wrk = shutil.which("wrk")
        assert wrk is not None  # noqa: S101 - just installed
    go = go_binary()
    if go is None:
        raise RuntimeError(
            "there is no Go toolchain to build vegeta and tools/kafka-load: "
            "install Go (https://go.dev/doc/install)"
        )
    TOOLS.mkdir(parents=True, exist_ok=True)
    vegeta = TOOLS / "vegeta"
    stamp = TOOLS / "vegeta.version"
    if not vegeta.exists() or not stamp.exists() or stamp.read_text() != VEGETA_VERSION:
        subprocess.run(
            [go, "install", f"{VEGETA_MODULE}@{VEGETA_VERSION}"],
            env={**os.environ, "GOBIN": str(TOOLS)},
            check=True,
            timeout=900,
        )
        stamp.write_text(VEGETA_VERSION)
    # Built every run (Go's build cache makes an unchanged one instant): the
    # client measured is the source checked out.
    kafka_load = go_build(KAFKA_LOAD_SOURCE, TOOLS / "kafka-load", offline=False)
    return Tools(str(vegeta), wrk, str(kafka_load))


def write_targets(
    path: Path,
    url: str,
    customer_ids: Sequence[str],
    *,
    fields: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """vegeta JSON targets: one POST per customer id (vegeta cycles through them).

    `fields` are added to every request body, `headers` to every request.
    """
    header = {"Content-Type": ["application/json"]}
    header.update({name: [value] for name, value in (headers or {}).items()})
    with path.open("w") as f:
        for cid in customer_ids:
            body = json.dumps({"customer_id": cid, **(fields or {})}).encode()
            target = {
                "method": "POST",
                "url": url,
                "header": header,
                "body": base64.b64encode(body).decode(),
            }
            f.write(json.dumps(target) + "\n")
    return path


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _ms(values: np.ndarray) -> dict[str, float]:
    return {
        "p50": round(_pct(values, 50), 2),
        "p99": round(_pct(values, 99), 2),
        "p999": round(_pct(values, 99.9), 2),
        "max": round(float(values.max()) if len(values) else float("nan"), 2),
    }


def constant_rate(
    tools: Tools,
    targets: Path,
    rate: int,
    duration_s: float,
    workdir: Path,
    server_pid: int | None,
) -> dict[str, Any]:
    """One open-loop run at `rate` req/s; latency, errors, lag and CPU."""
    out = workdir / f"vegeta-{rate}.bin"
    err_path = workdir / f"vegeta-{rate}.err"
    err = err_path.open("w")
    server = CpuMeter(server_pid).start() if server_pid else None
    machine = MachineMeter().start()
    proc = subprocess.Popen(
        [
            tools.vegeta,
            "attack",
            "-format=json",
            f"-targets={targets}",
            f"-rate={rate}/1s",
            f"-duration={duration_s}s",
            f"-timeout={TIMEOUT_S}s",
            f"-max-workers={MAX_WORKERS}",
            "-max-body=0",
            f"-output={out}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    started = time.monotonic()
    gen = wait_child(proc, timeout=duration_s + TIMEOUT_S + 60)
    wall = time.monotonic() - started
    server_cpu = server.stop() if server else None
    machine_cpu = machine.stop()
    err.close()
    if proc.returncode != 0:
        raise RuntimeError(f"vegeta failed: {err_path.read_text()[-2000:]}")
    csv_text = subprocess.run(
        [tools.vegeta, "encode", "--to", "csv", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out.unlink()
    stats = summarize(csv_text, rate, duration_s)
    stats["generator_cpu_pct"] = round(100 * gen["cpu_s"] / wall, 1)
    stats["generator_cpu_s"] = gen["cpu_s"]
    stats["machine"] = machine_cpu
    if server_cpu is not None:
        stats["server_cpu_pct"] = server_cpu["cpu_pct"]
        ok = int(stats["ok"])
        stats["server_cpu_ms_per_request"] = (
            round(1000 * server_cpu["cpu_s"] / ok, 3) if ok else None
        )
    return stats


_ADDRESS = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}:\d+")


def error_kind(code: int, error: str) -> str:
    """One failed request's kind: its status and vegeta's error, without the
    addresses and ports that make every connection's message unique (and
    hide the cause at its end: `read: connection reset by peer`, `EOF`)."""
    return f"{code} {_ADDRESS.sub('<addr>', error)[:160]}".strip()


def summarize(csv_text: str, rate: int, duration_s: float) -> dict[str, Any]:
    """Figures of one vegeta run from its CSV results."""
    ts, lat, seq, codes, errors = [], [], [], [], []
    for row in csv.reader(csv_text.splitlines()):
        ts.append(int(row[0]))
        codes.append(int(row[1]))
        lat.append(int(row[2]))
        errors.append(row[5])
        seq.append(int(row[8]))
    t = np.array(ts, dtype=np.int64)
    latency = np.array(lat, dtype=np.float64) / 1e6
    s = np.array(seq, dtype=np.int64)
    scheduled = int(rate * duration_s)
    if not len(t):
        return {"rate": rate, "scheduled": scheduled, "sent": 0, "ok": 0}
    t0 = int(t[s.argmin()])
    lag = np.maximum((t - t0 - s * (1e9 / rate)) / 1e6, 0.0)
    ok_mask = np.array([c == 200 and not e for c, e in zip(codes, errors, strict=True)])
    error_kinds: dict[str, int] = {}
    for c, e in zip(codes, errors, strict=True):
        if c != 200 or e:
            key = error_kind(c, e)
            error_kinds[key] = error_kinds.get(key, 0) + 1
    span = (t.max() - t.min()) / 1e9
    end = float(((t + latency * 1e6).max() - t.min()) / 1e9)
    return {
        "rate": rate,
        "duration_s": duration_s,
        "scheduled": scheduled,
        "sent": len(t),
        "not_sent": max(scheduled - len(t), 0),
        "ok": int(ok_mask.sum()),
        "errors": int((~ok_mask).sum()),
        "error_kinds": error_kinds,
        "send_rate": round((len(t) - 1) / span, 1) if span > 0 else None,
        "ok_throughput": round(int(ok_mask.sum()) / end, 1) if end > 0 else None,
        # From the scheduled send time: what a client at this rate would see.
        "latency_ms": _ms(latency[ok_mask] + lag[ok_mask]),
        # From the actual send time (vegeta's own figure).
        "service_time_ms": _ms(latency[ok_mask]),
        "generator_lag_ms": _ms(lag),
    }


def saturate(
    tools: Tools,
    url: str,
    ids_file: Path,
    duration_s: float,
    connections: int,
    server_pid: int | None,
) -> dict[str, Any]:
    """wrk, closed loop with `connections` connections: the most the server does."""
    server = CpuMeter(server_pid).start() if server_pid else None
    machine = MachineMeter().start()
    proc = subprocess.Popen(
        [
            tools.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{int(duration_s)}s",
            f"--timeout={TIMEOUT_S}s",
            "-s",
            str(WRK_SCRIPT),
            url,
            "--",
            str(ids_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None  # noqa: S101
    started = time.monotonic()
    output = proc.stdout.read().decode()
    gen = wait_child(proc, timeout=duration_s + TIMEOUT_S + 60)
    wall = time.monotonic() - started
    server_cpu = server.stop() if server else None
    machine_cpu = machine.stop()
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {output[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(raw["errors"].values())
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["errors"]["status"]
    stats: dict[str, Any] = {
        "connections": connections,
        "duration_s": round(seconds, 2),
        "requests": raw["requests"],
        "errors": errors,
        "error_kinds": raw["errors"],
        "throughput": round(raw["requests"] / seconds, 1),
        "ok_throughput": round(ok / seconds, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in raw["latency_us"].items()},
        "generator_cpu_pct": round(100 * gen["cpu_s"] / wall, 1),
        "machine": machine_cpu,
    }
    if server_cpu is not None:
        stats["server_cpu_pct"] = server_cpu["cpu_pct"]
        stats["server_cpu_ms_per_request"] = (
            round(1000 * server_cpu["cpu_s"] / ok, 3) if ok else None
        )
    return stats
