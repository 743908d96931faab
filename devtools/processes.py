"""Real services for tests and benchmarks: a workspace, `bentoml serve`, Redis,
Kafka, the Kafka runner, Prometheus, and the helpers to start and stop them."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: Seconds an idle keep-alive connection stays open (`bentoml serve
#: --timeout-keep-alive`; uvicorn's default is 5). Longer than the idle
#: timeout of what usually sits in front (nginx and AWS ALB: 60 s), so the
#: client closes first: a request sent as the server closes is reset. The
#: Makefile's `serve` and the image's command (deploy/bento) use the same.
KEEP_ALIVE_S = 75


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last!r})")


def stop_group(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM a process started in its own session, and its children; then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Workspace:
    """An isolated PredictFlow installation: data dir, Bento store, Feast repo."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> Workspace:
        repo = root / "feature_repo"
        repo.mkdir(parents=True)
        for name in (
            "feature_definitions.py",
            "feature_store.yaml",
            "feature_store.redis.yaml",
        ):
            shutil.copy(ROOT / "feature_repo" / name, repo / name)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREDICTFLOW_", "BENTOML_", "MLFLOW_"))
        }
        env.update(
            PREDICTFLOW_DATA_DIR=str(root / "var"),
            PREDICTFLOW_FEAST__REPO_PATH=str(repo),
            BENTOML_HOME=str(root / "bentoml"),
            BENTOML_DO_NOT_TRACK="true",
            # Serve the Bento-store model only: a test that moves an alias
            # must not change what other tests' servers serve. The tests of
            # alias following turn it on for their own processes.
            PREDICTFLOW_MODEL__REFRESH_SECONDS="0",
            PYTHONUNBUFFERED="1",
        )
        return cls(root, env)

    def run(
        self,
        *args: str,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "predictflow"), *args],
            env={**self.env, **(extra_env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


class BentoServer:
    """A real `bentoml serve` (of service.py, or a built Bento) on a free port."""

    def __init__(
        self,
        workspace: Workspace,
        name: str,
        extra_env: Mapping[str, str] | None = None,
        target: str = "service:ChurnPredictor",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Each server gets its own BENTOML_HOME (BentoML wipes the metrics
        # directory under it at start), sharing the workspace's model store.
        home = workspace.root / f"home-{name}"
        home.mkdir(exist_ok=True)
        for store in ("models", "bentos"):
            link = home / store
            if not link.exists():
                (Path(workspace.env["BENTOML_HOME"]) / store).mkdir(exist_ok=True)
                link.symlink_to(Path(workspace.env["BENTOML_HOME"]) / store)
        self.env = {**workspace.env, **(extra_env or {}), "BENTOML_HOME": str(home)}
        self.log_path = workspace.root / f"serve-{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "bentoml"),
                "serve",
                target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--timeout-keep-alive",
                str(KEEP_ALIVE_S),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, path: str = "/readyz", timeout: float = 120) -> BentoServer:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited: {self.logs()[-3000:]}")
            return httpx.get(self.url + path, timeout=5).status_code == 200

        try:
            wait_for(up, timeout, f"bentoml serve on {self.url}{path}")
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


class RedisServer:
    """A real redis-server (Debian package) on a free loopback port.

    With `password`, clients must AUTH (`requirepass`); it is passed in a
    config file on stdin, not on the command line every local user can read.
    """

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.password = password
        workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        if password is not None:
            # "-" first: redis-server reads the rest of its config from stdin.
            args.insert(1, "-")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if password is not None else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if password is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f'requirepass "{password}"\n'.encode())
            self.proc.stdin.close()
        import redis

        client = redis.Redis(port=self.port, password=password)
        try:
            wait_for(client.ping, 30, f"redis-server on port {self.port}")
        finally:
            client.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class KafkaBroker:
    """A real Apache Kafka broker (KRaft) run by scripts/kafka.sh on free ports.

    `security="sasl_ssl"`: SASL_SSL only, with users, TLS files and ACLs made
    by scripts/kafka.sh; `client_env(user)` is how each user connects.
    """

    def __init__(self, data_dir: Path, security: str = "plaintext") -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.security = security
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_DATA_DIR": str(data_dir),
            # Not whatever the calling shell exported.
            "KAFKA_SECURITY": security,
        }
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._starting: subprocess.Popen[bytes] | None = None

    def client_env(self, user: str) -> dict[str, str]:
        """The `PREDICTFLOW_KAFKA__*` variables of `user` (clients/USER.env)."""
        env = {}
        text = (self.data_dir / "clients" / f"{user}.env").read_text()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = shlex.split(value)[0] if value else ""
        return env

    def password(self, user: str) -> str:
        """`user`'s SASL password."""
        return self.client_env(user)["PREDICTFLOW_KAFKA__SASL_PASSWORD"]

    @property
    def log_path(self) -> Path:
        """The broker's own log."""
        return self.data_dir / "server.log"

    def _script(self, command: str, timeout: float) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "kafka.sh"), command],
            env=self.env,
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
        )

    def up(self) -> KafkaBroker:
        self._script("up", timeout=900)
        return self

    def start(self) -> KafkaBroker:
        """Begin `up` without waiting (to overlap other slow set-up); see wait_up."""
        self._starting = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "kafka.sh"), "up"],
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        return self

    def wait_up(self, timeout: float = 900) -> KafkaBroker:
        """Wait for the `up` begun by start(); raise if it failed."""
        assert self._starting is not None, "start() first"
        code = self._starting.wait(timeout=timeout)
        if code != 0:
            raise subprocess.CalledProcessError(code, "scripts/kafka.sh up")
        return self

    def down(self) -> None:
        if self._starting is not None and self._starting.poll() is None:
            self._starting.terminate()
            self._starting.wait(timeout=30)
        self._script("down", timeout=120)


class ConsumerProcess:
    """A standalone Kafka runner: `python -m consumers` (or `command`)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        command: Sequence[str] = ("-m", "consumers"),
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_assigned(self, timeout: float = 120) -> ConsumerProcess:
        """Wait until the runner has joined the group and owns partitions."""

        def assigned() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"consumer exited: {self.logs()[-3000:]}")
            return "event=partitions_assigned" in self.logs()

        wait_for(assigned, timeout, "standalone consumer")
        return self

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL it if it still runs; close its log either way."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def pause(self) -> None:
        """SIGSTOP: frozen mid-step, sockets open, no heartbeats (a zombie)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: carries on where it was stopped."""
        self.proc.send_signal(signal.SIGCONT)


class PrometheusServer:
    """A real Prometheus (Debian package) scraping the given targets every second."""

    def __init__(self, workdir: Path, targets: Mapping[str, str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is not installed (apt-get install prometheus)"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "churn-predictor",
                    "static_configs": [
                        {"targets": [address], "labels": {"track": track}}
                        for track, address in targets.items()
                    ],
                }
            ],
        }
        import yaml

        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200,
            60,
            "prometheus",
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()
