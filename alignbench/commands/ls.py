"""``alignbench ls``: list registered methods, tasks, encoders and datasets without importing them."""
from __future__ import annotations

import argparse

HELP = "list methods, tasks, encoders, datasets and encoder pairs"
EXAMPLES = ["alignbench ls", "alignbench ls methods", "alignbench ls encoders"]
WHAT = ("methods", "tasks", "encoders", "datasets", "pairs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=WHAT, help="what to list (default: everything)")


def main(args: argparse.Namespace) -> int:
    from alignbench.config import DEFAULT_PAIR, OFFLINE_PAIRS
    from alignbench.registry import REGISTRIES

    for what in [args.what] if args.what else WHAT:
        print(f"{what}:")
        if what == "pairs":
            for p in OFFLINE_PAIRS:
                print(f"  {p:<28} {'(default)' if p == DEFAULT_PAIR else ''}".rstrip())
            print("  VISION+TEXT                  any image encoder + any text encoder")
            continue
        for e in REGISTRIES[what].entries():
            name = f"{e.name}:<name>" if e.is_family else e.name
            alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
            print(f"  {name:<28} {e.summary}{alias}")
    return 0
