"""Compare runs of one MLflow experiment: AUC with 95% CI per run and site.

Reads the metrics logged from :func:`eval.report.mlflow_metric_names`
(``{role}_{site}_auc``, ``..._auc_ci_low``, ``..._auc_ci_high``, the
leak-free ``{role}_{site}_unique_auc...`` and the source-disjoint
``{role}_{site}_disjoint_auc...``) and writes ``compare.md`` (runs x sites,
cells like ``0.873 [0.851, 0.894]``, one table per subset), ``compare.csv``
(one row per run and site) and ``compare.png`` / ``compare_leak_free.png`` /
``compare_source_disjoint.png`` (bars with CI error bars).

mlflow is imported inside :func:`collect_runs` only.
"""
from __future__ import annotations

import csv
import math
import os
import re

from eval.plots import plot_auc_bars

#: Metric suffixes read from runs: the AUC of every subset, of the model and of the shortcut baseline.
VALUE_SUFFIXES = tuple(f"{subset}{model}auc{bound}"
                       for subset in ("unique_", "disjoint_unflagged_", "disjoint_", "")
                       for model in ("shortcut_", "")
                       for bound in ("_ci_low", "_ci_high", ""))
#: The AUC of each subset: value name and title.
SUBSET_VALUES = (("auc", "All images"), ("unique_auc", "Leak-free (near-duplicates of training images removed)"),
                 ("disjoint_auc", "Source-disjoint (near-duplicates of any training-site image removed)"))
METRIC_PATTERN = re.compile(r"^(val|test)_(.+?)_(" + "|".join(VALUE_SUFFIXES) + r")$")
TABLE_COLUMNS = (
    "run_id", "run_name", "role", "site",
    "auc", "auc_ci_low", "auc_ci_high", "unique_auc", "unique_auc_ci_low", "unique_auc_ci_high",
    "disjoint_auc", "disjoint_auc_ci_low", "disjoint_auc_ci_high",
)


def parse_metric_name(name: str) -> tuple[str, str, str] | None:
    """``"test_mos_unique_auc"`` -> ``("test", "mos", "unique_auc")``; None if not an AUC metric.

    The site part is the shortest that leaves a known suffix, so a site
    whose own name ends in ``_unique`` is read as the leak-free subset of the
    shorter name.
    """
    match = METRIC_PATTERN.match(name)
    if match is None:
        return None
    role, site, value = match.groups()
    return role, site, value


def collect_runs(experiment: str, tracking_uri: str | None = None) -> list[dict]:
    """Runs of an MLflow experiment with their AUC metrics, oldest first.

    Args:
        experiment: experiment name.
        tracking_uri: MLflow tracking URI; None uses MLflow's default
            (``MLFLOW_TRACKING_URI`` or ``./mlruns``).

    Returns:
        ``[{"run_id", "run_name", "start_time", "status", "metrics":
        {name: value}}]`` keeping only metrics that :func:`parse_metric_name`
        understands.

    Raises:
        ValueError: the experiment does not exist.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
    runs, page_token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"],
                                  max_results=1000, page_token=page_token)
        for run in page:
            metrics = {name: float(value) for name, value in run.data.metrics.items()
                       if parse_metric_name(name) is not None}
            runs.append({
                "run_id": run.info.run_id,
                "run_name": run.info.run_name or run.info.run_id[:8],
                "start_time": run.info.start_time,
                "status": run.info.status,
                "metrics": metrics,
            })
        page_token = page.token
        if not page_token:
            break
    return runs


def comparison_table(runs: list[dict]) -> list[dict]:
    """One row per (run, role, site) with the AUC values, nan where not logged.

    Args:
        runs: as returned by :func:`collect_runs` (only ``run_id``,
            ``run_name`` and ``metrics`` are used).

    Returns:
        Rows with keys :data:`TABLE_COLUMNS`, in run order, validation sites
        before test sites, sites alphabetical.
    """
    rows = []
    for run in runs:
        by_site: dict[tuple[str, str], dict] = {}
        for name, value in run["metrics"].items():
            parsed = parse_metric_name(name)
            if parsed is None:
                continue
            role, site, key = parsed
            by_site.setdefault((role, site), {})[key] = float(value)
        for role, site in sorted(by_site, key=lambda pair: (pair[0] != "val", pair[1])):
            row = {"run_id": run["run_id"], "run_name": run["run_name"], "role": role, "site": site}
            for key in VALUE_SUFFIXES:
                row[key] = by_site[(role, site)].get(key, math.nan)
            rows.append(row)
    return rows


def _cell(row: dict | None, value: str) -> str:
    """``"0.870 [0.843, 0.895]"``, with ``" (shortcut 0.548)"`` when the run logged the baseline there."""
    if row is None or math.isnan(row[value]):
        return "–"
    low, high = row[f"{value}_ci_low"], row[f"{value}_ci_high"]
    text = f"{row[value]:.3f}" if math.isnan(low) or math.isnan(high) else f"{row[value]:.3f} [{low:.3f}, {high:.3f}]"
    shortcut = row.get(value[:-len("auc")] + "shortcut_auc", math.nan)
    return text if math.isnan(shortcut) else f"{text} (shortcut {shortcut:.3f})"


def format_markdown_table(rows: list[dict], value: str = "auc") -> str:
    """Markdown table, runs x sites, cells ``"0.873 [0.851, 0.894]"`` (``–`` if missing).

    Where the run logged the shortcut baseline on the same images, the cell
    ends with ``(shortcut 0.548)``.

    Args:
        rows: from :func:`comparison_table`.
        value: ``"auc"`` (all images), ``"unique_auc"`` (leak-free) or
            ``"disjoint_auc"`` (source-disjoint).
    """
    values = [name for name, _ in SUBSET_VALUES]
    if value not in values:
        raise ValueError(f"value must be one of {', '.join(values)}, got {value!r}")
    runs = list(dict.fromkeys((row["run_id"], row["run_name"]) for row in rows))
    columns = list(dict.fromkeys((row["role"], row["site"]) for row in rows))
    columns.sort(key=lambda pair: (pair[0] != "val", pair[1]))
    by_key = {(row["run_id"], row["role"], row["site"]): row for row in rows}
    header = ["run"] + [f"{role} {site}" for role, site in columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for run_id, run_name in runs:
        cells = [run_name] + [_cell(by_key.get((run_id, role, site)), value) for role, site in columns]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def write_comparison(rows: list[dict], output_dir) -> list[str]:
    """Write ``compare.md``, ``compare.csv`` and ``compare.png`` into ``output_dir``.

    ``compare_leak_free.png`` is added when any run logged leak-free AUCs.

    Returns:
        The paths written.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    markdown_path = os.path.join(output_dir, "compare.md")
    with open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write("# AUC by run and site, 95% CI\n")
        for value, title in SUBSET_VALUES:
            handle.write(f"\n## {title}\n\n" + format_markdown_table(rows, value) + "\n")
    csv_path = os.path.join(output_dir, "compare.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({
                key: "" if isinstance(row[key], float) and math.isnan(row[key]) else row[key]
                for key in TABLE_COLUMNS
            })
    paths = [markdown_path, csv_path,
             plot_auc_bars(rows, os.path.join(output_dir, "compare.png"), title="AUC, all images")]
    for value, name, title in (("unique_auc", "compare_leak_free.png", "AUC, leak-free images"),
                               ("disjoint_auc", "compare_source_disjoint.png", "AUC, source-disjoint images")):
        if any(not math.isnan(row[value]) for row in rows):
            paths.append(plot_auc_bars(rows, os.path.join(output_dir, name), title=title, value=value))
    return paths

