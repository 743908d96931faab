"""Bearer tokens for the REST door: a file of SHA-256 digests, re-read when it changes.

The file (`PREDICTFLOW_AUTH__TOKENS_FILE`, typically a mounted Kubernetes
Secret) holds one `name:sha256hex` line per token; blank lines and `#`
comments are allowed. Only digests are stored: the file never holds a token.
A presented token is hashed and compared with every digest in constant time,
so neither a match nor its position shows in the timing. The file is checked
for a change (inode, size, mtime) at most once a second, so a rotated Secret
takes effect without a restart; a file that no longer parses keeps the last
good set of tokens and logs why.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("predictflow.auth")

_LINE = re.compile(r"(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<digest>[0-9a-fA-F]{64})")
#: Longest a changed file goes unnoticed.
RECHECK_SECONDS = 1.0


class TokensFileError(ValueError):
    """The tokens file cannot be read or has a line that is not `name:sha256hex`."""


@dataclass(frozen=True)
class NewToken:
    """A freshly made token and the line that admits it."""

    token: str
    line: str


def digest(token: str) -> str:
    """The hex SHA-256 of a token: what the tokens file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str) -> NewToken:
    """A random token (256 bits) for `name`, and its tokens-file line."""
    if not _LINE.fullmatch(f"{name}:{'0' * 64}"):
        raise ValueError(f"a token name is 1-64 of A-Z a-z 0-9 _ . @ -, not {name!r}")
    token = secrets.token_urlsafe(32)
    return NewToken(token, f"{name}:{digest(token)}")


def parse(text: str) -> dict[bytes, str]:
    """Digest (raw bytes) -> token name, from a tokens file's text."""
    tokens: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            # The line is not echoed: it could be a token pasted by mistake.
            raise TokensFileError(f"line {number} is not 'name:sha256hex'")
        tokens[bytes.fromhex(match["digest"])] = match["name"]
    return tokens


class Tokens:
    """The tokens in force, from a file that may change while the service runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokens: dict[bytes, str] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._load()
        if not self._tokens:
            log.warning("event=no_tokens path=%s: every request will be refused", path)

    def _signature(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows the Secret's symlinks
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        try:
            signature = self._signature()
            tokens = parse(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, TokensFileError) as exc:
            if self._seen is None:
                raise TokensFileError(f"{self.path}: {exc}") from None
            log.error(
                "event=tokens_reload_failed path=%s error=%s: keeping the %d tokens "
                "loaded before",
                self.path,
                exc,
                len(self._tokens),
            )
            return
        if self._seen is not None:
            log.info("event=tokens_reloaded path=%s tokens=%d", self.path, len(tokens))
        self._tokens, self._seen = tokens, signature

    def refresh(self) -> None:
        """Re-read the file if it changed (checked at most once a second)."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        try:
            changed = self._signature() != self._seen
        except OSError:
            changed = True
        if changed:
            self._load()

    def name_of(self, authorization: str | None) -> str | None:
        """The name of the token in an `Authorization: Bearer ...` value, or None.

        Every stored digest is compared, match or not, in constant time.
        """
        self.refresh()
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = hashlib.sha256(token.strip().encode()).digest()
        found: str | None = None
        for stored, name in self._tokens.items():
            if hmac.compare_digest(presented, stored):
                found = name
        return found
