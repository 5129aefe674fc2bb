"""Typed run configuration: budgets, method specs with overrides, the RunSpec as typed.

A RunSpec is what the user asked for; alignbench.identity resolves it once
into a ResolvedRun whose ``run_id``/``fit_id`` hash what will actually run
(equivalent spellings give one id; a changed default gives a new one).  The
spec's own hash, ``spec_key``, only names bookkeeping that exists before
resolution: sweep ledgers and failure records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from alignbench.errors import BudgetError, ConfigError

DEFAULT_PAIR = "effnet-lite0+minilm-l6"
OFFLINE_PAIRS = ("effnet-lite0+minilm-l6", "dinov2-s14+minilm-l6")
MAX = "max"

_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_budget(text: str | int) -> int | str:
    """'1k' → 1000, '2.5k' → 2500, '10000' → 10000, 'max' → 'max'.

    Raises BudgetError for anything else, zero or negative budgets.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip()
        if s.lower() == MAX:
            return MAX
        m = _BUDGET_RE.match(s)
        if not m:
            raise BudgetError(
                f"cannot read budget {s!r}: use a pair count such as 1000, 1k, 2.5k, 10k or 'max'"
            )
        num, unit = float(m.group(1)), m.group(2).lower()
        value_f = num * {"": 1, "k": 1_000, "m": 1_000_000}[unit]
        if value_f != int(value_f):
            raise BudgetError(f"budget {s!r} is not a whole number of pairs")
        value = int(value_f)
    if value <= 0:
        raise BudgetError(f"budget must be a positive number of pairs, got {value}")
    return value


def parse_budgets(text: str | list) -> list[int | str]:
    items = text if isinstance(text, list) else [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise BudgetError("no budget given")
    return [parse_budget(t) for t in items]


def resolve_budget(budget: int | str, available: int) -> int:
    """Turn 'max' into the number of available pairs; refuse budgets above it."""
    if budget == MAX:
        return available
    if budget > available:  # type: ignore[operator]
        raise BudgetError(
            f"budget {budget} pairs is more than the {available} pairs available in the training split; "
            f"use --budget max or at most {available}"
        )
    return int(budget)  # type: ignore[arg-type]


def split_list(text: str | list | None) -> list[str]:
    if text is None:
        return []
    if isinstance(text, list):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text).split(",") if t.strip()]


_SEED_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_seeds(text: str | list | int) -> list[int]:
    """'0,1,2' or '0-4' (or a mix) → the seeds in order, each once; ConfigError for anything else.

    Seeds are non-negative (numpy's generators refuse negative ones, which used
    to surface only when the first fit started)."""
    items = [str(text)] if isinstance(text, int) and not isinstance(text, bool) else split_list(text)
    out: list[int] = []
    for t in items:
        m = _SEED_RE.match(t)
        if not m:
            why = "seeds are >= 0" if t.lstrip().startswith("-") and t.strip()[1:].isdigit() else "cannot read it"
            raise ConfigError(f"bad seed {t!r} ({why}): use integers >= 0 such as 0,1,2 or a range such as 0-4")
        a, b = int(m.group(1)), int(m.group(2)) if m.group(2) is not None else None
        if b is not None and b < a:
            raise ConfigError(f"bad seed range {t!r}: the end is below the start (e.g. 0-4)")
        out.extend(s for s in (range(a, b + 1) if b is not None else [a]) if s not in out)
    return out


def parse_method_spec(text: str) -> tuple[str, dict[str, str]]:
    """'pal:K=128:tau_p=0.05' or 'pal:K=128,tau_p=0.05' → ('pal', {'K': '128', 'tau_p': '0.05'})."""
    name, _, rest = text.partition(":")
    overrides: dict[str, str] = {}
    for item in re.split(r"[:;]", rest) if rest else []:
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"method option {item!r} in {text!r} is not KEY=VALUE (e.g. pal:K=128)")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    return name.strip(), overrides


TUNED = "tuned"


def split_tuned(text: str) -> tuple[str, bool]:
    """'pal:center=both:tuned' → ('pal:center=both', True): ``:tuned`` asks for the best tuned config."""
    parts = text.split(":")
    rest = [p for p in parts[1:] if p.strip() != TUNED]
    return ":".join([parts[0], *rest]), len(rest) < len(parts) - 1


def split_methods(text: str | list) -> list[str]:
    """Split '--methods pal:K=128,asif,csa' at commas that start a new method.

    A comma followed by KEY=VALUE continues the previous method's options
    ('pal:K=128,tau_p=0.05,asif' → ['pal:K=128:tau_p=0.05', 'asif']).
    """
    if isinstance(text, list):
        return text
    out: list[str] = []
    for tok in [t.strip() for t in str(text).split(",") if t.strip()]:
        if "=" in tok and ":" not in tok and out:
            out[-1] = f"{out[-1]}:{tok}"
        else:
            out.append(tok)
    return out


@dataclass(frozen=True)
class EncoderOptions:
    """Options that change the vectors (part of the feature-cache key)."""

    image_layer: int | None = None
    text_layer: int | None = None
    dtype: str = "fp32"


@dataclass
class RunSpec:
    """Everything that determines one run's numbers."""

    method: str
    pair: str = DEFAULT_PAIR
    budget: int | str = 10_000
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)
    train: str = "flickr8k:train"
    val: str | None = "flickr8k:dev"
    evals: tuple[str, ...] = (
        "retrieval:flickr8k:test",
        "classification:cifar10:test",
        "classification:fashion-mnist:test",
        "segmentation:camvid:test",
    )
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    # ``:tuned`` runs: the study whose best trial gave method_options (alignbench.studies.TunedConfig.record)
    tuned: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["evals"] = list(self.evals)
        if d["tuned"] is None:  # untuned specs keep the ids they had before tuning existed
            d.pop("tuned")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        d = dict(d)
        d["evals"] = tuple(d.get("evals", ()))
        d["encoder"] = EncoderOptions(**d.get("encoder", {}))
        return cls(**d)

    @property
    def run_id(self) -> str:
        """Alias of :attr:`spec_key` (sweep ledgers key runs by it); a result's id is ``ResolvedRun.run_id``."""
        return self.spec_key

    @property
    def spec_key(self) -> str:
        """Stable hash of the spec as typed; readable prefix.  Not the run's identity (see alignbench.identity)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        h = hashlib.sha256(blob.encode()).hexdigest()[:12]
        opts = "".join(f"-{k}{v}" for k, v in sorted(self.method_options.items()))
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{self.method}{opts}-{self.pair}-b{self.budget}-s{self.seed}")
        return f"{safe}-{h}"
