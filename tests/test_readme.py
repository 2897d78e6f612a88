"""README.md's commands, run as written and in order, on the demo's synthetic sites.

Every ```bash block of README.md is split into its commands (``\\``
continuations joined, ``#`` comment lines dropped, ``&&`` chains split) and
run with bash in one fresh working folder, in README order, so a later
command finds what an earlier one wrote (``runs/br35h-128/model.keras``,
``abl/``, ``mlflow.db``), the way a person following README would. What
changes from README is only this, and all of it is listed here:

* :data:`SETUP`: environment set-up (venv, activate, pip install) is not
  repeated; the test runs in this project's environment.
* :data:`SKIPPED`: commands that cannot run here, each with its reason.
* :data:`SITES`: the shared BR35H/NAV/MOS sites become the three
  synthetic sites that the demo (README's first command) writes, under
  their own names (a site's name selects its folder layout, and MOS has
  another one), also where a site is named alone (``--val-site nav``).
* :data:`FAST`: appended to every ``train`` and ``ablate`` command (after
  ``--``, to the train arguments of ``ablate``) so training takes seconds:
  one epoch, 32 px, the small CNN, no model logging, no Grad-CAM, 100
  bootstrap resamples. :data:`AUDIT_FAST` likewise for ``audit``.
* :data:`REPLACED`: one seed for ``ablate`` instead of three, so the seed
  ensemble evaluated after it is made of that one run three times.

Commands that serve or need a browser (``ui``) are checked by ``--help``.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Set-up steps of README's first command; the test already runs in the project's environment.
SETUP = ("python3 -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install")
#: Commands not run, with the reason.
SKIPPED = {"python -m pytest": "the test suite itself (this test is part of it)"}
#: README's sites (name, folder) -> the demo's synthetic sites (written by ``train --demo`` into runs/demo_data).
SITES = {("br35h", "../shared/data/br35h"): ("synth_a", "runs/demo_data/synth_a"),
         ("nav", "../shared/data/nav"): ("synth_b", "runs/demo_data/synth_b"),
         ("mos", "../shared/data/mos"): ("synth_c", "runs/demo_data/synth_c")}
#: Appended to ``train`` and ``ablate`` commands.
FAST = ("--epochs 1 --image-size 32 --set backbone=small_cnn --set log_model=false --set gradcam_examples=0 "
        "--set bootstrap_resamples=100")
#: Appended to ``audit`` commands.
AUDIT_FAST = "--image-size 32"
#: Text replaced in the commands: (README text, what runs here).
REPLACED = (("--seeds 0,1,2", "--seeds 0"),
            ("abl/02-base-seed1/model.keras", "abl/01-base-seed0/model.keras"),
            ("abl/03-base-seed2/model.keras", "abl/01-base-seed0/model.keras"))
#: Commands checked by ``--help`` only: they serve until stopped.
HELP_ONLY = ("ui",)
CLI = "python train_distributed.py"


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks of ``text``, in order: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def command_name(command: str) -> str:
    """``train`` of ``python train_distributed.py train ...``; "" for other commands."""
    if not command.startswith(CLI + " "):
        return ""
    return shlex.split(command)[2]


def runnable(command: str) -> str | None:
    """The command as run here (see the module docstring), or None when it is not run."""
    if command.startswith(SETUP) or any(command.startswith(prefix) for prefix in SKIPPED):
        return None
    for readme_text, here in REPLACED:
        command = command.replace(readme_text, here)
    for (name, folder), (demo_name, demo_folder) in SITES.items():
        command = command.replace(f"{name}={folder}", f"{demo_name}={demo_folder}")
        command = re.sub(rf"(--val-site|--train-site) {name}\b(?!=)", rf"\1 {demo_name}", command)
    name = command_name(command)
    if name in HELP_ONLY:
        return f"{CLI} {name} --help"
    if name in ("train", "ablate"):
        return f"{command} {FAST}"
    if name == "audit":
        return f"{command} {AUDIT_FAST}"
    return command


def test_readme_commands_are_parsed_as_expected():
    text = ("```bash\npython3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
            f"{CLI} train --demo\n```\n\n```bash\n# a comment\n{CLI} evaluate --model m.keras \\\n"
            f"    --site mos=../shared/data/mos\n{CLI} ablate --seeds 0,1,2 -- --train-site x=y\n```\n"
            "```\nnot bash\n```\n```bash\n. .venv/bin/activate && python -m pytest -q\n```\n")
    commands = readme_commands(text)
    assert commands == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -e .", f"{CLI} train --demo",
                        f"{CLI} evaluate --model m.keras --site mos=../shared/data/mos",
                        f"{CLI} ablate --seeds 0,1,2 -- --train-site x=y", ". .venv/bin/activate",
                        "python -m pytest -q"]
    assert [runnable(command) for command in commands] == [
        None, None, None, f"{CLI} train --demo {FAST}",
        f"{CLI} evaluate --model m.keras --site synth_c=runs/demo_data/synth_c",
        f"{CLI} ablate --seeds 0 -- --train-site x=y {FAST}", None, None]
    assert runnable(f"{CLI} ui --port 5000") == f"{CLI} ui --help"


def test_readme_lists_every_command_of_the_cli():
    from train_distributed import cli

    text = README.read_text()
    start = text.index("The commands (`python train_distributed.py COMMAND --help`")
    table = text[start:text.index("\n\n", text.index("|---|", start))]
    listed = re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.M)
    assert sorted(listed) == sorted(cli.commands), "README's command table differs from the CLI's commands"


@pytest.mark.slow
def test_readme_commands_run_as_written_in_order(tmp_path):
    commands = [runnable(command) for command in readme_commands(README.read_text())]
    commands = [command for command in commands if command]
    assert commands[0].startswith(f"{CLI} train --demo"), "README must start with the demo"
    work = tmp_path / "clone"
    work.mkdir()
    (work / "train_distributed.py").symlink_to(REPO / "train_distributed.py")
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment.update(BRAINMRI_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1",
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}")
    timings = []
    for command in commands:
        start = time.time()
        result = subprocess.run(["bash", "-c", command], cwd=work, env=environment, capture_output=True,
                                text=True, timeout=600)
        timings.append((round(time.time() - start, 1), command[:90]))
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            f"README command failed ({result.returncode}): {command}\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-4000:]}")
        if command.startswith(f"{CLI} train --demo"):
            # What README says the demo leaves where, and that it ends with the per-site table.
            run, = (work / "runs").glob("synth_a-seed0-*")
            for name in ("summary.json", "report.html", "model.keras", "audit.json"):
                assert (run / name).is_file(), name
            assert (work / "runs" / "demo_data" / "synth_a").is_dir() and (work / "mlflow.db").is_file()
            assert list((work / "mlruns").glob("*/*/artifacts/summary.json")), "run artifacts are not in mlruns/"
            assert "Per-site results at the decision threshold" in result.stderr
            assert "leak-free AUC [95% CI]" in result.stderr and f"report: {run.relative_to(work)}" in result.stderr
        if command.startswith(f"{CLI} compare"):
            assert (work / "compare" / "compare.md").is_file()
    print("\n".join(f"{seconds:7.1f} s  {command}" for seconds, command in timings))
