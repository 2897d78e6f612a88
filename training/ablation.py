"""Ablations: one ``train`` run per variant of the settings, and the RESULTS table of all of them.

A plan is a list of ``(name, ["--set", "key=value", ...])``: ``--vary KEY=V1,V2``
changes one key per run (``one-at-a-time``: a base run plus one run per value;
``grid``: every combination), ``--variant 'NAME: KEY=V KEY=V'`` changes several
keys together. With seeds (``--seeds 0,1,2``) every variant runs once per seed,
and the tables give mean, sd and each seed's value, and say whether a
variant's difference from the first variant exceeds seed variation.

In MLflow an ablation is one parent run (named after its folder, tagged
``brainmri.ablation=<folder name>``, in the experiment its variants log to)
with a child run per variant and seed (tags ``mlflow.parentRunId``,
``brainmri.ablation``, ``brainmri.variant``, ``brainmri.seed``), which
``train`` creates with those tags (settings ``parent_run_id`` and
``run_tags``). The parent's id is kept in ``ablation.json`` in the folder, so
an ablation stopped midway and started again continues into the same parent,
skips what finished and leaves no second child of a variant and seed. When
every child has finished, the parent gets RESULTS.md and results.json as
artifacts and each variant's mean (and sd) AUC over its seeds as metrics
``<variant>/<role>_<site>[_unique|_disjoint]_auc_mean``, and ends FINISHED; a
failed child marks it FAILED, a stop KILLED.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eval.compare import ABLATION_TAG, PARENT_TAG, SEED_TAG, VARIANT_TAG
from training.state import write_json_atomic

#: The ablation's own record in its folder: parent run, store, experiment, and each child's run.
ABLATION_RECORD = "ablation.json"
#: Tag of the parent run: the absolute ablation folder (finds the parent again if ablation.json was lost).
FOLDER_TAG = "brainmri.ablation_folder"
#: MLflow's limit on a tag value.
MAX_TAG_LENGTH = 8000


class AblationStopped(Exception):
    """A stop signal (or a run that saved its state for requeue) ended the ablation; running it again continues."""


def ablation_variants(varies: Sequence[str], mode: str) -> list[tuple[str, list[str]]]:
    """``["leakage=report-only,purge-train", ...]`` -> ``[(name, ["--set", "k=v", ...]), ...]``."""
    axes = []
    for text in varies:
        key, separator, values = text.partition("=")
        choices = [value for value in values.split(",") if value != ""]
        if not separator or not key or len(choices) < 1:
            raise ValueError(f"--vary {text!r} must be KEY=VALUE1,VALUE2")
        axes.append((key, choices))
    if mode == "grid":
        combos = list(itertools.product(*[[(key, value) for value in values] for key, values in axes]))
    else:
        combos = [()] + [((key, value),) for key, values in axes for value in values]
    variants, seen = [], set()
    for combo in combos:
        name = ",".join(f"{key.split('.')[-1]}={value}" for key, value in combo) or "base"
        if name not in seen:
            seen.add(name)
            variants.append((name, [part for key, value in combo for part in ("--set", f"{key}={value}")]))
    return variants


def parse_named_variant(text: str) -> tuple[str, list[str]]:
    """``"report-only: leakage=report-only epochs=6"`` -> ``("report-only", ["--set", "leakage=...", ...])``."""
    name, separator, body = text.partition(":")
    name = name.strip()
    settings = body.split()
    if not separator or not name or not settings or any("=" not in item or item.startswith("=")
                                                        for item in settings):
        raise ValueError(f"--variant {text!r} must be 'NAME: KEY=VALUE [KEY=VALUE ...]'")
    if not all(character.isalnum() or character in "-_.=" for character in name):
        raise ValueError(f"--variant name {name!r} may hold letters, digits and - _ . = only")
    return name, [part for item in settings for part in ("--set", item)]


def ablation_plan(varies: Sequence[str], named_variants: Sequence[str], mode: str) -> list[tuple[str, list[str]]]:
    """The ``--vary`` runs, then the ``--variant`` runs; ValueError for a name used twice."""
    variants = ablation_variants(varies, mode)
    taken = {name for name, _ in variants}
    for name, extra in map(parse_named_variant, named_variants):
        if name in taken:
            raise ValueError(f"--variant name {name!r} is used twice")
        taken.add(name)
        variants.append((name, extra))
    return variants


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ValueError for anything but distinct integers >= 0."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part.isdigit() for part in parts):
        raise ValueError(f"--seeds {text!r} must be integers >= 0 separated by commas, e.g. 0,1,2")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r} names a seed twice")
    return seeds


def _sets_seed(arguments: Sequence[str]) -> bool:
    return any(previous == "--set" and item.replace(" ", "").startswith("seed=")
               for previous, item in zip(arguments, arguments[1:])) or any(
        item.startswith("--set=seed=") for item in arguments)


def check_ablation_arguments(plan: list[tuple[str, list[str]]], train_arguments: Sequence[str],
                             seeds: Sequence[int] = ()) -> list[str]:
    """The train arguments without ``--``; ValueError for what ablate sets itself (output, run name, seed)."""
    arguments = [a for a in train_arguments if a != "--"]
    if any(a in ("--output", "--run-name") or a.startswith(("--output=", "--run-name=")) for a in arguments):
        raise ValueError("ablate sets --output and --run-name of each run itself")
    if seeds and (_sets_seed(arguments) or any(_sets_seed(extra) for _, extra in plan)):
        raise ValueError("--seeds sets the seed of every run; leave seed= out of --set, --vary and --variant")
    return arguments


def ablation_folder_name(index: int, name: str, seed: int | None) -> str:
    """``(2, "crop=false", 1)`` -> ``"02-crop-false-seed1"``: the run's folder in the ablation."""
    folder = f"{index:02d}-{name.replace('=', '-').replace(',', '_')}"
    return folder if seed is None else f"{folder}-seed{seed}"


def metric_prefix(variant: str) -> str:
    """A variant name as an MLflow metric prefix: characters other than letters, digits, ``_ - . :`` and space
    become ``_`` (``"crop=false,zoom=0"`` -> ``"crop_false_zoom_0"``)."""
    return re.sub(r"[^\w.\- :]", "_", variant).strip() or "variant"


def variant_metrics(entries: Sequence[dict]) -> dict[str, float]:
    """The parent run's metrics: per variant and site, the AUC mean (and sd from two seeds) over its seeds.

    Args:
        entries: as in results.json (``name``, ``summary`` with ``sites``).

    Returns:
        ``{"<variant>/<role>_<site>_auc_mean": ..., "..._auc_sd": ...,
        "<variant>/<role>_<site>_unique_auc_mean": ..., "<variant>/seeds": n}``
        (``unique``: leak-free, ``disjoint``: source-disjoint), finite values only.
    """
    from eval.results import seed_statistics

    by_variant: dict[str, list[dict]] = {}
    for entry in entries:
        by_variant.setdefault(entry["name"], []).append(entry)
    metrics: dict[str, float] = {}
    for variant, members in by_variant.items():
        prefix = metric_prefix(variant)
        metrics[f"{prefix}/seeds"] = float(len(members))
        sites = {name: values["role"] for member in members for name, values in member["summary"]["sites"].items()
                 if values.get("role") in ("val", "test")}
        for site, role in sites.items():
            for subset in ("", "unique", "disjoint"):
                values = []
                for member in members:
                    site_values = member["summary"]["sites"].get(site) or {}
                    metrics_of = site_values.get(subset) if subset else site_values
                    auc = (metrics_of or {}).get("auc")
                    values.append(math.nan if auc is None else float(auc))
                statistics = seed_statistics(values)
                name = f"{prefix}/{role}_{site}_{subset + '_' if subset else ''}auc"
                if statistics["n"]:
                    metrics[f"{name}_mean"] = statistics["mean"]
                if statistics["n"] > 1:
                    metrics[f"{name}_sd"] = statistics["sd"]
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def saved_run(folder: Path) -> tuple[str, str] | None:
    """``(MLflow run id, phase)`` from ``folder/backup/state.json``; None when there is none or it is unreadable."""
    try:
        state = json.loads((folder / "backup" / "state.json").read_text())
        return str(state["run_id"]), str(state["phase"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_ablation_record(root: Path) -> dict | None:
    """``root/ablation.json`` or None; ValueError naming the file when it is damaged."""
    path = root / ABLATION_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("parent_run_id"), str):
            raise ValueError("no parent_run_id")
        return record
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path} is damaged ({error}); delete it to start the ablation with a new MLflow parent "
                         f"run (finished runs in {root} are kept)") from None


class AblationRuns:
    """The parent run of one ablation and the tags of its children, through ``MlflowClient``.

    ``open`` finds the parent again (``ablation.json``, else the folder tag)
    or creates it, and sets it RUNNING.
    """

    def __init__(self, root: Path, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        from training.mlflow_store import prepare_store

        self.root = root
        self.ablation_id = root.resolve().name
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.experiment_id = prepare_store(tracking_uri, experiment)
        self.client = MlflowClient(tracking_uri)
        self.parent_run_id = ""
        self.record: dict[str, Any] = {}

    def open(self, title: str, description: Mapping[str, str], say: Callable[[str], None]) -> str:
        """Find or create the parent run and set it RUNNING; returns its id. ValueError: it is in another store."""
        from mlflow.exceptions import MlflowException

        record = read_ablation_record(self.root)
        if record is not None:
            parent_id = record["parent_run_id"]
            try:
                parent = self.client.get_run(parent_id)
            except MlflowException:
                raise ValueError(f"the MLflow parent run {parent_id} of {self.root / ABLATION_RECORD} is not in "
                                 f"{self.tracking_uri}: run the ablation with the tracking URI it started with "
                                 f"({record.get('tracking_uri', '?')}), or delete {self.root / ABLATION_RECORD} "
                                 f"to start a new parent run") from None
            if parent.info.experiment_id != self.experiment_id:
                raise ValueError(f"the MLflow parent run {parent_id} of {self.root / ABLATION_RECORD} is in experiment "
                                 f"{record.get('experiment', parent.info.experiment_id)!r}, the variants now log to "
                                 f"{self.experiment!r}: use the experiment it started with, or delete "
                                 f"{self.root / ABLATION_RECORD}")
            say(f"ablation {self.ablation_id}: continuing MLflow parent run {parent_id}")
        else:
            folder = str(self.root.resolve())
            found = [run for run in self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{FOLDER_TAG}` = '{folder}'",
                order_by=["attributes.start_time DESC"]) if PARENT_TAG not in run.data.tags] \
                if "'" not in folder else []
            if found:
                parent_id = found[0].info.run_id
                say(f"ablation {self.ablation_id}: continuing MLflow parent run {parent_id} (found by its folder)")
            else:
                parent_id = self.client.create_run(self.experiment_id, run_name=self.ablation_id, tags={
                    ABLATION_TAG: self.ablation_id, FOLDER_TAG: folder}).info.run_id
                say(f"ablation {self.ablation_id}: MLflow parent run {parent_id} in experiment {self.experiment!r}")
            record = {"ablation": self.ablation_id, "parent_run_id": parent_id, "tracking_uri": self.tracking_uri,
                      "experiment": self.experiment, "runs": {}}
        self.parent_run_id, self.record = parent_id, record
        self.save()
        self.client.update_run(parent_id, status="RUNNING")
        self.set_tags(parent_id, {"mlflow.note.content": title, **description})
        return parent_id

    def save(self) -> None:
        write_json_atomic(self.root / ABLATION_RECORD, self.record)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, str(value)[:MAX_TAG_LENGTH]) for key, value in tags.items()])

    def child_tags(self, variant: str, seed: int | None) -> dict[str, str]:
        """The tags a child run is created with (besides ``mlflow.parentRunId``)."""
        tags = {ABLATION_TAG: self.ablation_id, VARIANT_TAG: variant}
        return tags if seed is None else {**tags, SEED_TAG: str(seed)}

    def adopt(self, folder_name: str, run_id: str, variant: str, seed: int | None, status: str,
              say: Callable[[str], None]) -> None:
        """Record the child's run, make sure it carries this parent's tags, and delete other runs of its variant and seed.

        A run left by an attempt that never saved a state (so ``train`` started a
        new run the next time) or by a folder deleted and run again would be a
        second child of the same variant and seed; it is deleted (MLflow keeps
        deleted runs until ``mlflow gc``).
        """
        tags = {**self.child_tags(variant, seed), PARENT_TAG: self.parent_run_id}
        current = self.client.get_run(run_id).data.tags
        if any(current.get(key) != value for key, value in tags.items()):
            self.set_tags(run_id, tags)
        for other in self.children():
            other_tags = other.data.tags
            same = other_tags.get(VARIANT_TAG) == variant and other_tags.get(SEED_TAG) == tags.get(SEED_TAG)
            if same and other.info.run_id != run_id:
                self.client.delete_run(other.info.run_id)
                say(f"deleted MLflow run {other.info.run_id} ({other.info.status}): an earlier attempt at "
                    f"{folder_name}, which now logs to run {run_id}")
        self.record["runs"][folder_name] = {"variant": variant, "seed": seed, "run_id": run_id, "status": status}
        self.save()

    def children(self) -> list:
        """The parent's child runs that are not deleted."""
        return list(self.client.search_runs([self.experiment_id],
                                            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                            max_results=10000))

    def finish(self, root: Path, entries: Sequence[dict]) -> None:
        """Attach RESULTS.md and results.json, log each variant's mean metrics (new values only), set FINISHED."""
        from mlflow.entities import Metric

        for name in ("RESULTS.md", "results.json"):
            self.client.log_artifact(self.parent_run_id, str(root / name))
        present = self.client.get_run(self.parent_run_id).data.metrics
        now = int(time.time() * 1000)
        items = [Metric(key, value, now, 0) for key, value in variant_metrics(entries).items()
                 if present.get(key) != value]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.parent_run_id, metrics=items[start:start + 1000])
        self.set_tags(self.parent_run_id, {"brainmri.ablation_runs": str(len(entries))})
        self.client.set_terminated(self.parent_run_id, status="FINISHED")

    def end(self, status: str, reason: str = "") -> None:
        """Mark the parent ``status`` (FAILED, KILLED), with ``reason`` as tag ``failure_reason``."""
        if not self.parent_run_id:
            return
        if reason:
            self.set_tags(self.parent_run_id, {"failure_reason": reason})
        self.client.set_terminated(self.parent_run_id, status=status)


def _run_train(command: list[str]) -> int:
    """Run one ``train`` to its end and return its exit status.

    It runs in its own session, so Ctrl-C reaches only the ablation, which
    hands it on as SIGTERM: the run saves its state and exits 3, and the
    ablation raises :class:`AblationStopped` once it has. On Linux the run is
    sent SIGTERM too when the ablation dies.
    """
    from eval.mlflow_server import StopRequested, die_with_parent, stop_signals_deferred

    process = None
    try:
        with stop_signals_deferred():
            process = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent())
        return process.wait()
    except StopRequested as stop:
        status = None
        if process is not None:
            with stop_signals_deferred():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                status = process.wait()
        raise AblationStopped(f"{signal.Signals(stop.signum).name} received; the running variant saved its "
                              f"state (exit status {status})") from None
    except BaseException:
        if process is not None:
            process.kill()
            process.wait()
        raise


def run_ablation(plan: list[tuple[str, list[str]]], train_arguments: Sequence[str], root: Path, title: str,
                 script: Path, say: Callable[[str], None] = print, seeds: Sequence[int] = (), *,
                 describe: Callable[[list[str]], tuple[str, str, int]]) -> str:
    """Run ``script train`` per variant (and seed) into ``root/NN-name[-seedS]``; write results.json and RESULTS.md.

    Every run is a child of the ablation's MLflow parent run (see the module
    docstring). A run whose folder holds a finished run of the same command is
    not started again; any other is started and ``train`` resumes it, so an
    ablation stopped midway continues where it stopped, into the same parent.

    Args:
        plan: from :func:`ablation_plan`.
        train_arguments: arguments for ``train`` shared by every run.
        root: the ablation's folder; its name is the ablation's name.
        title: heading of RESULTS.md and description of the parent run.
        script: ``train_distributed.py``.
        say: progress lines.
        seeds: run every variant once per seed; empty: once, with the seed of
            the train arguments.
        describe: ``train`` arguments -> ``(tracking URI, experiment, seed)``
            as ``train`` would resolve them.

    Returns:
        The RESULTS.md text.

    Raises:
        ValueError: bad arguments, variants that would log to different
            stores or experiments, or an ``ablation.json`` that does not fit.
        RuntimeError: a run failed (the parent is marked FAILED).
        AblationStopped: a stop signal, or a run that exited for requeue
            (status 3; the parent is marked KILLED).
    """
    from eval.mlflow_server import StopRequested, stop_signals_raise
    from eval.results import results_markdown

    arguments = check_ablation_arguments(plan, train_arguments, seeds)
    described = {name: describe([*arguments, *extra]) for name, extra in plan}
    stores = sorted({(uri, experiment) for uri, experiment, _ in described.values()})
    if len(stores) > 1:
        raise ValueError("the variants would log to different MLflow stores or experiments "
                         f"({'; '.join(f'{uri} {experiment!r}' for uri, experiment in stores)}); give "
                         "--tracking-uri and --experiment once, in the train arguments")
    (tracking_uri, experiment), = stores
    runs = [(name, extra, seed) for name, extra in plan for seed in seeds] if seeds else \
        [(name, extra, described[name][2]) for name, extra in plan]
    root.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (root / "results.json").exists():
        try:
            previous = {entry.get("folder"): entry for entry in json.loads((root / "results.json").read_text())}
        except (OSError, ValueError, AttributeError):
            previous = {}
    mlflow_runs = AblationRuns(root, tracking_uri, experiment)
    entries: list[dict] = []
    with stop_signals_raise():
        try:
            parent_id = mlflow_runs.open(title, {
                "brainmri.ablation_seeds": ",".join(map(str, seeds)) or "(from the train arguments)",
                "brainmri.ablation_variants": "; ".join(f"{name}: {shlex.join(extra) or '(base)'}"
                                                        for name, extra in plan),
                "brainmri.ablation_train_arguments": shlex.join(arguments)}, say)
            for index, (name, extra, seed) in enumerate(runs, 1):
                folder_name = ablation_folder_name(index, name, seed if seeds else None)
                run_name = f"{name} seed={seed}" if seeds else name
                extra = [*extra, "--set", f"seed={seed}"] if seeds else list(extra)
                folder = root / folder_name
                tail = [*arguments, *extra, "--output", str(folder), "--run-name", run_name]
                shown = shlex.join(["python", script.name, "train", *tail])
                start = time.time()
                saved = saved_run(folder)
                earlier = previous.get(folder_name, {})
                if saved and saved[1] == "finished" and (folder / "summary.json").exists() \
                        and earlier.get("command") == shown:
                    say(f"[{index}/{len(runs)}] {run_name}: finished before ({folder}), not run again")
                    seconds = earlier.get("seconds", math.nan)
                else:
                    say(f"[{index}/{len(runs)}] {run_name}: {shown}")
                    nesting = ["--set", f"parent_run_id={parent_id}",
                               "--set", f"run_tags={json.dumps(mlflow_runs.child_tags(name, seed), sort_keys=True)}"]
                    try:
                        status = _run_train([sys.executable, str(script), "train", *arguments, *extra, *nesting,
                                             "--output", str(folder), "--run-name", run_name])
                    except AblationStopped:
                        saved = saved_run(folder)
                        if saved is not None:
                            mlflow_runs.adopt(folder_name, saved[0], name, seed, saved[1], say)
                        raise
                    saved = saved_run(folder)
                    if status != 0:
                        if saved is not None:
                            mlflow_runs.adopt(folder_name, saved[0], name, seed, saved[1], say)
                        if status == 3:
                            raise AblationStopped(f"run {run_name!r} stopped for requeue (status 3)")
                        raise RuntimeError(f"run {run_name!r} failed with status {status}; see its output above")
                    seconds = time.time() - start
                summary = json.loads((folder / "summary.json").read_text())
                run_id = summary.get("mlflow_run_id") or (saved[0] if saved else "")
                if run_id:
                    mlflow_runs.adopt(folder_name, run_id, name, seed, "finished", say)
                entry = {"name": name, "folder": folder_name, "command": shown, "seconds": seconds,
                         "summary": summary}
                if seeds:
                    entry["seed"] = seed
                entries.append(entry)
                write_json_atomic(root / "results.json", entries)
                (root / "RESULTS.md").write_text(results_markdown(entries, title=title))
            mlflow_runs.finish(root, entries)
        except (AblationStopped, StopRequested) as stop:
            mlflow_runs.end("KILLED")
            raise AblationStopped(f"ablation {mlflow_runs.ablation_id} stopped: {stop}. Run the same command "
                                  f"again to continue (MLflow parent run {mlflow_runs.parent_run_id})") from None
        except BaseException as error:
            mlflow_runs.end("FAILED", f"{type(error).__name__}: {error}"[:MAX_TAG_LENGTH])
            raise
    return (root / "RESULTS.md").read_text()
