"""Configuration machinery: sections, declared bounds, coercion, flat keys, hashing.

A trial's configuration travels through Ray as a flat dict of plain values
(`{"width": 8, "lr": 0.1, "hessian.n_samples": 1000, ...}`); `TrialConfig.from_flat`
turns it back into dataclasses in the trial's first line. Keys of the core sections
(data, model, optim, train, measure) are bare names; option sections (one per metric or
training variant) are addressed as `section.field`.

This module knows no section by name. Each one is declared next to the code that reads
it (`DataConfig` in `workers.base.data`, `AligConfig` in `workers.training.alig`, the pair metrics'
options in `workers.pair_metrics`, ...) and registers itself with `@section`;
`workers.catalog` imports every plug-in and seals the schema, so configs are built
through it.

`trial_key` hashes only the sections that change the trained weights, so adding a
metric to a finished sweep re-measures stored checkpoints instead of retraining.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from workers.core.errors import ConfigError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Bounds:
    """Allowed values of one field, declared with `option` and checked by
    `Section.validate`: an interval (either end open or closed) or a list of choices.
    Comparisons are written so that NaN fails every bound."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    note: str = ""  # what a boundary value means, e.g. "0: off"

    def check(self, key: str, value: Any) -> None:
        if value is None:  # an optional field left unset
            return
        if self.choices:
            if value not in self.choices:
                name = key.rpartition(".")[2]
                raise ConfigError(key, f"unknown {name} {value!r}; valid: {', '.join(self.choices)}"
                                       f"{_suggest(str(value), list(self.choices))}")
            return
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (above and below):
            note = f" ({self.note})" if self.note else ""
            raise ConfigError(key, f"must be {self.rule(value)}{note}, got {value!r}")

    def rule(self, value: Any) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            if self.low == 1 and not self.low_open and isinstance(value, int) and not self.note:
                return "a positive integer"
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"


def option(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: Iterable[str] = (), note: str = "") -> Any:
    """A section field with its allowed values: `lr: float = option(0.1, gt=0)`."""
    bounds = Bounds(low=gt if gt is not None else ge, low_open=gt is not None,
                    high=lt if lt is not None else le, high_open=lt is not None,
                    choices=tuple(choices), note=note)
    return field(default=default, metadata={"bounds": bounds})


@dataclass(frozen=True)
class Section:
    """Base of every config section; subclasses add fields (bounds declared with
    `option`) and `check` for what bounds cannot say."""

    # Fields that do not change results (e.g. where data lives) and stay out of keys.
    unhashed: ClassVar[tuple[str, ...]] = ()
    # Fields added after sweeps were already stored: part of a key only when they differ
    # from their default, so the records of existing sweeps keep their keys.
    keyed_when_set: ClassVar[tuple[str, ...]] = ()
    prefix: ClassVar[str | None] = None  # set by @section: keys are `prefix.field`, or bare

    @classmethod
    def key(cls, name: str) -> str:
        """The flat key of field `name`, as a spec and an error message spell it."""
        return f"{cls.prefix}.{name}" if cls.prefix else name

    def validate(self) -> None:
        """Every field's declared bounds, then the section's own `check`."""
        for f in fields(self):
            if "bounds" in f.metadata:
                f.metadata["bounds"].check(self.key(f.name), getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Checks of this section's values that bounds cannot express; raise ConfigError."""

    def check_with(self, config: TrialConfig) -> None:
        """Checks that need other sections (e.g. an epoch number against train.epochs)."""

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value. Fields hold scalars and tuples of scalars (all `coerce`
        makes), so this shallow copy equals `dataclasses.asdict` at a tenth of its cost."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    def identity(self) -> dict[str, Any]:
        """The values that define results: `to_dict` without `unhashed` fields and
        without `keyed_when_set` fields at their defaults."""
        return dict(self._identity)

    # Computed once per section object: a sweep's configs share their section objects
    # (`build_section`), and a frozen dataclass's instance dict still takes these.
    @functools.cached_property
    def _identity(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in self.to_dict().items()
                if k not in self.unhashed and not (k in self.keyed_when_set and v == defaults[k])}

    @functools.cached_property
    def identity_json(self) -> str:
        """`identity()` as the JSON that keys hash (sorted keys), reused by every config
        holding this section."""
        return json.dumps(self._identity, sort_keys=True, default=list)

    @functools.cached_property
    def _settings_hash(self) -> str:
        return hashlib.sha256(self.identity_json.encode()).hexdigest()[:8]


@functools.cache
def _checks_across(cls: type[Section]) -> bool:
    return cls.check_with is not Section.check_with


@functools.cache
def _field_names(cls: type[Section]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


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
        cls.prefix = prefix
        SECTIONS[name] = SectionInfo(cls, prefix, training)
        _SCHEMA.clear()
        _KEY_LABELS.clear()
        return cls

    return add


def seal(order: Iterable[str]) -> None:
    """Called by `workers.catalog` once every plug-in has registered its section: put
    the sections in `order` (record columns follow it; sections not named keep their
    registration order after those) and allow configs to be built."""
    named = list(order)
    ordered = {name: SECTIONS[name] for name in named} | {k: v for k, v in SECTIONS.items() if k not in named}
    SECTIONS.clear()
    SECTIONS.update(ordered)
    _SCHEMA.clear()
    clash = set(SECTIONS) & set(dir(TrialConfig))
    assert not clash, f"sections named like TrialConfig attributes (cfg.<name> must be the section): {clash}"
    _SEALED.append(True)


_SEALED: list[bool] = []


_SCHEMA: dict[str, tuple[str, str, Any]] = {}  # emptied whenever a section registers


def _schema() -> dict[str, tuple[str, str, Any]]:
    """Every valid flat key -> (section, field, annotation)."""
    if not _SEALED:
        raise RuntimeError("the config schema is incomplete: import workers.catalog (which registers every "
                           "plug-in's options) before building or checking configs")
    if not _SCHEMA:
        for name, info in SECTIONS.items():
            hints = typing.get_type_hints(info.cls)
            for f in fields(info.cls):
                key = info.cls.key(f.name)
                assert key not in _SCHEMA, f"config key {key!r} defined twice"
                _SCHEMA[key] = (name, f.name, hints[f.name])
    return _SCHEMA


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
            number = float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        assert annotation is float, f"unsupported config type {annotation!r} for {key}"
        return _finite(key, number)
    tname = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(key, f"expected {tname}, got {value!r}")


def _finite(key: str, number: float) -> float:
    """Refuse inf and NaN for every float key: no option means anything by them, and a
    NaN slips through every range check written as a comparison."""
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {number!r}")
    return number


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


def settings_hash(sec: Section) -> str:
    """Short id of one section's identity (e.g. a metric's options) for record names:
    the first 8 hex digits of the SHA-256 of `identity_json`, once per section object."""
    return sec._settings_hash


# Validated sections by (section name, repr of the given field values): the configs of a
# grid repeat a few values of each section, so each distinct one is built, validated and
# hashed once (a 10,000-model grid holds ~30 distinct sections, not 130,000). The repr
# tells apart what == does not (0.0 and -0.0, 1 and True), which name different keys.
_BUILT: dict[tuple[str, str], Section] = {}


def build_section(name: str, values: dict[str, Any]) -> Section:
    """Section `name` with `values` (coerced field values; unset fields take their
    defaults), validated alone (`Section.validate`); the same object for the same values."""
    key = (name, repr(values))
    sec = _BUILT.get(key)
    if sec is None:
        sec = SECTIONS[name].cls(**values)
        sec.validate()  # raises before the section is kept: a bad value fails every time
        _BUILT[key] = sec
    return sec


@dataclass(frozen=True)
class TrialConfig:
    """The fully resolved configuration of one trained model and its measurements."""

    sections: dict[str, Section] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # `cfg.train` is then a plain attribute: the driver reads sections of 10,000
        # configs many times at start-up, and `__getattr__` (below) costs 20x more.
        self.__dict__.update(self.sections)  # no section is named like an attribute (`seal`)

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
        # Built in section order, each validated as it is built, so the first bad value
        # in section order is the one reported.
        config = cls({name: build_section(name, kw) for name, kw in grouped.items()})
        config.check_across()
        return config

    def validate(self) -> None:
        for sec in self.sections.values():
            sec.validate()
        self.check_across()

    def check_across(self) -> None:
        """Every section's `check_with` (checks that need other sections), in section
        order; `validate` without the per-section checks (`build_section` did them)."""
        for sec in self.sections.values():
            if _checks_across(type(sec)):
                sec.check_with(self)

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

    def _hash(self, sections: dict[str, Section]) -> str:
        """First 16 hex digits of the SHA-256 of `json.dumps({name: identity() of each
        training section}, sort_keys=True, default=list)`, joined from each section's
        cached `identity_json`: that dump of a dict of dicts is exactly its sorted items,
        each `"name": {...}`, joined by ", " between braces."""
        parts = [label + sections[name].identity_json for name, label in _key_labels() if name in sections]
        return hashlib.sha256(("{" + ", ".join(parts) + "}").encode()).hexdigest()[:16]

    # Cached: a driver start-up asks each of 10,000 configs for its keys several times
    # (pending trials, seed pairs, packs).
    @functools.cached_property
    def trial_key(self) -> str:
        """Stable id of the trained model: every training section, seed included."""
        return self._hash(self.sections)

    @functools.cached_property
    def cell_key(self) -> str:
        """Id of the grid cell: like trial_key but without the seed."""
        return self._hash({**self.sections, "train": _seed_zero(self.train)})


_KEY_LABELS: list[tuple[str, str]] = []  # emptied whenever a section registers


def _key_labels() -> list[tuple[str, str]]:
    """Each training section, sorted by name, with its `"name": ` in the JSON that
    `trial_key` hashes."""
    if not _KEY_LABELS:
        _KEY_LABELS.extend((name, json.dumps(name) + ": ") for name in sorted(SECTIONS) if SECTIONS[name].training)
    return _KEY_LABELS


def _seed_zero(train: Section) -> Section:
    """`train` with seed 0 (the cell's section), kept on `train` so the configs that
    share it make it once."""
    try:
        return train.__dict__["_seed_zero"]
    except KeyError:
        train.__dict__["_seed_zero"] = seedless = dataclasses.replace(train, seed=0)
        return seedless
