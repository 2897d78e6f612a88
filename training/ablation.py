"""Ablations: one ``train`` run per variant of the settings, and the RESULTS table of all of them.

A plan is a list of ``(name, ["--set", "key=value", ...])``: ``--vary KEY=V1,V2``
changes one key per run (``one-at-a-time``: a base run plus one run per value;
``grid``: every combination), ``--variant 'NAME: KEY=V KEY=V'`` changes several
keys together.
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


def run_ablation(plan: list[tuple[str, list[str]]], train_arguments: Sequence[str], root: Path, title: str,
                 script: Path, say: Callable[[str], None] = print) -> str:
    """Run ``script train`` per variant into ``root/NN-name``; write results.json and RESULTS.md; return it."""
    from eval.results import results_markdown

    arguments = [a for a in train_arguments if a != "--"]
    if any(a in ("--output", "--run-name") or a.startswith(("--output=", "--run-name=")) for a in arguments):
        raise ValueError("ablate sets --output and --run-name of each run itself")
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (name, extra) in enumerate(plan, 1):
        folder = root / f"{index:02d}-{name.replace('=', '-').replace(',', '_')}"
        tail = [*arguments, *extra, "--output", str(folder), "--run-name", name]
        shown = shlex.join(["python", script.name, "train", *tail])
        say(f"[{index}/{len(plan)}] {name}: {shown}")
        start = time.time()
        status = subprocess.call([sys.executable, str(script), "train", *tail])
        if status != 0:
            raise RuntimeError(f"run {name!r} failed with status {status}; see its output above")
        summary = json.loads((folder / "summary.json").read_text())
        entries.append({"name": name, "command": shown, "seconds": time.time() - start, "summary": summary})
        write_json_atomic(root / "results.json", entries)
        (root / "RESULTS.md").write_text(results_markdown(entries, title=title))
    return (root / "RESULTS.md").read_text()
