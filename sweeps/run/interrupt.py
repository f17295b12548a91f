"""Ctrl-C and SIGTERM end a sweep as interrupted, never as a success.

Ray Tune handles SIGINT itself: it stops the run, returns normally (so a driver would
report "0 failed" and exit 0 with trials never run) and suggests `Tuner.restore`, which
is not how this tool resumes (rerunning the command is). `stop_on_signals` replaces that
handling for the length of a run, and for SIGTERM too (`kill`, a Slurm time limit): the
signal interrupts the driver's main thread, the driver stops its trials (`stop_trials`)
before it releases the sweep's lock and raises `Interrupted`, and the command exits 128 + the
signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a killed program.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"  # "1": Tune leaves SIGINT to us


class Interrupted(KeyboardInterrupt):
    """A sweep ended by SIGINT or SIGTERM, with the line that says how far it got."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class Caught:
    signum: int = signal.SIGINT  # the signal that ended the block (a plain Ctrl-C if none was seen)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Caught]:
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt (as Ray's blocking
    calls do themselves when a signal arrives), noting which signal it was. Main thread
    only: elsewhere a handler cannot be installed and the default behaviour stays."""
    caught = Caught()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: object) -> None:
        caught.signum = signum
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield caught
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def stop_trials() -> None:
    """Stop every trial of this driver: shutting Ray down kills an embedded Ray's
    workers, and on a cluster ends the driver's job, whose workers Ray then stops."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
