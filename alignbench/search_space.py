"""Hyperparameter search spaces that methods declare in their own files (``search_space``).

Why here and light: method modules import these small typed ranges at import
time, while optuna (heavy) is imported only when ``alignbench tune`` samples
from them (``suggest``).  A space maps a config field to a range; every name
must be a field of the method's config (checked by ``space_for``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, Union

from alignbench.errors import ConfigError


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"float[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def describe(self) -> str:
        return f"int[{self.low}, {self.high}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Choice:
    values: tuple

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


Param = Union[FloatRange, IntRange, Choice]


def suggest(trial: Any, name: str, param: Param) -> Any:
    """One value of ``param`` from an optuna trial."""
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, log=param.log)
    return trial.suggest_categorical(name, list(param.values))


def describe_space(space: dict[str, Param]) -> dict[str, str]:
    """Plain, stable text of a space (stored with a study, compared on resume)."""
    return {name: p.describe() for name, p in space.items()}


def space_for(method: str, only: list[str] | None = None, fixed: dict[str, Any] | None = None) -> dict[str, Param]:
    """The search space of registered ``method``, limited to ``only`` and without ``fixed`` options.

    Raises ConfigError (with "did you mean") for a method without a space, a
    space naming a field its config lacks, or a name in ``only`` that is not
    in the space.
    """
    from alignbench.registry import METHODS

    cls = METHODS.get(method)
    space = dict(getattr(cls, "search_space", {}) or {})
    if not space:
        with_space = [n for n in METHODS.names() if getattr(METHODS.get(n), "search_space", None)]
        close = difflib.get_close_matches(method, with_space, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"method {method!r} declares no search space, so it cannot be tuned{hint} "
                          f"(methods with one: {', '.join(with_space)})")
    known = {f.name for f in fields(cls.Config)}
    for name in space:
        if name not in known:
            raise ConfigError(f"{cls.__name__}.search_space names {name!r}, which is not a {cls.Config.__name__} field")
    if only:
        for name in only:
            if name not in space:
                close = difflib.get_close_matches(name, list(space), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{method} has no search parameter {name!r}{hint} (its space: {', '.join(space)})")
        space = {k: v for k, v in space.items() if k in only}
    return {k: v for k, v in space.items() if k not in (fixed or {})}
