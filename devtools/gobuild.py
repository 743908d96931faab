"""Building the project's Go tools (tools/*) for the tests and the benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def go_binary() -> str | None:
    """The Go toolchain: `go` on PATH, else the official installer's place."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    return go if Path(go).exists() else None


def go_build(source: Path, out: Path, *, offline: bool) -> Path:
    """`go build` the module in `source` into `out`; raises with Go's message.

    `offline`: from the module cache only (the tests never download; `make
    test` fills the cache first), else Go may fetch the module's pinned
    dependencies from the module proxy.
    """
    go = go_binary()
    if go is None:
        raise RuntimeError(f"building {source.name} needs Go (https://go.dev/dl)")
    env = dict(os.environ)
    if offline:
        env.update(GOPROXY="off", GOFLAGS="-mod=readonly")
    done = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building {source} failed:\n{done.stderr[-3000:]}")
    return out
