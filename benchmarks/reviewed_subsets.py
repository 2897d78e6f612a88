"""AUC on reviewed parts of a site's source-disjoint no-tumour images, over runs and seeds.

A site's source-disjoint subset (images with no near-duplicate anywhere in
the training site, ``near_train_site`` false in ``predictions.csv``) is only
as good as its images. On MOS Testing it holds 37 no-tumour images, and a
look at them (``source_disjoint_review.py``) shows CT scans and sagittal and
coronal slices beside axial MRI. A review file records, per image, what can
be seen without a model: modality (MRI or CT), plane (axial, sagittal,
coronal) and whether a focal abnormality is visible to a non-expert eye (a
note, not a diagnosis). This script scores every given run's source-disjoint
tumour images against each reviewed group of those no-tumour images:

* ``all``: every reviewed image (the source-disjoint AUC itself);
* ``axial MRI``: what a classifier trained on axial MRI is asked about;
* ``axial MRI, nothing visible``: axial MRI without a visible focal abnormality;
* ``CT`` and ``sagittal or coronal MRI``: what it was never shown.

The groups are fixed by the review, never by a model's scores. Runs are
grouped into variants by their folder name (``07-intensity-seed0`` ->
``intensity``); each run gets AUC [stratified bootstrap 95 % CI], each
variant mean ± sd over its seeds, beside the shortcut baseline (each run's
``shortcut_score``: file statistics fit on its training set) on the same
images. Prints the table and writes JSON.

Usage:
    python benchmarks/reviewed_subsets.py --review benchmarks/reviews/mos_testing_source_disjoint_no_tumour.csv \\
        --site mos runs/carry-family/*/predictions.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import re
import statistics
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eval.metrics import bootstrap_auc_ci, roc_auc  # noqa: E402

#: Reviewed groups: name and the rule on a review row.
GROUPS = (
    ("all", lambda row: True),
    ("axial MRI", lambda row: row["modality"] == "MRI" and row["plane"] == "axial"),
    ("axial MRI, nothing visible",
     lambda row: row["modality"] == "MRI" and row["plane"] == "axial" and row["visible_focal_abnormality"] == "no"),
    ("CT", lambda row: row["modality"] == "CT"),
    ("sagittal or coronal MRI", lambda row: row["modality"] == "MRI" and row["plane"] in ("sagittal", "coronal")),
)
REVIEW_COLUMNS = ("relative_path", "modality", "plane", "visible_focal_abnormality")


def read_review(path: pathlib.Path) -> dict[str, dict]:
    """Review rows by relative path; ValueError naming the file when a column or value is wrong."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [column for column in REVIEW_COLUMNS if rows and column not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: needs a header with {', '.join(REVIEW_COLUMNS)} and at least one row"
                         + (f" (missing {', '.join(missing)})" if missing else ""))
    allowed = {"modality": ("MRI", "CT"), "plane": ("axial", "sagittal", "coronal"),
               "visible_focal_abnormality": ("yes", "no")}
    for number, row in enumerate(rows, start=2):
        for column, values in allowed.items():
            if row[column] not in values:
                raise ValueError(f"{path}, line {number}: {column} must be one of {', '.join(values)}, "
                                 f"got {row[column]!r}")
    return {row["relative_path"]: row for row in rows}


def variant_of(predictions: pathlib.Path) -> tuple[str, str]:
    """(variant, seed) from a run folder name such as ``07-intensity-seed0`` (seed '' when absent)."""
    name = predictions.parent.name
    match = re.fullmatch(r"(?:\d+-)?(.+?)(?:-seed(\d+))?", name)
    return (match.group(1), match.group(2) or "") if match else (name, "")


def reviewed_aucs(predictions: pathlib.Path, review: dict[str, dict], site: str, score_column: str = "score") -> dict:
    """AUC and CI of ``site``'s source-disjoint tumour images against each reviewed group of no-tumour images.

    ``score_column``: ``score`` (the model) or ``shortcut_score`` (the shortcut baseline: file statistics
    fit on the run's training set).

    Raises ValueError when the run's source-disjoint no-tumour images are not
    exactly the reviewed ones (another training site, threshold or data).
    """
    with open(predictions, newline="") as handle:
        rows = [row for row in csv.DictReader(handle)
                if row["site"] == site and row["near_train_site"].lower() in ("false", "0")]
    negatives = {row["relative_path"]: float(row[score_column]) for row in rows if int(row["label"]) == 0}
    positives = [float(row[score_column]) for row in rows if int(row["label"]) == 1]
    if set(negatives) != set(review):
        unreviewed, absent = sorted(set(negatives) - set(review)), sorted(set(review) - set(negatives))
        raise ValueError(f"{predictions}: its source-disjoint no-tumour images of {site} are not the reviewed ones "
                         f"({len(unreviewed)} not reviewed, e.g. {unreviewed[:3]}; {len(absent)} reviewed but absent, "
                         f"e.g. {absent[:3]})")
    result = {"run": predictions.parent.name, "positives": len(positives), "groups": {}}
    for group, rule in GROUPS:
        scores = [negatives[path] for path, row in review.items() if rule(row)]
        labels = np.r_[np.ones(len(positives), int), np.zeros(len(scores), int)]
        values = np.r_[positives, scores]
        low, high = bootstrap_auc_ci(labels, values, seed=0)
        result["groups"][group] = {"negatives": len(scores), "auc": roc_auc(labels, values), "auc_ci": [low, high]}
    return result


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (one run)"
    return (f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} "
            f"({', '.join(f'{value:.3f}' for value in values)})")


def variant_table(runs: list[dict], baselines: list[dict] | None = None) -> str:
    """Markdown: one row per variant, a column per group, mean ± sd over its runs (each run's value).

    ``baselines``: the same runs scored by their shortcut baseline; one more row, ``shortcut baseline``,
    over all of them (the same value for every run with the same training set).
    """
    variants: dict[str, list[dict]] = {}
    for run in runs:
        variants.setdefault(run["variant"], []).append(run)
    if baselines:
        variants["shortcut baseline"] = baselines
    first = runs[0]["groups"]
    header = ["variant", "seeds"] + [f"{group} ({first[group]['negatives']} no tumour)" for group, _ in GROUPS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, members in variants.items():
        cells = [variant, ", ".join(run["seed"] or "–" for run in members)]
        for group, _ in GROUPS:
            values = [run["groups"][group]["auc"] for run in members]
            same = len({round(value, 9) for value in values}) == 1 and len(values) > 1
            cells.append(f"{values[0]:.3f} (every run)" if same else mean_sd(values))
        if variant == "shortcut baseline":
            cells[1] = "–"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", type=pathlib.Path, help="runs' predictions.csv files")
    parser.add_argument("--review", required=True, type=pathlib.Path, help="review CSV of the no-tumour images")
    parser.add_argument("--site", default="mos")
    parser.add_argument("--output", type=pathlib.Path,
                        default=REPO_ROOT / "benchmarks" / "results" / "reviewed_subsets.json")
    args = parser.parse_args()
    try:
        review = read_review(args.review)
        runs, baselines = [], []
        for path in args.predictions:
            result = reviewed_aucs(path, review, args.site)
            result["variant"], result["seed"] = variant_of(path)
            runs.append(result)
            baseline = reviewed_aucs(path, review, args.site, "shortcut_score")
            baseline["variant"], baseline["seed"] = "shortcut baseline", result["seed"]
            baselines.append(baseline)
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error))
    print(f"{args.site}: {runs[0]['positives']} source-disjoint tumour images against reviewed groups of its "
          f"{len(review)} source-disjoint no-tumour images; AUC mean ± sd over seeds\n")
    table = variant_table(runs, baselines)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"benchmark": "reviewed_subsets", "site": args.site,
                                       "review": args.review.name, "groups": [group for group, _ in GROUPS],
                                       "runs": runs, "shortcut_baseline": baselines, "table": table},
                                      indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
