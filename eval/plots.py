"""Figures for the evaluation report, drawn with matplotlib's Agg canvas.

Every function draws one figure, saves it as a PNG at ``path`` (parent
folders are created) and returns ``path`` as a string. Figures are built on
``matplotlib.figure.Figure`` with an Agg canvas, so no display and no global
pyplot state are involved.
"""
from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.metrics import binary_metrics, reliability_curve, roc_auc, roc_curve

DPI = 110


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_roc_curves(
    curves: dict[str, tuple],
    path,
    *,
    title: str = "ROC curves",
    threshold: float | None = None,
) -> str:
    """All sites' ROC curves on one plot, with the AUC in the legend.

    Args:
        curves: ``{name: (labels int (N,), scores float (N,))}``.
        path: where to write the PNG.
        title: figure title.
        threshold: if given, mark each curve's operating point at this score
            threshold (positive means ``score >= threshold``).

    A site with a single class has no ROC curve; it is listed in the legend
    as such.
    """
    figure = _new_figure(5.6, 5.2)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="chance")
    for index, (name, (labels, scores)) in enumerate(curves.items()):
        color = f"C{index % 10}"
        auc = roc_auc(labels, scores)
        if math.isnan(auc):
            axes.plot([], [], color=color, label=f"{name}: one class, no ROC (n={len(labels)})")
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, color=color, linewidth=1.8,
                  label=f"{name}: AUC {auc:.3f} (n={len(labels)})")
        if threshold is not None:
            point = binary_metrics(labels, scores, threshold)
            axes.plot(
                1.0 - point["specificity"], point["sensitivity"], marker="o",
                markersize=7, markeredgecolor="black", color=color, linestyle="none",
            )
    if threshold is not None:
        axes.plot([], [], marker="o", color="0.5", markeredgecolor="black", linestyle="none",
                  label=f"threshold {threshold:.3g}")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("1 - specificity (false positive rate)")
    axes.set_ylabel("sensitivity (true positive rate)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_confusion_matrices(
    matrices: dict[str, dict], path, *, title: str = "Confusion matrices"
) -> str:
    """One 2x2 confusion matrix per site, side by side.

    Args:
        matrices: ``{name: {"tp", "fp", "tn", "fn"}}`` integer counts.
        path: where to write the PNG.

    Cells show the count and the percentage of the true class (row).
    """
    count = max(1, len(matrices))
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure = _new_figure(3.2 * columns, 3.0 * rows + 0.4)
    for index, (name, confusion) in enumerate(matrices.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        table = np.array(
            [[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]], dtype=np.float64
        )
        row_totals = table.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            fractions = np.where(row_totals > 0, table / row_totals, np.nan)
        axes.imshow(np.nan_to_num(fractions), cmap="Blues", vmin=0, vmax=1)
        for row in range(2):
            for column in range(2):
                fraction = fractions[row, column]
                percent = "" if math.isnan(fraction) else f"{100 * fraction:.1f}%"
                text = f"{int(table[row, column])}\n{percent}"
                dark = not math.isnan(fraction) and fraction > 0.6
                axes.text(column, row, text, ha="center", va="center", fontsize=10,
                          color="white" if dark else "black")
        axes.set_xticks([0, 1], ["no tumour", "tumour"])
        axes.set_xlabel("predicted")
        if index % columns == 0:
            axes.set_yticks([0, 1], ["no tumour", "tumour"])
            axes.set_ylabel("true")
        else:
            axes.set_yticks([0, 1], ["", ""])
        axes.set_title(name, fontsize=10)
    figure.suptitle(title)
    return _save(figure, path)


def plot_reliability_diagrams(data: dict[str, tuple], path, n_bins: int = 10,
                              *, title: str = "Reliability") -> str:
    """Reliability curves of all sites plus the score histogram per site.

    Args:
        data: ``{name: (labels int (N,), scores float (N,) in [0, 1])}``.
        path: where to write the PNG.
        n_bins: equal-width bins on [0, 1].
    """
    figure = _new_figure(5.6, 6.4)
    curve_axes = figure.add_subplot(3, 1, (1, 2))
    histogram_axes = figure.add_subplot(3, 1, 3)
    curve_axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="perfect")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for index, (name, (labels, scores)) in enumerate(data.items()):
        color = f"C{index % 10}"
        _, mean_predicted, fraction_positive, counts = reliability_curve(labels, scores, n_bins)
        filled = counts > 0
        curve_axes.plot(mean_predicted[filled], fraction_positive[filled], marker="o",
                        markersize=4, color=color, label=name)
        histogram_axes.stairs(counts, edges, color=color)
    curve_axes.set_xlim(0, 1)
    curve_axes.set_ylim(-0.02, 1.02)
    curve_axes.set_ylabel("fraction with tumour")
    curve_axes.set_title(title)
    curve_axes.grid(alpha=0.3)
    curve_axes.legend(loc="upper left", fontsize=8)
    histogram_axes.set_xlim(0, 1)
    histogram_axes.set_xlabel("predicted probability of tumour")
    histogram_axes.set_ylabel("images")
    return _save(figure, path)


def plot_auc_bars(table: list[dict], path, *, title: str = "AUC by site and run",
                  value: str = "auc") -> str:
    """Grouped bar chart: sites on the x axis, one bar per run, CI error bars.

    Args:
        table: rows as made by ``eval.compare.comparison_table``, each with
            ``run_id``, ``run_name``, ``role``, ``site`` and ``{value}``,
            ``{value}_ci_low``, ``{value}_ci_high`` (nan where missing).
        path: where to write the PNG.
        value: ``"auc"`` or ``"unique_auc"``.
    """
    runs = list(dict.fromkeys((row.get("run_id", row["run_name"]), row["run_name"]) for row in table))
    columns = list(dict.fromkeys((row["role"], row["site"]) for row in table))
    figure = _new_figure(max(5.0, 1.1 * len(columns) * max(1, len(runs)) ** 0.5 + 2.5), 4.4)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(runs))
    by_key = {(row.get("run_id", row["run_name"]), row["role"], row["site"]): row for row in table}
    lowest = 0.5
    for run_index, (run_id, run_name) in enumerate(runs):
        positions, heights, lower, upper = [], [], [], []
        for column_index, (role, site) in enumerate(columns):
            row = by_key.get((run_id, role, site))
            height = math.nan if row is None else row.get(value, math.nan)
            if height is None or math.isnan(height):
                continue
            low = row.get(f"{value}_ci_low", math.nan)
            high = row.get(f"{value}_ci_high", math.nan)
            positions.append(column_index - 0.4 + width * (run_index + 0.5))
            heights.append(height)
            lower.append(0.0 if low is None or math.isnan(low) else height - low)
            upper.append(0.0 if high is None or math.isnan(high) else high - height)
            lowest = min(lowest, height - lower[-1])
        axes.bar(positions, heights, width=width * 0.9, color=f"C{run_index % 10}",
                 yerr=[lower, upper], capsize=3, label=run_name)
    axes.set_xticks(range(len(columns)), [f"{role} {site}" for role, site in columns])
    axes.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
    axes.set_ylim(min(0.4, math.floor(lowest * 10) / 10), 1.02)
    axes.set_ylabel("leak-free AUC" if value == "unique_auc" else "AUC")
    axes.set_title(title + " (95% CI)")
    axes.grid(axis="y", alpha=0.3)
    if runs:
        axes.legend(fontsize=8, loc="lower right")
    return _save(figure, path)
