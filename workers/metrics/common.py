"""What the landscape metrics share: fixed data subsets, parameter groups, curve rows.

Every metric evaluates on a seeded subset of a split (so two models of a sweep are
measured on the same samples), may restrict itself to groups of parameters (a layer, a
stage), and writes long-format rows to the `curves` table. Keeping these in one place
means a group called `stages.1` or a train subset of seed 0 means the same thing in the
Hessian, the interpolation and the surface records.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from workers.base.footprint import model_footprint
from workers.core.config import TrialConfig
from workers.core.errors import ConfigError
from workers.training.train import evaluate

if TYPE_CHECKING:
    from workers.base.data import Splits

NAN = float("nan")

# Group keywords: automatic partitions of a model's parameters (see `parameter_groups`).
GROUPINGS = ("module", "stage", "block")


# ---------------------------------------------------------------- data subsets


def fixed_subset(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` samples (all of them if the split is smaller), chosen by `seed` alone.

    The choice depends only on the split's length and the seed, so every model of a
    sweep is measured on the same samples.
    """
    if size >= len(y):
        return x, y
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=generator)[:size].sort().values.to(x.device)
    return x[idx], y[idx]


@dataclass(frozen=True)
class EvalSets:
    """The fixed train and test subsets on which a metric evaluates its points."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    chunk: int  # samples per forward pass

    @classmethod
    def from_splits(cls, splits: Splits, size: int, seed: int, chunk: int) -> EvalSets:
        return cls(*fixed_subset(splits.x_train, splits.y_train, size, seed),
                   *fixed_subset(splits.x_test, splits.y_test, size, seed), chunk)

    def evaluate(self, model: nn.Module) -> dict[str, tuple[float, float]]:
        """split -> (mean loss, accuracy) of `model` in eval mode."""
        return {
            "train": evaluate(model, self.x_train, self.y_train, self.chunk),
            "test": evaluate(model, self.x_test, self.y_test, self.chunk),
        }


# ---------------------------------------------------------------- parameters and groups


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter, for the parameters that training changes."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _owner(name: str) -> str:
    """Module path of a parameter or buffer name (`stages.0.0.conv1.weight` -> `stages.0.0.conv1`)."""
    return name.rpartition(".")[0]


def _has_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _parts(model: nn.Module, splits: int) -> list[str]:
    """Module paths of the model's parts: its top-level children holding parameters, with
    a container whose every child holds parameters (resnet18k's `stages`, then each stage)
    split into those children, `splits` times."""
    parts = [(name, child) for name, child in model.named_children() if _has_parameters(child)]
    for _ in range(splits):
        refined = []
        for name, child in parts:
            kids = list(child.named_children())
            if isinstance(child, (nn.Sequential, nn.ModuleList)) and kids and all(
                _has_parameters(kid) for _, kid in kids
            ):
                refined += [(f"{name}.{kid_name}", kid) for kid_name, kid in kids]
            else:
                refined.append((name, child))
        parts = refined
    return [name for name, _ in parts]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def parameter_groups(model: nn.Module, specs: tuple[str, ...], field: str) -> dict[str, list[str]]:
    """Group name -> trainable parameter names, from a metric's `groups` option.

    Each entry of `specs` is a keyword or a glob pattern over parameter names:
      - `module`: one group per parameterised module (`stages.0.0.conv1`, `head`, ...);
      - `stage`: the model's top-level parts, a container of parameterised parts split
        into them (resnet18k: `stem`, `stages.0` .. `stages.3`, `head`; mlp: its layers);
      - `block`: `stage` split once more (resnet18k: `stem`, `stages.0.0`, ..., `head`);
      - anything else: a glob over parameter names, matching a module's parameters too
        (`head`, `stages.3`, `*.bn1`); one group named by the pattern.
    A pattern matching nothing is a ConfigError naming `field`, with the valid names.
    """
    names = list(trainable(model))
    groups: dict[str, list[str]] = {}
    for spec in specs:
        if spec == "module":
            for name in names:
                groups.setdefault(_owner(name) or name, []).append(name)
        elif spec in ("stage", "block"):
            for part in _parts(model, 1 if spec == "stage" else 2):
                groups[part] = [n for n in names if _within(n, part)]
        else:
            matched = [n for n in names if fnmatch.fnmatchcase(n, spec) or fnmatch.fnmatchcase(n, spec + ".*")]
            if not matched:
                modules = ", ".join(dict.fromkeys(_owner(n) for n in names))
                raise ConfigError(field, f"{spec!r} matches no trainable parameter; use one of "
                                         f"{', '.join(GROUPINGS)}, a module or a glob over parameter names. "
                                         f"Modules: {modules}")
            groups[spec] = matched
    return groups


def group_count(cfg: TrialConfig, specs: tuple[str, ...], field: str) -> int:
    """How many groups `specs` make on `cfg`'s model, for a metric's cost model: groups
    depend on parameter names only, so they are counted on its width-1 meta model."""
    if not specs:
        return 0
    return len(parameter_groups(model_footprint(cfg, width=1).net, specs, field))


def check_group_specs(specs: tuple[str, ...], field: str) -> None:
    """What can be checked before a model exists: entries are non-empty and distinct."""
    if any(not s.strip() for s in specs):
        raise ConfigError(field, f"empty group entry in {list(specs)}; use {', '.join(GROUPINGS)} or a glob")
    if len(set(specs)) != len(specs):
        raise ConfigError(field, f"duplicate entries in {list(specs)}")


def state_keys(model: nn.Module, parameter_names: list[str]) -> set[str]:
    """The state_dict entries that belong to a group of parameters: the parameters and the
    buffers of the modules that own them (a BatchNorm's running statistics move with its
    weight and bias)."""
    owners = {_owner(n) for n in parameter_names}
    buffers = {name for name, _ in model.named_buffers() if _owner(name) in owners}
    return set(parameter_names) | buffers


# ---------------------------------------------------------------- curve rows


def curve_row(kind: str, group: str, split: str, t: float, loss: float = NAN, accuracy: float = NAN,
              t2: float = NAN, **extra: Any) -> dict[str, Any]:
    """One row of the long-format `curves` table: these columns in every row (missing
    numbers NaN, never None), plus the metric's own (e.g. `trace`, `barrier`)."""
    return {"kind": kind, "group": group, "split": split, "t": float(t), "t2": float(t2),
            "loss": float(loss), "accuracy": float(accuracy), **extra}


def same_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of different kinds in one record file, given the union of their columns
    (absent numbers as NaN), so the Parquet file has one schema."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [{c: row.get(c, NAN) for c in columns} for row in rows]
