"""An ablation in MLflow: one parent run, a child per variant and seed, resumed into the same parent.

``run_ablation`` is driven with a stand-in for ``train_distributed.py train``
(``STAND_IN``): it opens its MLflow run through the real ``Tracker`` with the
tags of the real ``TrackingConfig.new_run_tags`` (what ``train`` does),
keeps ``backup/state.json`` and ``summary.json`` as ``train`` does, logs
AUCs that depend on the variant and the seed, and can be told to stop for
requeue, fail, or crash before it saved a state, once per folder. Then the
selection and seed grouping of ``eval.compare`` and ``compare --ablation``.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest

from eval.compare import (ABLATION_TAG, PARENT_TAG, SEED_TAG, VARIANT_TAG, collect_runs, format_seed_table,
                          seed_groups, select_ablation, write_comparison)
from training.ablation import (ABLATION_RECORD, AblationStopped, ablation_plan, metric_prefix, run_ablation,
                               variant_metrics)

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "ablation-test"

STAND_IN = r'''
"""Stand-in for `train_distributed.py train`: the MLflow run, state.json and summary.json as train keeps them."""
import json, os, sys
from pathlib import Path

sys.path.insert(0, os.environ["REPO"])
from training.config import TrainConfig
from training.tracking import Tracker

arguments = sys.argv[2:]
settings = {"seed": 0}
for index, item in enumerate(arguments):
    if item == "--set":
        key, _, value = arguments[index + 1].partition("=")
        settings[key] = value
value_of = {item: arguments[index + 1] for index, item in enumerate(arguments[:-1]) if item.startswith("--")}
output, run_name = Path(value_of["--output"]), value_of["--run-name"]
tracking = TrainConfig.from_settings({key: value for key, value in settings.items() if key != "zoom_bonus"}).tracking
folder_name = output.name
with open(os.environ["LAUNCHES"], "a") as log:
    log.write(folder_name + "\n")
behaviours = json.loads(os.environ.get("BEHAVIOUR", "{}"))
behaviour = behaviours.get(folder_name, "")
done = Path(os.environ["LAUNCHES"]).with_name(f"done-{folder_name}-{behaviour}")
if behaviour and done.exists():
    behaviour = ""  # each behaviour happens once per folder
elif behaviour:
    done.write_text("")
state_path = output / "backup" / "state.json"
state = json.loads(state_path.read_text()) if state_path.exists() else None
tracker = Tracker(True, value_of["--tracking-uri"], value_of["--experiment"])
if state and state["phase"] == "finished":
    print(f"this run already finished (MLflow run {state['run_id']})")
    sys.exit(0)
tracker.start(state["run_id"] if state else "", run_name, tags=tracking.new_run_tags())
if behaviour == "crash before state":
    tracker.end("FAILED")
    sys.exit(1)
state_path.parent.mkdir(parents=True, exist_ok=True)
state_path.write_text(json.dumps({"run_id": tracker.run_id, "phase": "training"}))
if behaviour == "requeue":
    tracker.end("KILLED")
    sys.exit(3)
if behaviour == "train until SIGTERM":  # as train honours SIGTERM: state saved, run KILLED, status 3
    import signal, time
    stopped = []
    signal.signal(signal.SIGTERM, lambda number, frame: stopped.append(number))
    done.with_name(f"training-{folder_name}").write_text(str(os.getpid()))
    for _ in range(600):
        if stopped:
            tracker.set_tags({"requeued": "true"})
            tracker.end("KILLED")
            sys.exit(3)
        time.sleep(0.1)
if behaviour == "fail":
    tracker.end("FAILED")
    sys.exit(1)
seed = int(settings["seed"])
bonus = float(settings.get("zoom_bonus", 0))
sites = {"synth_b": ("val", 0.70 + 0.02 * seed + bonus), "synth_c": ("test", 0.60 + 0.03 * seed + bonus)}
summary = {"sites": {"synth_a": {"role": "train", "images": 40}}, "mlflow_run_id": tracker.run_id,
           "epochs_run": 1, "best_epoch": 1, "threshold": 0.5}
metrics = {}
for site, (role, auc) in sites.items():
    summary["sites"][site] = {"role": role, "images": 48, "auc": auc, "auc_ci": [auc - 0.1, auc + 0.1],
                              "unique": {"images": 40, "auc": auc - 0.01, "auc_ci": [auc - 0.2, auc]}}
    metrics.update({f"{role}_{site}_auc": auc, f"{role}_{site}_auc_ci_low": auc - 0.1,
                    f"{role}_{site}_auc_ci_high": auc + 0.1, f"{role}_{site}_unique_auc": auc - 0.01})
tracker.log_params({"seed": seed, "zoom_bonus": bonus, "output": str(output), "run_name": run_name,
                    "parent_run_id": tracking.parent_run_id, "run_tags": tracking.run_tags})
tracker.log_metrics(metrics)
(output / "summary.json").write_text(json.dumps(summary))
state_path.write_text(json.dumps({"run_id": tracker.run_id, "phase": "finished"}))
tracker.end("FINISHED")
'''


@pytest.fixture
def ablation(tmp_path, monkeypatch):
    """``start(behaviour, zoom)``: run_ablation of base (and, with ``zoom``, a second variant) x seeds 0, 1."""
    import mlflow

    script = tmp_path / "train_stand_in.py"
    script.write_text(STAND_IN)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    launches = tmp_path / "launches.txt"
    monkeypatch.setenv("REPO", str(REPO))
    monkeypatch.setenv("LAUNCHES", str(launches))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    arguments = ["--tracking-uri", uri, "--experiment", EXPERIMENT]
    said: list[str] = []

    class Ablation:
        root = tmp_path / "abl"
        client = mlflow.tracking.MlflowClient(uri)
        tracking_uri = uri

        @staticmethod
        def start(behaviour: dict | None = None, zoom: bool = False) -> str:
            monkeypatch.setenv("BEHAVIOUR", json.dumps(behaviour or {}))
            plan = ablation_plan([], ["zoom: zoom_bonus=0.1"] if zoom else [], "one-at-a-time")
            return run_ablation(plan, arguments, Ablation.root, "Zoom ablation", script, say=said.append,
                                seeds=[0, 1], describe=lambda args: (uri, EXPERIMENT, 0))

        @staticmethod
        def launches() -> list[str]:
            return launches.read_text().split() if launches.exists() else []

        @staticmethod
        def parent_id() -> str:
            return json.loads((Ablation.root / ABLATION_RECORD).read_text())["parent_run_id"]

        @staticmethod
        def children(parent_id: str) -> list:
            experiment = Ablation.client.get_experiment_by_name(EXPERIMENT).experiment_id
            return Ablation.client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                               order_by=["attributes.start_time ASC"])

        said_lines = said

    return Ablation


FOLDERS = ["01-base-seed0", "02-base-seed1", "03-zoom-seed0", "04-zoom-seed1"]


def test_stopped_midway_and_run_again_it_continues_into_the_same_parent(ablation):
    with pytest.raises(AblationStopped, match="stopped.*Run the same command again"):
        ablation.start({"02-base-seed1": "requeue"}, zoom=True)
    parent_id = ablation.parent_id()
    parent = ablation.client.get_run(parent_id)
    assert parent.info.status == "KILLED" and parent.info.run_name == "abl"
    assert parent.data.tags[ABLATION_TAG] == "abl" and parent.data.tags["mlflow.note.content"] == "Zoom ablation"
    assert [(run.data.tags[VARIANT_TAG], run.data.tags[SEED_TAG], run.info.status)
            for run in ablation.children(parent_id)] == [("base", "0", "FINISHED"), ("base", "1", "KILLED")]
    interrupted = ablation.children(parent_id)[1].info.run_id

    text = ablation.start(zoom=True)
    assert ablation.parent_id() == parent_id
    # the finished variant is not started again; the stopped one resumes its own run
    assert ablation.launches() == ["01-base-seed0", "02-base-seed1", "02-base-seed1", "03-zoom-seed0", "04-zoom-seed1"]
    children = ablation.children(parent_id)
    assert [(run.data.tags[VARIANT_TAG], run.data.tags[SEED_TAG], run.info.status) for run in children] == [
        ("base", "0", "FINISHED"), ("base", "1", "FINISHED"), ("zoom", "0", "FINISHED"), ("zoom", "1", "FINISHED")]
    assert children[1].info.run_id == interrupted
    assert all(run.data.tags[ABLATION_TAG] == "abl" for run in children)
    record = json.loads((ablation.root / ABLATION_RECORD).read_text())
    assert sorted(record["runs"]) == FOLDERS
    assert [record["runs"][name]["run_id"] for name in FOLDERS] == [run.info.run_id for run in children]

    parent = ablation.client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    assert metrics["base/test_synth_c_auc_mean"] == pytest.approx(statistics.fmean([0.60, 0.63]))
    assert metrics["base/test_synth_c_auc_sd"] == pytest.approx(statistics.stdev([0.60, 0.63]))
    assert metrics["zoom/val_synth_b_auc_mean"] == pytest.approx(statistics.fmean([0.80, 0.82]))
    assert metrics["zoom/test_synth_c_unique_auc_mean"] == pytest.approx(statistics.fmean([0.69, 0.72]))
    assert metrics["zoom/seeds"] == 2
    artifacts = {item.path for item in ablation.client.list_artifacts(parent_id)}
    assert {"RESULTS.md", "results.json"} <= artifacts
    assert "# Zoom ablation" in text and "| zoom | 0, 1 |" in text

    ablation.start(zoom=True)  # all finished: nothing is run again, no run is added
    assert len(ablation.launches()) == 5 and len(ablation.children(parent_id)) == 4
    assert ablation.client.get_run(parent_id).info.status == "FINISHED"


def test_a_failed_run_marks_the_parent_failed_and_a_crash_leaves_no_second_child(ablation):
    with pytest.raises(RuntimeError, match="'base seed=1' failed with status 1"):
        ablation.start({"02-base-seed1": "crash before state"})
    parent_id = ablation.parent_id()
    parent = ablation.client.get_run(parent_id)
    assert parent.info.status == "FAILED" and "failed with status 1" in parent.data.tags["failure_reason"]
    assert [run.info.status for run in ablation.children(parent_id)] == ["FINISHED", "FAILED"]
    leftover = ablation.children(parent_id)[1].info.run_id

    (ablation.root / ABLATION_RECORD).unlink()  # lost as well: the parent is found again by its folder tag
    ablation.start()
    assert ablation.parent_id() == parent_id
    assert ablation.launches() == ["01-base-seed0", "02-base-seed1", "02-base-seed1"]
    children = ablation.children(parent_id)
    assert len(children) == 2 and leftover not in {run.info.run_id for run in children}
    assert ablation.client.get_run(leftover).info.lifecycle_stage == "deleted"
    assert any(f"deleted MLflow run {leftover}" in line for line in ablation.said_lines)
    assert ablation.client.get_run(parent_id).info.status == "FINISHED"


def test_ctrl_c_hands_sigterm_to_the_running_train_and_kills_the_parent(ablation, tmp_path):
    import signal
    import threading
    import time

    training = tmp_path / "training-01-base-seed0"

    def interrupt_once_training() -> None:
        for _ in range(1200):
            if training.exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=interrupt_once_training)
    thread.start()
    with pytest.raises(AblationStopped, match=r"SIGINT received; the running variant saved its state \(exit "
                                              r"status 3\).*Run the same command again"):
        ablation.start({"01-base-seed0": "train until SIGTERM"})
    thread.join()
    parent_id = ablation.parent_id()
    assert ablation.client.get_run(parent_id).info.status == "KILLED"
    child, = ablation.children(parent_id)
    assert child.info.status == "KILLED" and child.data.tags["requeued"] == "true"  # it got the SIGTERM
    assert json.loads((ablation.root / ABLATION_RECORD).read_text())["runs"]["01-base-seed0"]["run_id"] == \
        child.info.run_id


def test_ablation_json_naming_a_run_of_another_store_is_a_clear_error(ablation):
    ablation.root.mkdir()
    (ablation.root / ABLATION_RECORD).write_text(json.dumps({"parent_run_id": "0" * 32,
                                                             "tracking_uri": "sqlite:///elsewhere.db"}))
    with pytest.raises(ValueError, match=rf"parent run 0{{32}} of .*{ABLATION_RECORD} is not in .*elsewhere.db"):
        ablation.start()
    (ablation.root / ABLATION_RECORD).write_text("{not json")
    with pytest.raises(ValueError, match=f"{ABLATION_RECORD} is damaged"):
        ablation.start()


def test_variants_that_log_to_different_experiments_are_refused(tmp_path):
    plan = ablation_plan([], ["other: experiment=elsewhere"], "one-at-a-time")

    def describe(arguments):
        return "sqlite:///x.db", "elsewhere" if "experiment=elsewhere" in arguments else "brainmri", 0

    with pytest.raises(ValueError, match="different MLflow stores or experiments"):
        run_ablation(plan, [], tmp_path / "abl", "t", Path("train.py"), seeds=[0], describe=describe)
    assert not (tmp_path / "abl").exists()


@pytest.mark.parametrize("variant, prefix", [("base", "base"), ("crop=false", "crop_false"),
                                             ("crop=false,zoom=0.1", "crop_false_zoom_0.1"), ("a/b c", "a_b c")])
def test_metric_prefix(variant, prefix):
    assert metric_prefix(variant) == prefix


def test_variant_metrics_one_seed_has_no_sd():
    entries = [{"name": "base", "summary": {"sites": {"nav": {"role": "val", "auc": 0.9, "unique": {"auc": None}},
                                                      "br35h": {"role": "train"}}}}]
    assert variant_metrics(entries) == {"base/seeds": 1.0, "base/val_nav_auc_mean": 0.9}


# --------------------------------------------------------------------------------------------
# eval.compare: an ablation's children, seeds grouped

def run(run_id, name, seed, metrics, parent="", variant=None, **params):
    tags = {}
    if parent:
        tags = {PARENT_TAG: parent, ABLATION_TAG: "abl", SEED_TAG: str(seed)}
        if variant:
            tags[VARIANT_TAG] = variant
    return {"run_id": run_id, "run_name": name, "metrics": metrics, "tags": tags,
            "params": {"seed": str(seed), "output": f"out/{run_id}", "run_name": name, **params}}


PARENT = {"run_id": "p" * 32, "run_name": "abl", "metrics": {}, "params": {}, "tags": {ABLATION_TAG: "abl"}}
OTHER_PARENT = {"run_id": "q" * 32, "run_name": "abl2", "metrics": {}, "params": {}, "tags": {ABLATION_TAG: "abl2"}}
RUNS = [
    PARENT, OTHER_PARENT,
    run("a", "base seed=0", 0, {"test_mos_auc": 0.870, "val_nav_auc": 0.94}, "p" * 32, "base", zoom="0.3"),
    run("b", "base seed=1", 1, {"test_mos_auc": 0.795, "val_nav_auc": 0.88}, "p" * 32, "base", zoom="0.3"),
    run("c", "zoom=0 seed=0", 0, {"test_mos_auc": 0.80}, "p" * 32, "zoom=0", zoom="0"),
    run("d", "base seed=0", 0, {"test_mos_auc": 0.5}, "q" * 32, "base", zoom="0.3"),
    run("e", "lonely", 0, {"test_mos_auc": 0.6}, zoom="0.9"),
]


@pytest.mark.parametrize("name", ["p" * 32, "abl"])
def test_select_ablation_by_run_id_or_name(name):
    assert [child["run_id"] for child in select_ablation(RUNS, name)] == ["a", "b", "c"]


@pytest.mark.parametrize("name, message", [
    ("nothing", r"no ablation 'nothing'.*'abl' \(p{32}\), 'abl2' \(q{32}\)"),
])
def test_select_ablation_errors(name, message):
    with pytest.raises(ValueError, match=message):
        select_ablation(RUNS, name)


def test_select_ablation_refuses_two_parents_of_one_name():
    twin = {**OTHER_PARENT, "tags": {ABLATION_TAG: "abl"}}
    with pytest.raises(ValueError, match="2 ablations match 'abl'; pass the parent run id"):
        select_ablation([PARENT, twin], "abl")
    with pytest.raises(ValueError, match="has no child runs yet"):
        select_ablation([PARENT], "abl")


def test_seed_groups_share_everything_but_the_seed():
    groups = seed_groups(select_ablation(RUNS, "abl"))
    assert [(group["name"], group["n"], group["seeds"], group["run_ids"]) for group in groups] == [
        ("base", 2, ["0", "1"], ["a", "b"]), ("zoom=0", 1, ["0"], ["c"])]
    base = groups[0]["statistics"]["test_mos_auc"]
    assert base["mean"] == pytest.approx(0.8325) and base["sd"] == pytest.approx(statistics.stdev([0.870, 0.795]))
    table = format_seed_table(groups)
    assert "| recipe | seeds | val nav | test mos |" in table
    assert f"| base | 0, 1 | 0.910 ± {statistics.stdev([0.94, 0.88]):.3f} (n=2) | 0.833 ± 0.053 (n=2) |" in table
    assert "| zoom=0 | 0 | – | 0.800 (n=1) |" in table


def test_seed_groups_over_a_whole_experiment_keep_recipes_apart():
    groups = seed_groups(RUNS)  # parents have no AUCs and are left out
    assert [(group["name"], group["run_ids"]) for group in groups] == [
        ("base", ["a", "b", "d"]), ("zoom=0", ["c"]), ("lonely", ["e"])]
    # the same recipe in another ablation is the same recipe; a different param is not
    groups = seed_groups(RUNS, ignored={"seed", "output", "run_name", "parent"})
    assert groups[0]["n"] == 3


def test_write_comparison_with_seed_groups(tmp_path):
    from eval.compare import comparison_table

    children = select_ablation(RUNS, "abl")
    paths = write_comparison(comparison_table(children), tmp_path, groups=seed_groups(children))
    assert [os.path.basename(path) for path in paths] == ["compare.md", "compare.csv", "compare.png",
                                                          "compare_seeds.csv"]
    markdown = (tmp_path / "compare.md").read_text()
    assert "# AUC over seeds" in markdown and "| base | 0, 1 | 0.910 ± 0.042 (n=2) | 0.833 ± 0.053 (n=2) |" in markdown
    lines = (tmp_path / "compare_seeds.csv").read_text().splitlines()
    assert lines[0] == "recipe,n,seeds,role,site,value,mean,sd,values"
    rows = list(csv.DictReader(lines))
    assert [(row["recipe"], row["n"], row["seeds"], row["role"], row["site"], row["values"]) for row in rows] == [
        ("base", "2", "0;1", "val", "nav", "0.94;0.88"), ("base", "2", "0;1", "test", "mos", "0.87;0.795"),
        ("zoom=0", "1", "0", "test", "mos", "0.8")]
    assert float(rows[1]["mean"]) == pytest.approx(0.8325) and rows[2]["sd"] == ""


def test_collect_runs_and_the_compare_command_select_an_ablation(tmp_path):
    import mlflow
    from click.testing import CliRunner

    from train_distributed import cli

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT)
    parent = client.create_run(experiment, run_name="abl", tags={ABLATION_TAG: "abl"}).info.run_id
    values = {0: 0.70, 1: 0.76}
    for seed, auc in values.items():
        child = client.create_run(experiment, run_name=f"base seed={seed}", tags={
            PARENT_TAG: parent, ABLATION_TAG: "abl", VARIANT_TAG: "base", SEED_TAG: str(seed)}).info.run_id
        client.log_param(child, "seed", str(seed))
        client.log_param(child, "output", f"abl/0{seed + 1}-base-seed{seed}")
        client.log_param(child, "parent_run_id", parent)
        client.log_metric(child, "test_synth_c_auc", auc)
    outsider = client.create_run(experiment, run_name="standalone").info.run_id
    client.log_metric(outsider, "test_synth_c_auc", 0.5)

    assert [run["run_name"] for run in collect_runs(EXPERIMENT, uri, ablation="abl")] == ["base seed=0", "base seed=1"]
    # by run id, without naming the experiment
    assert len(collect_runs("no-such-experiment", uri, ablation=parent)) == 2
    with pytest.raises(ValueError, match="no ablation 'abl3'"):
        collect_runs(EXPERIMENT, uri, ablation="abl3")

    result = CliRunner().invoke(cli, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                                      "--ablation", "abl", "--output", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    mean, sd = statistics.fmean(values.values()), statistics.stdev(values.values())
    assert f"| base | 0, 1 | {mean:.3f} ± {sd:.3f} (n=2) |" in result.output
    assert "standalone" not in result.output
    assert (tmp_path / "cmp" / "compare_seeds.csv").exists()
    result = CliRunner().invoke(cli, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                                      "--ablation", "nope", "--output", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "no ablation 'nope'" in result.output
