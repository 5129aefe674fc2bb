"""The one interface every alignment method implements.

A method sees only frozen features.  ``fit`` on paired features (with an
optional validation split for early stopping / tuning), then embed images and
texts into a shared space where ``similarity`` ranks them.  ``patch_scores``
gives per-patch class scores for zero-shot segmentation; global methods map
each patch token through their image side.

Identity: each registered class declares ``version`` (an int, bumped when the
method's numbers change); with the full config it is hashed into the run id.

Test convention: a method may define ``test_overrides: ClassVar[dict]``, config
overrides (e.g. ``{"max_epochs": 30}``) that the conformance suite
(tests/test_methods_conformance.py) applies so each method's fit on the small
synthetic data takes a few seconds.  They never affect real runs.

Shared input checks for methods: ``check_pairs`` (budget > 0, finite features,
val dims equal train dims) and ``check_dim`` (embedding inputs must have the dims
seen at fit time).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from alignbench.errors import BudgetError, ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.registry import register_method  # noqa: F401  (re-exported for method files)

log = logging.getLogger(__name__)


@dataclass
class MethodConfig:
    """Base hyperparameters; each method subclasses this with its own fields."""

    def update(self, overrides: dict[str, Any]) -> "MethodConfig":
        """Return a copy with ``overrides`` applied (strings coerced to the field type).

        Giving ``lr`` to a trained method turns its LR range test off unless
        ``lr_range_test`` is given too.
        """
        known = {f.name: f for f in fields(self)}
        types_ = _field_types(type(self))
        kw = {}
        for k, v in overrides.items():
            if k not in known:
                import difflib

                close = difflib.get_close_matches(k, list(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"{type(self).__name__} has no hyperparameter {k!r}{hint} (known: {', '.join(known)})"
                )
            kw[k] = _coerce(v, types_.get(k), k)
        if "lr" in kw and "lr_range_test" in known and "lr_range_test" not in kw:
            kw["lr_range_test"] = False  # a given lr is the lr: METHODS.md's `lr=…` turns the range test off
        cfg = dataclasses.replace(self, **kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ConfigError for impossible values; subclasses extend."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Each config field's declared type (``int | None`` …), resolved once per class."""
    return typing.get_type_hints(cls)


def _coerce(v: Any, tp: Any, name: str) -> Any:
    """``v`` (CLI text or a Python value) as a value of the field's declared type ``tp``.

    Why by the declared type and not the default's: ``eps: float | None = None``
    has no type to learn from its default, so 'abc' used to pass through as text.
    Integers must be whole (``K=2.5`` is refused, not truncated to 2 while the
    result says 2.5) and numbers finite (``lr=inf`` means nothing).
    """
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        if v is None or (isinstance(v, str) and v.strip().lower() in _NONE_WORDS):
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return v
        tp = rest[0]
    if tp is bool:
        return _as_bool(v, name)
    if tp is int:
        return _as_int(v, name)
    if tp is float:
        return _as_float(v, name)
    return v


def _as_bool(v: Any, name: str) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ConfigError(f"hyperparameter {name}={v!r}: expected true or false")


def _number(v: Any, name: str, what: str) -> float:
    """``v`` as a finite float ('1k' → 1000.0), or ConfigError saying what was expected."""
    if isinstance(v, bool):
        raise ConfigError(f"hyperparameter {name}={v!r}: expected {what}")
    if isinstance(v, (int, float)):
        x = float(v)
    else:
        text = str(v).strip()
        scale = 1000.0 if text[-1:] in ("k", "K") else 1.0
        try:
            x = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise ConfigError(f"hyperparameter {name}={v!r}: expected {what}") from None
    if not math.isfinite(x):
        raise ConfigError(f"hyperparameter {name}={v!r}: expected {what}, not {x}")
    return x


def _as_int(v: Any, name: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())  # exact, even past float precision
        except ValueError:
            pass
    x = _number(v, name, "a whole number")
    if x != int(x):
        raise ConfigError(f"hyperparameter {name}={v!r}: expected a whole number, not a fraction")
    return int(x)


def _as_float(v: Any, name: str) -> float:
    return _number(v, name, "a finite number")


class Method(ABC):
    """Base class: subclasses set ``level``, ``Config`` and implement the hooks.

    ``level`` is "global" (consumes pooled features) or "token" (consumes
    tokens with padding masks).  Everything returned is float32 on CPU unless
    ``device`` says otherwise.
    """

    level: ClassVar[Literal["global", "token"]] = "global"
    # Bumped by a method's file whenever its numbers change (a fix, a new default computed
    # differently…): the version is part of every run's identity (alignbench/identity.py),
    # so results of the old version become stale and `alignbench run` redoes them.  A change
    # in a shared base (global_head.py, cca.py's CanonicalMethod) bumps every method built on it.
    version: ClassVar[int] = 1
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    registry_name: ClassVar[str] = ""
    test_overrides: ClassVar[dict[str, Any]] = {}  # conformance-suite speed-ups only
    search_space: ClassVar[dict[str, Any]] = {}  # config field → FloatRange/IntRange/Choice, for `alignbench tune`

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        cfg = config if config is not None else self.Config()
        self.config = cfg.update(overrides) if overrides else cfg
        self.config.check()
        self.device = torch.device("cpu")
        self.fit_info: dict[str, Any] = {}  # epochs, best val loss, deviations… recorded in results

    # -- fitting --------------------------------------------------------------
    @abstractmethod
    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        """Fit on paired features; ``val`` only for early stopping / tuning."""

    # -- embedding ------------------------------------------------------------
    @abstractmethod
    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        """(N, D) image embeddings in the aligned space."""

    @abstractmethod
    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        """(N, D) text embeddings in the aligned space."""

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(Na, Nb) scores, higher = more similar. Default: cosine."""
        a = torch.nn.functional.normalize(a.float(), dim=-1)
        b = torch.nn.functional.normalize(b.float(), dim=-1)
        return a @ b.T

    def class_embeddings(self, prompts: TextFeatures, n_classes: int, n_templates: int) -> torch.Tensor:
        """(C, D) class embeddings from C×T prompt texts (class-major order).

        Each template's embedding normalised, averaged over templates,
        re-normalised (CLIP's recipe, METHODS.md).
        """
        e = torch.nn.functional.normalize(self.embed_text(prompts).float(), dim=-1)
        e = e.reshape(n_classes, n_templates, -1).mean(1)
        return torch.nn.functional.normalize(e, dim=-1)

    def patch_scores(self, f: ImageFeatures, classes: torch.Tensor) -> torch.Tensor:
        """(B, P, C) class scores per patch; default maps patches through the image side."""
        patches = f.patch_tensor(normed=True)  # B×P×d in the space of the global feature
        B, P, d = patches.shape
        flat = ImageFeatures(pooled=patches.reshape(B * P, d).numpy())
        emb = self.embed_image(flat)
        return self.similarity(emb, classes).reshape(B, P, -1)

    # -- persistence ------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce the embeddings (tensors + plain values)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...

    def num_parameters(self) -> int:
        """Trainable (or stored) parameters; reported in results."""
        return int(sum(v.numel() for v in self.state_dict().values() if isinstance(v, torch.Tensor)))

    def to(self, device: str | torch.device) -> "Method":
        self.device = torch.device(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"method": self.registry_name, "level": self.level, "config": self.config.to_dict(), **self.fit_info}


def check_pairs(train: Pairs, val: Pairs | None = None, *, tokens: bool = False) -> None:
    """Validate fitting inputs: budget > 0, finite global features, val dims = train dims.

    ``tokens=True`` also requires token features on both sides.  Raises
    BudgetError (no pairs) or FeatureError (anything unusable).
    """
    if len(train) == 0:
        raise BudgetError("no training pairs to fit on (budget 0); use a positive budget such as 1k")
    train.validate()
    if tokens:
        _ = train.images.token_dim, train.texts.token_dim  # raise FeatureError if absent
    if val is not None and len(val):
        val.validate()
        for side, a, b in (("image", train.images.dim, val.images.dim), ("text", train.texts.dim, val.texts.dim)):
            if a != b:
                raise FeatureError(f"validation {side} features are {b}-d but training ones are {a}-d")


def validation_rows(n_val: int, max_pairs: int, seed: int) -> np.ndarray:
    """The validation pairs a fit scores: all ``n_val``, or ``max_pairs`` of them drawn with ``seed + 1`` (sorted).

    Why one helper: every method that caps its validation set must draw the same
    subset for the same seed, so their validation losses compare.
    """
    if n_val <= max_pairs:
        return np.arange(n_val)
    return np.sort(np.random.default_rng(seed + 1).choice(n_val, max_pairs, replace=False))


def check_dim(f: ImageFeatures | TextFeatures, expected: int | None, side: str, *, what: str = "dim") -> None:
    """Raise FeatureError when features to embed do not have the dims seen at fit time."""
    if expected is None:
        raise FeatureError(f"the method is not fitted yet: call fit() or load_state_dict() before embedding {side}s")
    got = f.token_dim if what == "token_dim" else f.dim
    if got != expected:
        raise FeatureError(
            f"{side} features are {got}-d but the method was fitted on {expected}-d {side} features "
            "(same encoder and layer as at fit time?)"
        )


class IdentityMethod(Method):
    """Embeds features unchanged, for features that already share a space.

    Not registered (it aligns nothing); tests and benchmarks use it to exercise
    tasks without a fitted method in the way.
    """

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        pass

    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        return f.global_tensor()

    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        return f.global_tensor()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
