"""Lineage in the readers: a measure, pair or curve is shown only while it describes the
weights its model's trials row records (`workers.core.records.is_current`); the rest is left
out and named, with or without `--all`, and records written before lineage stay.

The folders are real record files written with the project's writers (`to_table`,
`Storage.write_table`), as trials, measures and pairs leave them."""

from __future__ import annotations

import json

import pytest

from analysis import load_sweep
from analysis.lens import spec_path
from analysis.status import format_status
from workers.catalog import TrialConfig
from workers.core.records import config_columns, measure_key, pair_key, to_table
from workers.core.storage import Storage
from workers.core.tables import compact_sweep

HESSIAN = {"metrics": ["hessian"], "measure_pairs": True}
CURVE = [{"t": t, "loss": 1.0 + t} for t in (0.0, 0.5, 1.0)]  # a few curve points


def models(n: int = 2, **options) -> list[TrialConfig]:
    """Models of seeds 0..n-1; `options` (e.g. Hessian settings) leave their trial keys as they are."""
    return [TrialConfig.from_flat({**HESSIAN, **options, "seed": seed}) for seed in range(n)]


def lineage(weights_id: str | None, column: str = "weights_id") -> dict[str, str]:
    """The lineage column of a row; None: a record written before lineage (no column)."""
    return {} if weights_id is None else {column: weights_id}


def write_trial(store: Storage, cfg: TrialConfig, weights_id: str | None) -> None:
    row = {**config_columns(cfg, "s"), "status": "ok", "error": "", "test_acc": 0.9, **lineage(weights_id)}
    store.write_table("trials", cfg.trial_key, to_table([row]))


def write_measure(store: Storage, cfg: TrialConfig, weights_id: str | None, value: float) -> str:
    """A Hessian measure (with `cfg`'s Hessian settings) and its curve, computed from
    weights `weights_id`; returns its key."""
    settings = json.dumps(cfg.sections["hessian"].identity(), sort_keys=True)
    base = {**config_columns(cfg, "s"), "metric": "hessian", "settings": settings, **lineage(weights_id)}
    key = measure_key(cfg, "hessian")
    store.write_table("curves", key, to_table([{**base, **point} for point in CURVE]))
    store.write_table("measures", key, to_table([{**base, "hessian_top_eigenvalue": value}]))
    return key


def write_pair(store: Storage, cfg_a: TrialConfig, cfg_b: TrialConfig, ids: tuple[str, str] | None) -> str:
    """A pair row with its Bezier curve, computed from weights `ids` of its two models."""
    key = pair_key(cfg_a, cfg_b, with_mc=True)
    base = {**config_columns(cfg_a, "s"), "pair_key": key, "trial_key_a": cfg_a.trial_key,
            "trial_key_b": cfg_b.trial_key, "with_mc": True,
            "settings": json.dumps(cfg_a.pairs.settings(True), sort_keys=True)}
    del base["trial_key"]
    if ids is not None:
        base |= {"weights_id_a": ids[0], "weights_id_b": ids[1]}
    store.write_table("curves", f"{key}.bezier", to_table([{**base, "kind": "bezier", **p} for p in CURVE]))
    store.write_table("pairs", key, to_table([{**base, "status": "ok", "error": "", "mc": 0.1}]))
    return key


def retrained_folder(store: Storage) -> tuple[list[TrialConfig], str]:
    """Model 0 was trained again (weights a1 -> a2) after its measure and the pair were
    computed; model 1 (weights b1) was not. Returns the models and the stale measure's key."""
    a, b = models()
    write_trial(store, a, "a2")
    write_trial(store, b, "b1")
    stale = write_measure(store, a, "a1", 5.0)
    write_measure(store, b, "b1", 7.0)
    write_pair(store, a, b, ("a1", "b1"))
    return [a, b], stale


def write_lens(store: Storage, cfgs: list[TrialConfig], measures: list[str], pairs: list[str]) -> None:
    """`spec.json` and `specs/<id>.json` as the driver writes them (`sweeps.run.driver.write_spec`)."""
    body = {"values": {"seed": [c.train.seed for c in cfgs], "metrics": [["hessian"]]}, "spec_id": "lens0"}
    records = {"trials": sorted(c.trial_key for c in cfgs), "measures": sorted(measures), "pairs": sorted(pairs)}
    store.write_bytes(spec_path("lens0"), json.dumps({**body, "records": records}).encode())
    store.write_bytes("spec.json", json.dumps(body).encode())


@pytest.mark.parametrize("compacted", [False, True])
def test_derived_records_of_weights_trained_again_are_left_out_and_named(tmp_path, capsys, compacted):
    store = Storage.open(str(tmp_path / "s"))
    (a, b), _ = retrained_folder(store)
    if compacted:  # the consolidated tables carry the lineage columns too
        compact_sweep(store)
    sweep = load_sweep(store.uri)
    assert list(sweep.measures["trial_key"]) == [b.trial_key] and sweep.pairs.empty
    eigen = dict(zip(sweep.trials["trial_key"], sweep.trials["hessian_top_eigenvalue"]))
    assert eigen[b.trial_key] == 7.0 and eigen[a.trial_key] != eigen[a.trial_key]  # NaN: not the old 5.0
    assert sweep.left_out == {"measures": 1, "pairs": 1}
    assert sweep.stale.startswith("left out 1 measure and 1 pair computed from weights that no longer exist")
    assert f"note: {sweep.stale}" in capsys.readouterr().err
    assert sweep.stale in format_status(sweep)
    assert list(sweep.curves["trial_key"]) == [b.trial_key] * len(CURVE)  # a's curve and the pair's: out
    assert "note: left out 2 curves computed from weights that no longer exist" in capsys.readouterr().err
    assert sweep.left_out == {"measures": 1, "pairs": 1, "curves": 2}
    assert sweep.stale.startswith("left out 1 measure, 1 pair and 2 curves computed")


def test_the_lens_view_leaves_out_stale_records_of_the_spec_too(tmp_path):
    store = Storage.open(str(tmp_path / "s"))
    (a, b), stale = retrained_folder(store)
    write_lens(store, [a, b], [stale, measure_key(b, "hessian")], [pair_key(a, b, with_mc=True)])
    sweep = load_sweep(store.uri)
    assert sweep.lens is not None and sweep.others == ""
    assert list(sweep.measures["trial_key"]) == [b.trial_key] and sweep.pairs.empty
    assert sweep.left_out == {"measures": 1, "pairs": 1}


def test_a_derived_record_whose_model_has_no_trials_row_is_left_out(tmp_path):
    """E.g. a damaged trials record was quarantined: its model has no current weights
    until it is trained again, so nothing measured on it is shown."""
    store = Storage.open(str(tmp_path / "s"))
    a, b = models()
    write_trial(store, b, "b1")
    write_measure(store, a, "a1", 5.0)
    write_measure(store, b, "b1", 7.0)
    write_pair(store, a, b, ("a1", "b1"))
    sweep = load_sweep(store.uri, all_specs=True)
    assert list(sweep.measures["trial_key"]) == [b.trial_key] and sweep.pairs.empty
    assert sweep.left_out == {"measures": 1, "pairs": 1}


def test_records_written_before_lineage_stay_beside_new_ones(tmp_path, capsys):
    """Models 0 and 2 and their pair were written before lineage (no lineage columns at
    all), model 1 after: read together, the missing columns are "" (not null) and every
    record is current."""
    store = Storage.open(str(tmp_path / "s"))
    a, b, c = models(3)
    for cfg in (a, c):
        write_trial(store, cfg, None)
        write_measure(store, cfg, None, 5.0)
    write_trial(store, b, "b1")
    write_measure(store, b, "b1", 7.0)
    write_pair(store, a, c, None)
    sweep = load_sweep(store.uri)
    assert len(sweep.measures) == 3 and len(sweep.pairs) == 1
    assert sorted(sweep.trials["weights_id"]) == ["", "", "b1"]
    assert sorted(sweep.measures["weights_id"]) == ["", "", "b1"]
    assert sweep.stale == "" and "left out" not in capsys.readouterr().err
    assert len(sweep.curves) == 4 * len(CURVE) and not any(sweep.left_out.values())


def test_a_legacy_measure_of_a_model_trained_with_lineage_is_not_current(tmp_path):
    """A model trained again since lineage has a `weights_id`; a measure written before
    lineage ("") cannot be of those weights."""
    store = Storage.open(str(tmp_path / "s"))
    a, _ = models()
    write_trial(store, a, "a2")
    write_measure(store, a, None, 5.0)
    sweep = load_sweep(store.uri)
    assert sweep.measures.empty and sweep.left_out == {"measures": 1, "pairs": 0}
