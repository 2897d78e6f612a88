"""A TensorFlow start without a GPU prints no "failed call to cuInit" error line; real errors stay on."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.console import gpu_device_present, quiet_tensorflow_on_cpu

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("environment, device_files, platform, hidden", [
    ({}, [], "linux", True),  # a CPU machine
    ({}, ["nvidia0", "nvidiactl"], "linux", False),  # an NVIDIA GPU
    ({}, ["dxg"], "linux", False),  # an NVIDIA GPU under WSL2
    ({}, ["kfd"], "linux", False),  # an AMD GPU (ROCm)
    ({}, ["nvidia-uvm"], "linux", True),  # the unified-memory module alone is no GPU
    ({"CUDA_VISIBLE_DEVICES": ""}, ["nvidia0"], "linux", True),  # GPUs hidden on purpose
    ({"CUDA_VISIBLE_DEVICES": "-1"}, ["nvidia0"], "linux", True),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, [], "linux", False),  # GPUs named: believed
    ({"CUDA_VISIBLE_DEVICES": "GPU-5f1c"}, [], "linux", False),
    ({"TF_ENABLED_DEVICE_TYPES": "CPU,GPU"}, [], "linux", False),  # the user's own choice is kept
    ({}, [], "darwin", False),  # macOS (Metal plug-in devices): left alone
])
def test_gpus_are_hidden_from_tensorflow_only_where_there_are_none(tmp_path, environment, device_files, platform,
                                                                   hidden):
    for name in device_files:
        (tmp_path / name).touch()
    before = dict(environment)
    assert quiet_tensorflow_on_cpu(environment, tmp_path, platform) is hidden
    assert environment == ({**before, "TF_ENABLED_DEVICE_TYPES": "CPU"} if hidden else before)


@pytest.mark.skipif(not sys.platform.startswith("linux") or gpu_device_present(), reason="checks a machine without GPU")
def test_tensorflow_starts_without_the_cuinit_error_line_through_the_command_line_module():
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_ENABLED_DEVICE_TYPES", "CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")}
    program = ("import os, train_distributed, tensorflow as tf; "
               "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], [d.device_type for d in tf.config.list_physical_devices()])")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cuInit" not in result.stderr, result.stderr
    assert result.stdout.split("\n")[0] == "2 ['CPU']"  # error lines of TensorFlow stay visible (level 2, not 3)
