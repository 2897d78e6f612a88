"""Tests of eval.report, eval.plots, eval.gradcam and eval.compare on synthetic data."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from eval.compare import (
    collect_runs,
    comparison_table,
    format_markdown_table,
    parse_metric_name,
    write_comparison,
)
from eval.gradcam import gradcam_montage, overlay_heatmap, select_gradcam_examples
from eval.report import (
    PredictionRow,
    evaluate_sites,
    mlflow_metric_names,
    read_predictions_csv,
    threshold_from_validation,
    write_report,
)

MOS_SUBCLASSES = ("glioma", "meningioma", "pituitary", "notumor")


def synthetic_rows(seed=0):
    """A NAV-like validation site and a MOS-like test site with some leaked images.

    MOS: 3 notumor images are near-duplicates of the training set used, 6
    more of the training site as given (removed by the leakage policy);
    its shortcut scores separate the classes perfectly.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(60):
        label = int(index % 3 != 0)
        score = float(np.clip(rng.normal(0.35 + 0.35 * label, 0.2), 0, 1))
        rows.append(PredictionRow("nav", "val", f"{'yes' if label else 'no'}/{index} a.jpg",
                                  label, "tumour" if label else "no_tumour", score,
                                  shortcut_score=float(rng.uniform())))
    for index in range(120):
        subclass = MOS_SUBCLASSES[index % 4]
        label = int(subclass != "notumor")
        score = float(np.clip(rng.normal(0.3 + 0.3 * label, 0.25), 0, 1))
        leaked = subclass == "notumor" and index % 40 == 3
        near = subclass == "notumor" and index % 40 in (3, 7, 11)
        rows.append(PredictionRow("mos", "test", f"Testing/{subclass}/Te-{index:04d}.jpg",
                                  label, subclass, score, leaked, near, shortcut_score=0.25 + 0.5 * label))
    return rows


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows()


@pytest.fixture(scope="module")
def results(rows):
    threshold = threshold_from_validation(rows)
    return threshold, evaluate_sites(rows, threshold, n_resamples=200, seed=0)


def test_prediction_row_validation():
    with pytest.raises(ValueError):
        PredictionRow("mos", "train", "a.jpg", 1, "glioma", 0.5)
    with pytest.raises(ValueError):
        PredictionRow("mos", "test", "a.jpg", 2, "glioma", 0.5)
    with pytest.raises(ValueError, match="implies"):
        PredictionRow("mos", "test", "a.jpg", 1, "glioma", 0.5, leaked=True, near_train_site=False)
    assert PredictionRow("mos", "test", "a.jpg", 1, "glioma", 0.5, leaked=True).near_train_site is True


def test_threshold_uses_validation_rows_only(rows):
    threshold = threshold_from_validation(rows)
    flipped = [dataclasses.replace(row, label=1 - row.label) if row.role == "test" else row
               for row in rows]
    assert threshold_from_validation(flipped) == threshold
    assert threshold in {r.score for r in rows if r.role == "val"}
    with pytest.raises(ValueError):
        threshold_from_validation([r for r in rows if r.role == "test"])


def test_evaluate_sites_full_and_leak_free(rows, results):
    threshold, sites = results
    assert list(sites) == ["nav", "mos"]
    mos = sites["mos"]
    assert mos["role"] == "test" and mos["images"] == 120 and mos["leaked_images"] == 3
    assert mos["unique"]["images"] == 117 and mos["unique"]["negatives"] == 27
    assert mos["threshold"] == threshold == mos["unique"]["threshold"]
    assert set(mos["subclasses"]) == set(MOS_SUBCLASSES)
    assert mos["subclasses"]["notumor"]["images"] == 30
    assert mos["unique"]["subclasses"]["notumor"]["images"] == 27
    assert mos["near_train_site_images"] == 9
    assert mos["disjoint"]["images"] == 111 and mos["disjoint"]["negatives"] == 21
    assert mos["disjoint"]["subclasses"]["notumor"]["images"] == 21
    # each subset's AUC is the plain AUC of its rows
    from eval.metrics import roc_auc
    kept = [r for r in rows if r.site == "mos" and not r.near_train_site]
    assert mos["disjoint"]["auc"] == roc_auc([r.label for r in kept], [r.score for r in kept])
    # the shortcut baseline separates MOS perfectly on every subset; NAV's is random
    assert mos["shortcut_auc"] == mos["unique"]["shortcut_auc"] == mos["disjoint"]["shortcut_auc"] == 1.0
    assert abs(sites["nav"]["shortcut_auc"] - 0.5) < 0.2
    # full-site numbers are the plain metrics of that site's rows
    labels = np.array([r.label for r in rows if r.site == "mos"])
    scores = np.array([r.score for r in rows if r.site == "mos"])
    predicted = scores >= threshold
    assert mos["sensitivity"] == pytest.approx(predicted[labels == 1].mean())
    assert mos["specificity"] == pytest.approx(1 - predicted[labels == 0].mean())


def test_mlflow_metric_names(results):
    _, sites = results
    names = mlflow_metric_names(sites)
    for name in ("test_mos_auc", "test_mos_auc_ci_low", "test_mos_auc_ci_high", "test_mos_sensitivity",
                 "test_mos_specificity", "test_mos_ece", "test_mos_unique_auc",
                 "test_mos_unique_images",
                 "val_nav_auc", "test_mos_glioma_detection_rate", "test_mos_notumor_specificity",
                 "test_mos_leaked_images", "decision_threshold", "test_mos_disjoint_auc",
                 "test_mos_disjoint_auc_ci_low", "test_mos_disjoint_images", "test_mos_near_train_site_images",
                 "test_mos_disjoint_notumor_specificity", "test_mos_shortcut_auc",
                 "test_mos_disjoint_shortcut_auc", "test_mos_unique_shortcut_auc_ci_high"):
        assert name in names, name
    assert names["test_mos_auc"] == sites["mos"]["auc"]
    assert names["test_mos_unique_images"] == 117.0
    assert names["test_mos_disjoint_images"] == 111.0 and names["test_mos_near_train_site_images"] == 9.0
    assert names["test_mos_disjoint_shortcut_auc"] == 1.0
    assert all(isinstance(value, float) and not math.isnan(value) for value in names.values())


def test_mlflow_metric_names_skip_nan():
    one_class = [PredictionRow("nav", "val", f"{index}.jpg", 1, "tumour", 0.1 * index)
                 for index in range(5)]
    names = mlflow_metric_names(evaluate_sites(one_class, 0.25, n_resamples=10))
    assert "val_nav_auc" not in names and "val_nav_specificity" not in names
    assert names["val_nav_sensitivity"] == 0.4


@pytest.fixture(scope="module")
def report(tmp_path_factory, rows, results):
    threshold, sites = results
    output_dir = tmp_path_factory.mktemp("report")
    montage = np.zeros((20, 40, 3), dtype=np.uint8)
    paths = write_report(output_dir, rows, sites, threshold=threshold, title="BR35H -> NAV, MOS",
                         run_info={"train site": "br35h", "epochs": 3}, gradcam={"Test MOS": montage})
    return output_dir, paths


def test_write_report_writes_everything(report, results):
    output_dir, paths = report
    threshold, sites = results
    names = sorted(os.path.basename(path) for path in paths)
    assert names == sorted(["report.html", "report.md", "metrics.json", "predictions.csv", "roc.png",
                            "roc_leak_free.png", "roc_source_disjoint.png", "confusion.png", "reliability.png",
                            "gradcam_00_test_mos.png"])
    for path in paths:
        assert os.path.dirname(path) == str(output_dir) and os.path.getsize(path) > 0
        if path.endswith(".png"):
            with open(path, "rb") as handle:
                assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    html = (output_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6  # self-contained: every figure inline
    assert 'src="roc.png"' not in html
    assert "leak-free" in html and "glioma" in html and f"{threshold:.4f}" in html
    mos = sites["mos"]
    auc_text = f"{mos['auc']:.3f} [{mos['auc_ci'][0]:.3f}, {mos['auc_ci'][1]:.3f}]"
    assert auc_text in html
    markdown = (output_dir / "report.md").read_text()
    assert auc_text in markdown
    disjoint = mos["disjoint"]
    assert f"| mos | test | 111 | source-disjoint | {disjoint['auc']:.3f} [" in markdown
    # MOS's shortcut baseline (1.0) beats the model: flagged in the table and warned about
    assert "1.000 [1.000, 1.000] !" in markdown and "**Shortcut warning.**" in markdown
    assert "mos (source-disjoint, 111 images)" in markdown and "nav (all" not in markdown

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["threshold"] == threshold and metrics["run_info"]["epochs"] == 3
    for site in ("nav", "mos"):
        entry = metrics["sites"][site]
        for key in ("auc_ci", "threshold", "sensitivity", "specificity", "ece", "unique"):
            assert key in entry, key
        assert entry["auc_ci"] == pytest.approx(sites[site]["auc_ci"])
        assert entry["unique"]["images"] == sites[site]["unique"]["images"]
    assert metrics["sites"]["mos"]["unique"]["auc"] == pytest.approx(mos["unique"]["auc"])


def test_predictions_csv_round_trip(report, rows):
    output_dir, _ = report
    text = (output_dir / "predictions.csv").read_text().splitlines()
    assert text[0] == "site,role,relative_path,label,subclass,score,leaked,near_train_site,shortcut_score,flagged"
    assert len(text) == len(rows) + 1
    assert read_predictions_csv(output_dir / "predictions.csv") == rows


def test_report_with_one_class_site(tmp_path):
    rows = [PredictionRow("nav", "val", f"v{index}.jpg", index % 2,
                          "tumour" if index % 2 else "no_tumour", 0.1 + 0.08 * index)
            for index in range(10)]
    rows += [PredictionRow("extra", "test", f"t{index}.jpg", 1, "tumour", 0.05 * index, index == 0)
             for index in range(8)]
    sites = evaluate_sites(rows, 0.5, n_resamples=20)
    paths = write_report(tmp_path, rows, sites, threshold=0.5, title="one class", run_info={})
    assert "n/a" in (tmp_path / "report.md").read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sites"]["extra"]["auc"] is None and metrics["sites"]["extra"]["specificity"] is None
    assert len(paths) == 8


# ----------------------------------------------------------------------------- Grad-CAM helpers


def test_select_gradcam_examples_is_deterministic():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.3, 0.6, 0.05])
    chosen = select_gradcam_examples(labels, scores, 0.5, per_kind=2, seed=1)
    assert set(chosen) == {"tp", "fp", "tn", "fn"}
    assert len(chosen["tp"]) == 2 and set(chosen["tp"]) <= {0, 1, 6}
    assert chosen["fp"] == [3] and chosen["fn"] == [2]
    assert len(chosen["tn"]) == 2 and set(chosen["tn"]) <= {4, 5, 7}
    assert select_gradcam_examples(labels, scores, 0.5, per_kind=2, seed=1) == chosen


def test_gradcam_montage_shape_and_overlay():
    images = np.full((3, 32, 24), 100, dtype=np.uint8)
    heatmaps = np.zeros((3, 32, 24), dtype=np.float32)
    heatmaps[:, :16] = 1.0
    titles = ["tp mos/a.jpg", "fp", "a very long title " * 5]
    montage = gradcam_montage(images, heatmaps, titles, columns=2)
    title_height = 14
    assert montage.dtype == np.uint8 and montage.shape == (2 * (title_height + 32), 2 * 48, 3)
    overlay = overlay_heatmap(images[0], heatmaps[0])
    assert overlay.shape == (32, 24, 3)
    assert overlay[0, 0, 0] > overlay[0, 0, 2]  # hot region is red
    assert overlay[-1, 0, 2] > overlay[-1, 0, 0]  # cold region is blue
    with pytest.raises(ValueError):
        gradcam_montage(images, heatmaps[:2], ["a", "b", "c"])


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras


def _tiny_flat_model(keras):
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def _tiny_nested_model(keras):
    backbone_inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_out")(backbone_inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="block2_out")(x)
    backbone = keras.Model(backbone_inputs, x, name="resnet50")
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Concatenate()([inputs, inputs, inputs])
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("build, layer_name", [
    (_tiny_flat_model, None), (_tiny_nested_model, None), (_tiny_nested_model, "block1_out"),
])
def test_grad_cam_shape_and_range(keras, build, layer_name):
    from eval.gradcam import grad_cam

    model = build(keras)
    images = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    heatmaps = grad_cam(model, images, layer_name=layer_name, batch_size=2)
    assert heatmaps.shape == (3, 16, 16) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0


def test_grad_cam_picks_backbone_and_finds_evidence(keras):
    from eval.gradcam import find_last_conv_layer, grad_cam

    assert find_last_conv_layer(_tiny_nested_model(keras)) == "resnet50"
    # features: channel 0 = image, channel 1 = 1 - image; only channel 0 drives the output,
    # so the map follows the image: bright square -> hot, black background -> zero
    inputs = keras.Input((12, 12, 1))
    features = keras.layers.Conv2D(2, 1, name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.array([[[[1.0, -1.0]]]]), np.array([0.0, 1.0])])
    model.layers[-1].set_weights([np.array([[2.0], [0.0]]), np.array([0.0])])
    image = np.zeros((1, 12, 12, 1), dtype=np.float32)
    image[0, 2:6, 6:10] = 1.0
    heatmap = grad_cam(model, image)[0]
    assert heatmap[3, 7] == pytest.approx(1.0)
    assert heatmap[10, 1] == 0.0
    with pytest.raises(ValueError):
        grad_cam(model, image, layer_name="missing")


# ----------------------------------------------------------------------------- compare


def test_parse_metric_name():
    assert parse_metric_name("test_mos_auc") == ("test", "mos", "auc")
    assert parse_metric_name("test_mos_unique_auc_ci_low") == ("test", "mos", "unique_auc_ci_low")
    assert parse_metric_name("val_nav_2_auc_ci_high") == ("val", "nav_2", "auc_ci_high")
    assert parse_metric_name("test_mos_glioma_detection_rate") is None
    assert parse_metric_name("test_mos_sensitivity") is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compare_on_temporary_mlflow_store(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("cross-site")
    logged = {
        "baseline": {"val_nav_auc": 0.9, "val_nav_auc_ci_low": 0.85, "val_nav_auc_ci_high": 0.95,
                     "test_mos_auc": 0.873, "test_mos_auc_ci_low": 0.851, "test_mos_auc_ci_high": 0.894,
                     "test_mos_unique_auc": 0.81, "test_mos_sensitivity": 0.7},
        "histmatch": {"test_mos_auc": 0.91, "test_mos_auc_ci_low": 0.89, "test_mos_auc_ci_high": 0.93},
    }
    for start_time, (run_name, metrics) in enumerate(logged.items(), start=1000):
        run = client.create_run(experiment_id, start_time=start_time, run_name=run_name)
        for name, value in metrics.items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id)

    runs = collect_runs("cross-site", tracking_uri)
    assert [run["run_name"] for run in runs] == ["baseline", "histmatch"]
    assert "test_mos_sensitivity" not in runs[0]["metrics"]
    table = comparison_table(runs)
    assert [(row["run_name"], row["role"], row["site"]) for row in table] == [
        ("baseline", "val", "nav"), ("baseline", "test", "mos"), ("histmatch", "test", "mos")]
    assert table[1]["unique_auc"] == pytest.approx(0.81) and math.isnan(table[2]["unique_auc"])

    markdown = format_markdown_table(table)
    assert "| run | val nav | test mos |" in markdown
    assert "| baseline | 0.900 [0.850, 0.950] | 0.873 [0.851, 0.894] |" in markdown
    assert "| histmatch | – | 0.910 [0.890, 0.930] |" in markdown

    paths = write_comparison(table, tmp_path / "compare")
    assert [os.path.basename(path) for path in paths] == [
        "compare.md", "compare.csv", "compare.png", "compare_leak_free.png"]
    assert "| baseline | – | 0.810 |" in (tmp_path / "compare" / "compare.md").read_text()
    csv_lines = (tmp_path / "compare" / "compare.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run_id,run_name,role,site,auc,auc_ci_low,auc_ci_high,unique_auc")
    assert len(csv_lines) == 4
    with pytest.raises(ValueError):
        collect_runs("no-such-experiment", tracking_uri)


def test_report_shows_the_shortcut_audit(tmp_path, rows, results):
    threshold, sites = results
    feature = {"auc": 0.956, "ci": [0.94, 0.97], "direction": "lower means tumour"}
    shortcuts = {"train_site": "br35h", "features": ["sharpness"], "sites": {
        "br35h": {"images": 3000, "feature_auc": {"sharpness": {**feature, "auc": 0.508}},
                  "cross_validated": {"auc": 0.981, "ci": [0.98, 0.98]}},
        "mos": {"images": 1311, "feature_auc": {"sharpness": feature},
                "baseline": {"auc": 0.92, "ci": [0.9, 0.94]},
                "baseline_source_disjoint": {"auc": 0.777, "ci": [0.69, 0.85], "images": 897},
                "cross_validated": {"auc": 0.999, "ci": [1.0, 1.0]}}}}
    write_report(tmp_path, rows, sites, threshold=threshold, title="t", run_info={}, shortcuts=shortcuts)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Shortcut audit" in markdown
    assert "| sharpness | 0.508 [0.94, 0.97] - | 0.956 [0.94, 0.97] - |" in markdown
    assert "| baseline fit on br35h | (training site) | 0.920 [0.90, 0.94] |" in markdown
    assert "0.777 [0.69, 0.85] (897 images)" in markdown
    assert "Shortcut audit" in (tmp_path / "report.html").read_text()
