"""The RESULTS.md builder on a hand-made two-run example."""
from __future__ import annotations

import pytest

from eval.results import auc_cell, eval_sites, overview_table, results_markdown, run_section


def site(role, auc, images=10, **extra):
    values = {"role": role, "images": images, "auc": auc, "auc_ci": [auc - 0.1, auc + 0.05],
              "sensitivity": 0.8, "specificity": 0.6, "ece": 0.12}
    values.update(extra)
    return values


def entry(name, train_images, nav_auc, mos_auc, mos_leak_free):
    subclasses = {"glioma": {"images": 3, "detection_rate": 2 / 3}, "notumor": {"images": 4, "specificity": 0.25},
                  "pituitary": {"images": 3, "detection_rate": 1.0}}
    summary = {"threshold": 0.42, "threshold_method": "youden", "epochs_run": 7, "best_epoch": 5, "sites": {
        "br35h": {"role": "train", "images": train_images, "removed_by_leakage_policy": 3000 - train_images},
        "mos": site("test", mos_auc, subclasses=subclasses, unique=site("test", mos_leak_free, images=6)),
        "nav": site("val", nav_auc, unique=site("val", nav_auc)),
    }}
    return {"name": name, "command": f"python train_distributed.py train --run-name {name}", "seconds": 150.0,
            "summary": summary}


@pytest.mark.parametrize("metrics, expected", [
    ({"auc": 0.8734, "auc_ci": [0.851, 0.8944]}, "0.873 [0.851, 0.894]"),
    ({"auc": float("nan"), "auc_ci": [float("nan"), float("nan")]}, "– [–, –]"),
    (None, "–"),
    ({}, "–"),
])
def test_auc_cell(metrics, expected):
    assert auc_cell(metrics) == expected


def test_eval_sites_put_validation_first():
    assert eval_sites(entry("a", 431, 0.7, 0.6, 0.5)["summary"]) == ["nav", "mos"]


def test_overview_table_rows():
    lines = overview_table([entry("base", 431, 0.7, 0.6, 0.55), entry("report-only", 3000, 0.99, 0.9, 0.6)])
    lines = lines.splitlines()
    assert lines[0] == ("| run | train images | nav AUC (full) | mos AUC (full) | nav AUC (leak-free) | "
                        "mos AUC (leak-free) | epochs | minutes |")
    assert lines[2] == ("| base | 431 | 0.700 [0.600, 0.750] | 0.600 [0.500, 0.650] | 0.700 [0.600, 0.750] | "
                        "0.550 [0.450, 0.600] | 7 | 2.5 |")
    assert lines[3].startswith("| report-only | 3000 | 0.990 [0.890, 1.040]")


def test_run_section_has_command_thresholds_and_subclasses():
    text = run_section(entry("base", 431, 0.7, 0.6, 0.55))
    assert "python train_distributed.py train --run-name base" in text
    assert "431 images after the leakage policy (2569 removed)" in text and "Threshold 0.420" in text
    assert "| mos | test | leak-free | 6 | 0.550 [0.450, 0.600] | 0.800 | 0.600 | 0.120 |" in text
    assert "| glioma | 3 | 0.667 |" in text and "| notumor | 4 | 0.250 |" in text


def test_results_markdown_has_every_run():
    text = results_markdown([entry("a", 431, 0.7, 0.6, 0.5), entry("b", 815, 0.8, 0.7, 0.6)], title="T")
    assert text.startswith("# T\n") and text.count("### ") == 2
