"""Name -> builder registries, so a sweep spec holds names and every entry can be tested.

A registry is the single place that knows which datasets, models, optimizers, schedules
and metrics exist; a typo in a spec fails with the list of valid names and a suggestion.
An entry also declares what the code around it needs to know without running it (an
optimizer's state size, a metric's cost model): the plug-in is then one file, and a
registry that `requires` a declaration refuses an entry without it when its module is
imported, instead of a sweep leaving it out later.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from workers.core.errors import ConfigError


class Registry:
    """Maps names to builders, with optional metadata per entry."""

    def __init__(self, kind: str, requires: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.requires = requires  # metadata every entry must declare
        self._builders: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register `fn` under `name` with metadata (e.g. dataset sizes)."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            assert name not in self._builders, f"{self.kind} {name!r} registered twice"
            missing = [key for key in self.requires if key not in meta]
            assert not missing, f"{self.kind} {name!r} must declare {', '.join(missing)}"
            self._builders[name] = fn
            self._meta[name] = meta
            return fn

        return add

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def names(self) -> list[str]:
        return sorted(self._builders)

    def registered(self) -> list[str]:
        """The names in the order they were registered (where order matters, e.g. the
        columns of a record)."""
        return list(self._builders)

    def check(self, name: str, field: str | None = None) -> None:
        """Raise a ConfigError naming the field, the valid names and the closest match."""
        if name in self._builders:
            return
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            field or self.kind, f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}{hint}"
        )

    def get(self, name: str) -> Callable[..., Any]:
        self.check(name)
        return self._builders[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.check(name)
        return self._meta[name]
