"""Sweep specs: grids, --set parsing, and a clear error for each kind of bad input."""

from __future__ import annotations

import pytest

from sweeps.run.cli import main
from sweeps.run.presets import preset_values
from sweeps.run.spec import SweepSpec, parse_assignment
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError

# The Reliability table's figure for this file: every case below that is refused says so.
REFUSED = ("exit code 2 and nothing written: {cases} cases in `tests/test_spec.py` (unknown key with suggestion, "
           "wrong type, non-positive width/batch/epochs, batch larger than the training set, label noise outside "
           "[0, 1), data fraction outside (0, 1], unknown dataset/model/optimizer/metric/preset, empty and "
           "duplicate axis values, malformed `--set`, storage not writable, bounds declared on the fields, ...)")


def spec(values: dict, **kw) -> SweepSpec:
    return SweepSpec(study="taxonomy", preset="demo", name="t", storage="unused", values=values, **kw)


def test_paper_preset_is_the_published_grid():
    configs = spec(preset_values("taxonomy", "paper")).trials()
    assert len(configs) == 910  # 14 widths x 13 batch sizes x 5 seeds
    assert len({c.trial_key for c in configs}) == 910
    assert len({c.cell_key for c in configs}) == 182
    first = configs[0]
    assert (first.data.dataset, first.train.epochs, first.optim.lr, first.optim.milestones) == (
        "cifar10", 100, 0.1, (75,))


def test_demo_preset_has_at_least_16_models_and_2_seeds():
    configs = spec(preset_values("taxonomy", "demo")).trials()
    assert len(configs) >= 16
    assert {c.train.seed for c in configs} == {0, 1}


def test_keys_of_stored_sweeps_survive_new_config_fields():
    """Keys of configs as they were before augmentation and precision existed (computed
    with that code): a field added later keys a model only when it is set."""
    assert TrialConfig.from_flat({}).trial_key == "315091989f383beb"
    cfg = TrialConfig.from_flat({"dataset": "digits", "width": 4, "batch_size": 32, "seed": 1, "metrics": ["hessian"]})
    assert (cfg.trial_key, cfg.cell_key) == ("7d2049a349754af4", "db92bf9bc85e566d")
    for new_setting in ({"augment_crop": 1}, {"augment_flip": True}, {"precision": "bf16"}):
        assert TrialConfig.from_flat(new_setting).trial_key != "315091989f383beb", new_setting


def test_set_makes_axes_and_coerces_types():
    assert parse_assignment("width=2,4,8") == ("width", ["2", "4", "8"])
    assert parse_assignment("lr=0.1") == ("lr", "0.1")
    values = preset_values("taxonomy", "demo") | dict([parse_assignment("width=2,4,8")])
    axes = spec(values).axes()
    assert axes["width"] == (2, 4, 8)


def test_trial_key_ignores_seed_in_cell_key_and_data_root():
    a = TrialConfig.from_flat({"width": 4, "seed": 0, "batch_size": 32})
    b = TrialConfig.from_flat({"width": 4, "seed": 1, "batch_size": 32})
    c = TrialConfig.from_flat({"width": 4, "seed": 0, "batch_size": 32, "data_root": "/elsewhere"})
    assert a.trial_key != b.trial_key and a.cell_key == b.cell_key
    assert a.trial_key == c.trial_key
    assert TrialConfig.from_flat(a.to_flat()).trial_key == a.trial_key


@pytest.mark.parametrize(
    "override, field",
    [
        ("width=-1", "width"),
        ("widht=4", "widht"),  # unknown key, with a suggestion
        ("width=abc", "width"),  # wrong type
        ("width=2.5", "width"),
        ("batch_size=0", "batch_size"),
        ("batch_size=4096", "batch_size"),  # larger than the digits training set
        ("epochs=0", "epochs"),
        ("label_noise=1.0", "label_noise"),
        ("label_noise=-0.1", "label_noise"),
        ("data_fraction=0", "data_fraction"),
        ("data_fraction=1.5", "data_fraction"),
        ("dataset=imagenet", "dataset"),
        ("model=vgg", "model"),
        ("optimizer=lbfgs", "optimizer"),
        ("metrics=nonsense", "metrics"),
        ("width=2,2", "width"),  # duplicate axis values
        ("width=2,,4", "width"),  # empty item
        ("width=", "width"),  # empty axis
        ("width", "--set"),  # malformed --set
        ("=4", "--set"),
        ("milestones=500", "milestones"),
        ("momentum=1.5", "momentum"),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(override, field, tmp_path, capsys, figures):
    code = main("taxonomy", "", ["--storage", str(tmp_path / "out"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{field}:" in err or f"{field} " in err, err
    assert not (tmp_path / "out").exists()
    figures("bad-input", REFUSED, cases=1)


def test_unknown_key_suggests_the_close_one(capsys, tmp_path):
    main("taxonomy", "", ["--storage", str(tmp_path), "--set", "widht=4"])
    assert "did you mean 'width'" in capsys.readouterr().err


def test_unknown_preset_and_unwritable_storage_exit_2(tmp_path, capsys, figures):
    with pytest.raises(SystemExit) as exc:
        main("taxonomy", "", ["--max-concurrent", "-1"])
    assert exc.value.code == 2
    figures("bad-input", REFUSED, cases=1)
    assert main("taxonomy", "", ["--preset", "nope", "--storage", str(tmp_path)]) == 2
    assert "--preset" in capsys.readouterr().err
    figures("bad-input", REFUSED, cases=1)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")  # a file where a folder must go: unwritable even for root
    code = main("taxonomy", "", ["--storage", str(not_a_folder / "sub"), "--dry-run"])
    assert code == 0  # a dry run touches no storage
    code = main("taxonomy", "", ["--storage", str(not_a_folder / "sub")])
    assert code == 2 and "--storage" in capsys.readouterr().err
    assert not_a_folder.read_text() == ""
    figures("bad-input", REFUSED, cases=1)


def test_dry_run_reports_paper_trials_and_writes_nothing(tmp_path, capsys):
    assert main("taxonomy", "", ["--preset", "paper", "--dry-run", "--storage", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "trials: 910" in out and "width (14)" in out and "batch_size (13)" in out
    assert not (tmp_path / "x").exists()


def test_config_error_is_a_value_error_with_the_field():
    with pytest.raises(ConfigError) as exc:
        TrialConfig.from_flat({"label_noise": 2})
    assert isinstance(exc.value, ValueError) and exc.value.field == "label_noise"


@pytest.mark.parametrize("flat, message", [
    ({"label_noise": float("nan")}, "label_noise: must be a finite number, got nan"),
    ({"label_noise": 1.0}, "label_noise: must be in [0, 1), got 1.0"),
    ({"width": 0}, "width: must be a positive integer, got 0"),
    ({"swa.start": -1}, "swa.start: must be >= 0 (0: off), got -1"),
    ({"alig.max_lr": -1}, "alig.max_lr: must be > 0, got -1.0"),
    ({"precision": "bf61"}, "precision: unknown precision 'bf61'; valid: fp32, bf16; did you mean 'bf16'?"),
])
def test_bounds_declared_on_fields_name_the_key_and_what_is_allowed(flat, message, figures):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat(flat)
    assert str(info.value) == message
    figures("bad-input", REFUSED, cases=1)


def test_an_unset_optional_bound_field_is_accepted():
    assert TrialConfig.from_flat({"alig.max_lr": "none"}).alig.max_lr is None
