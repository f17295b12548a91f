"""Ray's and Tune's own output goes to a log in the sweep folder; the terminal keeps the sweep's.

A sweep's terminal shows its own lines (`sweeps.watch.terminal`), its warnings and errors, and
its closing summary. Everything Ray and Tune say besides (Tune's banner and status
tables, their logged warnings and tracebacks, the workers' forwarded stdout and stderr,
a worker's `SystemExit` traceback as Ray stops it) goes to `RAY_LOG`, which writes to
the current experiment's `_tune/<experiment>/output.log` (`ray_output_to`); what comes
before the first experiment waits in memory for it, what comes after the last (a
straggling worker line) is appended to it. A worker line of this tool's own, `warning: ...`
or `error: ...` (`workers.core.live`, `workers.jobs.pack_job`), still reaches the terminal.

The workers' lines arrive through Ray's stream dispatcher (`ray._private.ray_logging`),
the one place Ray forwards them to a driver: its printing handler is replaced by
`_worker_lines`. Ray's and Tune's logging goes through the `ray` logger's own handler
(`ray._private.log.PlainRayHandler`), whose stream becomes `RAY_LOG`. Both are Ray's
private names (Ray 2.60); `tests/test_loggers.py` runs a sweep's terminal against them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import TextIO

TOOL_LINE = re.compile(r"^(warning|error): ")
RAY_PRINTER = "ray_print_logs"  # the name Ray's own printing handler is registered under


class RayLog:
    """A text stream onto the current experiment's log (lines before the first wait).

    The log is in the sweep folder, so a full disk stops it: its output is then dropped
    with one warning, never raised into Ray's or Tune's printing (the driver must still
    say what was recorded)."""

    def __init__(self) -> None:
        self.file: TextIO | None = None
        self.pending: list[str] = []
        self.path = ""

    def write(self, text: str) -> int:
        if self.file is None:
            self.pending.append(text)
            return len(text)
        try:
            self.file.write(text)
            self.file.flush()  # a killed driver leaves its log complete
        except OSError as exc:
            self._give_up(exc)
        return len(text)

    def flush(self) -> None:
        pass

    def to(self, path: str) -> None:
        """Write to `path` (appending) from now on."""
        previous, self.path = self.file, path
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.file = open(path, "a")
        except OSError as exc:
            self.file = None
            self._give_up(exc)
        if previous is not None:
            with contextlib.suppress(OSError):
                previous.close()
        if self.file is not None:
            self.write("".join(self.pending))
            self.pending.clear()

    def _give_up(self, exc: OSError) -> None:
        """Drop Ray's output from now on (to a stream that discards it), saying so once."""
        print(f"warning: Ray's log {self.path} cannot be written ({exc}); Ray's output is dropped", file=sys.stderr)
        self.file, self.pending = open(os.devnull, "w"), []


RAY_LOG = RayLog()


def route_ray_logging() -> None:
    """Send Ray's and Tune's logging to `RAY_LOG`: the `ray` logger's handler (Ray sets
    it up on import and keeps it through `ray.init`) writes there from now on.

    That includes Ray's start-up warning that token authentication is on, which an
    embedded Ray prints on every start (`ray._private.authentication`): authentication
    stays on (the embedded Ray listens on the machine's address, and a Ray without it
    runs any code sent to its ports), and its notice goes to the log."""
    from ray._private.log import PlainRayHandler

    for handler in logging.getLogger("ray").handlers:
        if isinstance(handler, PlainRayHandler):  # not another's, such as pytest's capture
            handler.setStream(RAY_LOG)


def route_worker_output() -> None:
    """Send the workers' forwarded output through `_worker_lines` (after `ray.init`, which
    registers Ray's own printer; once per process)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    global_worker_stdstream_dispatcher.remove_handler(RAY_PRINTER)
    global_worker_stdstream_dispatcher.add_handler(RAY_PRINTER, _worker_lines)


def _worker_lines(batch: dict) -> None:
    """A batch of a worker's output lines (Ray's dispatcher): this tool's warnings and
    errors to the terminal's stderr, the rest to the log with the worker's name."""
    from ray._private.worker import filter_autoscaler_events

    who = f"({batch.get('actor_name') or batch.get('task_name') or 'worker'} pid={batch.get('pid')})"
    lines = batch.get("lines", [])
    if batch.get("pid") == "autoscaler":  # its whole status every 5 s: as Ray's printer, only its events
        lines = list(filter_autoscaler_events(lines))
    for line in lines:
        if TOOL_LINE.match(line):
            print(line, file=sys.stderr)
        else:
            RAY_LOG.write(f"{who} {line}\n")


@contextlib.contextmanager
def ray_output_to(path: str) -> Iterator[None]:
    """Within the block (an experiment's run), `RAY_LOG` writes to `path` and so does
    what Tune prints on stdout; the driver's own lines hold their stream from before
    (`sweeps.watch.terminal.Terminal`). After it, `RAY_LOG` stays on `path`."""
    RAY_LOG.to(path)
    with contextlib.redirect_stdout(RAY_LOG):
        yield
