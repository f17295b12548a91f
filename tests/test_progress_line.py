"""The driver's progress line: counts of models and pairs, models per hour and the ETA
from the durations seen per (width, batch size), drawn in place on a terminal and as
plain lines elsewhere."""

from __future__ import annotations

import io
import pickle

import pytest

import sweeps.watch.terminal as progress
from analysis.eta import Durations, Progress, clock, eta_seconds
from sweeps.watch.terminal import OneLinePerTrial, Tally, Terminal


def test_the_eta_takes_each_class_its_own_time_and_shares_the_rest_over_the_running_jobs():
    seen = Durations()
    for seconds in (8.0, 12.0):
        seen.add(("train", 2, 128), seconds)
    seen.add(("train", 16, 128), 40.0)
    assert seen.estimate(("train", 2, 128)) == 10.0
    assert seen.estimate(("train", 8, 128)) == 20.0  # a width not seen yet: the mean of its kind
    assert seen.estimate(("pair", 2, 128)) == 20.0  # no pair seen yet: the mean of everything
    pending = {("train", 2, 128): 3, ("train", 16, 128): 1, ("train", 8, 128): 1, ("pair", 2, 128): 1}
    running = [([("train", 2, 128), ("train", 2, 128)], 5.0)]  # a pack of two, 5 s in
    assert eta_seconds(seen, pending, running, workers=2) == (30 + 40 + 20 + 20 + 15) / 2
    assert eta_seconds(Durations(), pending, running, workers=2) is None  # nothing to learn from yet


def test_the_line_reads_done_running_pending_failed_rate_and_eta():
    line = Progress(done=10, running=4, pending=9, failed=1, models_per_hour=41.34, eta_s=200).line()
    assert line == "10/24 done, 4 running, 9 pending, 1 failed | 41.3 models/h | ETA 3m20s"
    assert Progress(0, 1, 3, 0).line() == "0/4 done, 1 running, 3 pending, 0 failed | - models/h | ETA -"
    assert Progress(5, 2, None, 0).line() == "5/? done, 2 running, ? pending, 0 failed | - models/h | ETA -"
    assert [clock(s) for s in (45, 250, 7500, 273600)] == ["45s", "4m10s", "2h05m", "3d04h"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jobs() -> list[dict]:
    """A pack of two width-2 models with their pair, and a solo width-16 model."""
    model = {"width": 2, "batch_size": 128, "seed": 0}
    return [{"kind": "pack", "members": [model, {**model, "seed": 1}],
             "pairs": [{"a": model, "b": {**model, "seed": 1}, "with_mc": False}]},
            {"kind": "train", "trial": {"width": 16, "batch_size": 128, "seed": 0}}]


def test_the_tally_counts_units_and_learns_their_durations(monkeypatch):
    clock_ = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock_)
    pack, solo = jobs()
    tally = Tally([pack, solo])
    tally.start("a", pack)
    tally.start("a", pack)  # Tune starts a retried job again: counted once
    clock_.now += 30  # the pack and its pair: 10 s a unit
    tally.end("a", pack, ok=True)
    tally.start("b", solo)
    clock_.now += 6
    shown = tally.progress()
    assert (shown.done, shown.running, shown.pending, shown.failed) == (3, 1, 0, 0)
    assert shown.models_per_hour == pytest.approx(2 * 3600 / 36)
    assert shown.eta_s == pytest.approx(10 - 6)  # a width-16 model at the training mean so far
    tally.end("b", solo, ok=False)
    assert tally.progress().line().startswith("3/4 done, 0 running, 0 pending, 1 failed")


class Screen(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_on_a_terminal_the_line_is_redrawn_in_place_and_stays_below_the_job_lines():
    screen = Screen(tty=True)
    terminal = Terminal(stream=screen)
    terminal.progress(lambda: Progress(0, 1, 3, 0))
    terminal.line("[1/4] width=2 seed=0  ok")
    terminal.progress(lambda: Progress(1, 1, 2, 0), last=True)
    assert screen.getvalue() == (
        "\r\x1b[Kprogress: 0/4 done, 1 running, 3 pending, 0 failed | - models/h | ETA -"
        "\r\x1b[K[1/4] width=2 seed=0  ok\nprogress: 0/4 done, 1 running, 3 pending, 0 failed | - models/h | ETA -"
        "\r\x1b[Kprogress: 1/4 done, 1 running, 2 pending, 0 failed | - models/h | ETA -\n")


def test_elsewhere_it_is_a_plain_line_now_and_then_and_at_the_end(monkeypatch):
    clock_ = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock_)
    screen = Screen(tty=False)
    terminal = Terminal(stream=screen)
    terminal.progress(lambda: Progress(0, 1, 3, 0))
    clock_.now += progress.PLAIN_EVERY_S / 2
    terminal.progress(lambda: Progress(1, 1, 2, 0))  # too soon for a log file
    terminal.line("[1/4] width=2 seed=0  ok")
    terminal.progress(lambda: Progress(4, 0, 0, 0), last=True)
    lines = screen.getvalue().splitlines()
    assert [line.split(" done")[0] for line in lines] == ["progress: 0/4", "[1/4] width=2 seed=0  ok", "progress: 4/4"]
    assert "\r" not in screen.getvalue()


def test_the_callback_pickles_without_its_stream():
    callback = OneLinePerTrial(jobs(), ["width", "seed"], Terminal(stream=Screen(tty=True)))
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.total == 4 and copy.terminal.stream is None
    copy.terminal.progress(lambda: Progress(0, 0, 4, 0), last=True)  # a copy that writes nowhere
