"""A sweep spec: a preset's values plus the user's overrides, validated before Ray starts.

Every key of a trial config can be set; a list of values for a scalar key makes it an
axis of the grid (`width=[2, 4, 8]`), and the grid is the product of all axes. The spec
expands to one `TrialConfig` per grid point and validates every one of them, so a typo
or an impossible value fails in seconds with the key named, before anything is written.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import operator
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from workers.catalog import TrialConfig
from workers.core.config import SECTIONS, Section, build_section, check_key, coerce, key_type
from workers.core.errors import ConfigError

# Axes are shown and ordered like this; other keys that vary follow in spec order.
AXIS_ORDER = ("width", "batch_size", "lr", "weight_decay", "label_noise", "data_fraction", "seed")


def is_tuple_key(key: str) -> bool:
    """Keys whose single value is itself a list (metrics, milestones): never axes."""
    return typing.get_origin(key_type(key)) is tuple


def describe(flat: dict[str, Any], axes: list[str]) -> str:
    """`width=8 batch_size=32 seed=0`: a trial's position on the grid, for log lines."""
    return " ".join(f"{k}={flat[k]}" for k in axes)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one `--set key=value`; a comma in the value makes a list."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ConfigError("--set", f"expected key=value (e.g. width=2,4,8), got {text!r}")
    check_key(key)
    if is_tuple_key(key):  # a list-valued key; an empty value is the empty list
        return key, value.strip("[]")
    if not value:
        raise ConfigError(key, "empty value; give a value or a comma-separated list")
    parts = [p.strip() for p in value.strip("[]").split(",")]
    if any(p == "" for p in parts):
        raise ConfigError(key, f"empty item in list {value!r}")
    return key, parts if len(parts) > 1 else parts[0]


def resolve_axis(key: str, value: Any) -> tuple[Any, ...]:
    """The values a key takes in the grid, coerced and checked (non-empty, distinct)."""
    check_key(key)
    annotation = key_type(key)
    if is_tuple_key(key):
        return (coerce(key, annotation, value),)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(key, "empty axis; give at least one value")
    coerced = tuple(coerce(key, annotation, v) for v in values)
    duplicates = sorted({v for v in coerced if coerced.count(v) > 1}, key=str)
    if duplicates:
        raise ConfigError(key, f"duplicate axis values {duplicates}")
    return coerced


def _picker(positions: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """The values at `positions` of a grid point, as a tuple."""
    if len(positions) >= 2:
        return operator.itemgetter(*positions)  # returns a tuple for two positions or more
    if len(positions) == 1:
        i = positions[0]
        return lambda point: (point[i],)
    return lambda point: ()


@dataclass(frozen=True)
class SweepSpec:
    """A named grid of trials stored under `storage/name`."""

    study: str
    preset: str
    name: str
    storage: str
    values: dict[str, Any]  # key -> value or list of values, preset merged with overrides
    refine: dict[str, Any] | None = None  # a refined sweep's settings (sweeps.run.growth): its cells are a subset

    def grid(self) -> dict[str, tuple[Any, ...]]:
        """Every key with its resolved values, axes (more than one value) first."""
        resolved = {key: resolve_axis(key, value) for key, value in self.values.items()}
        axes = [k for k in AXIS_ORDER if k in resolved and len(resolved[k]) > 1]
        axes += [k for k in resolved if len(resolved[k]) > 1 and k not in axes]
        return {**{k: resolved[k] for k in axes}, **{k: v for k, v in resolved.items() if k not in axes}}

    def axes(self) -> dict[str, tuple[Any, ...]]:
        return {k: v for k, v in self.grid().items() if len(v) > 1}

    def trials(self) -> list[TrialConfig]:
        """One validated config per grid point, in grid order (seed varies fastest).

        The same configs, checks and errors as `TrialConfig.from_flat` on each grid
        point, at a fraction of the cost: the grid's values are coerced once
        (`resolve_axis`), each distinct value of a section is built and validated once
        (`build_section`) and shared by the configs that hold it, so per grid point only
        the checks across sections run. Sections are checked in section order within the
        first grid point that has a bad value, as `from_flat` would: the same error.
        """
        with collector_paused():
            return self._expand(self.grid())

    def _expand(self, grid: dict[str, tuple[Any, ...]]) -> list[TrialConfig]:
        keys = sorted(grid, key=lambda k: k == "seed")
        owner = [check_key(key) for key in keys]  # (section, field) of each key
        built: dict[str, dict[tuple[Any, ...], Section]] = {name: {} for name in SECTIONS}
        # section -> what picks its values out of a grid point (a tuple, the key of
        # `built`), and the fields those values set
        layout: dict[str, tuple[Callable[[tuple[Any, ...]], tuple[Any, ...]], tuple[str, ...]]] = {}
        varying = []  # sections with an axis: the only ones that differ between grid points
        for name in SECTIONS:
            positions = [i for i, (section_name, _) in enumerate(owner) if section_name == name]
            layout[name] = (_picker(positions), tuple(owner[i][1] for i in positions))
            if any(len(grid[keys[i]]) > 1 for i in positions):
                varying.append(name)

        def section_at(name: str, point: tuple[Any, ...]) -> Section:
            pick, field_names = layout[name]
            values = pick(point)
            sec = built[name].get(values)
            if sec is None:
                sec = built[name][values] = build_section(name, dict(zip(field_names, values)))
            return sec

        configs: list[TrialConfig] = []
        for point in itertools.product(*(grid[k] for k in keys)):
            if configs:  # only the varying sections differ from the first point's
                sections = dict(configs[0].sections)
                for name in varying:
                    sections[name] = section_at(name, point)
            else:
                sections = {name: section_at(name, point) for name in SECTIONS}
            config = TrialConfig(sections)
            config.check_across()
            configs.append(config)
        keys_seen = {c.trial_key for c in configs}
        assert len(keys_seen) == len(configs), "two grid points hash to the same trial"
        return configs

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "preset": self.preset,
            "name": self.name,
            "storage": self.storage,
            "values": {k: list(v) for k, v in self.grid().items()},
            **({"refine": self.refine} if self.refine else {}),
        }


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a start-up's allocations.

    Expanding a grid, and the driver's settling and planning after it, allocate every
    config, record name and plan entry at once, and keep them: the collector finds no
    garbage among them, yet the allocations trigger full passes over the whole heap
    (0.1-0.15 s each at 10,000 models). It runs as usual afterwards (nested: when the
    outermost block ends)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
