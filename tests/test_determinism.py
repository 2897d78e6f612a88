"""Same seed, same weights on a CPU, even when the machine is busy (training.cluster.pin_inter_op_threads)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training import cluster

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Gradients of a batch normalisation over a (32, 128, 128, 32) batch, repeated: with several inter-op
#: threads on a busy CPU their sums came out in a timing-dependent order. Prints a digest of all of them.
WORKER = textwrap.dedent("""
    import hashlib, os, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    if os.environ.get("PIN") == "1":
        from training.cluster import choose_strategy
        choose_strategy()
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(32, 128, 128, 32)).astype("float32"))
    w = tf.constant(rng.normal(size=(1, 128, 128, 32)).astype("float32"))

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            mean = tf.reduce_mean(x, [0, 1, 2], keepdims=True)
            variance = tf.reduce_mean(tf.square(x - tf.stop_gradient(mean)), [0, 1, 2], keepdims=True)
            loss = tf.reduce_sum((x - mean) * tf.math.rsqrt(variance + 1e-3) * w)
        return tape.gradient(loss, x)

    digest = hashlib.sha1()
    for index in range(10):
        digest.update(gradient(x * (1 + index * 1e-3)).numpy().tobytes())
    print(tf.config.threading.get_inter_op_parallelism_threads(), digest.hexdigest())
""")


def _environment(pin: bool) -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items() if key != cluster.INTER_OP_VARIABLE}
    environ.update(PIN="1" if pin else "0", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    return environ


def _concurrent_digests(pin: bool, copies: int = 3) -> list[str]:
    """Run ``copies`` workers at once (each keeps the others' cores busy); their printed lines."""
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(REPO_ROOT)], env=_environment(pin),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(copies)]
    lines = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        lines.append(stdout.strip().splitlines()[-1])
    return lines


def test_training_on_a_busy_cpu_repeats_bit_for_bit():
    lines = _concurrent_digests(pin=True)
    assert all(line.startswith("1 ") for line in lines), lines  # one inter-op thread
    assert len(set(lines)) == 1, lines


@pytest.mark.parametrize("environ, gpus, expected", [
    ({cluster.INTER_OP_VARIABLE: "4"}, 0, ""),  # the user's choice stands
    ({}, 2, ""),                                # GPUs: nothing changed
])
def test_pin_leaves_gpus_and_the_users_setting_alone(monkeypatch, environ, gpus, expected):
    monkeypatch.setattr(cluster, "visible_gpu_count", lambda: gpus)
    assert cluster.pin_inter_op_threads(environ) == expected


def test_pin_says_so_when_tensorflow_started_first():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tensorflow as tf; tf.constant(1) + 1; "
            "from training.cluster import pin_inter_op_threads; print(pin_inter_op_threads({}))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], env=_environment(False),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("note: TensorFlow started before")
