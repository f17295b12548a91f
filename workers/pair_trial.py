"""One pair trial: two trained models of the same cell -> mode connectivity, CKA, L2.

`run_pair` needs no Ray (the scheduler wraps it like `run_trial`). It reads both models'
`final` checkpoints from the sweep storage and writes, in this order,

    curves/<pair_key>.bezier.parquet   the Bezier curve: one row per (t, split)
    pairs/<pair_key>.parquet           one row: mc, CKA, L2, timings (marks the pair done)

A pair whose `pairs` row exists is skipped; a pair whose curve was written before a
crash reuses it instead of refitting. Which pairs to run (every unordered seed pair of
a cell; the first `pairs.mc_pairs` of them with mode connectivity) is the scheduler's
business (`sweeps.pairs`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from workers import checkpoints, pairwise
from workers.augment import Augment
from workers.config import Section, TrialConfig, section
from workers.data import Splits, prepare
from workers.errors import ConfigError
from workers.mc import curve_summary
from workers.records import config_columns, provenance, to_table
from workers.storage import Storage
from workers.trial import RunContext, new_model, seed_everything

NAN = float("nan")
PROBE_SEED = 0  # every pair of a sweep is compared on the same CKA probe inputs


@section("pairs", prefix="pairs", training=False)
@dataclass(frozen=True)
class PairConfig(Section):
    """Options of the pairwise metrics. Defaults are sized for the offline demo (digits,
    1,437 training samples): 8 epochs at lr 0.05 is 88 steps of the bend, about half the
    cost of training one demo model; 4 epochs at lr 0.01 left a 4.7-point barrier between
    two width-16 models that an 8-epoch fit brings to 0.9 and a 20-epoch fit to 0.3. The
    paper fitted 50 epochs of CIFAR-10 at lr 0.01 (`bezier_epochs=50 bezier_lr=0.01`)."""

    unhashed: ClassVar[tuple[str, ...]] = ("mc_pairs",)  # which pairs, not how

    mc_pairs: int = 1  # seed pairs per cell that get a Bezier curve (the first ones)
    bezier_epochs: int = 8
    bezier_lr: float = 0.05
    bezier_momentum: float = 0.9
    bezier_weight_decay: float = 5e-4  # penalty 0.5 * wd * ||theta(t)||^2
    bezier_batch_size: int = 128  # capped at the training-set size
    bezier_points: int = 5  # evaluated t: linspace(0, 1, points), end points included
    cka_samples: int = 768  # probe inputs from the training set (capped at its size)
    cka_mixup_alpha: float = 16.0  # lambda ~ Beta(a, a); 0: plain training samples

    def validate(self) -> None:
        for name in ("bezier_epochs", "bezier_batch_size", "cka_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pairs.{name}", f"must be a positive integer, got {getattr(self, name)!r}")
        if self.mc_pairs < 0:
            raise ConfigError("pairs.mc_pairs", f"must be >= 0, got {self.mc_pairs!r}")
        if self.bezier_points < 3:
            raise ConfigError("pairs.bezier_points", f"must be >= 3 (both end points and one inside), "
                              f"got {self.bezier_points!r}")
        if not self.bezier_lr > 0:
            raise ConfigError("pairs.bezier_lr", f"must be > 0, got {self.bezier_lr!r}")
        if not 0.0 <= self.bezier_momentum < 1.0:
            raise ConfigError("pairs.bezier_momentum", f"must be in [0, 1), got {self.bezier_momentum!r}")
        if self.bezier_weight_decay < 0:
            raise ConfigError("pairs.bezier_weight_decay", f"must be >= 0, got {self.bezier_weight_decay!r}")
        if self.cka_mixup_alpha < 0:
            raise ConfigError("pairs.cka_mixup_alpha", f"must be >= 0 (0: no mixup), got {self.cka_mixup_alpha!r}")

    def settings(self, with_mc: bool) -> dict[str, Any]:
        """The options that determine a pair's results (curve options only with mc)."""
        return {k: v for k, v in self.identity().items() if with_mc or not k.startswith("bezier_")}


def _ordered(cfg_a: TrialConfig, cfg_b: TrialConfig) -> tuple[TrialConfig, TrialConfig]:
    if cfg_a.cell_key != cfg_b.cell_key:
        raise ConfigError("pairs", f"models {cfg_a.trial_key} and {cfg_b.trial_key} are from different cells")
    if cfg_a.train.seed == cfg_b.train.seed:
        raise ConfigError("seed", f"a pair needs two different seeds, got {cfg_a.train.seed} twice")
    return (cfg_a, cfg_b) if cfg_a.train.seed < cfg_b.train.seed else (cfg_b, cfg_a)


def pair_key(cfg_a: TrialConfig, cfg_b: TrialConfig, with_mc: bool) -> str:
    """Record name of a pair: cell, both seeds (in order), kind and a hash of its options;
    the same for (a, b) and (b, a)."""
    a, b = _ordered(cfg_a, cfg_b)
    digest = hashlib.sha256(json.dumps(a.pairs.settings(with_mc), sort_keys=True).encode()).hexdigest()[:8]
    return f"{a.cell_key}.s{a.train.seed}-s{b.train.seed}.{'mc' if with_mc else 'sim'}-{digest}"


# Scalars of a pairs row; NaN when not measured (no curve, or a diverged model).
SCALARS = ("mc", "mc_loss", "mc_test", "cka_logits", "cka_softmax", "l2_distance",
           "bezier_objective", "time_bezier_s", "time_similarity_s")


def run_pair(cfg_a: TrialConfig, cfg_b: TrialConfig, with_mc: bool, ctx: RunContext) -> dict[str, Any]:
    """Measure one pair of trained models (or find it measured); returns its pairs row.

    Raises FileNotFoundError if either model has no `trials` row yet. A pair with a
    diverged model is recorded with status "diverged" and NaN metrics, so it is not
    retried.
    """
    cfg_a, cfg_b = _ordered(cfg_a, cfg_b)
    storage = Storage.open(ctx.storage)
    key = pair_key(cfg_a, cfg_b, with_mc)
    if storage.exists(f"pairs/{key}.parquet"):
        return storage.read_table("pairs", key).to_pylist()[0]
    started = time.perf_counter()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    device = ctx.resolved_device()
    base = _base_columns(cfg_a, cfg_b, with_mc, key, ctx.sweep)
    row = {**base, "status": "ok", "error": "", **dict.fromkeys(SCALARS, NAN), "curve_reused": False}

    failed = [str(c.train.seed) for c in (cfg_a, cfg_b) if _trial_status(storage, c) != "ok"]
    if failed:
        row.update(status="diverged", error=f"model(s) of seed {', '.join(failed)} did not train to the end")
    else:
        seed_everything(1_000 * cfg_a.train.seed + cfg_b.train.seed)
        splits = prepare(cfg_a.data, device)
        model_a, model_b = (_load_final(storage, c, splits, device) for c in (cfg_a, cfg_b))
        row.update(_similarity(cfg_a, model_a, model_b, splits))
        if with_mc:
            row.update(_connectivity(storage, base, cfg_a, model_a, model_b, splits))
    row["time_total_s"] = time.perf_counter() - started
    row.update(provenance(device, ctx.code_version))
    storage.write_table("pairs", key, to_table([row]))
    return row


def _base_columns(cfg_a: TrialConfig, cfg_b: TrialConfig, with_mc: bool, key: str, sweep: str) -> dict[str, Any]:
    """The cell's config columns plus the pair's identity and options."""
    base = config_columns(cfg_a, sweep)
    del base["trial_key"], base["seed"]  # per model: the pair has _a and _b versions
    options = cfg_a.pairs
    return {
        **base,
        "pair_key": key,
        "seed_a": cfg_a.train.seed,
        "seed_b": cfg_b.train.seed,
        "trial_key_a": cfg_a.trial_key,
        "trial_key_b": cfg_b.trial_key,
        "with_mc": with_mc,
        "settings": json.dumps(options.settings(with_mc), sort_keys=True),
        **{f"pairs_{k}": v for k, v in options.to_dict().items()},
    }


def _trial_status(storage: Storage, cfg: TrialConfig) -> str:
    relpath = f"trials/{cfg.trial_key}.parquet"
    if not storage.exists(relpath):
        raise FileNotFoundError(f"model {cfg.trial_key} (seed {cfg.train.seed}) is not trained yet: "
                                f"{storage.path(relpath)} is missing")
    return storage.read_table("trials", cfg.trial_key).column("status")[0].as_py()


def _load_final(storage: Storage, cfg: TrialConfig, splits: Splits, device: str) -> torch.nn.Module:
    state = checkpoints.load(storage, cfg.trial_key, "final", device)
    assert state is not None, f"trial {cfg.trial_key} is done but has no final checkpoint"
    model = new_model(cfg, splits, device)
    model.load_state_dict(state["model"])
    return model


def _similarity(cfg: TrialConfig, model_a: torch.nn.Module, model_b: torch.nn.Module, splits: Splits) -> dict[str, Any]:
    """L2 distance and CKA on probe inputs shared by both models."""
    start = time.perf_counter()
    options: PairConfig = cfg.pairs
    inputs = pairwise.mixup_inputs(splits.x_train, options.cka_samples, options.cka_mixup_alpha, PROBE_SEED)
    distance = pairwise.l2_distance(pairwise.trainable_weights(model_a), pairwise.trainable_weights(model_b))
    similarity = pairwise.output_similarity(model_a, model_b, inputs, cfg.measure.eval_batch_size)
    return {"l2_distance": distance, **similarity, "time_similarity_s": time.perf_counter() - start}


def _connectivity(
    storage: Storage, base: dict[str, Any], cfg: TrialConfig, model_a: torch.nn.Module,
    model_b: torch.nn.Module, splits: Splits,
) -> dict[str, Any]:
    """Fit and evaluate the Bezier curve (or reuse one written before a crash), write its
    points to `curves`, and summarise it as mc on training error, training loss and test
    error. `model_a` serves as the curve's module: its weights and BatchNorm statistics
    are overwritten."""
    start = time.perf_counter()
    options: PairConfig = cfg.pairs
    name = f"{base['pair_key']}.bezier"
    result: dict[str, Any] = {"curve_reused": storage.exists(f"curves/{name}.parquet")}
    if result["curve_reused"]:
        points = storage.read_table("curves", name).select(["t", "split", "loss", "acc", "err"]).to_pylist()
    else:
        w_a, w_b = pairwise.trainable_weights(model_a), pairwise.trainable_weights(model_b)
        batch_size = min(options.bezier_batch_size, len(splits.y_train))
        bend, result["bezier_objective"] = pairwise.fit_bend(
            model_a, w_a, w_b, splits.x_train, splits.y_train, epochs=options.bezier_epochs,
            lr=options.bezier_lr, momentum=options.bezier_momentum,
            weight_decay=options.bezier_weight_decay, batch_size=batch_size,
            seed=1_000 * cfg.train.seed + base["seed_b"], augment=Augment.of(cfg.data),
        )
        if not math.isfinite(result["bezier_objective"]):
            return {**result, "status": "diverged", "error": "the Bezier curve fit diverged (non-finite loss)",
                    "time_bezier_s": time.perf_counter() - start}
        ts = [i / (options.bezier_points - 1) for i in range(options.bezier_points)]
        points = pairwise.evaluate_curve(
            model_a, w_a, bend, w_b, ts,
            {"train": (splits.x_train, splits.y_train), "test": (splits.x_test, splits.y_test)},
            x_bn=splits.x_train, bn_batch_size=batch_size, chunk=cfg.measure.eval_batch_size,
        )
        storage.write_table("curves", name, to_table([{**base, "kind": "bezier", "group": "", **p} for p in points]))
    return {**result, **curve_summary(points), "time_bezier_s": time.perf_counter() - start}
