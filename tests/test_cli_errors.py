"""Every bad command line is a usage error (exit status 2, no traceback) naming the value, before any work.

Each row runs in-process in an empty working folder holding a few small fixture files; afterwards that
folder must be exactly as it was (no demo data, no mlflow.db, no crop cache, no output folder) and, when
TensorFlow was not imported before, it still is not (the checks come before any model is built).
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from train_distributed import cli

#: Two sites that pass every check (files are listed by name only, never read, before the work starts).
SITES = ["--train-site", "a=site_a", "--val-site", "b=site_b"]
MODEL = ["--model", "fake.keras"]


def write_fixtures(folder: Path) -> None:
    """Small files the bad command lines point at."""
    for site in ("site_a", "site_b"):
        for label in ("yes", "no"):
            (folder / site / label).mkdir(parents=True)
            (folder / site / label / "image.png").write_bytes(b"never read")
    (folder / "one_class" / "yes").mkdir(parents=True)
    (folder / "one_class" / "yes" / "image.png").write_bytes(b"never read")
    (folder / "bad_layout" / "scans").mkdir(parents=True)
    (folder / "empty_site").mkdir()
    (folder / "empty_run").mkdir()
    texts = {
        "afile.txt": "not a folder",
        "bad.yaml": "epochs: [1\n",
        "bad.json": "{epochs: 3",
        "augment5.yaml": "augment: 5\n",
        "list.json": "[1, 2]",
        "unknown.yaml": "nosuch: 1\n",
        "trainer_zoom.yaml": "trainer:\n  zoom: 1\n",
        "zoom2.yaml": "augment:\n  zoom: 2\n",
        "epochs_list.yaml": "epochs: [1, 2]\n",
        "recipe_bogus.yaml": "recipe: bogus\n",
        "notweights.h5": "plain text, not HDF5",
        "weights.txt": "\x89HDF\r\n\x1a\n but named .txt",
        "notzip.keras": "plain text, not a zip archive",
        "notnpz.npz": "plain text, not an npz",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    with zipfile.ZipFile(folder / "nomember.keras", "w") as archive:
        archive.writestr("readme.txt", "a zip without model.weights.h5")
    with zipfile.ZipFile(folder / "fake.keras", "w") as archive:  # looks like a model; never loaded
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")


@pytest.fixture(scope="module")
def existing_store(tmp_path_factory) -> str:
    """A SQLite MLflow store (outside the working folder) holding one experiment, 'other'."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("other")
    return uri


BAD_INVOCATIONS = [
    # ---- train: sites
    (["train"], "training site and a validation site are required"),
    (["train", "--train-site", "BR35H=x", "--val-site", "nav=y"], "lower-case"),
    (["train", "--train-site", "br35h", "--val-site", "nav=y"], "must be given as NAME=PATH"),
    (["train", "--train-site", "a=missing_x", "--val-site", "b=site_b"], "site 'a': folder 'missing_x' does not exist"),
    (["train", "--train-site", "a=afile.txt", "--val-site", "b=site_b"], "'afile.txt' is a file, not a folder"),
    (["train", "--train-site", "a=empty_site", "--val-site", "b=site_b"], "no class folders in 'empty_site'"),
    (["train", "--train-site", "a=site_a", "--val-site", "b=one_class"], "has only one class"),
    (["train", "--train-site", "a=bad_layout", "--val-site", "b=site_b"], "unknown sub-folder 'scans'"),
    (["train", "--train-site", "a=site_a", "--val-site", "a=site_b"],
     "given more than once: a (--train-site a=site_a, --val-site a=site_b)"),
    ([*["train"], *SITES, "--test-site", "b=site_a"], "given more than once: b (--val-site b=site_b, --test-site"),
    ([*["train"], *SITES, "--test-site", "c=site_a", "--test-site", "c=site_b"], "given more than once: c"),
    (["train", "--demo", "--test-site", "synth_a=site_a"], "given more than once: synth_a"),
    (["train", "--demo", "--test-site", "extra=missing_x"], "site 'extra': folder 'missing_x' does not exist"),
    (["train", *SITES, "--set", "reference_sites=[zzz]"], "reference_sites ['zzz'] are not sites of this run"),
    # ---- train: flags
    (["train", *SITES, "--epochs", "0"], "0 is not in the range 1<=x<=10000"),
    (["train", *SITES, "--epochs", "three"], "'three' is not a valid integer"),
    (["train", *SITES, "--batch-size", "0"], "0 is not in the range 1<=x<=100000"),
    (["train", *SITES, "--image-size", "16"], "16 is not in the range 32<=x<=1024"),
    (["train", *SITES, "--leakage", "sometimes"], "'sometimes' is not one of"),
    (["train", *SITES, "--gpus", "-2"], "gpus must be -1 (all visible) or a number of GPUs >= 0, got -2"),
    (["train", *SITES, "--cpu-replicas", "2", "--gpus", "1"], "cpu_replicas is for machines without GPUs"),
    (["train", *SITES, "--experiment", ""], "experiment must be a non-empty MLflow experiment name"),
    (["train", *SITES, "--output", "afile.txt"], "'afile.txt' is a file"),
    (["train", *SITES, "--cache-dir", "afile.txt"], "cache_dir 'afile.txt' is a file, not a folder"),
    (["train", *SITES, "--nosuch"], "No such option '--nosuch'"),
    # ---- train: recipes
    (["train", *SITES, "--recipe", "bogus"], "'bogus' is not one of 'seed', 'from-scratch', 'small-cnn'"),
    (["train", *SITES, "--set", "recipe=bogus"], "unknown recipe 'bogus'; recipes: seed, from-scratch, small-cnn"),
    (["train", *SITES, "--config", "recipe_bogus.yaml"], "unknown recipe 'bogus'; recipes: seed, from-scratch, small-cnn"),
    (["train", *SITES, "--recipe", "from-scratch", "--weights", "imagenet"],
     "recipe from-scratch trains from scratch (weights none), got weights 'imagenet'"),
    (["train", "--demo", "--recipe", "from-scratch", "--set", "weights=imagenet"],
     "recipe from-scratch trains from scratch (weights none), got weights 'imagenet'"),
    # ---- train: weights files (only the header is read)
    (["train", *SITES, "--weights", "no_such_file.h5"], "weights must be 'imagenet', 'none' or an existing file"),
    (["train", *SITES, "--weights", "notweights.h5"], "weights 'notweights.h5' is not an HDF5 file"),
    (["train", *SITES, "--weights", "weights.txt"], "unsupported file type '.txt'"),
    (["train", *SITES, "--weights", "notzip.keras"], "is not a .keras file (not a zip archive)"),
    (["train", *SITES, "--weights", "nomember.keras"], "zip archive without model.weights.h5"),
    (["train", *SITES, "--weights", "site_a"], "weights 'site_a' is a folder, not a file"),
    # ---- train: tracking URIs (no connection, nothing created)
    (["train", *SITES, "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'; MLflow stores are a folder path"),
    (["train", *SITES, "--tracking-uri", "sqlite://x.db"], "is not a SQLite store URI"),
    (["train", *SITES, "--tracking-uri", "sqlite:///site_a"], "'site_a' is a folder, not a database file"),
    (["train", *SITES, "--tracking-uri", "http://"], "needs a host and an optional port"),
    (["train", *SITES, "--tracking-uri", "afile.txt"], "'afile.txt' is a file, not a folder (an MLflow file store"),
    (["train", *SITES, "--tracking-uri", "file:afile.txt"], "is a file, not a folder"),
    ({"MLFLOW_TRACKING_URI": "bogus://x"}, ["train", *SITES], "$MLFLOW_TRACKING_URI 'bogus://x': unknown scheme"),
    # a folder store, which MLflow 3 refuses without MLFLOW_ALLOW_FILE_STORE (caught before the audit)
    ({"MLFLOW_ALLOW_FILE_STORE": "false"}, ["train", *SITES, "--tracking-uri", "./mlruns"],
     "which this MLflow refuses unless MLFLOW_ALLOW_FILE_STORE=true is set"),
    ({"MLFLOW_ALLOW_FILE_STORE": "false", "MLFLOW_TRACKING_URI": "mlruns"}, ["compare"],
     "which this MLflow refuses unless MLFLOW_ALLOW_FILE_STORE=true is set"),
    # ---- train: --set and config files
    (["train", "--demo", "--set", "no_such_key=1"], "unknown config keys ['no_such_key']"),
    (["train", *SITES, "--set", "no_such_key=1"], "unknown config keys ['no_such_key']"),
    (["train", "--demo", "--set", "augment.zoom=-1"], "zoom must be in [0, 1)"),
    (["train", "--demo", "--set", "epochs=2.5"], "epochs must be a whole number, got '2.5'"),
    (["train", "--demo", "--set", "epochs=[1,2]"], "epochs must be a whole number, got '[1,2]'"),
    (["train", *SITES, "--set", "learning_rate=[1"], "learning_rate must be a number, got '[1'"),
    (["train", *SITES, "--set", "learning_rate=0"], "learning_rate must be positive, got 0.0"),
    (["train", *SITES, "--set", "crop=maybe"], "crop must be true or false, got 'maybe'"),
    (["train", *SITES, "--set", "leakage=sometimes"], "leakage must be one of"),
    (["train", *SITES, "--set", "augment.nosuch=1"], "unknown augment key 'nosuch'"),
    (["train", *SITES, "--set", "=3"], "must be KEY=VALUE"),
    (["train", *SITES, "--set", "epochs"], "--set 'epochs' must be KEY=VALUE"),
    (["train", *SITES, "--set", "batch_size=0"], "batch_size must be at least 1, got 0"),
    (["train", *SITES, "--set", "dropout=1"], "dropout must be in [0, 1), got 1.0"),
    (["train", *SITES, "--set", "threshold_method=best"], "threshold_method must be one of youden, sensitivity"),
    (["train", *SITES, "--set", "target_sensitivity=2"], "target_sensitivity must be in [0, 1], got 2.0"),
    (["train", *SITES, "--set", "input_normalization=per_image"], "input_normalization per_image is for --weights"),
    (["train", *SITES, "--set", "freeze_until=conv9_block1_out"], "is not a layer of ResNet50"),
    (["train", *SITES, "--set", "audit_threshold_bits=200"], "audit_threshold_bits must be -1"),
    (["train", *SITES, "--set", "output=afile.txt"], "output 'afile.txt' is a file, not a folder"),
    (["train", *SITES, "--set", "augment.brightness_low=2"], "must not exceed brightness_high"),
    (["train", "--config", "bad.yaml"], "config file 'bad.yaml' is not valid YAML"),
    (["train", "--config", "bad.json"], "config file 'bad.json' is not valid JSON"),
    (["train", "--config", "augment5.yaml"], "augment must be a mapping of settings"),
    (["train", "--config", "list.json"], "must hold a mapping of settings, got list"),
    (["train", "--config", "missing.yaml"], "'missing.yaml' does not exist"),
    (["train", "--config", "unknown.yaml"], "unknown config keys ['nosuch']"),
    (["train", "--config", "trainer_zoom.yaml"], "unknown trainer key 'zoom'"),
    (["train", "--config", "epochs_list.yaml"], "epochs must be a single int, got a list"),
    # ---- audit
    (["audit"], "Missing option '--site'"),
    (["audit", "--site", "Bad Name=x"], "lower-case"),
    (["audit", "--site", "a"], "must be given as NAME=PATH"),
    (["audit", "--site", "good=site_a", "--site", "good=site_b"],
     "given more than once: good (--site good=site_a, --site good=site_b)"),
    (["audit", "--site", "a=missing_x"], "site 'a': folder 'missing_x' does not exist"),
    (["audit", "--site", "a=afile.txt"], "site 'a': 'afile.txt' is a file, not a folder"),
    (["audit", "--site", "a=empty_site"], "no class folders in 'empty_site'"),
    (["audit", "--site", "a=site_a", "--site", "b=one_class"], "site 'b' has only one class"),
    (["audit", "--site", "a=site_a", "--train-site", "zzz"], "--train-site 'zzz' is not one of the --site names (a)"),
    (["audit", "--site", "a=site_a", "--image-size", "8"], "8 is not in the range 32<=x<=1024"),
    (["audit", "--site", "a=site_a", "--threshold-bits", "200"], "200 is not in the range 0<=x<=128"),
    (["audit", "--site", "a=site_a", "--cache-dir", "afile.txt"], "'afile.txt' is a file"),
    (["audit", "--site", "a=site_a", "--output", "afile.txt"], "'afile.txt' is a file"),
    # ---- evaluate
    (["evaluate", "--model", "missing.keras", "--site", "a=site_a"], "model 'missing.keras' does not exist"),
    (["evaluate", "--model", "notzip.keras", "--site", "a=site_a"], "is not a .keras file (not a zip archive)"),
    (["evaluate", "--model", "nomember.keras", "--site", "a=site_a"], "zip archive without config.json"),
    (["evaluate", "--model", "empty_run", "--site", "a=site_a"], "model 'empty_run' is a folder without a model.keras"),
    (["evaluate", "--model", "runs:/xyz", "--site", "a=site_a"], "runs:/ needs a run id of 32 hex digits"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--site", "a=site_b", "--threshold", "0.5"],
     "given more than once: a"),
    (["evaluate", *MODEL, "--site", "a=missing_x", "--threshold", "0.5"], "folder 'missing_x' does not exist"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--val-site", "zzz"], "--val-site 'zzz' is not one of the --site"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--threshold", "2"], "is not in the range 0<=x<=1"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--tta", "rotate"], "'rotate' is not one of 'none', 'flips'"),
    (["evaluate", *MODEL, *MODEL, "--site", "a=site_a"], "an ensemble of several models needs --val-site or"),
    (["evaluate", *MODEL, "--site", "a=site_a"], "no --threshold, no --val-site and no summary.json next to"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--threshold", "0.5", "--train-hashes", "notnpz.npz"],
     "--train-hashes 'notnpz.npz' is not a .npz file"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--threshold", "0.5", "--tracking-uri", "bogus://x"],
     "unknown scheme 'bogus'"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--threshold", "0.5", "--experiment", ""], "--experiment is empty"),
    ({"MLFLOW_TRACKING_URI": "bogus://x"}, ["evaluate", *MODEL, "--site", "a=site_a", "--threshold", "0.5"],
     "$MLFLOW_TRACKING_URI 'bogus://x'"),
    (["evaluate", *MODEL, "--site", "a=site_a", "--threshold", "0.5", "--cache-dir", "afile.txt"],
     "'afile.txt' is a file"),
    # ---- compare (never creates a store)
    (["compare", "--experiment", "nosuchexp"], "no MLflow store at"),
    (["compare"], "no MLflow store at"),
    (["compare", "--tracking-uri", "{store}", "--experiment", "nosuchexp"],
     "experiment 'nosuchexp' does not exist in sqlite:///"),
    (["compare", "--tracking-uri", "{store}"], "experiment 'brainmri' does not exist"),
    (["compare", "--tracking-uri", "{store}", "--experiment", "nosuchexp"], "experiments there: 'Default', 'other'"),
    (["compare", "--tracking-uri", "sqlite:///absent.db"], "no MLflow store at absent.db"),
    ({"MLFLOW_ALLOW_FILE_STORE": "true"}, ["compare", "--tracking-uri", "missing_store"],
     "no MLflow store at missing_store"),
    (["compare", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    (["compare", "--tracking-uri", "{store}", "--output", "afile.txt"], "'afile.txt' is a file"),
    ({"MLFLOW_TRACKING_URI": "bogus://x"}, ["compare"], "$MLFLOW_TRACKING_URI 'bogus://x'"),
    # ---- ablate: its own options, then every run's train arguments before the first run
    (["ablate", "--vary", "nosuchkey=1,2", "--", *SITES], "unknown config keys ['nosuchkey']"),
    (["ablate", "--vary", "epochs=a,b", "--", *SITES], "epochs must be a whole number, got 'a'"),
    (["ablate", "--vary", "epochs", "--", *SITES], "--vary 'epochs' must be KEY=VALUE1,VALUE2"),
    (["ablate", "--variant", "no-colon", "--", *SITES], "must be 'NAME: KEY=VALUE [KEY=VALUE ...]'"),
    (["ablate", "--variant", "x: epochs=1", "--variant", "x: epochs=2", "--", *SITES], "used twice"),
    (["ablate", "--variant", "long: epochs=0", "--", *SITES], "epochs must be at least 1, got 0"),
    (["ablate", "--seeds", "0,x", "--", *SITES], "integers >= 0"),
    (["ablate", "--seeds", "1,1", "--", *SITES], "names a seed twice"),
    (["ablate", "--mode", "bogus", "--", *SITES], "'bogus' is not one of 'one-at-a-time', 'grid'"),
    (["ablate", "--", *SITES, "--output", "x"], "ablate sets --output and --run-name"),
    (["ablate", "--", "--train-site", "a=site_a", "--val-site", "a=site_b"], "given more than once: a"),
    (["ablate", "--", *SITES, "--nosuchflag"], "No such option '--nosuchflag'"),
    (["ablate", "--", *SITES, "--epochs", "0"], "0 is not in the range 1<=x<=10000"),
    (["ablate", "--", *SITES, "--recipe", "bogus"], "'bogus' is not one of 'seed', 'from-scratch', 'small-cnn'"),
    (["ablate", "--vary", "recipe=from-scratch,bogus", "--", *SITES], "unknown recipe 'bogus'; recipes: seed"),
    (["ablate", "--", *SITES, "--recipe", "from-scratch", "--weights", "imagenet"],
     "recipe from-scratch trains from scratch"),
    (["ablate", "--", *SITES, "--weights", "notweights.h5"], "is not an HDF5 file"),
    (["ablate", "--", "--train-site", "a=missing_x", "--val-site", "b=site_b"], "'missing_x' does not exist"),
    (["ablate", "--vary", "augment.zoom=0.1,2", "--", "--demo"], "zoom must be in [0, 1)"),
    (["ablate", "--output", "afile.txt", "--", *SITES], "'afile.txt' is a file"),
    # ---- preview-crop
    (["preview-crop"], "Missing option '--site'"),
    (["preview-crop", "--site", "a=missing_x"], "folder 'missing_x' does not exist"),
    (["preview-crop", "--site", "a=afile.txt"], "'afile.txt' is a file, not a folder"),
    (["preview-crop", "--site", "Bad=x"], "lower-case"),
    (["preview-crop", "--site", "a=site_a", "--count", "0"], "0 is not in the range 1<=x<=200"),
    (["preview-crop", "--site", "a=site_a", "--output", "site_a"], "is a directory"),
    # ---- preview-augment
    (["preview-augment", "--site", "a=site_a", "--reference-site", "a=site_b"],
     "given more than once: a (--site a=site_a, --reference-site a=site_b)"),
    (["preview-augment", "--site", "a=site_a", "--reference-site", "Bad=x"], "lower-case"),
    (["preview-augment", "--site", "a=site_a", "--reference-site", "b=missing_x"], "'missing_x' does not exist"),
    (["preview-augment", "--site", "a=site_a", "--config", "bad.yaml"], "is not valid YAML"),
    (["preview-augment", "--site", "a=site_a", "--config", "augment5.yaml"], "augment must be a mapping"),
    (["preview-augment", "--site", "a=site_a", "--config", "zoom2.yaml"], "zoom must be in [0, 1)"),
    (["preview-augment", "--site", "a=site_a", "--config", "unknown.yaml"], "unknown config keys ['nosuch']"),
    (["preview-augment", "--site", "a=site_a", "--count", "13"], "13 is not in the range 1<=x<=12"),
    # ---- ui (nothing is started)
    (["ui", "--host", "0.0.0.0"], "refusing to serve MLflow on '0.0.0.0'"),
    (["ui", "--host", ""], "host is empty"),
    (["ui", "--port", "70000"], "70000 is not in the range 0<=x<=65535"),
    (["ui", "--backend-store-uri", "bogus://x"], "backend store URI 'bogus://x': unknown scheme 'bogus'"),
    (["ui", "--backend-store-uri", "http://127.0.0.1:5000"], "unknown scheme 'http'"),
    (["ui", "--backend-store-uri", "sqlite://x.db"], "is not a SQLite store URI"),
    (["ui", "--backend-store-uri", ""], "the backend store URI is empty"),
    (["ui", "--artifacts-destination", ""], "must not be empty"),
    # ---- predict
    (["predict", "--model", "missing.keras", "site_a"], "model 'missing.keras' does not exist"),
    (["predict", "--model", "notzip.keras", "site_a"], "is not a .keras file (not a zip archive)"),
    (["predict", *MODEL, "missing_input"], "'missing_input' does not exist"),
    (["predict", *MODEL], "Missing argument"),
    (["predict", *MODEL, "site_a", "--threshold", "2"], "is not in the range 0<=x<=1"),
    (["predict", *MODEL, "site_a", "--batch-size", "0"], "0 is not in the range 1<=x<=100000"),
    (["predict", *MODEL, "site_a", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    (["predict", *MODEL, "site_a", "--output", "site_a"], "is a directory"),
]


def rows():
    for row in BAD_INVOCATIONS:
        env, arguments, fragment = row if len(row) == 3 else ({}, *row)
        yield pytest.param(env, arguments, fragment, id=" ".join(arguments)[:80] or "(none)")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime ns)}`` of everything under ``folder``."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def test_the_table_is_large_and_covers_every_command():
    commands = {arguments[0] for _, arguments, _ in (p.values for p in rows())}
    assert len(BAD_INVOCATIONS) >= 60
    assert commands >= {"train", "audit", "evaluate", "compare", "ablate", "preview-crop", "preview-augment", "ui"}


@pytest.mark.parametrize("env, arguments, fragment", list(rows()))
def test_bad_invocation_is_a_usage_error_before_any_work(env, arguments, fragment, tmp_path, monkeypatch,
                                                         existing_store):
    if arguments[0] not in cli.commands:
        pytest.skip(f"no {arguments[0]} command")
    work = tmp_path / "work"
    work.mkdir()
    write_fixtures(work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: mlflow.db right here
    monkeypatch.setenv("BRAINMRI_CACHE", str(tmp_path / "crop_cache"))
    before = snapshot(work)
    tensorflow_loaded = "tensorflow" in sys.modules
    arguments = [argument.replace("{store}", existing_store) for argument in arguments]
    result = CliRunner().invoke(cli, arguments, env=env)
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    assert fragment in output, output
    assert snapshot(work) == before  # nothing written: no demo data, no mlflow.db, no output folder
    assert not (work / "runs").exists() and not (work / "mlflow.db").exists()
    assert not (tmp_path / "crop_cache").exists()
    if not tensorflow_loaded:
        assert "tensorflow" not in sys.modules  # rejected before any model is built
    assert os.getcwd() == str(work)
