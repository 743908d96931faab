"""Process tuning of the serving processes: lean imports, a settled heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from predictflow import metrics, runtime


def test_lean_imports_leave_scoring_working_without_sklearn() -> None:
    # In a child process: it changes how this interpreter imports.
    code = textwrap.dedent(
        """
        from predictflow import runtime
        runtime.lean_imports()
        import numpy as np
        import typeguard
        import xgboost as xgb

        def f(x: int) -> int:
            return x
        assert typeguard.typechecked(f) is f
        try:
            import sklearn
        except ImportError:
            pass
        else:
            raise SystemExit("sklearn imported")
        from feast import FeatureStore, FeatureView
        x = np.random.default_rng(0).random((64, 3))
        booster = xgb.train({"nthread": 1}, xgb.DMatrix(x, label=x[:, 0]), 3)
        assert booster.inplace_predict(x).shape == (64,)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_settle_heap_freezes_and_times_collections() -> None:
    import gc

    try:
        runtime.settle_heap()
        assert gc.get_freeze_count() > 0
        hist = metrics.get().gc_pause_seconds.labels("0")
        before = hist._sum.get()
        gc.collect(0)
        runtime.flush_gc_pauses()
        assert hist._sum.get() > before
    finally:
        gc.unfreeze()
        if runtime._observe_pause in gc.callbacks:
            gc.callbacks.remove(runtime._observe_pause)


def test_start_up_runs_no_collection_until_the_heap_is_settled() -> None:
    # Start-up's imports ran 4 full collections over objects that all live
    # on (0.2 s of a worker's start). A fresh process: GC state is global.
    code = textwrap.dedent(
        """
        import gc
        from predictflow import runtime
        started = []
        gc.callbacks.append(
            lambda phase, info: started.append(info) if phase == "start" else None
        )
        runtime.hold_collections()
        kept = [[] for _ in range(200_000)]
        for cell in kept:
            cell.append(cell)
        during = len(started)
        runtime.settle_heap()
        print(during, gc.isenabled(), gc.get_freeze_count() >= 200_000)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True", "True"]


def test_a_failed_build_turns_collection_back_on() -> None:
    code = textwrap.dedent(
        """
        import gc
        from predictflow.serving import build_core
        from predictflow.settings import Settings

        class Missing:
            tag = "churn-predictor:missing"

            def path_of(self, item):
                raise FileNotFoundError(item)

        try:
            build_core(Settings(), Missing())
        except FileNotFoundError:
            print(gc.isenabled())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_every_generation_has_its_series_before_its_first_pause() -> None:
    # A scrape must not sprout series when an older generation is first
    # collected (that grew /metrics under random paths, seen in CI). A fresh
    # process: no collection has been observed in it yet.
    code = textwrap.dedent(
        """
        from predictflow import metrics, runtime
        runtime.settle_heap()
        print(sorted(metrics.get().gc_pause_seconds._metrics))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('0',), ('1',), ('2',)]"


def test_the_gc_callback_takes_no_metrics_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    # A collection can start while this thread holds prometheus_client's value
    # lock: a callback that observed a metric took it again and wedged a worker.
    def no_metrics() -> None:
        raise AssertionError("the GC callback touched the metrics")

    monkeypatch.setattr(runtime.metrics, "get", no_metrics)
    runtime._observe_pause("start", {"generation": 0})
    runtime._observe_pause("stop", {"generation": 0})
    assert runtime._pauses and runtime._pauses[-1][0] == 0
    monkeypatch.undo()
    runtime.flush_gc_pauses()
    assert not runtime._pauses


def test_opening_the_store_config_leaves_the_offline_store_unimported() -> None:
    # A serving worker never reads offline; building Feast's config from the
    # YAML's `offline_store: {type: file}` dict imported Dask (0.7 s a start).
    code = textwrap.dedent(
        """
        import sys
        from predictflow import features
        from predictflow.settings import FeastSettings
        config = features.repo_config(FeastSettings())
        print("dask" in sys.modules)
        # The same store on first use (the `feast` CLI, `bootstrap`).
        print(type(config.offline_store).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "DaskOfflineStoreConfig"]


def test_the_follower_freezes_what_its_first_check_loaded() -> None:
    # The check that first imports the MLflow client (235,000 objects);
    # left unfrozen, every later full collection walked them (50-250 ms).
    code = textwrap.dedent(
        """
        import asyncio, gc, sys, types
        from predictflow import runtime
        from predictflow.lifecycle import ModelFollower
        from predictflow.settings import Settings

        assert "mlflow" not in sys.modules
        runtime.settle_heap()
        loaded = []
        follower = ModelFollower(None, Settings(model={"refresh_seconds": 0.01}))
        stop = asyncio.Event()

        def check():  # what a late, one-time import leaves behind
            sys.modules["mlflow"] = types.ModuleType("mlflow")
            loaded.extend({"n": [i]} for i in range(20_000))
            stop.set()
            return "unchanged"

        follower.check = check
        before = gc.get_freeze_count()
        asyncio.run(follower.run(stop))
        print(gc.get_freeze_count() - before >= 40_000)
        print(any(o is loaded[0] for o in gc.get_objects()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
