"""Compare runs of one MLflow experiment: AUC with 95% CI per run and site.

Reads the metrics logged from :func:`eval.report.mlflow_metric_names`
(``{role}_{site}_auc``, ``..._auc_ci_low``, ``..._auc_ci_high``, the
leak-free ``{role}_{site}_unique_auc...`` and the source-disjoint
``{role}_{site}_disjoint_auc...``) and writes ``compare.md`` (runs x sites,
cells like ``0.873 [0.851, 0.894]``, one table per subset), ``compare.csv``
(one row per run and site) and ``compare.png`` / ``compare_leak_free.png`` /
``compare_source_disjoint.png`` (bars with CI error bars).

Runs that share every setting but the seed are one recipe: :func:`seed_groups`
gathers them and ``compare.md`` and ``compare_seeds.csv`` give each recipe's
AUC as mean ± sd over its seeds with n. An ablation
(``train_distributed.py ablate``) is one MLflow parent run with a child run
per variant and seed; :func:`select_ablation` picks its children by the
parent's run id, its ablation name or its run name.

mlflow is imported inside :func:`collect_runs` only.
"""
from __future__ import annotations

import csv
import math
import os
import re

from typing import Iterable, Sequence

from eval.plots import plot_auc_bars
from eval.results import seed_statistics

#: Tags of an ablation's runs: the parent has ABLATION_TAG; each child has all four.
ABLATION_TAG = "brainmri.ablation"
VARIANT_TAG = "brainmri.variant"
SEED_TAG = "brainmri.seed"
PARENT_TAG = "mlflow.parentRunId"
#: Params that never tell two recipes apart: the seed, and where or under what name a run was written.
#: The CLI passes the training config's full list (``training.config.NOT_DEFINING`` and ``seed``).
NOT_GROUPING_PARAMS = frozenset({"seed", "output", "run_name", "cache_dir", "gpus", "tracking_uri", "log_model"})
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

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


def collect_runs(experiment: str, tracking_uri: str | None = None, ablation: str = "") -> list[dict]:
    """Runs of an MLflow experiment with their AUC metrics, params and ablation tags, oldest first.

    Args:
        experiment: experiment name.
        tracking_uri: MLflow tracking URI; None uses MLflow's default
            (``MLFLOW_TRACKING_URI`` or ``./mlruns``).
        ablation: '' for every run; else only the children of one ablation
            (:func:`select_ablation`). A parent run id is looked up in its
            own experiment, whatever ``experiment`` says.

    Returns:
        ``[{"run_id", "run_name", "start_time", "status", "metrics":
        {name: value}, "params": {name: text}, "tags": {name: text}}]``
        keeping only metrics that :func:`parse_metric_name` understands and
        the tags ``brainmri.*`` and ``mlflow.parentRunId``.

    Raises:
        ValueError: the experiment does not exist, or ``ablation`` names no
            ablation or several.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = None
    if ablation and RUN_ID_PATTERN.match(ablation):
        try:
            experiment_id = client.get_run(ablation).info.experiment_id
        except MlflowException:
            experiment_id = None
    if experiment_id is None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ValueError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
        experiment_id = found.experiment_id
    runs, page_token = [], None
    while True:
        page = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"],
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
                "params": dict(run.data.params),
                "tags": {key: value for key, value in run.data.tags.items()
                         if key.startswith("brainmri.") or key == PARENT_TAG},
            })
        page_token = page.token
        if not page_token:
            break
    return select_ablation(runs, ablation) if ablation else runs


def ablation_parents(runs: Iterable[dict]) -> list[dict]:
    """The ablation parent runs among ``runs``: tagged ``brainmri.ablation`` and not a child themselves."""
    return [run for run in runs if ABLATION_TAG in run.get("tags", {}) and PARENT_TAG not in run.get("tags", {})]


def select_ablation(runs: Sequence[dict], ablation: str) -> list[dict]:
    """The child runs of one ablation, in the order of ``runs``.

    Args:
        runs: as from :func:`collect_runs` (``run_id``, ``run_name``, ``tags``).
        ablation: the parent's run id, else its ablation name (tag
            ``brainmri.ablation``, the ablation folder's name), else its run name.

    Raises:
        ValueError: no parent matches (the message lists the ablations
            there), several match (pass the run id), or the parent has no children.
    """
    parents = ablation_parents(runs)
    matches = [run for run in parents if run["run_id"] == ablation]
    matches = matches or [run for run in parents if run["tags"][ABLATION_TAG] == ablation]
    matches = matches or [run for run in parents if run["run_name"] == ablation]
    if not matches:
        known = ", ".join(f"{run['tags'][ABLATION_TAG]!r} ({run['run_id']})" for run in parents) or "none"
        raise ValueError(f"no ablation {ablation!r} (parent run id, ablation name or run name); "
                         f"ablations here: {known}")
    if len(matches) > 1:
        raise ValueError(f"{len(matches)} ablations match {ablation!r}; pass the parent run id, one of "
                         f"{', '.join(run['run_id'] for run in matches)}")
    parent_id = matches[0]["run_id"]
    children = [run for run in runs if run.get("tags", {}).get(PARENT_TAG) == parent_id]
    if not children:
        raise ValueError(f"ablation {ablation!r} (run {parent_id}) has no child runs yet")
    return children


def seed_groups(runs: Sequence[dict], ignored: Iterable[str] = NOT_GROUPING_PARAMS) -> list[dict]:
    """Runs that share every param except ``ignored`` ones (the seed among them): one recipe, several seeds.

    Args:
        runs: as from :func:`collect_runs` (``params``, ``metrics``, ``tags``,
            ``run_id``, ``run_name``); runs without AUC metrics are left out.
        ignored: param names that do not tell recipes apart.

    Returns:
        One dict per recipe in the order of first appearance: ``{"name",
        "run_ids", "seeds", "n", "statistics": {metric name:
        :func:`eval.results.seed_statistics` of its values}}``. The name is
        the runs' ``brainmri.variant`` tag when they share one, else the
        first run's name without its ``seed=N`` part; a name already taken
        gets `` (2)``, `` (3)``...
    """
    ignored = set(ignored)
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if not run["metrics"]:
            continue
        key = tuple(sorted((name, value) for name, value in run.get("params", {}).items() if name not in ignored))
        groups.setdefault(key, []).append(run)
    out, taken = [], set()
    for members in groups.values():
        variants = {run.get("tags", {}).get(VARIANT_TAG) for run in members}
        name = variants.pop() if len(variants) == 1 and None not in variants else \
            re.sub(r"[\s,;:_-]*\bseed\s*=?\s*\d+\b", "", members[0]["run_name"]).strip() or members[0]["run_name"]
        base, number = name, 1
        while name in taken:
            number += 1
            name = f"{base} ({number})"
        taken.add(name)
        metric_names = list(dict.fromkeys(metric for run in members for metric in run["metrics"]))
        out.append({
            "name": name,
            "run_ids": [run["run_id"] for run in members],
            "seeds": [run.get("params", {}).get("seed", run.get("tags", {}).get(SEED_TAG, "–")) for run in members],
            "n": len(members),
            "statistics": {metric: seed_statistics([run["metrics"].get(metric, math.nan) for run in members])
                           for metric in metric_names},
        })
    return out


def _group_cell(statistics: dict | None) -> str:
    """``"0.870 ± 0.053 (n=2)"``, ``"0.870 (n=1)"``, ``–`` when no seed logged it."""
    if statistics is None or statistics["n"] == 0:
        return "–"
    if statistics["n"] == 1:
        return f"{statistics['mean']:.3f} (n=1)"
    return f"{statistics['mean']:.3f} ± {statistics['sd']:.3f} (n={statistics['n']})"


def format_seed_table(groups: Sequence[dict], value: str = "auc") -> str:
    """Markdown table, recipes x sites, cells ``mean ± sd (n=N)`` of the AUC over seeds.

    Args:
        groups: from :func:`seed_groups`.
        value: ``"auc"``, ``"unique_auc"`` or ``"disjoint_auc"``.
    """
    values = [name for name, _ in SUBSET_VALUES]
    if value not in values:
        raise ValueError(f"value must be one of {', '.join(values)}, got {value!r}")
    columns = sorted({(parsed[0], parsed[1]) for group in groups for metric in group["statistics"]
                      if (parsed := parse_metric_name(metric)) is not None and parsed[2] == value},
                     key=lambda pair: (pair[0] != "val", pair[1]))
    header = ["recipe", "seeds"] + [f"{role} {site}" for role, site in columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for group in groups:
        cells = [group["name"], ", ".join(str(seed) for seed in group["seeds"])]
        cells += [_group_cell(group["statistics"].get(f"{role}_{site}_{value}")) for role, site in columns]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def seed_rows(groups: Sequence[dict]) -> list[dict]:
    """Rows for ``compare_seeds.csv``: one per recipe, role, site and subset AUC.

    Keys ``recipe``, ``n``, ``seeds``, ``role``, ``site``, ``value``, ``mean``,
    ``sd`` and ``values`` (``;``-joined), validation sites first.
    """
    rows = []
    for group in groups:
        for metric, statistics in group["statistics"].items():
            parsed = parse_metric_name(metric)
            if parsed is None or parsed[2] not in {name for name, _ in SUBSET_VALUES}:
                continue
            role, site, value = parsed
            rows.append({"recipe": group["name"], "n": statistics["n"],
                         "seeds": ";".join(str(seed) for seed in group["seeds"]),
                         "role": role, "site": site, "value": value, "mean": statistics["mean"],
                         "sd": statistics["sd"], "values": ";".join(f"{number:.6g}" for number in statistics["values"])})
    rows.sort(key=lambda row: (row["role"] != "val", row["site"]))
    return rows


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


def comparison_text(rows: list[dict], groups: Sequence[dict]) -> str:
    """The console text of ``compare``: per subset the runs-by-sites table, then each subset's mean ± sd over seeds.

    ``rows``: :func:`comparison_table`; ``groups``: :func:`seed_groups`.
    """
    blocks = [f"{title}:\n{format_markdown_table(rows, value)}\n" for value, title in SUBSET_VALUES]
    blocks += [f"{title}, mean ± sd over seeds:\n{format_seed_table(groups, value)}\n"
               for value, title in SUBSET_VALUES]
    return "\n".join(blocks)


SEED_COLUMNS = ("recipe", "n", "seeds", "role", "site", "value", "mean", "sd", "values")


def write_comparison(rows: list[dict], output_dir, groups: Sequence[dict] | None = None) -> list[str]:
    """Write ``compare.md``, ``compare.csv`` and ``compare.png`` into ``output_dir``.

    ``compare_leak_free.png`` and ``compare_source_disjoint.png`` are added
    when any run logged those AUCs. With ``groups`` (:func:`seed_groups`),
    ``compare.md`` gets the mean ± sd over seeds per recipe, and
    ``compare_seeds.csv`` is written.

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
        if groups:
            handle.write("\n# AUC over seeds: runs that share every setting but the seed, mean ± sd (n)\n")
            for value, title in SUBSET_VALUES:
                handle.write(f"\n## {title}\n\n" + format_seed_table(groups, value) + "\n")
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
    if groups:
        group_rows = seed_rows(groups)
        seeds_path = os.path.join(output_dir, "compare_seeds.csv")
        with open(seeds_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SEED_COLUMNS)
            writer.writeheader()
            for row in group_rows:
                writer.writerow({key: "" if isinstance(row[key], float) and math.isnan(row[key]) else row[key]
                                 for key in SEED_COLUMNS})
        paths.append(seeds_path)
    return paths
