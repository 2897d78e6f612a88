"""Per-site evaluation at a validation-chosen threshold, and the written report.

Input is one :class:`PredictionRow` per evaluated image. Every site is
measured on three subsets: all its images; leak-free (no near-duplicate in
the training set that was used, ``leaked=False``); and source-disjoint (no
near-duplicate anywhere in the training site as given, whatever the leakage
policy removed, ``near_train_site=False``). The decision threshold is chosen
once, on validation rows only, and applied unchanged to every site.

Outputs of :func:`write_report` (all in one folder): ``report.html``
(self-contained, figures inline), ``report.md``, ``metrics.json``,
``predictions.csv`` and the figure PNGs.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import html
import json
import math
import os
import re

import numpy as np

from eval.metrics import bootstrap_auc_ci, choose_threshold, roc_auc, site_metrics
from eval.plots import plot_confusion_matrices, plot_reliability_diagrams, plot_roc_curves

ROLES = ("val", "test")
PREDICTION_COLUMNS = ("site", "role", "relative_path", "label", "subclass", "score", "leaked", "near_train_site",
                      "shortcut_score", "flagged")
#: Subsets every site is measured on: summary key, MLflow name part, label in tables.
SUBSETS = (("", "", "all"), ("unique", "_unique", "leak-free"), ("disjoint", "_disjoint", "source-disjoint"),
           ("disjoint_unflagged", "_disjoint_unflagged", "source-disjoint without flagged (sensitivity)"))
#: Scalar per-site entries exported as MLflow metrics (see mlflow_metric_names).
SCALAR_METRICS = (
    "images", "positives", "negatives", "auc", "sensitivity", "specificity",
    "accuracy", "balanced_accuracy", "ppv", "npv", "ece",
)
#: A model AUC less than this above the shortcut baseline's, on the same images, is flagged.
SHORTCUT_MARGIN = 0.05
SHORTCUT_AUDIT_NOTE = (
    "AUC for tumour vs no tumour of non-anatomical statistics of each original file alone (0.5: useless, "
    "1.0: perfect; + a higher, - a lower value means tumour), with 95% bootstrap CIs; then a small "
    "classifier on all of them fit on the training set used and applied to each site (the shortcut "
    "baseline), and the same classifier cross-validated within each site. High values mean the labels "
    "can be predicted without looking at the brain.")


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """The model's score for one evaluated image.

    Attributes:
        site: site name.
        role: ``"val"`` (threshold and model selection) or ``"test"``.
        relative_path: path of the image relative to its site root.
        label: 1 = tumour, 0 = no tumour.
        subclass: e.g. ``"glioma"``, ``"notumor"``, ``"tumour"``.
        score: predicted probability of tumour, in [0, 1].
        leaked: True if the image is a near-duplicate of an image of the
            training set that was used.
        near_train_site: True if the image is a near-duplicate of any image
            of the training site as given, before the leakage policy (so
            ``leaked`` implies ``near_train_site``); None (the default)
            means the same as ``leaked``.
        shortcut_score: the shortcut baseline's tumour probability for the
            image (non-anatomical statistics only), nan when not computed.
        flagged: True if the data-quality review flagged the image
            (probably not MRI, or a candidate label error).
    """

    site: str
    role: str
    relative_path: str
    label: int
    subclass: str
    score: float
    leaked: bool = False
    near_train_site: bool | None = None
    shortcut_score: float = math.nan
    flagged: bool = False

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r} for {self.relative_path!r}")
        if self.near_train_site is None:
            object.__setattr__(self, "near_train_site", bool(self.leaked))
        if self.leaked and not self.near_train_site:
            raise ValueError(f"{self.site}/{self.relative_path}: leaked (a copy in the training set) implies "
                             "near_train_site (a copy in the training site)")


def _arrays(rows: list[PredictionRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([row.label for row in rows], dtype=np.int64)
    scores = np.array([row.score for row in rows], dtype=np.float64)
    subclasses = np.array([row.subclass for row in rows], dtype=str)
    return labels, scores, subclasses


def _with_shortcut(result: dict, labels: np.ndarray, shortcut: np.ndarray, *, n_resamples: int,
                   seed: int) -> dict:
    """``result`` plus ``shortcut_auc`` and ``shortcut_auc_ci`` when every shortcut score is known."""
    if len(shortcut) and np.isfinite(shortcut).all():
        result["shortcut_auc"] = roc_auc(labels, shortcut)
        result["shortcut_auc_ci"] = list(bootstrap_auc_ci(labels, shortcut, n_resamples=n_resamples, seed=seed))
    return result


def _rows_by_site(rows: list[PredictionRow]) -> dict[str, list[PredictionRow]]:
    """Rows grouped by site: validation sites first, then test, each by first appearance."""
    groups: dict[str, list[PredictionRow]] = {}
    for row in rows:
        groups.setdefault(row.site, []).append(row)
    for site, members in groups.items():
        roles = {row.role for row in members}
        if len(roles) != 1:
            raise ValueError(f"site {site!r} has rows with several roles: {sorted(roles)}")
    return dict(sorted(groups.items(), key=lambda item: ROLES.index(item[1][0].role)))


def threshold_from_validation(
    rows: list[PredictionRow],
    method: str = "youden",
    target_sensitivity: float = 0.9,
    *,
    exclude_leaked: bool = False,
) -> float:
    """Choose the decision threshold on the validation rows only.

    Test rows are ignored, so test labels cannot move the threshold. See
    :func:`eval.metrics.choose_threshold` for the methods.

    Args:
        rows: prediction rows of any roles.
        method: ``"youden"`` or ``"sensitivity"``.
        target_sensitivity: for ``method="sensitivity"``.
        exclude_leaked: use only leak-free validation rows.

    Raises:
        ValueError: no (leak-free) validation rows, or see choose_threshold.
    """
    validation = [row for row in rows if row.role == "val" and not (exclude_leaked and row.leaked)]
    if not validation:
        raise ValueError("no validation rows to choose the threshold on")
    labels, scores, _ = _arrays(validation)
    return choose_threshold(labels, scores, method=method, target_sensitivity=target_sensitivity)


def evaluate_sites(
    rows: list[PredictionRow],
    threshold: float,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> dict[str, dict]:
    """Metrics of every site on all its images, its leak-free and its source-disjoint subset.

    Returns:
        ``{site: site_metrics(...) + {"role", "leaked_images",
        "near_train_site_images", "flagged_images", "unique":
        site_metrics(leak-free rows), "disjoint": site_metrics(source-disjoint
        rows), "disjoint_unflagged": the same without the rows the
        data-quality review flagged}}``, validation sites first. The last is a
        sensitivity analysis only: the label-issue flags on an evaluation
        site come from the model's own probabilities, so dropping them
        flatters the model. See :func:`eval.metrics.site_metrics` for the keys;
        ``unique["images"]`` and ``disjoint["images"]`` are the subsets'
        image counts (an empty subset has nan AUC and rates).
    """
    results = {}
    for site, members in _rows_by_site(rows).items():
        labels, scores, subclasses = _arrays(members)
        leaked = np.array([row.leaked for row in members], dtype=bool)
        near = np.array([row.near_train_site for row in members], dtype=bool)
        shortcut = np.array([row.shortcut_score for row in members], dtype=np.float64)
        flagged = np.array([row.flagged for row in members], dtype=bool)
        result = _with_shortcut(site_metrics(labels, scores, subclasses, threshold, n_resamples=n_resamples,
                                             seed=seed, n_bins=n_bins),
                                labels, shortcut, n_resamples=n_resamples, seed=seed)
        result["role"] = members[0].role
        result["leaked_images"] = int(leaked.sum())
        result["near_train_site_images"] = int(near.sum())
        result["flagged_images"] = int(flagged.sum())
        for key, excluded in (("unique", leaked), ("disjoint", near), ("disjoint_unflagged", near | flagged)):
            kept = ~excluded
            result[key] = _with_shortcut(
                site_metrics(labels[kept], scores[kept], subclasses[kept], threshold,
                             n_resamples=n_resamples, seed=seed, n_bins=n_bins),
                labels[kept], shortcut[kept], n_resamples=n_resamples, seed=seed)
        results[site] = result
    return results


def _metric_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _flatten_site(prefix: str, metrics: dict) -> dict[str, float]:
    flat = {f"{prefix}_{key}": metrics[key] for key in SCALAR_METRICS}
    flat[f"{prefix}_auc_ci_low"], flat[f"{prefix}_auc_ci_high"] = metrics["auc_ci"]
    if "shortcut_auc" in metrics:
        flat[f"{prefix}_shortcut_auc"] = metrics["shortcut_auc"]
        flat[f"{prefix}_shortcut_auc_ci_low"], flat[f"{prefix}_shortcut_auc_ci_high"] = metrics["shortcut_auc_ci"]
    for key, count in metrics["confusion"].items():
        flat[f"{prefix}_{key}"] = count
    for subclass, rates in metrics["subclasses"].items():
        for rate in ("detection_rate", "specificity"):
            if rate in rates:
                flat[f"{prefix}_{_metric_part(subclass)}_{rate}"] = rates[rate]
    return flat


def mlflow_metric_names(results: dict[str, dict]) -> dict[str, float]:
    """Flat ``{name: value}`` for ``mlflow.log_metrics``.

    Names are ``{role}_{site}_{metric}`` (``test_mos_auc``,
    ``test_mos_auc_ci_low``, ``test_mos_sensitivity``, ``test_mos_ece``,
    ``test_mos_tp``, ``test_mos_glioma_detection_rate``,
    ``test_mos_notumor_specificity``, ``test_mos_leaked_images``), the same
    with ``_unique_`` after the site for the leak-free subset
    (``test_mos_unique_auc``, ``test_mos_unique_images``), with
    ``_disjoint_`` for the source-disjoint subset (``test_mos_disjoint_auc``,
    ``test_mos_near_train_site_images``), and ``decision_threshold``.

    Undefined (nan) values are left out: MLflow would store them, but a
    missing metric reads plainly as "not defined for this site" and keeps
    nan out of run comparisons and sorting.
    """
    flat: dict[str, float] = {}
    for site, metrics in results.items():
        prefix = f"{metrics['role']}_{site}"
        flat.update(_flatten_site(prefix, metrics))
        flat[f"{prefix}_leaked_images"] = metrics["leaked_images"]
        flat[f"{prefix}_near_train_site_images"] = metrics["near_train_site_images"]
        flat[f"{prefix}_flagged_images"] = metrics.get("flagged_images", 0)
        for key, part, _ in SUBSETS[1:]:
            flat.update(_flatten_site(prefix + part, metrics[key]))
        flat["decision_threshold"] = metrics["threshold"]
    return {name: float(value) for name, value in flat.items() if not math.isnan(float(value))}


def _json_ready(value):
    """Nested value with nan/inf as None and numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_predictions_csv(path, rows: list[PredictionRow]) -> str:
    """Write rows to CSV with :data:`PREDICTION_COLUMNS`; ``leaked`` and ``near_train_site`` as true/false."""
    path = os.fspath(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for row in rows:
            writer.writerow([row.site, row.role, row.relative_path, int(row.label),
                             row.subclass, repr(float(row.score)), "true" if row.leaked else "false",
                             "true" if row.near_train_site else "false",
                             "" if math.isnan(row.shortcut_score) else repr(float(row.shortcut_score)),
                             "true" if row.flagged else "false"])
    return path


def read_predictions_csv(path) -> list[PredictionRow]:
    """Read a file written by :func:`write_predictions_csv` back into rows.

    Files written before the ``near_train_site`` column existed are read with
    ``near_train_site`` equal to ``leaked`` (all that is known).
    """
    def flag(record: dict, column: str) -> bool:
        value = record[column].strip().lower()
        if value not in ("true", "false", "1", "0"):
            raise ValueError(f"{path}: bad {column} value {record[column]!r}")
        return value in ("true", "1")

    rows = []
    with open(os.fspath(path), newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(PREDICTION_COLUMNS) - set(reader.fieldnames or ()) - {"near_train_site", "shortcut_score",
                                                                              "flagged"}
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for record in reader:
            leaked = flag(record, "leaked")
            near = flag(record, "near_train_site") if record.get("near_train_site") is not None else leaked
            shortcut = (record.get("shortcut_score") or "").strip()
            rows.append(PredictionRow(
                site=record["site"], role=record["role"], relative_path=record["relative_path"],
                label=int(record["label"]), subclass=record["subclass"],
                score=float(record["score"]), leaked=leaked, near_train_site=near,
                shortcut_score=float(shortcut) if shortcut else math.nan,
                flagged=flag(record, "flagged") if record.get("flagged") is not None else False,
            ))
    return rows


# ----------------------------------------------------------------------------- formatting


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _auc_text(metrics: dict) -> str:
    if math.isnan(metrics["auc"]):
        return "n/a"
    low, high = metrics["auc_ci"]
    return f"{metrics['auc']:.3f} [{_number(low)}, {_number(high)}]"


def _rate_text(value: float, numerator: int, denominator: int) -> str:
    return "n/a" if denominator == 0 else f"{value:.3f} ({numerator}/{denominator})"


def _sensitivity_text(metrics: dict) -> str:
    confusion = metrics["confusion"]
    return _rate_text(metrics["sensitivity"], confusion["tp"], confusion["tp"] + confusion["fn"])


def _specificity_text(metrics: dict) -> str:
    confusion = metrics["confusion"]
    return _rate_text(metrics["specificity"], confusion["tn"], confusion["tn"] + confusion["fp"])


def _subclass_text(rates: dict | None) -> str:
    if not rates:
        return "n/a (0 images)"
    if "detection_rate" in rates:
        return _rate_text(rates["detection_rate"], rates["predicted_positive"], rates["images"])
    negatives = rates["images"] - rates["predicted_positive"]
    return _rate_text(rates["specificity"], negatives, rates["images"])


def subset_metrics(metrics: dict) -> list[tuple[str, dict]]:
    """``[(label, metrics)]`` of a site's subsets present in ``metrics``: all, leak-free, source-disjoint."""
    return [(label, metrics[key] if key else metrics) for key, _, label in SUBSETS if not key or key in metrics]


def shortcut_close(metrics: dict, margin: float = SHORTCUT_MARGIN) -> bool:
    """True when the shortcut baseline's AUC on these images is within ``margin`` of the model's (or above)."""
    model, shortcut = metrics.get("auc", math.nan), metrics.get("shortcut_auc", math.nan)
    return not (math.isnan(model) or math.isnan(shortcut)) and shortcut >= model - margin


def site_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the cross-site table: one row per site and subset.

    Subsets: all images, leak-free, source-disjoint (see the module
    docstring). The shortcut column is the AUC of the shortcut baseline
    (non-anatomical image statistics, fit on the training site) on the same
    images; ``!`` marks rows where it comes within :data:`SHORTCUT_MARGIN`
    of the model.
    """
    header = ["site", "role", "images", "subset", "AUC [95% CI]", "shortcut AUC", "sensitivity",
              "specificity", "ECE"]
    rows = []
    for site, metrics in results.items():
        for label, subset in subset_metrics(metrics):
            shortcut = _auc_text({"auc": subset["shortcut_auc"], "auc_ci": subset["shortcut_auc_ci"]}) \
                if "shortcut_auc" in subset else "n/a"
            rows.append([
                site, metrics["role"], str(subset["images"]), label, _auc_text(subset),
                shortcut + (" !" if shortcut_close(subset) else ""),
                _sensitivity_text(subset), _specificity_text(subset), _number(subset["ece"]),
            ])
    return header, rows


def subclass_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-subclass table (detection rate or specificity) on each subset."""
    labels = [label for _, _, label in SUBSETS]
    header = ["site", "role", "subclass", "rate", *[f"{label} (correct/images)" for label in labels]]
    rows = []
    for site, metrics in results.items():
        subsets = dict(subset_metrics(metrics))
        for subclass, rates in metrics["subclasses"].items():
            rate_name = "detection rate" if "detection_rate" in rates else "specificity"
            rows.append([site, metrics["role"], subclass, rate_name] + [
                _subclass_text(subsets[label]["subclasses"].get(subclass)) if label in subsets else "n/a"
                for label in labels])
    return header, rows


def shortcut_audit_table(shortcuts: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the shortcut audit (``audit.json["shortcuts"]``): features x sites.

    Cells are the oriented AUC of each statistic alone with its CI and the
    direction (``+`` higher / ``-`` lower value means tumour), then the
    baseline fit on the training site (and on the images with no copy in
    it, where measured) and the within-site cross-validated AUC.
    """
    sites = list(shortcuts.get("sites", {}))
    train = shortcuts.get("train_site", "")
    header = ["statistic"] + [f"{site} ({shortcuts['sites'][site]['images']} images)" for site in sites]

    def cell(entry: dict | None) -> str:
        if not entry or entry.get("auc") is None:
            return "n/a"
        low, high = entry.get("ci") or [None, None]
        return f"{entry['auc']:.3f}" + ("" if low is None or high is None else f" [{low:.2f}, {high:.2f}]")

    rows = []
    for feature in shortcuts.get("features", []):
        row = [feature]
        for site in sites:
            entry = shortcuts["sites"][site]["feature_auc"][feature]
            row.append(cell(entry) + (" +" if entry.get("direction", "").startswith("higher") else " -"))
        rows.append(row)
    rows.append([f"baseline fit on {train}"] + ["(training site)" if site == train else
                                                cell(shortcuts["sites"][site].get("baseline")) for site in sites])
    if any("baseline_source_disjoint" in shortcuts["sites"][site] for site in sites):
        rows.append([f"baseline on images with no copy in {train}"] + [
            "" if site == train else
            f"{cell(shortcuts['sites'][site]['baseline_source_disjoint'])} "
            f"({shortcuts['sites'][site]['baseline_source_disjoint']['images']} images)" for site in sites])
    rows.append(["cross-validated within the site"] + [cell(shortcuts["sites"][site].get("cross_validated"))
                                                       for site in sites])
    return header, rows


QUALITY_NOTE = (
    "Candidates for a person to review; nothing was removed. Not MRI: a CT-like bright skull ring. Label "
    "issue: cleanlab's ranking of images whose given label the out-of-sample probabilities doubt. The list of "
    "every candidate is in quality_review.csv.")


def quality_table(reviews: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per site the images, not-MRI flags, label-issue candidates and the probability source."""
    header = ["site", "images", "probably not MRI", "candidate label errors", "flagged (either)", "probabilities"]
    rows = [[name, str(review["images"]), str(review["counts"]["not_mri"]), str(review["counts"]["label_issue"]),
             str(review["counts"]["flagged"]), review["probability_source"].split(":")[0]]
            for name, review in reviews.items()]
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` in cells is escaped."""
    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(row) for row in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(path: str, caption: str) -> str:
    with open(path, "rb") as handle:
        encoded = base64.b64encode(handle.read()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _method_notes(threshold: float, results: dict[str, dict]) -> list[str]:
    validation_sites = [site for site, metrics in results.items() if metrics["role"] == "val"]
    any_site = next(iter(results.values()), {"n_resamples": 0, "auc_ci_level": 0.95, "ece_bins": 10})
    return [
        f"Decision threshold {threshold:.4f}: chosen on the validation data "
        f"({', '.join(validation_sites) or 'none'}) only and applied unchanged to every site; "
        "an image is called tumour when its score is at least the threshold.",
        f"AUC intervals: {100 * any_site['auc_ci_level']:.0f}% percentile intervals from "
        f"{any_site['n_resamples']} stratified bootstrap resamples (tumour and no-tumour images "
        "resampled separately, keeping their counts).",
        "Leak-free: the same site without its near-duplicates of an image of the training set that "
        "was used. Source-disjoint: without its near-duplicates of any image of the training site as "
        "given, whatever the leakage policy removed: images from sources the training site shares "
        "nothing with. Quote the leak-free and source-disjoint numbers when publishing cross-site "
        "performance.",
        "Shortcut AUC: the AUC on the same images of a small classifier that sees only "
        "non-anatomical statistics of each file (size, aspect, bytes per pixel, JPEG quality, "
        "intensity, sharpness, noise, border), fit on the training site: what could be scored "
        f"without looking at the brain. '!' marks a model AUC less than {SHORTCUT_MARGIN:.2f} above it.",
        "Source-disjoint without flagged (sensitivity): the source-disjoint images less those the "
        "data-quality review flagged as probably not MRI or as candidate label errors. The label-issue "
        "candidates come from this model's own probabilities, so this row flatters the model; it shows "
        "how much of the source-disjoint number depends on those images, not a better estimate.",
        "Sensitivity, specificity and subclass rates show (correct / images) in brackets. "
        f"ECE: expected calibration error over {any_site['ece_bins']} equal-width probability bins.",
    ]


# ----------------------------------------------------------------------------- report

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: left; }
th { background: #eef2f7; }
tr:nth-child(even) td { background: #fafafa; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
.note { color: #444; font-size: 0.92em; }
.warning { color: #9a3412; }
"""


def shortcut_warnings(results: dict[str, dict]) -> list[str]:
    """One sentence per site and subset where the shortcut baseline comes close to the model."""
    warnings = []
    for site, metrics in results.items():
        for label, subset in subset_metrics(metrics):
            if shortcut_close(subset):
                warnings.append(
                    f"{site} ({label}, {subset['images']} images): model AUC {subset['auc']:.3f}, shortcut "
                    f"baseline {subset['shortcut_auc']:.3f}: this AUC can be earned without anatomy.")
    return warnings


def _site_curves(rows: list[PredictionRow], subset: str = "all") -> dict[str, tuple]:
    curves = {}
    for site, members in _rows_by_site(rows).items():
        if subset == "leak-free":
            members = [row for row in members if not row.leaked]
        elif subset == "source-disjoint":
            members = [row for row in members if not row.near_train_site]
        labels, scores, _ = _arrays(members)
        curves[f"{members[0].role} {site}" if members else site] = (labels, scores)
    return curves


def _write_figures(output_dir: str, rows: list[PredictionRow], results: dict[str, dict],
                   threshold: float) -> list[tuple[str, str]]:
    """Write the figure PNGs; returns (path, caption) pairs."""
    figures = []
    all_curves = _site_curves(rows)
    figures.append((plot_roc_curves(all_curves, os.path.join(output_dir, "roc.png"),
                                    title="ROC, all images", threshold=threshold),
                    "ROC curves, all images; dots: the validation threshold"))
    any_leaks = any(metrics["leaked_images"] for metrics in results.values())
    if any_leaks:
        unique_curves = _site_curves(rows, "leak-free")
        figures.append((plot_roc_curves(unique_curves, os.path.join(output_dir, "roc_leak_free.png"),
                                        title="ROC, leak-free images", threshold=threshold),
                        "ROC curves without near-duplicates of training images"))
    if any(metrics["near_train_site_images"] > metrics["leaked_images"] for metrics in results.values()):
        disjoint_curves = _site_curves(rows, "source-disjoint")
        figures.append((plot_roc_curves(disjoint_curves, os.path.join(output_dir, "roc_source_disjoint.png"),
                                        title="ROC, source-disjoint images", threshold=threshold),
                        "ROC curves without near-duplicates of any image of the training site"))
    matrices = {}
    for site, metrics in results.items():
        matrices[f"{metrics['role']} {site}"] = metrics["confusion"]
        if metrics["leaked_images"]:
            matrices[f"{metrics['role']} {site} leak-free"] = metrics["unique"]["confusion"]
        if metrics["near_train_site_images"] > metrics["leaked_images"]:
            matrices[f"{metrics['role']} {site} source-disjoint"] = metrics["disjoint"]["confusion"]
    figures.append((plot_confusion_matrices(matrices, os.path.join(output_dir, "confusion.png"),
                                            title=f"Confusion at threshold {threshold:.3f}"),
                    "Confusion matrices at the validation threshold (percent of the true class)"))
    figures.append((plot_reliability_diagrams(all_curves, os.path.join(output_dir, "reliability.png")),
                    "Reliability: mean predicted probability vs fraction with tumour, per bin"))
    return figures


def _write_gradcam(output_dir: str, gradcam: dict) -> list[tuple[str, str]]:
    from matplotlib.image import imsave

    figures = []
    for index, (caption, picture) in enumerate(gradcam.items()):
        if isinstance(picture, (str, os.PathLike)):
            figures.append((os.fspath(picture), caption))
            continue
        picture = np.asarray(picture)
        if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
            raise ValueError(f"Grad-CAM picture {caption!r} must be uint8 (H, W, 3), "
                             f"got {picture.dtype} {picture.shape}")
        slug = re.sub(r"[^a-z0-9]+", "_", caption.lower()).strip("_") or str(index)
        path = os.path.join(output_dir, f"gradcam_{index:02d}_{slug}.png")
        imsave(path, picture, format="png")
        figures.append((path, caption))
    return figures


def write_report(
    output_dir,
    rows: list[PredictionRow],
    results: dict[str, dict],
    *,
    threshold: float,
    title: str,
    run_info: dict,
    gradcam: dict | None = None,
    shortcuts: dict | None = None,
    quality: dict | None = None,
) -> list[str]:
    """Write the evaluation report and its data files into ``output_dir``.

    Args:
        output_dir: folder, created if missing.
        rows: the prediction rows that ``results`` was computed from.
        results: output of :func:`evaluate_sites`.
        threshold: the validation-chosen decision threshold.
        title: report title.
        run_info: short facts shown at the top and stored in metrics.json
            (e.g. training site, run id, epochs); values are shown as text.
        gradcam: optional ``{caption: picture}``, picture either a uint8
            (H, W, 3) RGB montage (see ``eval.gradcam.gradcam_montage``) or
            the path of an existing PNG.
        shortcuts: optional shortcut audit (``audit.json["shortcuts"]``),
            shown as its own table.
        quality: optional data-quality review: ``{"reviews": {site:
            datasets.quality.quality_review(...)}, "figures": [(png path,
            caption)]}``, shown as a table of counts and the montages.

    Returns:
        Paths written: report.html, report.md, metrics.json, predictions.csv
        and the PNG figures (a Grad-CAM PNG passed as a path is embedded but
        not listed).
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    figures = _write_figures(output_dir, rows, results, threshold)
    gradcam_figures = _write_gradcam(output_dir, gradcam) if gradcam else []
    written += [path for path, _ in figures]
    written += [path for path, _ in gradcam_figures if os.path.dirname(path) == output_dir]

    written.append(write_predictions_csv(os.path.join(output_dir, "predictions.csv"), rows))
    metrics_path = os.path.join(output_dir, "metrics.json")
    with open(metrics_path, "w", encoding="utf-8") as handle:
        json.dump(_json_ready({"title": title, "threshold": threshold, "run_info": run_info,
                               "sites": results}), handle, indent=2, allow_nan=False)
    written.append(metrics_path)

    site_header, site_rows = site_table(results)
    subclass_header, subclass_rows = subclass_table(results)
    notes = _method_notes(threshold, results)
    warnings = shortcut_warnings(results)
    info_rows = [[str(key), str(value)] for key, value in run_info.items()]

    markdown = [f"# {title}", ""]
    if info_rows:
        markdown += [markdown_table(["run", "value"], info_rows), ""]
    markdown += ["## Performance by site", "", markdown_table(site_header, site_rows), ""]
    if warnings:
        markdown += ["**Shortcut warning.**", ""] + [f"- {warning}" for warning in warnings] + [""]
    markdown += ["## Per subclass", "", markdown_table(subclass_header, subclass_rows), ""]
    shortcut_rows = shortcut_audit_table(shortcuts) if shortcuts and shortcuts.get("sites") else None
    if shortcut_rows:
        markdown += ["## Shortcut audit", "", SHORTCUT_AUDIT_NOTE, "", markdown_table(*shortcut_rows), ""]
    quality_rows = quality_table(quality["reviews"]) if quality and quality.get("reviews") else None
    quality_figures = list(quality.get("figures", [])) if quality else []
    if quality_rows:
        markdown += ["## Data-quality review", "", QUALITY_NOTE, "", markdown_table(*quality_rows), ""]
        markdown += [f"![{caption}]({os.path.basename(path)})" for path, caption in quality_figures] + [""]
    markdown += ["## How to read this", ""] + [f"- {note}" for note in notes] + [""]
    markdown += ["## Figures", ""] + [f"![{caption}]({os.path.basename(path)})"
                                      for path, caption in figures + gradcam_figures] + [""]
    markdown_path = os.path.join(output_dir, "report.md")
    with open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(markdown))
    written.append(markdown_path)

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if info_rows:
        parts.append(_html_table(["run", "value"], info_rows))
    parts.append("<h2>Performance by site</h2>" + _html_table(site_header, site_rows))
    if warnings:
        parts.append("<p class='warning'><b>Shortcut warning.</b></p><ul class='warning'>"
                     + "".join(f"<li>{html.escape(warning)}</li>" for warning in warnings) + "</ul>")
    parts.append("<h2>Per subclass</h2>" + _html_table(subclass_header, subclass_rows))
    if shortcut_rows:
        parts.append(f"<h2>Shortcut audit</h2><p class='note'>{html.escape(SHORTCUT_AUDIT_NOTE)}</p>"
                     + _html_table(*shortcut_rows))
    if quality_rows:
        parts.append(f"<h2>Data-quality review</h2><p class='note'>{html.escape(QUALITY_NOTE)}</p>"
                     + _html_table(*quality_rows)
                     + "".join(_html_image(path, caption) for path, caption in quality_figures))
    parts.append("<h2>How to read this</h2><ul class='note'>"
                 + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    parts.append("<h2>Figures</h2>" + "".join(_html_image(path, caption) for path, caption in figures))
    if gradcam_figures:
        parts.append("<h2>Grad-CAM</h2><p class='note'>Red: regions that raise the tumour "
                     "probability. Left: image, right: overlay.</p>"
                     + "".join(_html_image(path, caption) for path, caption in gradcam_figures))
    parts.append("</body></html>")
    html_path = os.path.join(output_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))
    written.append(html_path)
    return written
