"""Typed, validated configuration of one trial: one frozen dataclass per part.

A trial's configuration travels through Ray as a flat dict of plain values
(`{"width": 8, "lr": 0.1, "hessian.n_samples": 1000, ...}`); `TrialConfig.from_flat`
turns it back into dataclasses in the trial's first line. Keys of the core sections
(data, model, optim, train, measure) are bare names; option sections (one per metric or
training variant) are addressed as `section.field`.

`trial_key` hashes only the sections that change the trained weights, so adding a
metric to a finished sweep re-measures stored checkpoints instead of retraining.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from workers.errors import ConfigError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Section:
    """Base of every config section; subclasses add fields and `validate`."""

    # Fields that do not change results (e.g. where data lives) and stay out of keys.
    unhashed: ClassVar[tuple[str, ...]] = ()
    # Fields added after sweeps were already stored: part of a key only when they differ
    # from their default, so the records of existing sweeps keep their keys.
    keyed_when_set: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Check values that a type alone cannot (ranges, names); raise ConfigError."""

    def check_with(self, config: TrialConfig) -> None:
        """Checks that need other sections (e.g. an epoch number against train.epochs)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The values that define results: `to_dict` without `unhashed` fields and
        without `keyed_when_set` fields at their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in self.to_dict().items()
                if k not in self.unhashed and not (k in self.keyed_when_set and v == defaults[k])}


@dataclass(frozen=True)
class SectionInfo:
    cls: type[Section]
    prefix: str | None  # None: keys are bare field names
    training: bool  # part of the trained model's identity (trial_key)


SECTIONS: dict[str, SectionInfo] = {}


def section(name: str, *, prefix: str | None = None, training: bool = True):
    """Class decorator registering a config section under `name`."""

    def add(cls: type[Section]) -> type[Section]:
        assert name not in SECTIONS, f"section {name!r} registered twice"
        SECTIONS[name] = SectionInfo(cls, prefix, training)
        return cls

    return add


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")


@section("data")
@dataclass(frozen=True)
class DataConfig(Section):
    unhashed: ClassVar[tuple[str, ...]] = ("data_root",)
    keyed_when_set: ClassVar[tuple[str, ...]] = ("augment_crop", "augment_flip")

    dataset: str = "digits"
    data_root: str = "~/.cache/landscape-sweeps/data"
    label_noise: float = 0.0  # fraction of training labels replaced by another class
    data_fraction: float = 1.0  # fraction of the training set used
    data_seed: int = 0  # fixes subset and noisy labels; the same for every model seed
    # Training-batch augmentation on the device (workers.augment); the taxonomy paper used none.
    augment_crop: int = 0  # random crops of the image zero-padded by this many pixels; 0: off
    augment_flip: bool = False  # random horizontal flips

    def validate(self) -> None:
        from workers.data import DATASETS

        DATASETS.check(self.dataset, "dataset")
        side = min(DATASETS.meta(self.dataset)["shape"][1:])
        if not 0 <= self.augment_crop < side:
            raise ConfigError("augment_crop", f"must be in [0, {side}) for {self.dataset} "
                                              f"({side}-pixel images), got {self.augment_crop!r}")
        if not 0.0 <= self.label_noise < 1.0:
            raise ConfigError("label_noise", f"must be in [0, 1), got {self.label_noise!r}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ConfigError("data_fraction", f"must be in (0, 1], got {self.data_fraction!r}")

    def n_train(self) -> int:
        """Training-set size after the data_fraction subset."""
        from workers.data import DATASETS

        return max(1, round(self.data_fraction * DATASETS.meta(self.dataset)["n_train"]))


@section("model")
@dataclass(frozen=True)
class ModelConfig(Section):
    model: str = "resnet18k"
    width: int = 64  # k: channel widths (k, 2k, 4k, 8k)
    batchnorm: bool = True  # False: BatchNorm -> Identity, convolutions get a bias
    init_scale: float = 1.0  # multiplies the starting weights of conv and linear layers
    init_from: str = ""  # local checkpoint to start from (a pretrained start); "": random

    def validate(self) -> None:
        from workers.models import MODELS

        MODELS.check(self.model, "model")
        if self.width < 1:
            raise ConfigError("width", f"must be a positive integer, got {self.width!r}")
        _positive("init_scale", self.init_scale)
        if self.init_from and not os.path.isfile(os.path.expanduser(self.init_from)):
            raise ConfigError("init_from", f"no such checkpoint file: {self.init_from!r}")

    def has_batchnorm(self) -> bool:
        """Whether the built model has BatchNorm layers (late-phase weights need them)."""
        from workers.models import MODELS

        return self.batchnorm and MODELS.meta(self.model).get("norm") == "batchnorm"


@section("optim")
@dataclass(frozen=True)
class OptimConfig(Section):
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[int, ...] = (75,)  # epochs at which the step schedule decays
    lr_factor: float = 0.1  # multiplier applied at each milestone
    # linear_decay (late-phase paper): constant, then linear down to final_lr_factor * lr;
    # fractions of the run, so the paper's 100 -> 180 of 200 epochs is 0.5 -> 0.9.
    decay_start: float = 0.5
    decay_end: float = 0.9
    final_lr_factor: float = 0.01
    warmup_epochs: int = 0  # lr ramps up linearly over these first epochs (0: no warm-up)

    def validate(self) -> None:
        from workers.optim import OPTIMIZERS, SCHEDULES

        OPTIMIZERS.check(self.optimizer, "optimizer")
        SCHEDULES.check(self.schedule, "schedule")
        _positive("lr", self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _positive("lr_factor", self.lr_factor)
        if self.schedule == "linear_decay" and not 0.0 <= self.decay_start < self.decay_end <= 1.0:
            raise ConfigError("decay_end", f"need 0 <= decay_start < decay_end <= 1 (fractions of the run), "
                              f"got {self.decay_start!r} and {self.decay_end!r}")
        _positive("final_lr_factor", self.final_lr_factor)
        if self.warmup_epochs < 0:
            raise ConfigError("warmup_epochs", f"must be >= 0, got {self.warmup_epochs!r}")

    def check_with(self, config: TrialConfig) -> None:
        if self.warmup_epochs >= config.train.epochs:
            raise ConfigError("warmup_epochs", f"{self.warmup_epochs} leaves no epoch after the warm-up "
                              f"(epochs={config.train.epochs})")


@section("adam", prefix="adam")
@dataclass(frozen=True)
class AdamConfig(Section):
    """Adam and AdamW (optimizer=adam|adamw); their own lr, so one grid can hold SGD too.
    weight_decay is shared: L2 in the gradient for adam, decoupled for adamw."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def validate(self) -> None:
        _positive("adam.lr", self.lr)
        _positive("adam.eps", self.eps)
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"adam.{name}", f"must be in [0, 1), got {getattr(self, name)!r}")


@section("alig", prefix="alig")
@dataclass(frozen=True)
class AligConfig(Section):
    """ALI-G (optimizer=alig, see workers.alig): the step size comes from the loss; lr,
    weight_decay and the schedule do not apply; `momentum` is its mu (paper: 0.9)."""

    max_lr: float | None = None  # cap on the step size; None: no cap
    max_norm: float | None = None  # radius of the l2 ball the weights are kept in; None: no constraint
    delta: float = 1e-5  # added to the squared gradient norm

    def validate(self) -> None:
        for name in ("max_lr", "max_norm"):
            if getattr(self, name) is not None:
                _positive(f"alig.{name}", getattr(self, name))
        if not self.delta >= 0:
            raise ConfigError("alig.delta", f"must be >= 0, got {self.delta!r}")


@section("train")
@dataclass(frozen=True)
class TrainConfig(Section):
    # How a model is computed, not which model: changing these keeps its trial key.
    unhashed: ClassVar[tuple[str, ...]] = ("checkpoint_every", "channels_last", "torch_compile")
    keyed_when_set: ClassVar[tuple[str, ...]] = ("precision",)
    PRECISIONS: ClassVar[tuple[str, ...]] = ("fp32", "bf16")

    epochs: int = 100
    batch_size: int = 128
    seed: int = 0
    checkpoint_every: int = 1  # epochs between resume checkpoints
    precision: str = "fp32"  # "bf16": training forward passes under bfloat16 autocast, any device
    # CUDA only (workers.fast_path); on other devices training runs eager in the default layout.
    channels_last: bool = True  # NHWC weights and images for training
    torch_compile: bool = False  # compile the training step (pays off for long trials)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be a positive integer, got {self.epochs!r}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed!r}")
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", f"must be >= 1, got {self.checkpoint_every!r}")
        if self.precision not in self.PRECISIONS:
            raise ConfigError("precision", f"unknown precision {self.precision!r}; valid: {', '.join(self.PRECISIONS)}")


@section("late_phase", prefix="late_phase")
@dataclass(frozen=True)
class LatePhaseConfig(Section):
    """Late-phase weights (von Oswald et al. 2021, see workers.late_phase): from epoch t0,
    BatchNorm layers (and the head) get k members trained round-robin; k = 0 is off."""

    k: int = 0  # members per late-phase layer (paper: 10); 0: off
    t0: int = 0  # epochs of ordinary training before the members are created (paper: 120)
    sigma0: float = 0.0  # std of Gaussian noise added to each member's copied weights
    gamma_theta: float = 1.0  # scale of the shared weights' summed gradient per cycle
    include_head: bool = True  # the classifier head gets members too (paper: yes)

    def validate(self) -> None:
        if self.k != 0 and self.k < 2:
            raise ConfigError("late_phase.k", f"needs at least 2 members (0: off), got {self.k!r}")
        if self.t0 < 0:
            raise ConfigError("late_phase.t0", f"must be >= 0, got {self.t0!r}")
        if self.sigma0 < 0:
            raise ConfigError("late_phase.sigma0", f"must be >= 0, got {self.sigma0!r}")
        _positive("late_phase.gamma_theta", self.gamma_theta)

    def check_with(self, config: TrialConfig) -> None:
        if not self.k:
            return
        if self.t0 >= config.train.epochs:
            raise ConfigError("late_phase.t0", f"{self.t0} leaves no late-phase epoch: must be below "
                              f"epochs ({config.train.epochs})")
        if not self.include_head and not config.model.has_batchnorm():
            raise ConfigError("late_phase.include_head", f"model {config.model.model!r} (batchnorm="
                              f"{config.model.batchnorm}) has no BatchNorm layer, so the head is the only "
                              "late-phase layer: set late_phase.include_head=true")


@section("swa", prefix="swa")
@dataclass(frozen=True)
class SwaConfig(Section):
    """Stochastic weight averaging (see workers.swa): the equal-weight average of the
    weights at the end of every epoch from `start`, BatchNorm statistics recomputed."""

    start: int = 0  # first epoch (1-based) whose end weights are averaged; 0: off
    lr_factor: float = 0.5  # from `start` on, lr = the optimizer's base lr * lr_factor

    def validate(self) -> None:
        if self.start < 0:
            raise ConfigError("swa.start", f"must be >= 0 (0: off), got {self.start!r}")
        _positive("swa.lr_factor", self.lr_factor)

    def check_with(self, config: TrialConfig) -> None:
        if not self.start:
            return
        if self.start > config.train.epochs:
            raise ConfigError("swa.start", f"{self.start} is after the last epoch ({config.train.epochs})")
        late = config.late_phase
        if late.k and self.start <= late.t0:
            raise ConfigError("swa.start", f"must be after late_phase.t0 ({late.t0}): the average is "
                              "taken over the late-phase model")


@section("measure", training=False)
@dataclass(frozen=True)
class MeasureConfig(Section):
    metrics: tuple[str, ...] = ()  # per-model metrics computed after training
    measure_pairs: bool = False  # seed pairs of each cell: CKA, L2, mode connectivity
    eval_batch_size: int = 1024  # chunk size for evaluation passes (memory bound)

    def validate(self) -> None:
        from workers.metrics import METRICS

        for name in self.metrics:
            METRICS.check(name, "metrics")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError("metrics", f"duplicate names in {list(self.metrics)}")
        _positive("eval_batch_size", self.eval_batch_size)


def _load_sections() -> None:
    """Import the modules that register option sections (metrics, variants)."""
    import workers.metrics  # noqa: F401  (registers metric option sections)
    import workers.pair_trial  # noqa: F401  (registers the `pairs` options)


_SCHEMA: dict[int, dict[str, tuple[str, str, Any]]] = {}


def _schema() -> dict[str, tuple[str, str, Any]]:
    """Every valid flat key -> (section, field, annotation); rebuilt when sections change."""
    _load_sections()
    if len(SECTIONS) not in _SCHEMA:
        keys: dict[str, tuple[str, str, Any]] = {}
        for name, info in SECTIONS.items():
            hints = typing.get_type_hints(info.cls)
            for f in fields(info.cls):
                key = f"{info.prefix}.{f.name}" if info.prefix else f.name
                assert key not in keys, f"config key {key!r} defined twice"
                keys[key] = (name, f.name, hints[f.name])
        _SCHEMA[len(SECTIONS)] = keys
    return _SCHEMA[len(SECTIONS)]


def list_item_types() -> dict[str, type]:
    """Record column -> item type of every list-valued key (e.g. milestones -> int), so an
    empty list is still written with its item type."""
    return {key.replace(".", "_"): typing.get_args(annotation)[0]
            for key, (_, _, annotation) in _schema().items() if typing.get_origin(annotation) is tuple}


def all_keys() -> list[str]:
    return sorted(_schema())


def coerce(key: str, annotation: Any, value: Any) -> Any:
    """Convert `value` (Python or CLI string) to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        inner = [a for a in options if a is not type(None)]
        return coerce(key, inner[0], value)
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip() != ""]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(coerce(key, item, v) for v in value)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unsupported config type {annotation!r} for {key}")
    tname = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(key, f"expected {tname}, got {value!r}")


def _suggest(key: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_key(key: str) -> tuple[str, str]:
    """Resolve a flat key to (section, field) or raise ConfigError listing valid keys."""
    schema = _schema()
    if key not in schema:
        raise ConfigError(key, f"unknown key{_suggest(key, all_keys())}; valid keys: {', '.join(all_keys())}")
    return schema[key][:2]


def key_type(key: str) -> Any:
    check_key(key)
    return _schema()[key][2]


def _digest(payload: Any, length: int) -> str:
    blob = json.dumps(payload, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def settings_hash(sec: Section) -> str:
    """Short id of one section's identity (e.g. a metric's options) for record names."""
    return _digest(sec.identity(), 8)


@dataclass(frozen=True)
class TrialConfig:
    """The fully resolved configuration of one trained model and its measurements."""

    sections: dict[str, Section] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrialConfig:
        """Build and validate from flat keys; unset keys take their defaults."""
        schema = _schema()
        grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            check_key(key)
            section_name, field_name, annotation = schema[key]
            grouped[section_name][field_name] = coerce(key, annotation, value)
        built = {name: SECTIONS[name].cls(**kw) for name, kw in grouped.items()}
        config = cls(built)
        config.validate()
        return config

    def validate(self) -> None:
        for sec in self.sections.values():
            sec.validate()
        for sec in self.sections.values():
            sec.check_with(self)
        n_train = self.data.n_train()
        if self.train.batch_size > n_train:
            raise ConfigError(
                "batch_size",
                f"{self.train.batch_size} is larger than the training set ({n_train} samples "
                f"of {self.data.dataset} at data_fraction={self.data.data_fraction})",
            )
        if self.optim.schedule == "step":
            for m in self.optim.milestones:
                if not 1 <= m <= self.train.epochs:
                    raise ConfigError(
                        "milestones", f"{m} is outside 1..epochs ({self.train.epochs})"
                    )

    def to_flat(self) -> dict[str, Any]:
        """Flat plain-value dict (tuples as lists) that `from_flat` reads back."""
        flat: dict[str, Any] = {}
        for name, sec in self.sections.items():
            prefix = SECTIONS[name].prefix
            for k, v in sec.to_dict().items():
                flat[f"{prefix}.{k}" if prefix else k] = list(v) if isinstance(v, tuple) else v
        return flat

    def record_columns(self) -> dict[str, Any]:
        """Config columns for Parquet rows: training sections and the selected metrics'
        options, with `section.field` spelled `section_field` (plain SQL identifiers);
        an unset optional number (None) is NaN, as records hold no None."""
        selected = set(self.measure.metrics)
        columns: dict[str, Any] = {}
        for name, sec in self.sections.items():
            prefix = SECTIONS[name].prefix
            if prefix and not SECTIONS[name].training and name not in selected:
                continue
            for k, v in sec.to_dict().items():
                column = f"{prefix}_{k}" if prefix else k
                columns[column] = list(v) if isinstance(v, tuple) else float("nan") if v is None else v
        return columns

    def _hash(self, include: Any) -> str:
        payload = {
            name: sec.identity() for name, sec in sorted(self.sections.items()) if include(name)
        }
        return _digest(payload, 16)

    # Cached: hashing a config costs ~0.5 ms, and a driver start-up asks each of 10,000
    # configs for its keys several times (pending trials, seed pairs, packs).
    @functools.cached_property
    def trial_key(self) -> str:
        """Stable id of the trained model: every training section, seed included."""
        return self._hash(lambda name: SECTIONS[name].training)

    @functools.cached_property
    def cell_key(self) -> str:
        """Id of the grid cell: like trial_key but without the seed."""
        sections = dict(self.sections)
        sections["train"] = dataclasses.replace(self.train, seed=0)
        return TrialConfig(sections)._hash(lambda name: SECTIONS[name].training)
