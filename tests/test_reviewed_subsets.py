"""benchmarks/reviewed_subsets.py: AUC against reviewed groups of source-disjoint no-tumour images."""
from __future__ import annotations

import importlib.util
import math
import pathlib
import re

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "reviewed_subsets.py"
spec = importlib.util.spec_from_file_location("reviewed_subsets", SCRIPT)
reviewed_subsets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reviewed_subsets)

PREDICTION_HEADER = "site,role,relative_path,label,subclass,score,leaked,near_train_site,shortcut_score,flagged\n"
REVIEW_HEADER = "relative_path,modality,plane,visible_focal_abnormality,note\n"


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def files(tmp_path):
    predictions = write(tmp_path / "07-intensity-seed0" / "predictions.csv", PREDICTION_HEADER + "".join([
        "mos,test,t/p1.jpg,1,glioma,0.9,false,false,0.5,false\n",
        "mos,test,t/p2.jpg,1,glioma,0.8,false,false,0.5,false\n",
        "mos,test,t/p3.jpg,1,glioma,0.7,false,false,0.5,false\n",
        "mos,test,t/p4.jpg,1,glioma,0.01,false,true,0.5,false\n",   # near a training image: not source-disjoint
        "mos,test,n/a.jpg,0,no_tumour,0.1,false,false,0.5,false\n",
        "mos,test,n/b.jpg,0,no_tumour,0.95,false,false,0.5,false\n",
        "mos,test,n/c.jpg,0,no_tumour,0.75,false,false,0.5,false\n",
        "mos,test,n/d.jpg,0,no_tumour,0.99,false,true,0.5,false\n",  # not source-disjoint, not reviewed
        "nav,val,n/e.jpg,0,no_tumour,0.99,false,false,0.5,false\n",  # another site
    ]))
    review = write(tmp_path / "review.csv", REVIEW_HEADER + "n/a.jpg,MRI,axial,no,\nn/b.jpg,CT,axial,yes,bleed\n"
                                                           "n/c.jpg,MRI,sagittal,no,\n")
    return predictions, review


def test_each_reviewed_group_gets_its_exact_auc(files):
    predictions, review = files
    result = reviewed_subsets.reviewed_aucs(predictions, reviewed_subsets.read_review(review), "mos")
    groups = result["groups"]
    assert result["positives"] == 3
    # positives 0.9, 0.8, 0.7 against a 0.1 (below all), b 0.95 (above all), c 0.75 (above one of three)
    expected = {"all": (3, 5 / 9), "axial MRI": (1, 1.0), "axial MRI, nothing visible": (1, 1.0), "CT": (1, 0.0),
                "sagittal or coronal MRI": (1, 2 / 3)}
    for group, (negatives, auc) in expected.items():
        assert groups[group]["negatives"] == negatives
        assert groups[group]["auc"] == pytest.approx(auc)
        low, high = groups[group]["auc_ci"]
        assert low <= groups[group]["auc"] + 1e-12 and high >= groups[group]["auc"] - 1e-12


def test_a_run_whose_disjoint_images_are_not_the_reviewed_ones_is_an_error(files, tmp_path):
    predictions, review = files
    extra = write(tmp_path / "more.csv", review.read_text() + "n/z.jpg,MRI,axial,no,\n")
    with pytest.raises(ValueError, match=r"not the reviewed ones \(0 not reviewed.*1 reviewed but absent"):
        reviewed_subsets.reviewed_aucs(predictions, reviewed_subsets.read_review(extra), "mos")


@pytest.mark.parametrize("text, message", [
    ("relative_path,modality\nn/a.jpg,MRI\n", "missing plane, visible_focal_abnormality"),
    (REVIEW_HEADER, "at least one row"),
    (REVIEW_HEADER + "n/a.jpg,PET,axial,no,\n", "line 2: modality must be one of MRI, CT, got 'PET'"),
    (REVIEW_HEADER + "n/a.jpg,MRI,axial,no,\nn/b.jpg,MRI,oblique,no,\n", "line 3: plane must be one of"),
])
def test_bad_review_files_are_named_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        reviewed_subsets.read_review(write(tmp_path / "review.csv", text))


@pytest.mark.parametrize("folder, expected", [
    ("07-intensity-seed0", ("intensity", "0")),
    ("02-augment.blur_probability=0.2-seed12", ("augment.blur_probability=0.2", "12")),
    ("base", ("base", "")),
    ("my-run", ("my-run", "")),
])
def test_variant_of_a_run_folder(folder, expected):
    assert reviewed_subsets.variant_of(pathlib.Path(folder) / "predictions.csv") == expected


def test_variant_table_gives_mean_sd_over_seeds(files, tmp_path):
    predictions, review = files
    rows = reviewed_subsets.read_review(review)
    second = write(tmp_path / "08-intensity-seed1" / "predictions.csv",
                   predictions.read_text().replace("n/c.jpg,0,no_tumour,0.75", "n/c.jpg,0,no_tumour,0.05"))
    runs = []
    for path in (predictions, second):
        run = reviewed_subsets.reviewed_aucs(path, rows, "mos")
        run["variant"], run["seed"] = reviewed_subsets.variant_of(path)
        runs.append(run)
    line = reviewed_subsets.variant_table(runs).splitlines()[2]
    cells = line.strip("| ").split(" | ")
    assert cells[:2] == ["intensity", "0, 1"]
    # all: 5/9 then 6/9 (c below every positive)
    assert cells[2] == f"0.611 ± {math.sqrt(((5 / 9 - 11 / 18) ** 2 + (6 / 9 - 11 / 18) ** 2)):.3f} (0.556, 0.667)"
    assert cells[6] == "0.833 ± 0.236 (0.667, 1.000)"


def test_the_shortcut_baseline_is_scored_on_the_same_groups(files):
    predictions, review = files
    baseline = reviewed_subsets.reviewed_aucs(predictions, reviewed_subsets.read_review(review), "mos",
                                              "shortcut_score")
    assert baseline["groups"]["all"]["auc"] == 0.5  # every shortcut_score is 0.5: all ties
    run = reviewed_subsets.reviewed_aucs(predictions, reviewed_subsets.read_review(review), "mos")
    run["variant"], run["seed"] = "intensity", "0"
    baseline["variant"], baseline["seed"] = "shortcut baseline", "0"
    table = reviewed_subsets.variant_table([run, dict(run, seed="1")], [baseline, dict(baseline, seed="1")])
    last = table.splitlines()[-1].strip("| ").split(" | ")
    assert last[:3] == ["shortcut baseline", "–", "0.500 (every run)"]
