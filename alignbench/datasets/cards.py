"""Dataset cards: a small YAML file next to the data that names a dataset once.

Why cards: a researcher's own pairs, class folders or masks should be named
like a built-in (``--train mypairs:train``, ``--evals retrieval:mypairs:test``)
without editing the package.  A card is found as ``<data root>/alignbench.yaml``
or ``<data root>/<folder>/alignbench.yaml``, or given with ``--dataset-file``;
the files found are exported in ``$ALIGNBENCH_DATASET_FILES`` so that worker
processes and cluster jobs declare the same names.  Example::

    name: mypairs                 # or a list under "datasets:"
    kind: captions                # captions | classification | segmentation
    captions: captions.csv        # CSV/TSV with a header, or JSONL
    images: images                # image paths in the file are relative to this folder
    splits: [train, test]         # values of the "split" column (or {train: train.txt, …} split files)
    columns: {image: file, caption: text}   # only if the columns are named otherwise

Classification: ``images:`` holds ``<split>/<class>/<image>`` (no ``splits:``:
``<class>/<image>``, one split ``all``), optional ``classes:`` file (``folder``
or ``folder: readable name`` per line) and ``templates:`` file (default CLIP's
80). Segmentation: ``images:`` and ``masks:`` folders (same stems, PNG masks of
class ids), ``classes:`` (line i = id i), ``ignore_index:`` (default 255),
``background:`` (a class name).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from alignbench.errors import DataError

log = logging.getLogger(__name__)

CARD_NAME = "alignbench.yaml"
ENV_FILES = "ALIGNBENCH_DATASET_FILES"  # os.pathsep-separated card files (set by --dataset-file)
_KEYS = {
    "common": {"name", "kind", "description", "splits", "images"},
    "captions": {"captions", "columns"},
    "classification": {"classes", "templates"},
    "segmentation": {"masks", "classes", "templates", "ignore_index", "background"},
}
_declared: set[tuple[Path, str]] = set()  # (card file, its text): a rewritten card is read again


def read_card(path: str | os.PathLike) -> list[Any]:
    """The datasets a card file declares, validated (a DataError names the file and the key)."""
    import yaml

    from alignbench.datasets.from_files import KINDS, ONE_SPLIT, Card

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"dataset card {str(path)!r} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    items = doc.get("datasets") if isinstance(doc, dict) and "datasets" in doc else [doc]
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a dataset mapping (name:, kind:, …) or a list under 'datasets:'")
    cards = []
    for item in items:
        if not isinstance(item, dict):
            raise DataError(f"{path}: each dataset must be a mapping with name: and kind:, found {item!r}")
        name, kind = str(item.get("name") or "").strip(), str(item.get("kind") or "").strip()
        if not name or ":" in name or "+" in name or "," in name:
            raise DataError(f"{path}: dataset name {name!r} must be non-empty, without ':', '+' or ','")
        if kind not in KINDS:
            raise DataError(f"{path}: dataset {name!r} has kind {kind!r}; use one of {', '.join(KINDS)}")
        unknown = set(item) - _KEYS["common"] - _KEYS[kind]
        if unknown:
            import difflib

            allowed = sorted(_KEYS["common"] | _KEYS[kind])
            hints = [h for u in unknown for h in difflib.get_close_matches(u, allowed, n=1)]
            hint = f"; did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
            raise DataError(f"{path}: dataset {name!r} has unknown key(s) {', '.join(sorted(map(repr, unknown)))}"
                            f"{hint} (keys for {kind}: {', '.join(allowed)})")
        base = path.parent
        rel = lambda key, default=None: _path(base, item.get(key, default), path, name, key)  # noqa: E731
        raw_splits = item.get("splits")
        split_files: dict[str, Path] = {}
        if isinstance(raw_splits, dict):
            if kind != "captions":
                raise DataError(f"{path}: dataset {name!r}: split files are for captions; list split folders "
                                "as splits: [train, test]")
            split_files = {str(k): rel_file(base, v, path, name) for k, v in raw_splits.items()}
            splits = tuple(split_files)
        elif raw_splits is None:
            splits = (ONE_SPLIT,)
        elif isinstance(raw_splits, list) and raw_splits and all(isinstance(s, str) and s for s in raw_splits):
            splits = tuple(raw_splits)
        else:
            raise DataError(f"{path}: dataset {name!r}: splits must be a list of names or a mapping "
                            f"split → file, found {raw_splits!r}")
        if len(set(splits)) != len(splits):
            raise DataError(f"{path}: dataset {name!r} lists a split twice: {list(splits)}")
        if kind == "captions" and not item.get("captions"):
            raise DataError(f"{path}: dataset {name!r} needs 'captions:' (a CSV/TSV/JSONL file of image, caption)")
        if kind == "segmentation":
            for key in ("masks", "classes"):
                if not item.get(key):
                    raise DataError(f"{path}: segmentation dataset {name!r} needs {key!r}")
        columns = item.get("columns") or {}
        if not isinstance(columns, dict) or set(columns) - {"image", "caption", "split"}:
            raise DataError(f"{path}: dataset {name!r}: columns maps image/caption/split to column names")
        try:
            ignore = int(item.get("ignore_index", 255))
        except (TypeError, ValueError):
            raise DataError(f"{path}: dataset {name!r}: ignore_index must be an integer") from None
        cards.append(Card(
            name=name, kind=kind, file=path, base=base, splits=splits, split_files=split_files,
            captions=rel("captions") if kind == "captions" else None,
            columns={str(k): str(v) for k, v in columns.items()},
            images=rel("images", "."), masks=rel("masks") if kind == "segmentation" else None,
            classes=rel("classes"), templates=rel("templates"), ignore_index=ignore,
            background=None if item.get("background") is None else str(item["background"]),
            description=str(item.get("description") or "").strip(),
        ))  # fmt: skip
    return cards


def _path(base: Path, value: Any, card: Path, name: str, key: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{card}: dataset {name!r}: {key} must be a path, found {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def rel_file(base: Path, value: Any, card: Path, name: str) -> Path:
    p = _path(base, value, card, name, "splits")
    assert p is not None
    return p


def discover(data_root: str | os.PathLike | None) -> list[Path]:
    """Card files at ``<root>/alignbench.yaml`` and ``<root>/*/alignbench.yaml`` (no deeper: it stays instant)."""
    if not data_root or not Path(data_root).is_dir():
        return []
    root = Path(data_root).expanduser()
    found = [root / CARD_NAME] if (root / CARD_NAME).is_file() else []
    try:
        with os.scandir(root) as it:
            subdirs = sorted(e.path for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return found
    return found + [Path(d) / CARD_NAME for d in subdirs if (Path(d) / CARD_NAME).is_file()]


def card_class(card: Any) -> type:
    """A dataset class for ``card``, shaped like a built-in (``kind``, ``splits``, ``registry_name``)."""
    from alignbench.datasets.card_segmentation import FileSegmentation
    from alignbench.datasets.from_files import FileCaptions, FileClassification

    base = {"captions": FileCaptions, "classification": FileClassification, "segmentation": FileSegmentation}[card.kind]
    summary = card.description or f"{card.kind} from {card.file}"
    return type(f"Card_{card.name}", (base,), {
        "card": card, "registry_name": card.name, "splits": card.splits, "__doc__": summary,
        "__module__": base.__module__,
    })  # fmt: skip


def declare(files: Iterable[str | os.PathLike]) -> list[str]:
    """Read card files and add their datasets to ``DATASETS``; returns the names declared.

    The same unchanged file declared twice is a no-op; a name already taken
    (by a built-in, a plug-in or another card) is a PluginError.
    """
    from alignbench.registry import DATASETS

    names = []
    for f in files:
        path = Path(f).expanduser().resolve()
        seen = (path, path.read_text(encoding="utf-8") if path.is_file() else "")
        if seen in _declared:
            continue
        for card in read_card(path):
            DATASETS.declare(card.name, card_class(card), summary=card.description or f"{card.kind} (dataset card)",
                             origin=f"card {path}")
            names.append(card.name)
        _declared.add(seen)
    return names


def env_files() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV_FILES, "").split(os.pathsep) if p.strip()]


def declare_from_environment() -> None:
    """Called by the ``DATASETS`` scan: cards under ``$ALIGNBENCH_DATA`` and in ``$ALIGNBENCH_DATASET_FILES``.

    A bad card found by discovery is logged, not raised: one broken card must
    not hide every other dataset (``alignbench data --check`` shows it).
    """
    for f in discover(os.environ.get("ALIGNBENCH_DATA")) + env_files():
        try:
            declare([f])
        except Exception as exc:  # noqa: BLE001 - reported, listing goes on
            from alignbench.registry import DATASETS

            DATASETS.problems[str(f)] = str(exc)
            log.warning("dataset card %s skipped: %s", f, exc)


def use(files: Iterable[str | os.PathLike] = (), data_root: str | os.PathLike | None = None) -> list[str]:
    """The CLI/API edge: declare explicit cards (errors raise) and those under ``data_root``; export them.

    Exporting in ``$ALIGNBENCH_DATASET_FILES`` makes child processes (SLURM
    jobs, worker pools) see the same names.
    """
    explicit = [Path(f).expanduser().resolve() for f in files]
    names = declare(explicit + discover(data_root))
    known = env_files()
    add = [p for p in explicit + discover(data_root) if p not in known]
    if add:
        os.environ[ENV_FILES] = os.pathsep.join(str(p) for p in known + add)
    return names
