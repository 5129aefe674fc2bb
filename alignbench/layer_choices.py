"""Stored layer choices: what ``alignbench layers`` found, read back by ``run --image-layer best``.

Why stored: the mutual k-NN search encodes every layer of a training split,
which takes long on real encoders; a run only needs its outcome.  One JSON per
(encoder pair, training split, sample size n) lives under the feature cache
(``<cache>/layer-choices/``), beside the features it was computed from.  The
score table is kept whole, so "best image layer for a fixed text layer" is
answered from it as well.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.errors import ConfigError

log = logging.getLogger(__name__)

CHOICES_DIR = "layer-choices"
BEST = "best"


def _stem(pair: tuple[str, str], train: tuple[str, str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{pair[0]}+{pair[1]}-{train[0]}-{train[1]}")


def choice_path(root: str | Path, pair: tuple[str, str], train: tuple[str, str], n: int) -> Path:
    """``<root>/layer-choices/<vision>+<text>-<dataset>-<split>-n<n>.json`` (canonical encoder names)."""
    return Path(root) / CHOICES_DIR / f"{_stem(pair, train)}-n{int(n)}.json"


def save_choice(root: str | Path, pair: tuple[str, str], train: tuple[str, str], n: int, choice: Any,
                **extra: Any) -> Path:
    """Write a :class:`~alignbench.layer_selection.LayerChoice` for (pair, train split, requested n)."""
    from alignbench.atomic import write_json_atomic

    record = {"pair": f"{pair[0]}+{pair[1]}", "train": f"{train[0]}:{train[1]}", "n_requested": int(n),
              **choice.to_dict(), **extra}
    path = choice_path(root, pair, train, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, record)


@dataclass(frozen=True)
class StoredChoice:
    """A stored search: its score table (rows: image layers) and where it came from."""

    path: Path
    record: dict

    @property
    def image_layers(self) -> list[int]:
        return [int(v) for v in self.record["image_layers"]]

    @property
    def text_layers(self) -> list[int]:
        return [int(v) for v in self.record["text_layers"]]

    def best(self, image: int | None = None, text: int | None = None) -> tuple[int, int, float]:
        """Best (image, text, score), optionally with one side fixed; ties go to the later layers."""
        scores = np.asarray(self.record["scores"], dtype=float)
        il, tl = self.image_layers, self.text_layers
        rows = range(len(il)) if image is None else [self._index(il, image, "image")]
        cols = range(len(tl)) if text is None else [self._index(tl, text, "text")]
        i, j = max(((i, j) for i in rows for j in cols), key=lambda ij: (scores[ij], ij))
        return il[i], tl[j], float(scores[i, j])

    def _index(self, layers: list[int], layer: int, side: str) -> int:
        if layer not in layers:
            raise ConfigError(f"{self.path.name} holds no {side} layer {layer} (searched: "
                              f"{', '.join(map(str, layers))}); rerun `alignbench layers` with that layer")
        return layers.index(layer)


def load_choice(root: str | Path, pair: tuple[str, str], train: tuple[str, str],
                budget: int | None = None) -> StoredChoice:
    """The stored search for (pair, train split) with the largest n (up to ``budget`` where one is that small);
    ConfigError naming the command if none."""
    folder = Path(root) / CHOICES_DIR
    pattern = re.compile(re.escape(_stem(pair, train)) + r"-n(\d+)\.json$")
    found = sorted(((int(m.group(1)), p) for p in folder.glob("*.json") if (m := pattern.match(p.name))),
                   key=lambda t: t[0])
    if not found:
        raise ConfigError(
            f"no stored layer choice for {pair[0]}+{pair[1]} trained on {train[0]}:{train[1]} (in {folder}); "
            f"run `alignbench layers --pair {pair[0]}+{pair[1]} --train {train[0]}:{train[1]}` first")
    within = [f for f in found if budget is None or f[0] <= budget]
    path = (within or found)[-1][1]
    return StoredChoice(path, json.loads(path.read_text(encoding="utf-8")))


def parse_layer(text: str | int | None) -> int | str | None:
    """A layer argument: None (last), an int (negative counts from the end) or 'best'."""
    if text is None or isinstance(text, int):
        return text
    s = str(text).strip().lower()
    if s == BEST:
        return BEST
    try:
        return int(s)
    except ValueError:
        raise ConfigError(f"layer {text!r} is not an integer or 'best'") from None


def resolve_best(image: int | str | None, text: int | str | None, stored: StoredChoice,
                 n_layers: tuple[int, int]) -> tuple[int, int, float]:
    """Turn 'best' into layer numbers from the stored table (best pair, or best for the other side as given).

    ``n_layers`` (image, text) resolves a side given as None (the last layer) or a negative index.
    """
    def fixed(v: int | str | None, n: int) -> int | None:
        if v == BEST:
            return None
        v = n - 1 if v is None else int(v)
        return v + n if v < 0 else v

    return stored.best(image=fixed(image, n_layers[0]), text=fixed(text, n_layers[1]))


def resolve_run_layers(pair: str, train: str, image: int | str | None, text: int | str | None, *,
                       store_root: str | Path | None = None, dtype: str = "fp32",
                       budget: int | None = None) -> tuple[int, int, str]:
    """(image layer, text layer, a one-line note) for a run of ``pair`` on ``train`` with 'best' on a side.

    With ``budget`` (pairs) the choice made on the most pairs within it is used; where every stored choice saw
    more pairs than the budget, the note says so and names the command for one within it.
    """
    from alignbench.encoders import parse_pair
    from alignbench.registry import DATASETS
    from alignbench.runner import parse_split_ref
    from alignbench.store import FeatureStore

    vision, text_enc = parse_pair(pair)
    dataset, split = parse_split_ref(train, "train")
    store = FeatureStore(store_root)
    stored = load_choice(store.root, (vision, text_enc), (DATASETS.canonical(dataset), split), budget)
    need = lambda v: v != BEST and (v is None or int(v) < 0)  # noqa: E731  (needs the encoder's depth)
    n_layers = (store.encoder(vision, dtype=dtype).num_layers if need(image) else 0,
                store.encoder(text_enc, dtype=dtype).num_layers if need(text) else 0)
    L, M, score = resolve_best(image, text, stored, n_layers)
    note = (f"{vision}+{text_enc}: image layer {L}, text layer {M} (mutual k-NN {score:.4f}, "
            f"n={stored.record.get('n')}, from {stored.path})")
    n_used = int(stored.record.get("n") or 0)
    if budget is not None and n_used > budget:
        note += (f"; WARNING: chosen on {n_used} pairs, more than this run's budget of {budget} (for a choice within "
                 f"it: alignbench layers --pair {vision}+{text_enc} --train {dataset}:{split} --budget {budget})")
    return L, M, note
