"""Bearer tokens: the file format, constant-time lookup, rotation without restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from predictflow import auth
from predictflow.cli import main


def write(path: Path, *lines: str) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def no_recheck_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "RECHECK_SECONDS", 0.0)


def test_a_token_is_known_by_its_digest_only(tmp_path: Path) -> None:
    made = auth.new_token("billing")
    path = tmp_path / "tokens"
    write(path, "# who may score", "", made.line)
    assert made.token not in path.read_text()
    tokens = auth.Tokens(path)
    assert tokens.name_of(f"Bearer {made.token}") == "billing"
    assert tokens.name_of(f"bearer {made.token}") == "billing"
    for wrong in (None, "", "Bearer", "Bearer ", f"Basic {made.token}", "Bearer x"):
        assert tokens.name_of(wrong) is None, wrong


def test_tokens_are_random_and_named(tmp_path: Path) -> None:
    a, b = auth.new_token("a"), auth.new_token("a")
    assert a.token != b.token and len(a.token) >= 43
    assert a.line == f"a:{auth.digest(a.token)}"
    with pytest.raises(ValueError, match="token name"):
        auth.new_token("has space")


def test_a_malformed_line_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path, "raw-secret-token-pasted-here")
    with pytest.raises(auth.TokensFileError) as err:
        auth.Tokens(path)
    assert "raw-secret" not in str(err.value)
    assert "line 1" in str(err.value)


def test_a_rotated_file_takes_effect_without_a_restart(
    tmp_path: Path, no_recheck_delay: None
) -> None:
    old, new = auth.new_token("svc"), auth.new_token("svc")
    path = tmp_path / "tokens"
    write(path, old.line)
    tokens = auth.Tokens(path)
    assert tokens.name_of(f"Bearer {old.token}") == "svc"
    # Kubernetes swaps a Secret's files by renaming: a new inode.
    fresh = tmp_path / "tokens.new"
    write(fresh, new.line)
    os.replace(fresh, path)
    assert tokens.name_of(f"Bearer {old.token}") is None  # revoked
    assert tokens.name_of(f"Bearer {new.token}") == "svc"


def test_a_broken_rewrite_keeps_the_tokens_loaded_before(
    tmp_path: Path, no_recheck_delay: None
) -> None:
    made = auth.new_token("svc")
    path = tmp_path / "tokens"
    write(path, made.line)
    tokens = auth.Tokens(path)
    time.sleep(0.01)
    write(path, "not a line")
    assert tokens.name_of(f"Bearer {made.token}") == "svc"
    path.unlink()
    assert tokens.name_of(f"Bearer {made.token}") == "svc"


def test_the_cli_prints_a_token_once_with_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["token", "new", "retention-app"]) == 0
    out = capsys.readouterr().out
    token = out.split("caller): ")[1].split()[0]
    line = out.split("TOKENS_FILE: ")[1].strip()
    assert line == f"retention-app:{auth.digest(token)}"
    path = tmp_path / "tokens"
    write(path, line)
    assert auth.Tokens(path).name_of(f"Bearer {token}") == "retention-app"
