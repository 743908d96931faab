"""CPU and memory of the processes under test, from /proc (through psutil)."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (those alive now)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process tree, so far."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class CpuMeter:
    """CPU of a process tree between start() and stop(), as % of one core."""

    pid: int
    _cpu: float = 0.0
    _wall: float = 0.0

    def start(self) -> CpuMeter:
        self._cpu = cpu_seconds(self.pid)
        self._wall = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        cpu = cpu_seconds(self.pid) - self._cpu
        wall = time.monotonic() - self._wall
        return {"cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / wall, 1)}


def rss_mb(pid: int) -> dict[str, object]:
    """RSS of a server's processes: the supervisor and each worker (MB)."""
    processes: list[dict[str, object]] = []
    workers: list[float] = []
    procs = tree(pid)
    spawned = False
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            spawned = spawned or _is_worker(" ".join(p.cmdline()))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            role = _role(p, pid, spawned)
            rss = round(p.memory_info().rss / 2**20, 1)
            processes.append({"pid": p.pid, "role": role, "rss_mb": rss})
            if role == "worker":
                workers.append(rss)
    return {
        "processes": processes,
        "worker_rss_mb_max": max(workers) if workers else None,
    }


def _is_worker(cmd: str) -> bool:
    # BentoML's workers; uvicorn's (--workers N > 1, multiprocessing spawn).
    return "_bentoml_impl.worker" in cmd or "spawn_main" in cmd


def _role(p: psutil.Process, root: int, spawned_workers: bool) -> str:
    if _is_worker(" ".join(p.cmdline())):
        return "worker"
    if p.pid == root:
        # A process that spawned workers supervises; else it is the worker
        # (uvicorn --workers 1, the Kafka runner).
        return "supervisor" if spawned_workers else "worker"
    return "other"


def wait_child(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, float]:
    """Reap a child process; its own CPU seconds (rusage), exactly.

    The child must have been started by this process and not reaped yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}
        if time.monotonic() > deadline:
            proc.kill()
            timeout = 30
            deadline = time.monotonic() + timeout
        time.sleep(0.02)


def wait_idle(
    pids: list[int], below_pct: float = 10.0, timeout_s: float = 15.0
) -> float:
    """Wait until the servers are idle (finished any abandoned requests).

    Idle: under `below_pct` % of a core, all trees together, over 0.5 s.
    Returns the seconds waited (`timeout_s` when they never went idle).
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(0.5)
        if 100 * (sum(cpu_seconds(p) for p in pids) - before) / 0.5 < below_pct:
            break
    return round(time.monotonic() - started, 1)


def _proc_stat() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    total = sum(fields)
    return user + nice + system + irq + softirq, steal, total


@dataclass
class MachineMeter:
    """The whole machine over a phase: busy and stolen (hypervisor) CPU, in %."""

    _start: tuple[int, int, int] = (0, 0, 0)

    def start(self) -> MachineMeter:
        self._start = _proc_stat()
        return self

    def stop(self) -> dict[str, float]:
        busy, steal, total = (
            b - a for a, b in zip(self._start, _proc_stat(), strict=True)
        )
        total = max(total, 1)
        return {
            "busy_pct": round(100 * busy / total, 1),
            "steal_pct": round(100 * steal / total, 1),
        }


def wait_machine_quiet(below_pct: float = 20.0, timeout_s: float = 20.0) -> float:
    """Wait until the whole machine is under `below_pct` % busy over 0.5 s.

    Before a cold start: what the previous phase left exiting (servers, the
    broker) would otherwise be timed with it. Returns the seconds waited.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        meter = MachineMeter().start()
        time.sleep(0.5)
        if meter.stop()["busy_pct"] < below_pct:
            break
    return round(time.monotonic() - started, 1)


def page_cache_share(path: Path) -> float | None:
    """Share of a file's pages in the page cache (mincore(2) on a mapping of it).

    None if the file is missing or empty, or mincore fails. Since Linux 5.0
    mincore reports page cache state only to a caller that owns the file or
    may write it, as the bench does its workspace's.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            # Private and writable only so that ctypes can take its address;
            # mapping a file reads none of it.
            mapped = mmap.mmap(
                f.fileno(),
                size,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            try:
                start = ctypes.c_char.from_buffer(mapped)
                pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
                vec = (ctypes.c_ubyte * pages)()
                libc = ctypes.CDLL(None, use_errno=True)
                failed = libc.mincore(ctypes.byref(start), ctypes.c_size_t(size), vec)
                del start  # the mapping cannot close while ctypes holds it
            finally:
                mapped.close()
    except (OSError, ValueError):
        return None
    if failed:
        return None
    return sum(b & 1 for b in vec) / pages


def vmstat(name: str) -> int | None:
    """A counter of /proc/vmstat (e.g. `drop_pagecache`), or None."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return None
