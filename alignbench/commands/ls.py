"""``alignbench ls``: list registered methods, tasks, encoders and datasets without importing them.

Plug-ins from other installed packages are listed from their entry-point
metadata (marked with the package they come from); dataset cards found under
the data root or given with ``--dataset-file`` are listed with their file.
Plug-ins that were skipped (a taken name) are reported at the end.
"""
from __future__ import annotations

import argparse

HELP = "list methods, tasks, encoders, datasets and encoder pairs (built-in, plug-ins and dataset cards)"
EXAMPLES = ["alignbench ls", "alignbench ls methods", "alignbench ls datasets --dataset-file mydata/alignbench.yaml"]
WHAT = ("methods", "tasks", "encoders", "datasets", "pairs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=WHAT, help="what to list (default: everything)")
    p.add_argument("--data-root", default=None, help="data root searched for dataset cards (default: $ALIGNBENCH_DATA)")


def main(args: argparse.Namespace) -> int:
    from alignbench.config import DEFAULT_PAIR, OFFLINE_PAIRS
    from alignbench.registry import REGISTRIES

    problems: list[str] = []
    for what in [args.what] if args.what else WHAT:
        print(f"{what}:")
        if what == "pairs":
            for p in OFFLINE_PAIRS:
                print(f"  {p:<28} {'(default)' if p == DEFAULT_PAIR else ''}".rstrip())
            print("  VISION+TEXT                  any image encoder + any text encoder")
            continue
        reg = REGISTRIES[what]
        for e in reg.entries():
            name = f"{e.name}:<name>" if e.is_family else e.name
            alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
            origin = f" [{e.origin}]" if e.origin else ""
            print(f"  {name:<28} {e.summary}{alias}{origin}")
        problems += [f"  {what[:-1]} {n}: {msg}" for n, msg in reg.problems.items()]
    if problems:
        print("plug-in problems:")
        print("\n".join(problems))
    return 0
