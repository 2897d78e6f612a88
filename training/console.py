"""Progress lines on standard error (the chief worker's only), and a quiet TensorFlow start on CPU."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, MutableMapping

#: Device files of GPUs TensorFlow can use: NVIDIA, NVIDIA under WSL2 (``dxg``) and AMD ROCm (``kfd``).
GPU_DEVICE_FILES = ("nvidia[0-9]*", "nvidiactl", "dxg", "kfd")


def gpu_device_present(device_folder: Path = Path("/dev")) -> bool:
    """True when ``device_folder`` holds a GPU device file (:data:`GPU_DEVICE_FILES`)."""
    return any(next(device_folder.glob(pattern), None) is not None for pattern in GPU_DEVICE_FILES)


def quiet_tensorflow_on_cpu(environ: MutableMapping[str, str] = os.environ, device_folder: Path = Path("/dev"),
                            platform: str = sys.platform) -> bool:
    """Before TensorFlow is imported: on a Linux machine without a usable GPU, start TensorFlow's CPU devices only.

    TensorFlow's GPU device factory calls ``cuInit`` at start-up; without a
    driver it logs ``E ... failed call to cuInit: ... UNKNOWN ERROR (303)``,
    an error line for a machine that simply has no GPU.
    ``TF_ENABLED_DEVICE_TYPES=CPU`` leaves that factory unregistered, so the
    call is never made, while every other error stays visible
    (``CUDA_VISIBLE_DEVICES=""`` does not help: ``cuInit`` is still called).
    No GPU means: ``CUDA_VISIBLE_DEVICES`` is empty or ``-1``, or it is unset
    and ``device_folder`` holds no GPU device file. A ``TF_ENABLED_DEVICE_TYPES``
    already set is left as it is; other platforms are left alone.

    Returns True when it set ``TF_ENABLED_DEVICE_TYPES``.
    """
    if not platform.startswith("linux") or "TF_ENABLED_DEVICE_TYPES" in environ:
        return False
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        no_gpu = not gpu_device_present(device_folder)
    else:
        no_gpu = visible.split(",")[0].strip() in ("", "-1")
    if no_gpu:
        environ["TF_ENABLED_DEVICE_TYPES"] = "CPU"
    return no_gpu


def say(message: str, *, chief: bool = True) -> None:
    """Print a progress line to standard error (only on the chief worker)."""
    if chief:
        print(message, file=sys.stderr, flush=True)


def progress_printer(chief: bool = True, check: Callable[[], None] | None = None) -> Callable:
    """``progress_printer()(label)`` -> a ``progress(done, total)`` callback printing about ten lines.

    ``check`` runs on every call (the stop-signal check, so long decoding stays interruptible).
    """
    def make(label: str) -> Callable[[int, int], None]:
        state = {"last": -1, "start": time.time()}

        def progress(done: int, total: int) -> None:
            if check:
                check()
            tenth = done * 10 // max(total, 1)
            if chief and total and (tenth != state["last"] or done == total):
                state["last"] = tenth
                say(f"  {label}: {done}/{total} images ({time.time() - state['start']:.1f} s)")

        return progress

    return make
