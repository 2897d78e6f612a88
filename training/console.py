"""Progress lines on standard error (the chief worker's only)."""
from __future__ import annotations

import sys
import time
from typing import Callable


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
