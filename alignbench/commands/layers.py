"""``alignbench layers``: STRUCTURE's layer selection for an encoder pair, printed and stored.

Scores every (image layer, text layer) pair by mutual k-NN alignment on up to
``--n`` random training pairs (one caption per image), prints the table and
the best pair, and stores them under the feature cache so that
``alignbench run --image-layer best --text-layer best`` can use the choice.
Encoding every layer of the training split is the slow part (cached after).
"""
from __future__ import annotations

import argparse
import sys

HELP = "choose the (image layer, text layer) to align by mutual k-NN (STRUCTURE) and store the choice"
EXAMPLES = [
    "alignbench layers --pair effnet-lite0+minilm-l6",
    "alignbench layers --pair dinov2-s14+minilm-l6 --n 2000 --train flickr8k:train",
    "alignbench layers --pair dinov2-s14+minilm-l6 --image-layers 8,9,10,11 --text-layers 3,4,5",
    "alignbench run --methods pal --pair dinov2-s14+minilm-l6 --image-layer best --text-layer best",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default=None, help="encoder pair VISION+TEXT (default: effnet-lite0+minilm-l6)")
    p.add_argument("--n", type=int, default=5000, help="random training pairs to score on (default: 5000)")
    p.add_argument("--budget", default=None,
                   help="the paired-data budget the choice is for: the sample is capped at it (a run at that budget "
                        "must not pick layers on more pairs than it may train on), e.g. 1k")
    p.add_argument("--train", default="flickr8k:train", help="training pairs DATASET:SPLIT (default: flickr8k:train)")
    p.add_argument("--image-layers", default=None, help="restrict the image layers searched, e.g. 8,9,10,11")
    p.add_argument("--text-layers", default=None, help="restrict the text layers searched, e.g. 3,4,5")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample (default: 0)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $ALIGNBENCH_DATA)")
    p.add_argument("--cache", default=None, help="feature cache folder, where the choice is stored too "
                                                 "(default: $ALIGNBENCH_CACHE)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="encoder precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _layer_list(text: str | None, what: str) -> list[int] | None:
    from alignbench.config import split_list
    from alignbench.errors import ConfigError

    if text is None:
        return None
    try:
        return sorted({int(t) for t in split_list(text)})
    except ValueError:
        raise ConfigError(f"--{what}-layers {text!r}: use a comma list of integers, e.g. 8,9,10") from None


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from alignbench.config import DEFAULT_PAIR
    from alignbench.encoders import parse_pair
    from alignbench.errors import ConfigError
    from alignbench.layer_choices import save_choice
    from alignbench.layer_selection import select_layers_for_pair
    from alignbench.registry import DATASETS
    from alignbench.runner import parse_split_ref
    from alignbench.store import FeatureStore

    pair = parse_pair(args.pair or DEFAULT_PAIR)
    dataset, split = parse_split_ref(args.train, "train")
    dataset = DATASETS.canonical(dataset)
    if args.n < 3:
        raise ConfigError(f"--n {args.n}: mutual k-NN needs at least 3 pairs")
    image_layers, text_layers = _layer_list(args.image_layers, "image"), _layer_list(args.text_layers, "text")
    store = FeatureStore(args.cache)
    ds = store.dataset(dataset, args.data_root)
    n_images = len(np.unique(np.asarray(ds.caption_image_index(ds.check_split(split)))))
    n = args.n
    if args.budget is not None:
        from alignbench.config import MAX, parse_budget

        budget = parse_budget(args.budget)
        if budget != MAX and budget < n:
            print(f"--budget {args.budget} is smaller than --n {n}: scoring on {budget} pairs, what a run at that "
                  f"budget may see", file=sys.stderr)
            n = int(budget)
    if n_images < n:
        print(f"{dataset}:{split} has {n_images} images with captions, fewer than --n {n}: "
              f"scoring on all {n_images}", file=sys.stderr)
    choice = select_layers_for_pair(f"{pair[0]}+{pair[1]}", dataset, split, image_layers=image_layers,
                                    text_layers=text_layers, sample=n, seed=args.seed, store=store,
                                    data_root=args.data_root, dtype=args.dtype, progress=not args.no_progress)
    print(_table(choice))
    print(f"\nbest: image layer {choice.image_layer}, text layer {choice.text_layer} "
          f"(mutual k-NN {choice.score:.4f}, k={choice.k}, n={choice.n} pairs of {dataset}:{split})")
    path = save_choice(store.root, pair, (dataset, split), n, choice, seed=args.seed, dtype=args.dtype,
                       n_available=n_images, **({"budget": str(args.budget)} if args.budget is not None else {}))
    print(f"stored in {path}\nuse it: alignbench run --pair {pair[0]}+{pair[1]} --train {dataset}:{split} "
          f"--image-layer best --text-layer best{'' if args.budget is None else ' --budget ' + str(args.budget)}",
          file=sys.stderr)
    return 0


def _table(choice) -> str:
    """Markdown table, rows = image layers, columns = text layers; the best cell starred."""
    from tabulate import tabulate

    rows = []
    for i, L in enumerate(choice.image_layers):
        cells = []
        for j, M in enumerate(choice.text_layers):
            star = "*" if (L, M) == (choice.image_layer, choice.text_layer) else ""
            cells.append(f"{choice.scores[i, j]:.4f}{star}")
        rows.append([L, *cells])
    headers = ["image \\ text", *map(str, choice.text_layers)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
