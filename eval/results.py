"""Tables of finished runs for people: one overview, then one section per run.

Input is a list of entries ``{"name", "command", "seconds", "summary"}``,
where ``summary`` is a run's ``summary.json`` (see ``train_distributed.py``):
per site ``role``, ``images``, ``auc``, ``auc_ci``, ``sensitivity``,
``specificity``, ``unique`` (the leak-free subset) and, for MOS-like sites,
``subclasses`` rates. Pure text building; the caller writes the file.
"""
from __future__ import annotations

import math
from typing import Any, Sequence


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
    """Markdown: one row per run: training images, AUC [95% CI] full and leak-free per site, time."""
    sites: list[str] = []
    for entry in entries:
        for name in eval_sites(entry["summary"]):
            if name not in sites:
                sites.append(name)
    header = ["run", "train images"] + [f"{name} AUC (full)" for name in sites]
    header += [f"{name} AUC (leak-free)" for name in sites] + ["epochs", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        summary = entry["summary"]
        train = [values for values in summary["sites"].values() if values.get("role") == "train"]
        cells = [entry["name"], str(train[0].get("images", "–")) if train else "–"]
        cells += [auc_cell(summary["sites"].get(name)) for name in sites]
        cells += [auc_cell((summary["sites"].get(name) or {}).get("unique")) for name in sites]
        cells += [str(summary.get("epochs_run", "–")), _number(entry.get("seconds", float("nan")) / 60, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_section(entry: dict) -> str:
    """Markdown section of one run: settings, command, per-site table, subclasses."""
    summary = entry["summary"]
    lines = [f"### {entry['name']}", "", "```bash", entry["command"], "```", ""]
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
        for subset, metrics in (("full", values), ("leak-free", values.get("unique") or {})):
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
    """The whole document: overview table, then a section per run."""
    parts = [f"# {title}", "", overview_table(entries), ""]
    parts += [run_section(entry) + "\n" for entry in entries]
    return "\n".join(parts)
