"""Bad input never reaches Ray or the disk: exit 2, one line naming the field and what
is allowed, and nothing written (no sweep folder, no spec.json, no lock)."""

from __future__ import annotations

import re
import tarfile
import time
from pathlib import Path

import pytest
import torch

from analysis.__main__ import main as analysis_main
from sweeps.run.cli import main
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec
from workers.core.errors import ConfigError

STORED = Path(__file__).parent / "data" / "stored_sweep_v1.tar.gz"
# The Reliability table's figure for this file: every case below that is refused says so.
REFUSED = ("{cases} more in `tests/test_bad_input.py` (non-finite numbers in every command, seeds outside the "
           "generators' range, a key given twice, a 101-character name, storage under /proc or /dev, `init_from` "
           "that is not a checkpoint, a width or batch size whose training, or a metric's work, cannot fit this "
           "machine's memory, `--address` with `--in-process`, impossible resources; `analysis` on a missing "
           "folder, a damaged `spec.json`, an unreachable bucket: one line, exit 2)")
SMALL = ["--set", "width=2", "--set", "batch_size=128", "--set", "metrics=", "--set", "measure_pairs=false",
         "--set", "epochs=1", "--set", "milestones=1"]


@pytest.mark.parametrize("args, field", [
    (["--cpus-per-trial", "64"], "--cpus-per-trial"),
    (["--address", "local", "--in-process"], "--address"),
    (["--address", "not-an-address"], "--address"),
    (["--set", "lr=inf"], "lr"),
    (["--set", "label_noise=nan"], "label_noise"),
    (["--set", "seed=5000000000"], "seed"),
    (["--set", "data_seed=-1"], "data_seed"),
    (["--set", "width=4", "--set", "width=8"], "width"),
    (["--name", "x" * 101], "--name"),
    (["--name", ""], "--name"),
    (["--set", "init_from=README.md"], "init_from"),
    (["--set", "width=2,4096"], "width"),
])
def test_a_bad_command_line_exits_2_naming_the_field_and_writes_nothing(tmp_path, capsys, args, field, figures):
    started = time.monotonic()
    code = main("taxonomy", "", ["--storage", str(tmp_path / "store"), "--name", "s", *SMALL, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {field}"), err
    assert not (tmp_path / "store").exists()
    assert time.monotonic() - started < 30
    figures("bad-input", REFUSED, cases=1)


def test_an_address_that_does_not_answer_is_refused_at_once(tmp_path, capsys, figures):
    """Nothing listens on port 9: refused by the connection, not after the 10 s timeout."""
    started = time.monotonic()
    code = main("taxonomy", "", ["--storage", str(tmp_path / "store"), "--name", "s", *SMALL,
                                 "--address", "127.0.0.1:9"])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --address"), err
    assert not (tmp_path / "store").exists() and seconds < 10
    figures("infeasible-resources", "unreachable address refused in {ms:.0f} ms", ms=round(1000 * seconds))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU to give")
def test_asking_for_a_gpu_on_a_machine_without_one_exits_2(tmp_path, capsys, figures):
    assert main("taxonomy", "", ["--storage", str(tmp_path), "--name", "s", *SMALL, "--gpus-per-trial", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --gpus-per-trial") and not (tmp_path / "s").exists()
    figures("bad-input", REFUSED, cases=1)


@pytest.mark.parametrize("storage", ["/proc/sweeps", "/dev"])
def test_storage_on_a_pseudo_file_system_is_refused(storage, capsys, figures):
    assert main("taxonomy", "", ["--storage", storage, "--name", "s", *SMALL]) == 2
    assert capsys.readouterr().err.startswith("error: --storage")
    figures("bad-input", REFUSED, cases=1)


def test_a_cluster_that_never_has_a_node_for_one_trial_stops_the_sweep(ray_session, tiny, tmp_path, figures):
    spec = SweepSpec("taxonomy", "demo", "s", str(tmp_path), {**tiny, "metrics": []})
    options = RunOptions(address="auto", cpus_per_trial=4, wait_for_resources_s=1)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"--cpus-per-trial: one trial asks \d+ CPU.*nodes: \d+ CPU") as info:
        run(spec, spec.trials(), options, log=lambda line: None)
    asked, has = re.search(r"asks (\d+) CPU.*nodes: (\d+) CPU", str(info.value)).groups()
    figures("infeasible-resources", "{asked} CPUs asked of a {has}-CPU Ray: stopped {seconds:.1f} s after the call, "
            "whose wait for resources was {wait:g} s", asked=int(asked), has=int(has),
            seconds=round(time.monotonic() - started, 2), wait=options.wait_for_resources_s)


@pytest.mark.parametrize("make", ["missing", "not a sweep", "damaged spec"])
def test_analysis_gives_one_line_for_a_bad_path(tmp_path, capsys, make, figures):
    path = tmp_path / "x"
    if make != "missing":
        path.mkdir()
    if make == "damaged spec":
        (path / "spec.json").write_text("{not json")
    assert analysis_main(["status", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: PATH") and str(path) in err[0]
    figures("bad-input", REFUSED, cases=1)


def test_analysis_gives_one_line_for_a_bucket_that_does_not_exist(s3_endpoint, capsys, figures):
    path = f"s3://no-such-bucket/sweep?endpoint_override={s3_endpoint}&scheme=http"
    assert analysis_main(["status", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no-such-bucket" in err[0], err
    figures("bad-input", REFUSED, cases=1)


def test_the_memory_bound_is_above_the_exact_count_and_both_grow_with_width_and_batch():
    from sweeps.preflight.memory import training_bytes
    from workers.catalog import TrialConfig

    small, wide, big_batch = (TrialConfig.from_flat(v) for v in
                              ({"width": 4, "batch_size": 32}, {"width": 16, "batch_size": 32},
                               {"width": 4, "batch_size": 512}))
    for cfg in (small, wide, big_batch):
        bound, exact = sum(training_bytes(cfg)), sum(training_bytes(cfg, exact=True))
        assert bound >= exact > 0
    assert training_bytes(wide)[0] > 10 * training_bytes(small)[0]  # weights grow as width^2
    assert training_bytes(big_batch, exact=True)[1] > training_bytes(small, exact=True)[1]


def exit_code(run) -> int:
    """A command's exit code, whether it returns one or argparse exits with it."""
    try:
        return run()
    except SystemExit as exc:  # argparse's own errors
        return exc.code


# Every numeric option of every command refuses NaN and infinity: Python's float() takes
# both, NaN passes a `value < 0` check, and infinity overflows later (time.sleep).
@pytest.mark.parametrize("args, named", [
    (["--cpus-per-trial", "nan"], "argument --cpus-per-trial: expected a finite number >= 0"),
    (["--cpus-per-trial", "inf"], "argument --cpus-per-trial: expected a finite number >= 0"),
    (["--gpus-per-trial", "nan"], "argument --gpus-per-trial: expected 'auto' or a finite number >= 0"),
    (["--gpus-per-trial=-inf"], "argument --gpus-per-trial: expected 'auto' or a finite number >= 0"),
    (["--wait-for-resources", "inf"], "argument --wait-for-resources: expected a finite number >= 0"),
    (["--wait-for-resources", "nan"], "argument --wait-for-resources: expected a finite number >= 0"),
    (["--max-concurrent", "inf"], "argument --max-concurrent: expected a whole number >= 0"),
    (["--max-retries", "nan"], "argument --max-retries: expected a whole number >= 0"),
    (["--refine", "budget=nan"], "--refine budget: must be in (0, 1]"),
    (["--refine", "stride=inf"], "--refine stride: must be an integer >= 2"),
    (["--pack", "inf"], "--pack: must be 'auto', 'off' or a pack size >= 1"),
    (["--set", "weight_decay=nan"], "weight_decay: must be a finite number"),
    (["--set", "hessian.n_samples=inf"], "hessian.n_samples: expected int"),
])
def test_a_sweep_option_given_nan_or_infinity_exits_2_naming_it_and_writes_nothing(tmp_path, capsys, args, named,
                                                                                   figures):
    code = exit_code(lambda: main("taxonomy", "", ["--storage", str(tmp_path / "store"), "--name", "s", *SMALL, *args]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {named}"), err
    assert not (tmp_path / "store").exists()
    figures("bad-input", REFUSED, cases=1)


@pytest.mark.parametrize("args, named", [
    (["--nodes", "nan"], "argument --nodes: expected a whole number >= 1"),
    (["--cpus-per-node", "inf"], "argument --cpus-per-node: expected a whole number >= 0"),
    (["--max-resubmits", "nan"], "argument --max-resubmits: expected a whole number >= 1"),
    ([], "sweep command: argument --cpus-per-trial: expected a finite number >= 0"),
])
def test_a_slurm_option_given_nan_or_infinity_exits_2_naming_it_and_writes_nothing(tmp_path, capsys, args, named,
                                                                                   figures):
    from sweeps.slurm.__main__ import main as slurm_main

    sweep = ["python", "sweeps/taxonomy.py", "--storage", str(tmp_path / "store"), "--name", "s", *SMALL,
             *(["--cpus-per-trial", "nan"] if not args else [])]
    code = exit_code(lambda: slurm_main(["submit", "--dry-run", "--allow-local-storage", *args, "--", *sweep]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {named}"), err
    assert list(tmp_path.iterdir()) == []
    figures("bad-input", REFUSED, cases=1)


@pytest.fixture
def unfinished_sweep(tmp_path) -> Path:
    """The stored sweep with its pair missing: `status --watch` would keep refreshing."""
    with tarfile.open(STORED) as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "stored"
    for record in [*(folder / "pairs").iterdir(), *(folder / "tables").iterdir()]:
        record.unlink()
    return folder


@pytest.mark.parametrize("args, named", [
    (["status", "{path}", "--watch", "--every", "nan"], "argument --every: expected a finite number > 0"),
    (["status", "{path}", "--watch", "--every", "inf"], "argument --every: expected a finite number > 0"),
    (["status", "{path}", "--watch", "--every", "1e12"], "argument --every: must be > 0 and <= 86400"),
    (["report", "{path}", "--out", "{out}", "--threshold", "cka=nan"], "argument --threshold: expected NAME=VALUE"),
    (["report", "{path}", "--out", "{out}", "--threshold", "mc=-inf"], "argument --threshold: expected NAME=VALUE"),
    (["refine-replay", "{path}", "--out", "{out}", "--refine", "budget=inf"], "--refine budget: must be in (0, 1]"),
])
def test_an_analysis_option_given_nan_or_infinity_exits_2_naming_it_and_writes_nothing(
        unfinished_sweep, tmp_path, capsys, args, named, figures):
    before = sorted(unfinished_sweep.rglob("*"))
    argv = [a.format(path=unfinished_sweep, out=tmp_path / "out") for a in args]
    code = exit_code(lambda: analysis_main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {named}"), err
    assert sorted(unfinished_sweep.rglob("*")) == before and not (tmp_path / "out").exists()
    figures("bad-input", REFUSED, cases=1)
