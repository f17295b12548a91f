"""The fast start-up path (`SweepSpec.trials` building each distinct section once, keys
joined from cached per-section JSON) gives the keys and errors of the straightforward
computation: grid point by grid point, every section built, validated and hashed anew."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections import defaultdict
from typing import Any

import pytest

from sweeps.run.pairs import plan_pairs
from sweeps.run.spec import SweepSpec
from workers.catalog import TrialConfig
from workers.core.config import SECTIONS, Section, check_key, coerce, key_type
from workers.core.errors import ConfigError
from workers.core.records import measure_key

# Grids that vary training sections of every kind (bare and prefixed keys, optional
# numbers, keyed-when-set and unhashed fields, tuples, several metrics, several
# mode-connectivity pairs per cell, seeds given out of order).
GRIDS: list[dict[str, Any]] = [
    {"dataset": "digits", "width": [1, 2, 3], "batch_size": [16, 32], "lr": [0.05, 0.1], "seed": [0, 1, 2],
     "epochs": 4, "milestones": [2, 3], "metrics": ["hessian", "interpolation"], "measure_pairs": True,
     "pairs.mc_pairs": 2, "hessian.n_samples": 64},
    {"dataset": "digits", "width": 2, "seed": [3, 1, 2], "epochs": 3, "milestones": [], "precision": ["fp32", "bf16"],
     "augment_crop": [0, 1], "augment_flip": [False, True], "data_root": "/x", "metrics": ["surface"],
     "measure_pairs": True, "pairs.bezier_lr": 0.01, "alig.max_lr": [None, 1.0], "label_noise": [0.0, 0.2]},
    {"dataset": "digits", "width": [4, 2], "seed": [0, 1], "epochs": 6, "milestones": [3], "late_phase.k": [0, 3],
     "late_phase.t0": 2, "swa.start": [0, 5], "optimizer": ["sgd", "adam"], "adam.lr": [0.001, 0.01],
     "weight_decay": [0, 5e-4], "checkpoint_every": 2, "metrics": [], "measure_pairs": True},
]
# SHA-256 of the keys of GRIDS (trial, cell, measure and pair keys, in order) as the code
# before the fast path computed them: stored sweeps are found under these names.
KEYS_BEFORE_FAST_PATH = "3f857201a52136ca51fe739abfbd943b527e58cd89da32686ee0539c57d398ff"


def spec(values: dict[str, Any]) -> SweepSpec:
    return SweepSpec(study="taxonomy", preset="demo", name="t", storage="unused", values=values)


def reference_identity(sec: Section) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(sec)}
    return {k: v for k, v in dataclasses.asdict(sec).items()
            if k not in sec.unhashed and not (k in sec.keyed_when_set and v == defaults[k])}


def reference_digest(payload: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:length]


def reference_sections(flat: dict[str, Any]) -> dict[str, Section]:
    """Every section built and validated anew from one grid point's flat values."""
    grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        name, field_name = check_key(key)
        grouped[name][field_name] = coerce(key, key_type(key), value)
    sections = {name: SECTIONS[name].cls(**kw) for name, kw in grouped.items()}
    for sec in sections.values():
        sec.validate()
    return sections


def reference_hash(sections: dict[str, Section]) -> str:
    return reference_digest({name: reference_identity(sec) for name, sec in sorted(sections.items())
                             if SECTIONS[name].training}, 16)


def reference_keys(values: dict[str, Any]) -> list[list[str]]:
    """Trial, cell, measure and pair keys of a grid, the straightforward way."""
    grid = spec(values).grid()
    keys = sorted(grid, key=lambda k: k == "seed")
    points = [reference_sections(dict(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]
    trial = [reference_hash(s) for s in points]
    cell = [reference_hash({**s, "train": dataclasses.replace(s["train"], seed=0)}) for s in points]
    measure = [f"{t}.{m}-{reference_digest(reference_identity(s[m]), 8)}"
               for t, s in zip(trial, points) for m in s["measure"].metrics]
    cells: dict[str, list[tuple[int, dict[str, Section]]]] = defaultdict(list)
    for c, s in zip(cell, points):
        if s["measure"].measure_pairs:
            cells[c].append((s["train"].seed, s))
    pairs = []
    for c, members in cells.items():
        members.sort(key=lambda m: m[0])
        for i, ((seed_a, a), (seed_b, _)) in enumerate(itertools.combinations(members, 2)):
            with_mc = i < a["pairs"].mc_pairs
            settings = {k: v for k, v in reference_identity(a["pairs"]).items()
                        if with_mc or not k.startswith("bezier_")}
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
            pairs.append(f"{c}.s{seed_a}-s{seed_b}.{'mc' if with_mc else 'sim'}-{digest}")
    return [trial, cell, measure, pairs]


def fast_keys(values: dict[str, Any]) -> list[list[str]]:
    configs = spec(values).trials()
    return [[c.trial_key for c in configs], [c.cell_key for c in configs],
            [measure_key(c, m) for c in configs for m in c.measure.metrics], [p.key for p in plan_pairs(configs)]]


@pytest.mark.parametrize("values", GRIDS)
def test_the_fast_path_gives_the_keys_of_the_straightforward_computation(values):
    assert fast_keys(values) == reference_keys(values)


def test_the_keys_are_those_computed_before_the_fast_path():
    keys = [reference_keys(values) for values in GRIDS]
    assert keys == [fast_keys(values) for values in GRIDS]
    assert hashlib.sha256(json.dumps(keys).encode()).hexdigest() == KEYS_BEFORE_FAST_PATH


@pytest.mark.parametrize("values", GRIDS)
def test_the_configs_equal_those_from_flat_values(values):
    configs = spec(values).trials()
    grid = spec(values).grid()
    keys = sorted(grid, key=lambda k: k == "seed")
    for cfg, combo in zip(configs, itertools.product(*(grid[k] for k in keys)), strict=True):
        again = TrialConfig.from_flat(dict(zip(keys, combo)))
        assert cfg.sections == again.sections and list(cfg.sections) == list(again.sections)
        assert cfg.to_flat() == again.to_flat() and repr(cfg.record_columns()) == repr(again.record_columns())


def test_shared_sections_are_built_once_per_distinct_value():
    configs = spec(GRIDS[0]).trials()
    assert len({id(c.data) for c in configs}) == 1  # one data section for the whole grid
    assert len({id(c.train) for c in configs}) == 2 * 3  # batch size x seed
    assert all(c.measure.metrics == ("hessian", "interpolation") for c in configs)


def test_values_equal_under_eq_but_not_in_json_are_kept_apart():
    """0.0 == -0.0 and 1 == True, but their JSON (so their keys) differ."""
    positive, negative = TrialConfig.from_flat({"weight_decay": 0.0}), TrialConfig.from_flat({"weight_decay": -0.0})
    assert negative.optim.weight_decay == 0.0 and str(negative.optim.weight_decay) == "-0.0"
    assert positive.trial_key != negative.trial_key
    for cfg in (positive, negative):
        assert cfg.trial_key == reference_hash(cfg.sections)


def test_to_dict_and_identity_equal_the_dataclass_versions_for_every_section():
    cfg = TrialConfig.from_flat({"precision": "bf16", "augment_flip": True, "milestones": "3,5"})
    for sec in cfg.sections.values():
        assert sec.to_dict() == dataclasses.asdict(sec)
        assert sec.identity() == reference_identity(sec)
        sec.identity()["mutated"] = 1  # a caller's copy: the cached identity is untouched
        assert "mutated" not in sec.identity()


@pytest.mark.parametrize("bad, message", [
    ({"width": [2, 0, 4]}, "width: must be a positive integer, got 0"),
    ({"batch_size": [32, 4096]}, "batch_size: 4096 is larger than the training set"),
    ({"epochs": [9, 2], "milestones": [5]}, "milestones: 5 is outside 1..epochs (2)"),
    ({"width": [2, 0], "label_noise": [0.1, 1.0]}, "label_noise: must be in [0, 1), got 1.0"),
    ({"width": [2, 0], "epochs": [9, 2]}, "milestones: 5 is outside 1..epochs (2)"),  # a point before width=0
    ({"width": [0, 2], "epochs": [9, 2]}, "width: must be a positive integer, got 0"),
    ({"width": [0, 2], "label_noise": [1.0, 0.1]}, "label_noise: must be in [0, 1), got 1.0"),  # data before model
    ({"swa.start": [0, 20], "epochs": 10, "milestones": [5]}, "swa.start: 20 is after the last epoch (10)"),
])
def test_a_bad_grid_fails_with_the_error_of_its_first_bad_point(bad, message):
    values = {"dataset": "digits", "seed": [0, 1], "epochs": 9, "milestones": [5], **bad}
    grid = spec(values).grid()
    keys = sorted(grid, key=lambda k: k == "seed")
    expected = None
    for combo in itertools.product(*(grid[k] for k in keys)):
        try:
            sections = reference_sections(dict(zip(keys, combo)))
            for sec in sections.values():
                sec.check_with(TrialConfig(sections))
        except ConfigError as exc:
            expected = str(exc)
            break
    assert expected is not None and expected.startswith(message), expected
    with pytest.raises(ConfigError) as info:
        spec(values).trials()
    assert str(info.value) == expected


@pytest.mark.parametrize("values", GRIDS)
def test_pack_signatures_are_those_of_the_straightforward_computation(values):
    from workers.packing.policy import PER_MEMBER, _signature, signature

    own = {check_key(key) for key in PER_MEMBER}
    shared_json: dict[int, str] = {}
    for cfg in spec(values).trials():
        shared = {name: {k: v for k, v in dataclasses.asdict(sec).items() if (name, k) not in own}
                  for name, sec in sorted(cfg.sections.items()) if SECTIONS[name].training}
        assert signature(cfg) == _signature(cfg, shared_json) == reference_digest(shared, 16)


def test_the_start_up_bench_plans_nothing_on_its_complete_sweep_and_prints_its_line(tmp_path, capsys):
    """`bench/startup.py` at 100 models: the folder it builds is complete for the driver
    (the first rerun plans nothing and compacts), it is reused, and the line is printed."""
    from bench.startup import run

    figures = run(folder=tmp_path, models=100)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("start-up: "))
    assert re.fullmatch(r"start-up: \d+\.\d\d s to plan a rerun of 100 models with nothing to do", line), line
    assert figures["headline"] == line and figures["folder"].startswith("built in ")
    assert figures["startup_s"] > 0 and figures["expansion_s"] > 0 and figures["listing_s"] > 0
    assert run(folder=tmp_path, models=100)["folder"] == "reused"
