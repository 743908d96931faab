"""The bench's page cache and /proc/vmstat readings."""

from __future__ import annotations

from pathlib import Path

from bench.procs import page_cache_share, vmstat


def test_a_file_just_read_is_all_in_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"x" * (1 << 20) + b"tail")  # pages plus a partial one
    path.read_bytes()
    assert page_cache_share(path) == 1.0


def test_no_share_for_an_empty_or_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert page_cache_share(empty) is None
    assert page_cache_share(tmp_path / "missing.db") is None


def test_vmstat_reads_a_counter_and_none_for_an_unknown_one() -> None:
    pgpgin = vmstat("pgpgin")
    assert isinstance(pgpgin, int) and pgpgin >= 0
    assert vmstat("no_such_counter") is None
