"""The Feast repository's offline side: definitions, the source file, materializing.

`predictflow bootstrap` writes the source, applies the definitions and loads
the online store through these; serving never imports this module.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predictflow.encoding import FEATURES
from predictflow.feast_reads import ENTITY_KEY
from predictflow.features import open_store
from predictflow.settings import FeastSettings

if TYPE_CHECKING:
    import pandas as pd

SOURCE_PARQUET = Path("data") / "customers.parquet"


def load_definitions(repo_path: Path) -> list[Any]:
    """The Feast objects defined in the repository's `feature_definitions.py`."""
    from feast import Entity, FeatureService, FeatureView, FileSource

    path = repo_path / "feature_definitions.py"
    spec = importlib.util.spec_from_file_location(
        "predictflow_feature_definitions", path
    )
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, FileSource, FeatureView, FeatureService)
    return [v for v in vars(module).values() if isinstance(v, kinds)]


def write_source(customers: pd.DataFrame, repo_path: Path) -> Path:
    """Write the offline source parquet: the features of each customer, stamped now."""
    now = datetime.now(UTC).replace(microsecond=0)
    frame = customers[[ENTITY_KEY, *FEATURES]].copy()
    frame["event_timestamp"] = now
    frame["created"] = now
    path = repo_path / SOURCE_PARQUET
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def apply_and_materialize(settings: FeastSettings) -> int:
    """`feast apply` the definitions, then load every source row into the online store.

    Returns the number of customers in the source. Safe to repeat: apply is a
    no-op when nothing changed, and materializing writes the same rows again.
    """
    import pandas as pd

    store = open_store(settings)
    store.apply(load_definitions(settings.repo_path))
    source = pd.read_parquet(
        settings.repo_path / SOURCE_PARQUET, columns=["event_timestamp"]
    )
    start = source["event_timestamp"].min().to_pydatetime() - timedelta(seconds=1)
    store.materialize(start_date=start, end_date=datetime.now(UTC))
    return len(source)
