"""The RESULTS.md builder on a hand-made two-run example."""
from __future__ import annotations

import pytest

import math

from eval.results import (auc_cell, beyond_seed_variation, ci_half_width, eval_sites, overview_table,
                          results_markdown, run_section, seed_statistics, seed_tables)


def site(role, auc, images=10, **extra):
    values = {"role": role, "images": images, "auc": auc, "auc_ci": [auc - 0.1, auc + 0.05],
              "sensitivity": 0.8, "specificity": 0.6, "ece": 0.12}
    values.update(extra)
    return values


def entry(name, train_images, nav_auc, mos_auc, mos_leak_free, seed=None, mos_disjoint=None):
    subclasses = {"glioma": {"images": 3, "detection_rate": 2 / 3}, "notumor": {"images": 4, "specificity": 0.25},
                  "pituitary": {"images": 3, "detection_rate": 1.0}}
    summary = {"threshold": 0.42, "threshold_method": "youden", "epochs_run": 7, "best_epoch": 5, "sites": {
        "br35h": {"role": "train", "images": train_images, "removed_by_leakage_policy": 3000 - train_images},
        "mos": site("test", mos_auc, subclasses=subclasses, unique=site("test", mos_leak_free, images=6),
                    **({} if mos_disjoint is None else {"disjoint": site("test", mos_disjoint, images=4)})),
        "nav": site("val", nav_auc, unique=site("val", nav_auc)),
    }}
    result = {"name": name, "command": f"python train_distributed.py train --run-name {name}", "seconds": 150.0,
              "summary": summary}
    if seed is not None:
        result["seed"] = seed
    return result


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
    assert lines[0] == ("| run | seed | train images | nav AUC (full) | mos AUC (full) | nav AUC (leak-free) | "
                        "mos AUC (leak-free) | nav AUC (source-disjoint) | mos AUC (source-disjoint) | epochs | "
                        "minutes |")
    assert lines[2] == ("| base | – | 431 | 0.700 [0.600, 0.750] | 0.600 [0.500, 0.650] | 0.700 [0.600, 0.750] | "
                        "0.550 [0.450, 0.600] | – | – | 7 | 2.5 |")
    assert lines[3].startswith("| report-only | – | 3000 | 0.990 [0.890, 1.040]")


def test_run_section_has_command_thresholds_and_subclasses():
    text = run_section(entry("base", 431, 0.7, 0.6, 0.55))
    assert "python train_distributed.py train --run-name base" in text
    assert "431 images after the leakage policy (2569 removed)" in text and "Threshold 0.420" in text
    assert "| mos | test | leak-free | 6 | 0.550 [0.450, 0.600] | 0.800 | 0.600 | 0.120 |" in text
    assert "| glioma | 3 | 0.667 |" in text and "| notumor | 4 | 0.250 |" in text


def test_results_markdown_has_every_run():
    text = results_markdown([entry("a", 431, 0.7, 0.6, 0.5), entry("b", 815, 0.8, 0.7, 0.6)], title="T")
    assert text.startswith("# T\n") and text.count("### ") == 2


@pytest.mark.parametrize("values, expected", [
    ([0.8, 0.9], {"n": 2, "mean": 0.85, "sd": 0.0707107}),
    ([0.8, float("nan"), 0.9], {"n": 2, "mean": 0.85, "sd": 0.0707107}),
    ([0.7], {"n": 1, "mean": 0.7, "sd": float("nan")}),
    ([], {"n": 0, "mean": float("nan"), "sd": float("nan")}),
])
def test_seed_statistics(values, expected):
    stats = seed_statistics(values)
    assert stats["n"] == expected["n"]
    for key in ("mean", "sd"):
        assert (math.isnan(stats[key]) and math.isnan(expected[key])) or stats[key] == pytest.approx(expected[key])


@pytest.mark.parametrize("first, second, expected", [
    ([0.80, 0.81, 0.79], [0.90, 0.91, 0.89], "yes"),     # far apart, tight seeds
    ([0.80, 0.87, 0.84], [0.85, 0.90, 0.82], "no"),      # ranges overlap
    ([0.80, 0.90], [0.91, 1.00], "no"),                  # apart, but within 2 standard errors
    ([0.80], [0.90, 0.91], "one seed"),
])
def test_beyond_seed_variation(first, second, expected):
    assert beyond_seed_variation(seed_statistics(first), seed_statistics(second)) == expected


def test_seed_tables_give_mean_sd_and_verdict():
    entries = [entry("base", 431, 0.70, 0.80, 0.80, seed=0, mos_disjoint=0.55),
               entry("base", 431, 0.72, 0.81, 0.81, seed=1, mos_disjoint=0.57),
               entry("base", 431, 0.71, 0.79, 0.79, seed=2, mos_disjoint=0.56),
               entry("match=0", 431, 0.60, 0.90, 0.90, seed=0, mos_disjoint=0.60),
               entry("match=0", 431, 0.90, 0.91, 0.91, seed=1, mos_disjoint=0.40),
               entry("match=0", 431, 0.75, 0.89, 0.89, seed=2, mos_disjoint=0.50)]
    text = seed_tables(entries)
    assert "| base | 0, 1, 2 | 0.710 ± 0.010 (0.700, 0.720, 0.710) | 0.710 ± 0.010 (0.700, 0.720, 0.710) | – |" in text
    assert "0.560 ± 0.010 (0.550, 0.570, 0.560)" in text  # mos source-disjoint
    row = next(line for line in text.splitlines() if line.startswith("| match=0 | base |"))
    cells = row.strip("| ").split(" | ")
    # nav full: +0.040 with seeds 0.60..0.90 around base's 0.70..0.72: not beyond seed variation;
    # mos full: +0.100, tight and apart: beyond it; mos source-disjoint: -0.060 but spread 0.40..0.60: no
    assert cells[2] == "+0.040 (no)" and cells[5] == "+0.100 (yes)" and cells[7] == "-0.060 (no)"
    document = results_markdown(entries, title="T")
    assert "## Over seeds" in document and "### base (seed 1)" in document


def test_seed_tables_show_the_shortcut_baseline_beside_the_model():
    def with_baseline(item, full, disjoint):
        mos = item["summary"]["sites"]["mos"]
        mos["shortcut_auc"], mos["disjoint"]["shortcut_auc"] = full, disjoint
        return item

    entries = [with_baseline(entry("base", 431, 0.70, 0.80, 0.80, seed=seed, mos_disjoint=0.55), 0.58, 0.62)
               for seed in (0, 1)]
    entries += [with_baseline(entry("dedupe", 815, 0.70, 0.80, 0.80, seed=seed, mos_disjoint=0.55), 0.90, 0.76)
                for seed in (0, 1)]
    entries += [with_baseline(entry("noise", 431, 0.70, 0.80, 0.80, seed=seed, mos_disjoint=0.55), 0.58, 0.62)
                for seed in (0,)]  # fewer seeds, same baseline values: no row of its own
    rows = [line for line in seed_tables(entries).splitlines() if line.startswith("| shortcut baseline")]
    assert len(rows) == 2  # base's, and dedupe's other training set; noise shares base's
    cells = rows[0].strip("| ").split(" | ")
    assert cells[:2] == ["shortcut baseline", "0, 1"]
    assert "0.580 ± 0.000 (0.580, 0.580)" in cells and "0.620 ± 0.000 (0.620, 0.620)" in cells
    assert rows[1].startswith("| shortcut baseline (dedupe) | 0, 1 |") and "0.760 ± 0.000" in rows[1]
    no_baseline = [entry("base", 431, 0.70, 0.80, 0.80, seed=0)]
    assert "shortcut baseline" not in seed_tables(no_baseline)



@pytest.mark.parametrize("metrics, expected", [
    ({"auc": 0.8, "auc_ci": [0.7, 0.85]}, 0.075),
    ({"auc": 0.8, "auc_ci": [0.8, 0.8]}, 0.0),
    ({"auc": 0.5, "auc_ci": [float("nan"), float("nan")]}, float("nan")),
    ({"auc": 0.5}, float("nan")),
    (None, float("nan")),
])
def test_ci_half_width(metrics, expected):
    value = ci_half_width(metrics)
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


def test_seed_tables_give_one_runs_ci_beside_the_sd():
    entries = [entry("base", 431, 0.70, 0.80, 0.80, seed=0, mos_disjoint=0.55),
               entry("base", 431, 0.72, 0.81, 0.81, seed=1, mos_disjoint=0.57)]
    entries[1]["summary"]["sites"]["mos"]["auc_ci"] = [0.71, 0.86]  # half-width 0.075 -> mos full 0.075..0.075
    entries[1]["summary"]["sites"]["nav"]["auc_ci"] = [0.62, 0.72]  # half-width 0.05; the other nav run 0.075
    row = next(line for line in seed_tables(entries).splitlines() if line.startswith("| one run's 95 % CI"))
    cells = row.strip("| ").split(" | ")
    assert cells[1] == "2 runs"
    # columns: nav full, nav leak-free, nav source-disjoint, mos full, mos leak-free, mos source-disjoint
    assert cells[2] == "± 0.062 (0.050 to 0.075)"
    assert cells[4] == "–"  # nav has no source-disjoint subset
    assert cells[5] == "± 0.075 (0.075 to 0.075)"
    no_ci = [entry("base", 431, 0.70, 0.80, 0.80, seed=0)]
    for values in no_ci[0]["summary"]["sites"].values():
        for metrics in (values, values.get("unique") or {}):
            metrics.pop("auc_ci", None)
    assert "one run's 95 % CI" not in seed_tables(no_ci)
