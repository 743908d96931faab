"""The model follower against a real MLflow server, as in Compose and Kubernetes.

It asks where the alias points over MLflow's REST API: a serving process must
not import the MLflow client (about 1.8 s of CPU holding the GIL, while
requests wait) just to learn that nothing moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest

from devtools.processes import BIN, ROOT, free_port, stop_group, wait_for
from predictflow.registry_rest import AliasClient, RegistryError
from predictflow.settings import Settings
from tests.registry_support import register, set_alias, small_booster

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Any type hint is inferred:UserWarning"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1, with its own store and artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{uri}/health", timeout=2).status_code == 200,
            120,
            "mlflow server",
        )
        yield uri
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def settings(server: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("follower") / "var",
        mlflow={"tracking_uri": server, "experiment": "follow-over-rest"},
    )


#: One serving process's view: the follower on a scorer that serves version
#: argv[1]. After each check it prints the outcome, the version served, and
#: whether the MLflow client is imported; it checks again on each stdin line.
FOLLOWER = textwrap.dedent(
    """
    import json, sys
    from predictflow.lifecycle import ModelFollower
    from predictflow.model import ChurnModel
    from predictflow.scoring import Scorer
    from predictflow.settings import Settings
    from tests.registry_support import small_booster

    model = ChurnModel(small_booster(1), f"churn-predictor:{sys.argv[1]}")
    scorer = Scorer(None, model)
    follower = ModelFollower(scorer, Settings())
    while True:
        outcome = follower.check()
        step = [outcome, scorer.model.version, "mlflow" in sys.modules]
        print(json.dumps(step), flush=True)
        if not sys.stdin.readline():
            break
    """
)


def test_an_unmoved_alias_costs_no_mlflow_import(settings: Settings) -> None:
    first = register(settings, small_booster(1), "champion")
    second = register(settings, small_booster(2), "champion")
    set_alias(settings, "champion", first)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREDICTFLOW_", "MLFLOW_"))
    }
    env.update(
        PREDICTFLOW_MLFLOW__TRACKING_URI=settings.tracking_uri,
        PREDICTFLOW_DATA_DIR=str(settings.data_dir),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, first],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        unmoved = json.loads(proc.stdout.readline())
        proc.stdin.write("\n")
        proc.stdin.flush()
        again = json.loads(proc.stdout.readline())
        set_alias(settings, "champion", second)
        proc.stdin.write("\n")
        proc.stdin.flush()
        moved = json.loads(proc.stdout.readline())
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == 0, err[-3000:]
    served = f"churn-predictor:{first}"
    assert unmoved == ["unchanged", served, False], "asking imported MLflow"
    assert again == ["unchanged", served, False]
    # A moved alias needs the client, to download the new version.
    assert moved == ["swapped", f"churn-predictor:{second}", True]
    # Quietly: a serving log is no place for MLflow's progress bars.
    assert "Downloading artifacts" not in err, err[-3000:]


def test_an_unknown_alias_or_model_is_no_error(settings: Settings) -> None:
    register(settings, small_booster(1), "champion")
    aliases = AliasClient(settings.tracking_uri, timeout=10)
    try:
        assert aliases.version(settings.mlflow.model_name, "nobody-set-me") is None
        assert aliases.version("no-such-model", "champion") is None
        assert aliases.version(settings.mlflow.model_name, "champion") is not None
    finally:
        aliases.close()


def test_a_server_error_is_raised_not_taken_for_no_alias(settings: Settings) -> None:
    # A wrong base path: 404 with no MLflow error code (not "no such alias").
    aliases = AliasClient(settings.tracking_uri + "/no-such-prefix", timeout=10)
    try:
        with pytest.raises(RegistryError):
            aliases.version(settings.mlflow.model_name, "champion")
    finally:
        aliases.close()
