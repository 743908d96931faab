"""`predictflow report`: a registered version's evaluation as files and one HTML page.

The evaluation logged at training (the run's `evaluation/` artifacts) is
downloaded. A version logged without one, or `recompute=True`, is evaluated
again from its registered model and the committed data: the same seeded split,
so the same held-out numbers, and the cross-validation rerun with the run's
parameters.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from predictflow import data, evaluation, registry, training
from predictflow.errors import DataIntegrityError
from predictflow.settings import Settings

log = logging.getLogger(__name__)

INDEX = "index.html"


@dataclass(frozen=True)
class Report:
    """Where a report was written and how it was obtained."""

    version: str
    directory: Path
    recomputed: bool

    @property
    def index(self) -> Path:
        """The HTML page."""
        return self.directory / INDEX


def reports_dir(settings: Settings) -> Path:
    """`var/reports` under the configured data directory."""
    return settings.data_dir / "reports"


def write_report(
    settings: Settings, version: str | None = None, *, recompute: bool = False
) -> Report:
    """Write `reports/<version>/` with the evaluation files and `index.html`.

    `version` None means the champion. Raises `registry.UnknownVersion`, and
    `DataIntegrityError` when a version to recompute was trained on other data.
    """
    info = registry.get_version(settings, version)
    out = reports_dir(settings) / info.version
    with tempfile.TemporaryDirectory(prefix="predictflow-report-") as tmp:
        staging = Path(tmp) / "report"
        fetched = not recompute and registry.download_evaluation(
            settings, info.run_id, Path(tmp) / "download"
        )
        if fetched:
            shutil.copytree(Path(tmp) / "download" / evaluation.ARTIFACT_PATH, staging)
        else:
            log.info(
                "event=report_recompute version=%s reason=%s",
                info.version,
                "asked" if recompute else "no_logged_evaluation",
            )
            _recompute(settings, info, staging, Path(tmp) / "model")
        summary = json.loads((staging / evaluation.SUMMARY_JSON).read_text())
        (staging / INDEX).write_text(
            render_html(info, summary, recomputed=not fetched), encoding="utf-8"
        )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, out)
    log.info("event=report_written version=%s path=%s", info.version, out)
    return Report(version=info.version, directory=out, recomputed=not fetched)


def _recompute(
    settings: Settings, info: registry.VersionInfo, out: Path, scratch: Path
) -> None:
    from predictflow.model import ChurnModel

    trained_on = info.tags.get("data_sha256")
    if trained_on is not None and trained_on != data.TELCO_SHA256:
        raise DataIntegrityError(
            f"version {info.version} was trained on data {trained_on[:12]}..., "
            f"the committed data is {data.TELCO_SHA256[:12]}...: its held-out "
            "set cannot be rebuilt here"
        )
    model = ChurnModel.from_mlflow_dir(
        registry.download_model(settings, info.version, scratch), info.version
    )
    split = training.split(data.load_telco())
    params = _params(info.params)
    cv = training.cross_validate(split, params) if params is not None else None
    evaluation.write(evaluation.evaluate_model(model, split, cv), out)


def _params(logged: dict[str, str]) -> training.XGBoostParams | None:
    """The run's XGBoostParams back from MLflow's string params (None: not all)."""
    values: dict[str, Any] = {}
    for f in fields(training.XGBoostParams):
        if f.name not in logged:
            return None
        kind = type(getattr(training.XGBoostParams(), f.name))
        values[f.name] = kind(logged[f.name])
    return training.XGBoostParams(**values)


def render_html(
    info: registry.VersionInfo, summary: dict[str, Any], *, recomputed: bool
) -> str:
    """The page: what was evaluated, the metrics, the four plots, the deciles."""
    e = html.escape
    held = summary["held_out"]
    metrics = held["metrics"]
    rows = [
        ("Held-out ROC AUC", f"{metrics['roc_auc']:.4f}"),
        ("Held-out PR AUC (average precision)", f"{metrics['pr_auc']:.4f}"),
        ("Held-out log loss", f"{metrics['log_loss']:.4f}"),
        ("Held-out Brier score", f"{metrics['brier']:.4f}"),
    ]
    cv = summary.get("cv")
    if cv:
        folds = ", ".join(f"{v:.4f}" for v in cv["fold_roc_auc"])
        rows.append(
            (
                f"{cv['folds']}-fold CV ROC AUC (training 80 %)",
                f"{cv['roc_auc_mean']:.4f} ± {cv['roc_auc_std']:.4f} (folds: {folds})",
            )
        )
    else:
        rows.append(("Cross-validated ROC AUC", "not available for this run"))
    metric_rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    decile_rows = "\n".join(
        "<tr>"
        f"<td>{d['decile']}</td><td>{d['customers']}</td><td>{d['churners']}</td>"
        f"<td>{d['min_score']:.3f}–{d['max_score']:.3f}</td>"
        f"<td>{d['churn_rate']:.1%}</td><td>{d['lift']:.2f}</td>"
        f"<td>{d['cumulative_customers']:.0%}</td>"
        f"<td>{d['cumulative_gain']:.1%}</td><td>{d['cumulative_lift']:.2f}</td>"
        "</tr>"
        for d in summary["deciles"]
    )
    captions = {
        "roc": "ROC curve",
        "precision_recall": "Precision-recall curve",
        "calibration": "Calibration (reliability): observed churn rate per "
        "predicted-probability bin",
        "importance": "Global importance: mean |TreeSHAP contribution| per field",
    }
    figures = "\n".join(
        f'<figure><img src="{e(name)}" alt="{e(captions[key])}">'
        f"<figcaption>{e(captions[key])}</figcaption></figure>"
        for key, name in evaluation.IMAGES.items()
    )
    aliases = ", ".join(info.aliases) or "none"
    source = (
        "recomputed from the registered model and the committed data"
        if recomputed
        else "as logged to MLflow at training"
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>churn model version {e(info.version)}: evaluation</title>
<style>
body {{ font-family: sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th {{ background: #f3f3f3; text-align: left; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
figure {{ margin: 0; }}
figure img {{ max-width: 34rem; width: 100%; }}
figcaption {{ font-size: .9rem; color: #555; }}
</style>
</head>
<body>
<h1>Churn model version {e(info.version)}</h1>
<p>Aliases: <b>{e(aliases)}</b>. Run <code>{e(info.run_id)}</code>, registered
{e(info.created.isoformat(timespec="seconds"))}. Held-out set:
{held["customers"]:,} customers ({held["churners"]:,} churners), the seeded 20 %
never used to fit. Evaluation {e(source)}.</p>
<h2>Metrics</h2>
<table>
{metric_rows}
</table>
<h2>Plots</h2>
<div class="figures">
{figures}
</div>
<h2>Lift and gain by decile (held-out set)</h2>
<p>Customers ranked by churn probability, decile 1 the riskiest. Gain: the share
of all churners reached by contacting deciles 1 to d. Also in
<a href="{evaluation.DECILES_CSV}">{evaluation.DECILES_CSV}</a>.</p>
<table>
<tr><th>Decile</th><th>Customers</th><th>Churners</th><th>Scores</th>
<th>Churn rate</th><th>Lift</th><th>Cum. customers</th><th>Cum. gain</th>
<th>Cum. lift</th></tr>
{decile_rows}
</table>
</body>
</html>
"""
