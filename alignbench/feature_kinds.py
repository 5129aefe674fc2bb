"""The one table of feature kinds: what a task can ask for, which encoder makes it, how it is cached.

Why one table: the runner (fetch before fitting), the sweep planner (which sets
are missing) and the stage-1 encode jobs (fill them) must agree on every kind.
When each dispatched on the kind's name by itself, one of them filed
``dense_images`` under the text encoder and none pre-encoded it, so every array
task of a segmentation sweep encoded the set itself.  A new kind is one row here.

``pairs`` is not a kind of its own: it is the images and the texts of a
caption split (:data:`COMPOSITES`).

A kind with ``view=True`` reads a *view* of the dataset rather than its images:
``crops`` are the sliding windows of segmentation's ``protocol=slide``, one
row per window, its :class:`~alignbench.seg_protocol.CropGrid` part of the
set's key, so every method evaluated with the same windows reads one cache entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from alignbench.errors import ConfigError

#: What segmentation asks of an encoder that knows the ``resize`` option:
#: the whole image squashed to its input, so every mask pixel has a patch.
DENSE_OPTIONS = {"resize": "squash"}


@dataclass(frozen=True)
class FeatureSet:
    """One concrete feature set in the store: a kind encoded by one encoder at one layer and dtype.

    (A task's :class:`alignbench.tasks.base.FeatureNeed` names a kind and a
    dataset; a run's pair, layers and dtype turn it into feature sets.)
    """

    kind: str
    encoder: str
    dataset: str
    split: str | None
    layer: int | None
    dtype: str
    view: Any = None  # the view's parameters for kinds that read one (a CropGrid for ``crops``)

    @property
    def key(self) -> str:
        tail = f":{self.view.tag}" if self.view is not None else ""
        return f"{self.kind}:{self.encoder}:{self.dataset}:{self.split}:L{self.layer}:{self.dtype}{tail}"

    @property
    def spec(self) -> "FeatureKind":
        return kind(self.kind)

    def label(self) -> str:
        return (f"{self.kind} {self.encoder} {self.dataset}" + (f":{self.split}" if self.split else "")
                + (f" {self.view.tag}" if self.view is not None else ""))

    def dataset_in(self, store: Any, data_root: Any = None, dataset: Any = None) -> Any:
        """What the store encodes: the dataset (name or object), or its view for a kind that reads one."""
        ds = dataset if dataset is not None else self.dataset
        return ds if self.view is None else store.dataset_view(ds, data_root, self.view)


@dataclass(frozen=True)
class FeatureKind:
    """One row: the encoder side that makes the kind, and how the store and a FeatureSource give it.

    ``options(store, encoder, layer, dtype)`` are the extra encoder options the
    kind encodes with (part of the cache key); ``get``/``has`` call the store
    with them; ``fetch`` asks a :class:`~alignbench.source.FeatureSource`.
    """

    name: str
    side: str  # "image" | "text": which encoder of the VISION+TEXT pair
    per_split: bool  # False: one set per dataset (class prompts)
    store_get: str  # FeatureStore method that loads or encodes it
    store_has: str  # FeatureStore method that checks the cache without encoding
    fetch: Callable[..., Any]  # (source, dataset, split[, view]) -> features
    options: Callable[[Any, str, int | None, str], dict] = lambda store, encoder, layer, dtype: {}
    view: bool = False  # reads a view of the dataset whose parameters are part of the set (FeatureSet.view)

    def call_args(self, fs: FeatureSet, store: Any = None, data_root: Any = None) -> tuple:
        ds = fs.dataset_in(store, data_root) if self.view else fs.dataset
        return (fs.encoder, ds, fs.split) if self.per_split else (fs.encoder, ds)

    def get(self, store: Any, fs: FeatureSet, *, data_root: Any = None, **kw: Any) -> Any:
        """Load (or encode) ``fs`` from ``store``."""
        opts = self.options(store, fs.encoder, fs.layer, fs.dtype)
        return getattr(store, self.store_get)(*self.call_args(fs, store, data_root), layer=fs.layer, dtype=fs.dtype,
                                              data_root=data_root, encoder_options=opts or None, **kw)

    def has(self, store: Any, fs: FeatureSet, *, data_root: Any = None) -> bool:
        """True when ``fs`` is cached and passes the cheap checks (nothing is encoded)."""
        opts = self.options(store, fs.encoder, fs.layer, fs.dtype)
        return getattr(store, self.store_has)(*self.call_args(fs, store, data_root), layer=fs.layer, dtype=fs.dtype,
                                              data_root=data_root, encoder_options=opts or None)


    def entry(self, store: Any, fs: FeatureSet, *, data_root: Any = None, base: dict | None = None,
              dataset: Any = None) -> str:
        """The cache entry (``<encoder>/<folder>``) ``fs`` is read from; nothing is encoded (run identities)."""
        opts = {**(base or {}), **self.options(store, fs.encoder, fs.layer, fs.dtype)}
        ds = fs.dataset_in(store, data_root, dataset) if self.view else (dataset if dataset is not None else fs.dataset)
        args = (fs.encoder, ds, fs.split)[: 3 if self.per_split else 2]
        return store.entry_name(self.store_get, *args, layer=fs.layer, dtype=fs.dtype, data_root=data_root,
                                encoder_options=opts or None)


def dense_options(store: Any, encoder: str, layer: int | None, dtype: str, base: dict | None = None) -> dict:
    """``base`` plus :data:`DENSE_OPTIONS` if the image encoder knows them, else ``base`` (its default images).

    Building an encoder object is cheap (models load on first use), and an
    encoder that knows no ``resize`` option refuses it with a ConfigError.
    """
    opts = {**(base or {}), **DENSE_OPTIONS}
    try:
        store.encoder(encoder, layer=layer, dtype=dtype, options=opts, modality="image")
    except ConfigError as exc:
        if "resize" not in str(exc):
            raise
        return dict(base or {})
    return opts


def _fetch_dense(source: Any, dataset: str, split: str | None, view: Any = None) -> Any:
    return source.dense_images(dataset, split)


def _fetch_crops(source: Any, dataset: str, split: str | None, view: Any = None) -> Any:
    return source.crops(dataset, split, view)


KINDS: dict[str, FeatureKind] = {k.name: k for k in (
    FeatureKind("images", "image", True, "image_features", "has_images",
                lambda source, dataset, split, view=None: source.images(dataset, split)),
    FeatureKind("dense_images", "image", True, "image_features", "has_images", _fetch_dense, dense_options),
    # each sliding window squashed to the encoder's input like a dense image (a window is square but near a
    # border capped by max_long), so no pixel of the window loses its patch
    FeatureKind("crops", "image", True, "image_features", "has_images", _fetch_crops, dense_options, view=True),
    FeatureKind("texts", "text", True, "text_features", "has_texts",
                lambda source, dataset, split, view=None: source.texts(dataset, split)),
    FeatureKind("prompts", "text", False, "prompt_features", "has_prompts",
                lambda source, dataset, split, view=None: source.prompts(dataset)),
)}

#: Needs that stand for several kinds: a caption split's pairs are its images and its texts.
COMPOSITES: dict[str, tuple[str, ...]] = {"pairs": ("images", "texts")}


def kind(name: str) -> FeatureKind:
    """The row of ``name`` (ConfigError naming the known kinds otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown feature kind {name!r}; known: {', '.join([*KINDS, *COMPOSITES])}") from None


def expand(what: str) -> tuple[str, ...]:
    """The kinds a task need stands for (``pairs`` → images, texts)."""
    if what in COMPOSITES:
        return COMPOSITES[what]
    kind(what)
    return (what,)


def feature_set(what: str, pair: tuple[str, str], dataset: str, split: str | None, *,
                image_layer: int | None, text_layer: int | None, dtype: str, view: Any = None) -> FeatureSet:
    """The feature set of kind ``what`` for an encoder pair (vision, text)."""
    row = kind(what)
    if row.view != (view is not None):
        raise ConfigError(f"feature kind {what!r} " + ("needs a view (its parameters)" if row.view else "takes no view"))
    image = row.side == "image"
    return FeatureSet(what, pair[0] if image else pair[1], dataset, split if row.per_split else None,
                      image_layer if image else text_layer, dtype, view)


def fetch(source: Any, what: str, dataset: str, split: str | None, view: Any = None) -> None:
    """Have ``source`` load (or encode) every kind ``what`` stands for."""
    if what in COMPOSITES:
        source.pairs(dataset, split)
        return
    kind(what).fetch(source, dataset, split, view)


__all__ = ["COMPOSITES", "DENSE_OPTIONS", "FeatureKind", "FeatureSet", "KINDS", "dense_options", "expand",
           "feature_set", "fetch", "kind"]
