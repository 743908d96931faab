#!/usr/bin/env python3
"""Generate the dev secrets the docker compose stack runs with (`make compose-secrets`).

The compose stack runs with every lock on: a bearer token on the REST door, a
password on Redis, SASL logins on Kafka, a Grafana admin password. None of
them has a default in docker-compose.yml (`${NAME:?...}`), so `docker compose
up` refuses to start until they exist. This script makes them:

- `.env` beside docker-compose.yml, from `.env.example`: every placeholder
  (`change-me`) of a secret variable becomes a fresh random value; values
  already in `.env` are kept, so a second run changes nothing and a running
  stack keeps working.
- `deploy/secrets/tokens`, the service's tokens file (`compose:<sha256>`), and
  `deploy/secrets/rest-token`, the token itself, for your `curl`:

      curl -H "Authorization: Bearer $(cat deploy/secrets/rest-token)" ...

- `deploy/secrets/requester.env`, the `PREDICTFLOW_KAFKA__*` settings with
  which `predictflow publish` (or the client) reaches the stack's Kafka from
  the host (`set -a; . deploy/secrets/requester.env; set +a`).

Every file is written with mode 600 (the directory 700), except the tokens
file (644: compose mounts it as it is, for the image's own user; it holds
SHA-256 digests only). Nothing here is for production: Kubernetes takes its
secrets from Secrets (k8s/README.md).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictflow.auth import new_token  # noqa: E402

#: Names of variables that hold a secret (the compose tests use the same rule).
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|API_KEY|PRIVATE_KEY", re.I)
PLACEHOLDER = "change-me"
#: Whom the REST token is for (logs and metrics name it).
CALLER = "compose"
#: The stack's Kafka as the host sees it (docker-compose.yml, EXTERNAL).
HOST_KAFKA = "127.0.0.1:9094"


def read_env(path: Path) -> dict[str, str]:
    """`NAME=value` lines of an env file (comments and blanks skipped)."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                name, _, value = line.partition("=")
                values[name.strip()] = value.strip()
    return values


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def render_env(example: str, have: dict[str, str]) -> tuple[str, list[str]]:
    """`.env` text from `.env.example`'s, keeping `have`; and the names made."""
    made: list[str] = []
    lines: list[str] = []
    for line in example.splitlines():
        name, eq, value = line.partition("=")
        name = name.strip()
        if line.lstrip().startswith("#") or not eq:
            lines.append(line)
            continue
        if name in have and have[name] != PLACEHOLDER:
            value = have[name]
        elif SECRET.search(name) and value.strip() == PLACEHOLDER:
            value = secrets.token_hex(24)  # hex: safe in JAAS quotes and YAML
            made.append(name)
        lines.append(f"{name}={value}")
    # Your own additions to `.env` stay.
    known = {line.partition("=")[0].strip() for line in example.splitlines()}
    lines += [f"{name}={value}" for name, value in have.items() if name not in known]
    return "\n".join(lines) + "\n", made


def say(message: str) -> None:
    """One line for the person running the script."""
    sys.stdout.write(message + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the compose project")
    args = p.parse_args(argv)
    root: Path = args.root
    env_path = root / ".env"
    secrets_dir = root / "deploy" / "secrets"

    text, made = render_env((root / ".env.example").read_text(), read_env(env_path))
    write_private(env_path, text)
    env = read_env(env_path)
    say(f"{env_path}: " + (f"made {', '.join(made)}" if made else "unchanged"))

    token_file = secrets_dir / "rest-token"
    tokens_file = secrets_dir / "tokens"
    if not (token_file.exists() and tokens_file.exists()):
        made_token = new_token(CALLER)
        write_private(token_file, made_token.token + "\n")
        write_private(
            tokens_file,
            "# The compose stack's REST callers (scripts/compose_secrets.py).\n"
            f"{made_token.line}\n",
        )
        # Compose bind-mounts a file secret as it is, and the image's user is
        # not you: it must be able to read the file. It holds digests only.
        tokens_file.chmod(0o644)
        say(f"{tokens_file}: token '{CALLER}' made; the token is in {token_file}")
    else:
        say(f"{tokens_file}: unchanged")

    write_private(
        secrets_dir / "requester.env",
        "# The stack's Kafka from the host, as the requester user.\n"
        f"PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS={HOST_KAFKA}\n"
        "PREDICTFLOW_KAFKA__SECURITY_PROTOCOL=SASL_PLAINTEXT\n"
        "PREDICTFLOW_KAFKA__SASL_MECHANISM=PLAIN\n"
        "PREDICTFLOW_KAFKA__SASL_USERNAME=requester\n"
        f"PREDICTFLOW_KAFKA__SASL_PASSWORD={env['KAFKA_REQUESTER_PASSWORD']}\n",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
