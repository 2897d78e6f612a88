"""Ablations: one ``train`` run per variant of the settings, and the RESULTS table of all of them.

A plan is a list of ``(name, ["--set", "key=value", ...])``: ``--vary KEY=V1,V2``
changes one key per run (``one-at-a-time``: a base run plus one run per value;
``grid``: every combination), ``--variant 'NAME: KEY=V KEY=V'`` changes several
keys together. With seeds (``--seeds 0,1,2``) every variant runs once per seed,
and the tables give mean, sd and each seed's value, and say whether a
variant's difference from the first variant exceeds seed variation.
"""
from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from training.state import write_json_atomic


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


def run_ablation(plan: list[tuple[str, list[str]]], train_arguments: Sequence[str], root: Path, title: str,
                 script: Path, say: Callable[[str], None] = print, seeds: Sequence[int] = ()) -> str:
    """Run ``script train`` per variant (and seed) into ``root/NN-name[-seedS]``; write results.json and RESULTS.md.

    Returns the RESULTS.md text. ``seeds`` empty: one run per variant with
    the seed of the train arguments. A folder holding a finished run is
    reused as ``train`` itself does (it logs nothing twice), so an ablation
    stopped midway continues where it stopped.
    """
    from eval.results import results_markdown

    arguments = check_ablation_arguments(plan, train_arguments, seeds)
    runs = [(name, extra, None) for name, extra in plan] if not seeds else \
        [(name, extra, seed) for name, extra in plan for seed in seeds]
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (name, extra, seed) in enumerate(runs, 1):
        folder_name = f"{index:02d}-{name.replace('=', '-').replace(',', '_')}"
        run_name = name
        if seed is not None:
            extra = [*extra, "--set", f"seed={seed}"]
            folder_name += f"-seed{seed}"
            run_name += f" seed={seed}"
        folder = root / folder_name
        tail = [*arguments, *extra, "--output", str(folder), "--run-name", run_name]
        shown = shlex.join(["python", script.name, "train", *tail])
        say(f"[{index}/{len(runs)}] {run_name}: {shown}")
        start = time.time()
        status = subprocess.call([sys.executable, str(script), "train", *tail])
        if status != 0:
            raise RuntimeError(f"run {run_name!r} failed with status {status}; see its output above")
        summary = json.loads((folder / "summary.json").read_text())
        entry = {"name": name, "command": shown, "seconds": time.time() - start, "summary": summary}
        if seed is not None:
            entry["seed"] = seed
        entries.append(entry)
        write_json_atomic(root / "results.json", entries)
        (root / "RESULTS.md").write_text(results_markdown(entries, title=title))
    return (root / "RESULTS.md").read_text()
