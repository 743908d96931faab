"""The SQLite read-ahead's requests to the kernel (posix_fadvise faked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from predictflow import features


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        calls.append((offset, length))

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return calls


def test_the_whole_file_is_asked_for_in_requests_the_kernel_takes_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "online_store.db"
    size = 3 * (1 << 20) + 5
    path.write_bytes(b"x" * size)
    calls = _calls(monkeypatch)
    features._prefetch(path)
    # The kernel reads at most 128 KB per call by default: a larger request
    # would leave the rest of its range unread.
    assert all(length <= 128 << 10 for _, length in calls)
    assert calls[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(calls, calls[1:], strict=False))
    assert calls[-1][0] + calls[-1][1] >= size


def test_the_read_ahead_of_a_replaced_file_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "online_store.db"
    path.write_bytes(b"x" * (4 << 20))
    calls = _calls(monkeypatch)
    replaced: list[bool] = []

    def file_id(p: Path | None) -> tuple[int, int] | None:
        # The file is replaced once the first chunk was asked for.
        if calls and not replaced:
            replacement = tmp_path / "new.db"
            replacement.write_bytes(b"y" * (4 << 20))
            replacement.replace(path)
            replaced.append(True)
        return real_file_id(p)

    real_file_id = features._file_id
    monkeypatch.setattr(features, "_file_id", file_id)
    monkeypatch.setattr(features, "_PREFETCH_CHECK_EVERY", 1)
    features._prefetch(path)
    assert replaced
    assert len(calls) == 1
