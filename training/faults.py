"""Exit statuses, stop signals and the errors that end a run early.

SLURM sends SIGTERM (or the ``--signal`` of the batch script, SIGUSR1) before
a time limit or preemption. ``StopSignal`` records it; the run checks it at
safe points of every phase (``check``), saves what it has and exits with
``EXIT_REQUEUE`` so the batch script requeues the job.
"""
from __future__ import annotations

import signal

#: Exit status after SIGTERM/SIGUSR1: state was saved, the job should be requeued.
EXIT_REQUEUE = 3
#: Exit status when the loss became NaN.
EXIT_NAN = 4


class NanLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class RequeueRequested(Exception):
    """A stop signal arrived; the run saved its state and should be started again."""


class StopSignal:
    """Records SIGTERM / SIGUSR1; ``check()`` raises RequeueRequested once one arrived."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal_name = ""
        self.previous: dict[int, object] = {}

    def __call__(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)

    def install(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def check(self, where: str = "") -> None:
        if self.signal_name:
            raise RequeueRequested(f"{self.signal_name} received{' during ' + where if where else ''}")
