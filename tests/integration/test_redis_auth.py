"""Redis with AUTH (and TLS): the right password serves, a wrong one is a clean 503.

A real redis-server with `requirepass`, features bootstrapped into it through
the connection string (`host:port,password=...`), and a real `bentoml serve`
per connection string. The password must never reach a caller or a log.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.processes import BentoServer, RedisServer, Workspace, free_port, wait_for

PASSWORD = secrets.token_hex(16)
WRONG = secrets.token_hex(16)
CUSTOMER = {"customer_id": "7590-VHVEG"}


def _redis_env(connection_string: str) -> dict[str, str]:
    return {
        "PREDICTFLOW_FEAST__ONLINE_STORE": "redis",
        "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING": connection_string,
    }


@pytest.fixture(scope="module")
def redis_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_workspace(workspace: Workspace, redis_auth: RedisServer) -> Workspace:
    """Features materialized into the Redis that needs a password."""
    env = _redis_env(f"{redis_auth.address},password={PASSWORD}")
    done = workspace.run("bootstrap", extra_env=env)
    assert PASSWORD not in done.stdout + done.stderr
    return Workspace(workspace.root, {**workspace.env, **env})


def _serve(
    workspace: Workspace, name: str, connection_string: str, ready: str = "/readyz"
) -> BentoServer:
    return BentoServer(workspace, name, _redis_env(connection_string)).wait(ready)


def test_the_right_password_serves(
    auth_workspace: Workspace, redis_auth: RedisServer
) -> None:
    server = _serve(
        auth_workspace, "redis-auth", f"{redis_auth.address},password={PASSWORD}"
    )
    try:
        r = httpx.post(f"{server.url}/predict", json=CUSTOMER, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["customer_id"] == CUSTOMER["customer_id"]
    finally:
        server.stop()
    assert PASSWORD not in server.log_path.read_text()


def test_a_wrong_password_is_a_clean_503(
    auth_workspace: Workspace, redis_auth: RedisServer
) -> None:
    connection = f"{redis_auth.address},password={WRONG}"
    server = _serve(auth_workspace, "redis-wrong", connection, ready="/livez")
    try:
        r = httpx.post(f"{server.url}/predict", json=CUSTOMER, timeout=60)
        ready = httpx.get(f"{server.url}/readyz", timeout=60)
    finally:
        server.stop()
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "feature_store_unavailable"
    assert body["retryable"] is True
    # Says what is wrong: Redis refused the login.
    assert "Authentication" in body["message"], body
    assert ready.status_code == 503
    logs = server.log_path.read_text()
    for secret in (PASSWORD, WRONG):
        assert secret not in r.text
        assert secret not in logs


# -- TLS ---------------------------------------------------------------------


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _tls_files(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, check=True, capture_output=True
        )

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test CA",
    )  # fmt: skip
    openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", "2", "-days", "2", "-extfile", "server.ext",
        "-out", "server.pem",
    )  # fmt: skip
    return TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server.key"
    )


@pytest.fixture(scope="module")
def redis_tls(
    tmp_path_factory: pytest.TempPathFactory,
    auth_workspace: Workspace,
    redis_auth: RedisServer,
) -> Iterator[tuple[int, TlsFiles]]:
    """A TLS-only Redis with the same password, a replica of the one bootstrapped."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's certificates")
    workdir = tmp_path_factory.mktemp("redis-tls")
    tls = _tls_files(workdir / "tls")
    port = free_port()
    config = f"""
port 0
bind 127.0.0.1
tls-port {port}
tls-cert-file {tls.cert}
tls-key-file {tls.key}
tls-ca-cert-file {tls.ca}
tls-auth-clients no
requirepass "{PASSWORD}"
masterauth "{PASSWORD}"
replicaof 127.0.0.1 {redis_auth.port}
save ""
appendonly no
dir {workdir}
"""
    proc = subprocess.Popen(
        ["redis-server", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(config.encode())
    proc.stdin.close()
    import redis

    # 127.0.0.1, not redis-py's default "localhost": the name the certificate has.
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        password=PASSWORD,
        ssl=True,
        ssl_ca_certs=str(tls.ca),
    )
    try:
        wait_for(
            lambda: (
                client.info("replication")["master_link_status"] == "up"
                and client.dbsize() > 0
            ),
            60,
            "the TLS replica's first sync",
        )
        yield port, tls
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_tls_with_the_right_password_serves(
    auth_workspace: Workspace, redis_tls: tuple[int, TlsFiles]
) -> None:
    port, tls = redis_tls
    connection = f"127.0.0.1:{port},ssl=true,ssl_ca_certs={tls.ca},password={PASSWORD}"
    server = _serve(auth_workspace, "redis-tls", connection)
    try:
        r = httpx.post(f"{server.url}/predict", json=CUSTOMER, timeout=60)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    assert PASSWORD not in server.log_path.read_text()


def test_tls_with_an_unknown_ca_is_a_clean_503(
    auth_workspace: Workspace, redis_tls: tuple[int, TlsFiles], tmp_path: Path
) -> None:
    """A server certificate the client cannot verify: refused, not trusted."""
    port, _ = redis_tls
    other = _tls_files(tmp_path / "other-ca")
    connection = (
        f"127.0.0.1:{port},ssl=true,ssl_ca_certs={other.ca},password={PASSWORD}"
    )
    server = _serve(auth_workspace, "redis-tls-other-ca", connection, ready="/livez")
    try:
        r = httpx.post(f"{server.url}/predict", json=CUSTOMER, timeout=60)
    finally:
        server.stop()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "feature_store_unavailable"
    assert PASSWORD not in r.text and PASSWORD not in server.log_path.read_text()
