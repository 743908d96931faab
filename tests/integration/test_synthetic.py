"""`bootstrap --synthetic N` on real stores: Feast's format, ids listed, idempotent."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from devtools.processes import Workspace
from predictflow import feature_repo, synthetic
from predictflow.data import load_telco
from predictflow.encoding import FEATURES
from predictflow.features import OnlineFeatures
from predictflow.settings import FeastSettings, Settings

N = 2_500
CHUNK = 1_000


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def settings(
    request: pytest.FixtureRequest,
    workspace: Workspace,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """A copy of the bootstrapped feature repository (its own SQLite file, or
    its own Redis database), so the shared workspace keeps its 7,043 customers."""
    root = tmp_path_factory.mktemp(f"synthetic-{request.param}")
    repo = root / "feature_repo"
    shutil.copytree(Path(workspace.env["PREDICTFLOW_FEAST__REPO_PATH"]), repo)
    redis = "127.0.0.1:6379"
    if request.param == "redis":
        redis = f"{request.getfixturevalue('redis_address')},db=9"
    feast = FeastSettings(
        repo_path=repo, online_store=request.param, redis_connection_string=redis
    )
    if request.param == "redis":
        # Its own database: the Telco customers first, as bootstrap does.
        feature_repo.apply_and_materialize(feast)
    return Settings(data_dir=root / "var", feast=feast)


def test_synthetic_customers_are_served_like_any_other(settings: Settings) -> None:
    first = synthetic.load(settings, N, progress=False, workers=2, chunk_size=CHUNK)
    assert first.written
    ids = first.ids_file.read_text().split()
    assert len(ids) == len(set(ids)) == N
    assert all(cid.startswith(synthetic.ID_PREFIX) for cid in ids)
    assert not set(ids) & set(load_telco()["customer_id"])
    expected = pd.concat(
        [synthetic.chunk(start, N, CHUNK) for start in range(0, N, CHUNK)]
    ).set_index("customer_id")
    assert list(expected.index) == ids
    offline = pd.read_parquet(settings.feast.repo_path / synthetic.SOURCE_PARQUET)
    assert list(offline["customer_id"]) == ids

    # Serving's read (the fast one) finds them, value for value, and the
    # Telco customers are still there.
    features = OnlineFeatures.open(settings.feast)
    sample = random.Random(5).sample(ids, 200)  # noqa: S311 - a sample
    rows = features.get([*sample, "7590-VHVEG"])
    assert rows[-1] is not None
    for cid, row in zip(sample, rows, strict=False):
        assert row is not None, cid
        want = expected.loc[cid]
        for name in FEATURES:
            assert row[name] == pytest.approx(want[name]), (cid, name)

    # A rerun finds them and writes nothing; without the ids file it writes
    # the same customers again.
    again = synthetic.load(settings, N, progress=False, chunk_size=CHUNK)
    assert not again.written
    first.ids_file.unlink()
    third = synthetic.load(settings, N, progress=False, workers=1, chunk_size=CHUNK)
    assert third.written
    assert third.ids_file.read_text().split() == ids
    assert features.get(sample) == rows[:-1]
