"""User-facing errors: each says what was wrong and what to do instead.

The CLI prints ``AlignbenchError`` messages without a traceback; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations


class AlignbenchError(Exception):
    """Base class for errors caused by the user's input or data."""


class UnknownNameError(AlignbenchError, KeyError):
    """An unknown method/task/encoder/dataset name, with "did you mean"."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]):
        self.kind, self.name, self.suggestions, self.known = kind, name, suggestions, known
        msg = f"unknown {kind} {name!r}"
        if suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in suggestions)}?"
        if known:
            msg += f" (known {kind}s: {', '.join(known)})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would add quotes
        return self.args[0]


class BudgetError(AlignbenchError, ValueError):
    """A paired-data budget that cannot be met or parsed."""


class DataError(AlignbenchError):
    """Missing, unreadable or malformed data (names the file)."""


class MalformedDataError(DataError):
    """A data file that is present but broken (names the file and line): not "missing"."""


class FeatureError(AlignbenchError, ValueError):
    """Features that cannot be used: NaN/inf, wrong shapes, mismatched dims."""


class ConfigError(AlignbenchError, ValueError):
    """A bad option value, layer index, hyperparameter or profile key."""


class TrainingDivergedError(AlignbenchError, RuntimeError):
    """Training produced a non-finite loss."""


class PluginError(AlignbenchError):
    """A plug-in (entry point) or dataset card that cannot be used: failed import, taken name."""


class DiskFullError(AlignbenchError):
    """No space left to write the cache or results (names the folder and the space needed)."""
