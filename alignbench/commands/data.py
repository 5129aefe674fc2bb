"""``alignbench data``: which datasets are present under the data root, their splits and sizes.

Listing reads only file lists and annotation files (no image decoding), so it
answers in seconds; ``--check`` also decodes each split's first and last
image (and mask) and says exactly what is missing or unreadable.
"""
from __future__ import annotations

import argparse
import re

HELP = "list datasets found under the data root (kind, splits, sizes); --check validates their layout"
EXAMPLES = [
    "alignbench data",
    "alignbench data --data-root ../shared/datasets --check",
    "alignbench data --check flickr8k voc-mini",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="datasets to show (default: all registered)")
    p.add_argument("--data-root", metavar="DIR", help="data root (default: $ALIGNBENCH_DATA, else ./data)")
    p.add_argument("--check", action="store_true",
                   help="also decode the first and last image (and mask) of every split and show full layout help")


def main(args: argparse.Namespace) -> int:
    from alignbench.datasets.base import data_root
    from alignbench.registry import DATASETS

    from alignbench.errors import DataError

    try:
        root = data_root(args.data_root)  # a missing root is one error, not one per dataset
    except DataError:
        if not args.names:
            raise
        root = None  # named datasets may be dataset cards, which need no data root
    names = [DATASETS.canonical(n) for n in args.names] if args.names else DATASETS.names()
    print(f"data root: {root or '(none)'}")
    failed = 0
    for name in names:
        lines, ok = describe(name, root, check=args.check, verbose=bool(args.names) or args.check)
        print("\n".join(lines))
        failed += not ok
    if args.check and failed:
        print(f"{failed} dataset(s) missing or with problems (see above)")
        return 1
    return 0


def describe(name: str, root, *, check: bool, verbose: bool) -> tuple[list[str], bool]:
    """Lines describing one dataset, and whether it is present (and, with ``check``, sound)."""
    from alignbench.datasets import get_dataset
    from alignbench.errors import AlignbenchError, MalformedDataError

    try:
        ds = get_dataset(name, root)
    except AlignbenchError as exc:
        msg = str(exc) if verbose else _short(str(exc))
        return [f"{name:<16} not found: {_indent(msg)}"], False
    kind = ds.kind
    extra = ""
    classnames = getattr(ds, "classnames", None)
    if classnames is not None:
        try:
            extra = f", {len(classnames)} classes"
        except AlignbenchError as exc:
            extra = f", classes unreadable: {exc}"
    folder = getattr(ds, "dir", None)
    lines = [f"{name:<16} {kind}{extra}" + (f"  [{folder}]" if folder else "")]
    ok = True
    present = 0
    for split in ds.splits:
        try:
            size = _split_size(ds, split)
        except MalformedDataError as exc:  # present but broken: a problem, never "missing" or "ok"
            lines.append(f"  {split:<9} PROBLEM: {_indent(str(exc), 4)}")
            ok, present = False, present + 1
            continue
        except AlignbenchError as exc:
            if hasattr(ds, "card"):  # a card declares its splits: one that cannot be listed is a problem
                lines.append(f"  {split:<9} PROBLEM: {_indent(str(exc), 4)}")
                ok = False
                continue
            lines.append(f"  {split:<9} missing: {_short(str(exc))}")
            continue
        present += 1
        status = ""
        if check:
            problem = _check_split(ds, split)
            status = "  ok" if problem is None else f"  PROBLEM: {_indent(problem, 4)}"
            ok &= problem is None
        lines.append(f"  {split:<9} {size}{status}")
    return lines, ok and present > 0


def _split_size(ds, split: str) -> str:
    n = len(ds.images(split))
    if ds.kind == "captions":
        return f"{n} images, {len(ds.captions(split))} captions"
    if ds.kind == "classification":
        return f"{n} images"
    return f"{n} images with masks"


def _check_split(ds, split: str) -> str | None:
    """None if the first and last image (and mask) decode and shapes agree, else what is wrong."""
    import numpy as np

    from alignbench.errors import AlignbenchError

    try:
        images = ds.images(split)
        if len(images) == 0:
            return "no images"
        deep = getattr(ds, "check_files", None)  # card datasets check every file's header, not just two
        if deep is not None and (problem := deep(split)) is not None:
            return problem
        for i in sorted({0, len(images) - 1}):
            im = images[i]
            if ds.kind == "segmentation":
                m = ds.mask(split, i)
                if m.shape != (im.size[1], im.size[0]):
                    return f"mask of {images.ids[i]!r} is {m.shape[1]}×{m.shape[0]} but the image is {im.size[0]}×{im.size[1]}"
                bad = np.setdiff1d(np.unique(m), np.r_[np.arange(len(ds.classnames)), ds.ignore_index])
                if bad.size:
                    return f"mask of {images.ids[i]!r} has ids {bad.tolist()} outside the {len(ds.classnames)} classes"
        if ds.kind == "classification":
            y = ds.labels(split)
            if len(y) != len(images) or (y.size and (y.min() < 0 or y.max() >= len(ds.classnames))):
                return f"{len(y)} labels for {len(images)} images, or labels outside 0..{len(ds.classnames) - 1}"
        if ds.kind == "captions":
            idx = ds.caption_image_index(split)
            if len(idx) != len(ds.captions(split)) or set(np.unique(idx).tolist()) != set(range(len(images))):
                return "captions do not map onto every image exactly"
    except AlignbenchError as exc:
        return str(exc)
    return None


def _short(message: str) -> str:
    """First line of an error without its layout help (the listing stays one line per item)."""
    first = message.splitlines()[0] if message else ""
    first = re.sub(r"\s*\(pass path=[^)]*\)", "", first)
    return re.sub(r"[.]?\s*Expected layout:\s*$", "", first)


def _indent(text: str, n: int = 2) -> str:
    return text.replace("\n", "\n" + " " * n)
