"""Tables of finished runs for people: one overview, then one section per run.

Input is a list of entries ``{"name", "command", "seconds", "summary"}`` and
optionally ``"seed"``, where ``summary`` is a run's ``summary.json``: per
site ``role``, ``images``, ``auc``, ``auc_ci``, ``sensitivity``,
``specificity``, ``unique`` (the leak-free subset), ``disjoint`` (the
source-disjoint subset) and, for MOS-like sites, ``subclasses`` rates.
Entries sharing a name are seeds of one variant: :func:`seed_tables` gives
their mean, sd and per-seed values. Pure text building; the caller writes
the file.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

#: Subsets of a site's summary: key (None: the site itself) and label.
SUBSETS = ((None, "full"), ("unique", "leak-free"), ("disjoint", "source-disjoint"))


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def auc_cell(metrics: dict | None) -> str:
    """``"0.873 [0.851, 0.894]"`` from a site's metrics (``–`` when missing)."""
    if not metrics or metrics.get("auc") is None:
        return "–"
    low, high = (metrics.get("auc_ci") or [None, None])[:2]
    return f"{_number(metrics['auc'])} [{_number(low)}, {_number(high)}]"


def eval_sites(summary: dict) -> list[str]:
    """Validation and test site names of a summary, validation first."""
    sites = summary.get("sites", {})
    return sorted((name for name, values in sites.items() if values.get("role") in ("val", "test")),
                  key=lambda name: (sites[name]["role"] != "val", name))


def overview_table(entries: Sequence[dict]) -> str:
    """Markdown: one row per run: training images, AUC [95% CI] full, leak-free and source-disjoint per site, time."""
    sites = _all_eval_sites(entries)
    header = ["run", "seed", "train images"]
    header += [f"{name} AUC ({label})" for _, label in SUBSETS for name in sites] + ["epochs", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        summary = entry["summary"]
        train = [values for values in summary["sites"].values() if values.get("role") == "train"]
        cells = [entry["name"], str(entry.get("seed", "–")), str(train[0].get("images", "–")) if train else "–"]
        cells += [auc_cell(_subset(summary, name, key)) for key, _ in SUBSETS for name in sites]
        cells += [str(summary.get("epochs_run", "–")), _number(entry.get("seconds", float("nan")) / 60, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _all_eval_sites(entries: Sequence[dict]) -> list[str]:
    sites: list[str] = []
    for entry in entries:
        for name in eval_sites(entry["summary"]):
            if name not in sites:
                sites.append(name)
    return sites


def _subset(summary: dict, site: str, key: str | None) -> dict | None:
    values = summary["sites"].get(site)
    return values if key is None or values is None else values.get(key)


def _auc_of(summary: dict, site: str, key: str | None) -> float:
    metrics = _subset(summary, site, key) or {}
    value = metrics.get("auc")
    return math.nan if value is None else float(value)


def seed_statistics(values: Sequence[float]) -> dict:
    """``{"n", "mean", "sd", "values"}`` of per-seed values (nan dropped); sd is nan for one seed."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return {"n": len(kept), "mean": statistics.fmean(kept) if kept else math.nan,
            "sd": statistics.stdev(kept) if len(kept) > 1 else math.nan, "values": kept}


def beyond_seed_variation(first: dict, second: dict) -> str:
    """Whether two variants' per-seed values differ by more than seed variation.

    ``"yes"`` when both hold: the difference of means exceeds twice its
    standard error (sqrt(sd1^2/n1 + sd2^2/n2)) and no seed of one variant
    falls inside the range of the other's seeds; ``"no"`` otherwise;
    ``"one seed"`` when either variant has fewer than two seeds (seed
    variation unknown).
    """
    if first["n"] < 2 or second["n"] < 2:
        return "one seed"
    error = math.sqrt(first["sd"] ** 2 / first["n"] + second["sd"] ** 2 / second["n"])
    apart = max(first["values"]) < min(second["values"]) or max(second["values"]) < min(first["values"])
    return "yes" if apart and abs(second["mean"] - first["mean"]) > 2 * error else "no"


def _mean_sd_cell(stats: dict) -> str:
    if stats["n"] == 0:
        return "–"
    if stats["n"] == 1:
        return f"{stats['mean']:.3f} (one seed)"
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f} ({', '.join(f'{v:.3f}' for v in stats['values'])})"


def seed_tables(entries: Sequence[dict]) -> str:
    """Markdown: per variant and site, AUC mean ± sd over seeds with each seed's value, and differences.

    The first table has one row per variant (entries sharing a name), cells
    ``mean ± sd (seed values)`` for every site and subset, then the shortcut
    baseline's row (what file statistics alone score on the same images,
    :func:`_baseline_rows`) and the half-width of one run's bootstrap 95 %
    CI (:func:`_ci_half_width_row`), to set beside the sd. The second gives
    each later variant's difference of means from the first variant and
    whether it exceeds seed variation (:func:`beyond_seed_variation`).
    """
    sites = _all_eval_sites(entries)
    variants: dict[str, list[dict]] = {}
    for entry in entries:
        variants.setdefault(entry["name"], []).append(entry)
    columns = [(name, key, label) for name in sites for key, label in SUBSETS]
    stats = {variant: {(name, key): seed_statistics([_auc_of(e["summary"], name, key) for e in members])
                       for name, key, _ in columns} for variant, members in variants.items()}
    header = ["variant", "seeds"] + [f"{name} AUC ({label})" for name, _, label in columns]
    lines = ["AUC mean ± sd over seeds (each seed's value in brackets):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, members in variants.items():
        seeds = ", ".join(str(e.get("seed", "–")) for e in members)
        lines.append("| " + " | ".join([variant, seeds] + [_mean_sd_cell(stats[variant][(name, key)])
                                                           for name, key, _ in columns]) + " |")
    lines += _baseline_rows(variants, columns)
    lines += _ci_half_width_row(entries, columns)
    names = list(variants)
    if len(names) > 1:
        header = ["variant", "vs"] + [f"{name} ({label})" for name, _, label in columns]
        lines += ["", f"Difference of mean AUC from `{names[0]}`, and whether it exceeds seed variation "
                      "(yes: more than twice its standard error and the seeds' ranges do not overlap):", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant in names[1:]:
            cells = [variant, names[0]]
            for name, key, _ in columns:
                first, second = stats[names[0]][(name, key)], stats[variant][(name, key)]
                if first["n"] == 0 or second["n"] == 0:
                    cells.append("–")
                    continue
                cells.append(f"{second['mean'] - first['mean']:+.3f} ({beyond_seed_variation(first, second)})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shortcut_of(summary: dict, site: str, key: str | None) -> float:
    value = (_subset(summary, site, key) or {}).get("shortcut_auc")
    return math.nan if value is None else float(value)


def _baseline_rows(variants: dict[str, list[dict]], columns: list[tuple[str, str | None, str]]) -> list[str]:
    """Rows of the shortcut baseline (``shortcut_auc``: file statistics fit on the run's training set).

    One row for the first variant, named ``shortcut baseline``; a later variant gets its own row only where
    its baseline differs (another training set, e.g. another leakage policy). No rows when no run has one.
    """
    rows, seen = [], []
    for variant, members in variants.items():
        stats = [seed_statistics([_shortcut_of(e["summary"], name, key) for e in members]) for name, key, _ in columns]
        values = [tuple(round(value, 6) for value in sorted(set(column["values"]))) for column in stats]
        if not any(values) or values in seen:  # no baseline, or the same one as an earlier variant's
            continue
        label = "shortcut baseline" if not seen else f"shortcut baseline ({variant})"
        seen.append(values)
        cells = [_mean_sd_cell(column) for column in stats]
        seeds = ", ".join(str(e.get("seed", "–")) for e in members)
        rows.append("| " + " | ".join([label, seeds, *cells]) + " |")
    return rows


def ci_half_width(metrics: dict | None) -> float:
    """Half the width of a metrics dict's ``auc_ci`` (nan when missing or not finite)."""
    low, high = ((metrics or {}).get("auc_ci") or [None, None])[:2]
    if low is None or high is None or not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return math.nan
    return (float(high) - float(low)) / 2


def _ci_half_width_row(entries: Sequence[dict], columns: list[tuple[str, str | None, str]]) -> list[str]:
    """The row ``one run's 95 % CI``: per column, mean half-width of every run's bootstrap CI and its range.

    Over all runs of the table (the CI depends on the test images more than on
    the variant); ``–`` where no run has a CI. No row when no column has one.
    """
    cells = []
    for name, key, _ in columns:
        widths = [width for width in (ci_half_width(_subset(e["summary"], name, key)) for e in entries)
                  if not math.isnan(width)]
        cells.append(f"± {statistics.fmean(widths):.3f} ({min(widths):.3f} to {max(widths):.3f})" if widths else "–")
    if all(cell == "–" for cell in cells):
        return []
    return ["| " + " | ".join(["one run's 95 % CI (half-width: mean, range)", f"{len(entries)} runs", *cells]) + " |"]


def run_section(entry: dict) -> str:
    """Markdown section of one run: settings, command, per-site table, subclasses."""
    summary = entry["summary"]
    seed = f" (seed {entry['seed']})" if "seed" in entry else ""
    lines = [f"### {entry['name']}{seed}", "", "```bash", entry["command"], "```", ""]
    train = [(name, values) for name, values in summary["sites"].items() if values.get("role") == "train"]
    for name, values in train:
        lines.append(f"Training site `{name}`: {values.get('images')} images after the leakage policy "
                     f"({values.get('removed_by_leakage_policy', 0)} removed). Threshold "
                     f"{_number(summary.get('threshold'))} chosen on validation "
                     f"({summary.get('threshold_method', 'youden')}); {summary.get('epochs_run')} epochs, best "
                     f"epoch {summary.get('best_epoch')}, {_number(entry.get('seconds', float('nan')) / 60, 1)} min.")
    lines += ["", "| site | role | subset | images | AUC [95% CI] | sensitivity | specificity | ECE |",
              "|---|---|---|---|---|---|---|---|"]
    for name in eval_sites(summary):
        values = summary["sites"][name]
        for key, subset in SUBSETS:
            metrics = values if key is None else values.get(key)
            if metrics is None:
                continue
            lines.append(f"| {name} | {values['role']} | {subset} | {metrics.get('images', '–')} | "
                         f"{auc_cell(metrics)} | {_number(metrics.get('sensitivity'))} | "
                         f"{_number(metrics.get('specificity'))} | {_number(metrics.get('ece'))} |")
    for name in eval_sites(summary):
        subclasses = summary["sites"][name].get("subclasses") or {}
        if len(subclasses) > 2:
            lines += ["", f"Per subclass on `{name}` (detection rate for tumours, specificity for no tumour):", "",
                      "| subclass | images | rate |", "|---|---|---|"]
            for subclass, rates in sorted(subclasses.items()):
                rate = rates.get("detection_rate", rates.get("specificity"))
                lines.append(f"| {subclass} | {rates.get('images', '–')} | {_number(rate)} |")
    return "\n".join(lines)


def results_markdown(entries: Sequence[dict], *, title: str = "Results") -> str:
    """The whole document: overview table, the seed tables (when a variant has seeds), a section per run."""
    parts = [f"# {title}", "", overview_table(entries), ""]
    if any("seed" in entry for entry in entries):
        parts += ["## Over seeds", "", seed_tables(entries), ""]
    parts += [run_section(entry) + "\n" for entry in entries]
    return "\n".join(parts)
