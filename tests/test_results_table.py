"""The short per-site console table that ends ``train`` and ``evaluate``."""
from __future__ import annotations

import math

from training.evaluation import results_table


def site(auc, low, high, images, tp=0, fn=0, tn=0, fp=0, **subsets) -> dict:
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    return {"auc": auc, "auc_ci": [low, high], "images": images, "sensitivity": sensitivity,
            "specificity": specificity, "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp}, **subsets}


SUMMARY = {
    "threshold": 0.41234, "threshold_method": "youden",
    "sites": {
        "nav": {**site(0.94, 0.906, 0.969, 253, tp=140, fn=15, tn=80, fp=18,
                       unique=site(math.nan, math.nan, math.nan, 5),
                       disjoint=site(math.nan, math.nan, math.nan, 0)), "role": "val"},
        "mos": {**site(0.87, 0.843, 0.895, 1311, tp=850, fn=56, tn=300, fp=105,
                       unique=site(0.87, 0.843, 0.895, 1311), disjoint=site(0.577, 0.448, 0.694, 897)),
                "role": "test"},
        "br35h": {"role": "train", "images": 431, "removed_by_leakage_policy": 2569, "bad_files": 0},
    },
}


def test_one_row_per_evaluated_site_with_the_three_subsets_and_rates():
    lines = results_table(SUMMARY).splitlines()
    assert lines[0] == "Per-site results at the decision threshold 0.4123 (chosen on nav by youden)"
    assert lines[1].split("  ")[0] == "site" and "leak-free AUC [95% CI]" in lines[1]
    assert "source-disjoint AUC [95% CI]" in lines[1] and lines[1].endswith("specificity")
    assert set(lines[2]) == {"-", " "}
    rows = {line.split()[0]: line for line in lines[3:5]}
    assert set(rows) == {"nav", "mos"}  # the training site has no row
    cells = [cell.strip() for cell in rows["mos"].split("  ") if cell.strip()]
    assert cells == ["mos", "test", "1311", "0.870 [0.843, 0.895]", "0.870 [0.843, 0.895] n=1311",
                     "0.577 [0.448, 0.694] n=897", "0.938 (850/906)", "0.741 (300/405)"]
    cells = [cell.strip() for cell in rows["nav"].split("  ") if cell.strip()]
    assert cells[3:] == ["0.940 [0.906, 0.969]", "n/a (one class) n=5", "n/a (no images)", "0.903 (140/155)",
                         "0.816 (80/98)"]
    assert "report.md" in lines[-1]


def test_a_given_threshold_is_named_as_given_and_columns_line_up():
    summary = {**SUMMARY, "sites": {"mos": SUMMARY["sites"]["mos"]}}
    lines = results_table(summary).splitlines()
    assert lines[0] == "Per-site results at the decision threshold 0.4123 (from --threshold or the model's run)"
    header, rule, row = lines[1:4]
    assert row.index("0.870") == header.index("AUC [95% CI]") == rule.index("  ----------") + 2
    assert row.index("0.938") == header.index("sensitivity")
