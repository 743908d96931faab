"""A trained model's held-out evaluation as files people can look at.

ROC and precision-recall curves, a calibration (reliability) plot and a global
importance plot (mean |TreeSHAP contribution| per contract field) as PNG, the
lift/gain table by deciles as CSV, and every number behind them in
`summary.json`. Training logs these as the MLflow artifacts of its run (folder
`evaluation/`); `predictflow report` turns them into a page.

matplotlib is imported inside the plotting functions only, and nothing on the
serving path imports this module.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from predictflow.encoding import FEATURES, FIELD_OF_COLUMN
from predictflow.training import CrossValidation, Split, evaluate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from predictflow.model import ChurnModel

#: Folder of a run's artifacts that holds the evaluation.
ARTIFACT_PATH = "evaluation"
#: The four plots, in the order a page shows them.
IMAGES: dict[str, str] = {
    "roc": "roc.png",
    "precision_recall": "precision_recall.png",
    "calibration": "calibration.png",
    "importance": "importance.png",
}
DECILES_CSV = "deciles.csv"
SUMMARY_JSON = "summary.json"

_DPI = 100
_SIZE = (5.6, 4.2)
_MODEL_COLOUR = "#1f5fa8"
_REFERENCE_COLOUR = "#8a8a8a"


@dataclass(frozen=True)
class DecileRow:
    """One tenth of the customers, ranked by score (decile 1: the riskiest)."""

    decile: int
    customers: int
    churners: int
    min_score: float
    max_score: float
    churn_rate: float
    #: The decile's churn rate over the overall churn rate.
    lift: float
    #: Share of all customers in deciles 1..this one.
    cumulative_customers: float
    #: Share of all churners caught by contacting deciles 1..this one (the gain).
    cumulative_gain: float
    #: cumulative_gain / cumulative_customers.
    cumulative_lift: float


@dataclass(frozen=True)
class CalibrationBin:
    """Customers whose predicted probability fell in [lower, upper)."""

    lower: float
    upper: float
    customers: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True)
class Evaluation:
    """Held-out labels and scores, and what is computed from them."""

    y: npt.NDArray[np.int64]
    p: npt.NDArray[np.float64]
    metrics: dict[str, float]
    #: Field -> mean |contribution| to the log-odds, largest first.
    importance: dict[str, float]
    cv: CrossValidation | None


def deciles(
    y: npt.NDArray[Any], p: npt.NDArray[Any], groups: int = 10
) -> list[DecileRow]:
    """The lift/gain table: customers ranked by score, cut into equal groups.

    Groups differ in size by at most one customer (the first ones get the
    extra); tied scores keep their input order, so a tie across a boundary is
    split by position, not by chance.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) != len(p) or len(y) < groups:
        raise ValueError(f"need at least {groups} scored customers, got {len(y)}")
    total_churners = int(y.sum())
    if total_churners == 0:
        raise ValueError("no churners: lift and gain are undefined")
    overall = total_churners / len(y)
    order = np.argsort(-p, kind="stable")
    rows = []
    seen = caught = 0
    for i, idx in enumerate(np.array_split(order, groups), start=1):
        churners = int(y[idx].sum())
        seen += len(idx)
        caught += churners
        rate = churners / len(idx)
        share = seen / len(y)
        gain = caught / total_churners
        rows.append(
            DecileRow(
                decile=i,
                customers=len(idx),
                churners=churners,
                min_score=float(p[idx].min()),
                max_score=float(p[idx].max()),
                churn_rate=rate,
                lift=rate / overall,
                cumulative_customers=share,
                cumulative_gain=gain,
                cumulative_lift=gain / share,
            )
        )
    return rows


def calibration_bins(
    y: npt.NDArray[Any], p: npt.NDArray[Any], bins: int = 10
) -> list[CalibrationBin]:
    """Reliability table: equal-width probability bins, empty ones left out.

    Bin i holds [i/bins, (i+1)/bins); the last also holds 1.0.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) != len(p):
        raise ValueError("labels and scores differ in length")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("scores must be probabilities in [0, 1]")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        if n:
            out.append(
                CalibrationBin(
                    lower=b / bins,
                    upper=(b + 1) / bins,
                    customers=n,
                    mean_predicted=float(p[inside].mean()),
                    observed_rate=float(y[inside].mean()),
                )
            )
    return out


def field_importance(model: ChurnModel, x: npt.NDArray[np.float32]) -> dict[str, float]:
    """Mean |contribution| to the log-odds per contract field, largest first.

    One-hot columns are summed back to their field before the absolute
    value, as a score's reasons are.
    """
    contributions = model.contributions(x)
    per_field = np.zeros((len(x), len(FEATURES)))
    np.add.at(per_field.T, np.asarray(FIELD_OF_COLUMN), contributions[:, :-1].T)
    mean_abs = np.abs(per_field).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    return {FEATURES[i]: float(mean_abs[i]) for i in order}


def evaluate_model(
    model: ChurnModel, data: Split, cv: CrossValidation | None = None
) -> Evaluation:
    """Score the held-out set and compute the importance from the same rows."""
    p = model.predict(data.x_test)
    return Evaluation(
        y=data.y_test,
        p=p,
        metrics=evaluate(data.y_test, p),
        importance=field_importance(model, data.x_test),
        cv=cv,
    )


def write(ev: Evaluation, directory: Path) -> list[Path]:
    """Write the four PNGs, `deciles.csv` and `summary.json`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    table = deciles(ev.y, ev.p)
    bins = calibration_bins(ev.y, ev.p)
    figures = {
        "roc": _roc_figure(ev),
        "precision_recall": _pr_figure(ev),
        "calibration": _calibration_figure(ev, bins),
        "importance": _importance_figure(ev),
    }
    paths = []
    for key, fig in figures.items():
        path = directory / IMAGES[key]
        _save(fig, path)
        paths.append(path)
    path = directory / DECILES_CSV
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(table[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in table)
    paths.append(path)
    summary = {
        "held_out": {
            "customers": len(ev.y),
            "churners": int(ev.y.sum()),
            "metrics": ev.metrics,
        },
        "cv": None
        if ev.cv is None
        else {
            "folds": len(ev.cv.fold_roc_auc),
            "fold_roc_auc": list(ev.cv.fold_roc_auc),
            "roc_auc_mean": ev.cv.mean,
            "roc_auc_std": ev.cv.std,
        },
        "deciles": [asdict(row) for row in table],
        "calibration": [asdict(b) for b in bins],
        "importance": ev.importance,
    }
    path = directory / SUMMARY_JSON
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths.append(path)
    return paths


def _figure(rows: int = 1, height_ratios: list[int] | None = None) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The object API on an Agg canvas: no pyplot, no global backend state.
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if rows > 1:
        fig.subplots(rows, 1, sharex=True, height_ratios=height_ratios)
    else:
        fig.add_subplot()
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=_DPI)


def _n(ev: Evaluation) -> str:
    return f"held-out set, {len(ev.y):,} customers"


def _roc_figure(ev: Evaluation) -> Figure:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(ev.y, ev.p)
    fig = _figure()
    ax = fig.axes[0]
    ax.plot(
        fpr,
        tpr,
        color=_MODEL_COLOUR,
        lw=2,
        label=f"XGBoost (ROC AUC {ev.metrics['roc_auc']:.3f})",
    )
    ax.plot([0, 1], [0, 1], ls="--", color=_REFERENCE_COLOUR, label="chance (0.5)")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="False positive rate (non-churners flagged)",
        ylabel="True positive rate (churners caught)",
        title=f"ROC curve ({_n(ev)})",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _pr_figure(ev: Evaluation) -> Figure:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(ev.y, ev.p)
    prevalence = float(ev.y.mean())
    fig = _figure()
    ax = fig.axes[0]
    ax.plot(
        recall,
        precision,
        color=_MODEL_COLOUR,
        lw=2,
        drawstyle="steps-post",
        label=f"XGBoost (average precision {ev.metrics['pr_auc']:.3f})",
    )
    ax.axhline(
        prevalence,
        ls="--",
        color=_REFERENCE_COLOUR,
        label=f"no skill (churn rate {prevalence:.3f})",
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="Recall (share of churners caught)",
        ylabel="Precision (share of flagged who churn)",
        title=f"Precision-recall curve ({_n(ev)})",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return fig


def _calibration_figure(ev: Evaluation, bins: list[CalibrationBin]) -> Figure:
    fig = _figure(rows=2, height_ratios=[3, 1])
    top, bottom = fig.axes
    top.plot(
        [0, 1], [0, 1], ls="--", color=_REFERENCE_COLOUR, label="perfectly calibrated"
    )
    top.plot(
        [b.mean_predicted for b in bins],
        [b.observed_rate for b in bins],
        marker="o",
        color=_MODEL_COLOUR,
        lw=2,
        label=f"XGBoost (Brier {ev.metrics['brier']:.3f})",
    )
    top.set(
        xlim=(0, 1),
        ylim=(0, 1),
        ylabel="Observed churn rate",
        title=f"Calibration ({_n(ev)})",
    )
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    width = 1 / 10
    bottom.bar(
        [b.lower for b in bins],
        [b.customers for b in bins],
        width=width,
        align="edge",
        color=_MODEL_COLOUR,
        alpha=0.6,
        edgecolor="white",
        label="customers per bin",
    )
    bottom.set(xlabel="Predicted churn probability (10 equal-width bins)")
    bottom.set_ylabel("Customers")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper right", fontsize="small")
    return fig


def _importance_figure(ev: Evaluation) -> Figure:
    names = list(ev.importance)[::-1]
    values = [ev.importance[n] for n in names]
    fig = _figure()
    fig.set_size_inches(_SIZE[0], 5.2)
    ax = fig.axes[0]
    ax.barh(
        names,
        values,
        color=_MODEL_COLOUR,
        label="one-hot columns summed per field",
    )
    ax.set(
        xlabel="Mean |contribution| to the log-odds (TreeSHAP)",
        title=f"Global importance per field\n({_n(ev)})",
    )
    ax.tick_params(axis="y", labelsize="small")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig
