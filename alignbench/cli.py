"""The ``alignbench`` command line: ``run | sweep | report | tune | encode | layers | ls | data | analyze``.

Each subcommand lives in ``alignbench/commands/<name>.py`` with ``HELP``,
``EXAMPLES``, ``add_arguments(parser)`` and ``main(args) -> int``.  Those
modules import nothing heavy at module level, so ``--help`` and ``ls`` answer
instantly; the CLI prints, library code logs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from alignbench import __version__
from alignbench.errors import AlignbenchError
from alignbench.interrupts import Terminated, signals_as_interrupts

COMMANDS = ("run", "report", "sweep", "tune", "encode", "layers", "ls", "data", "analyze")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignbench",
        description="Benchmark post-hoc alignment of frozen vision and text encoders.",
        epilog=(
            "examples:\n"
            "  alignbench run --methods pal,asif,csa --budget 10k\n"
            "  alignbench report --format latex\n"
            "  alignbench sweep --methods pal,linear --pairs all --budgets 1k,10k --seeds 0-2 --executor slurm\n"
            "  alignbench ls methods"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alignbench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"alignbench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"alignbench.commands.{name}":
                raise
            continue
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.HELP,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in mod.EXAMPLES),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        if name != "report":
            p.add_argument("--dataset-file", action="append", default=[], metavar="CARD",
                           help="a dataset card (YAML) declaring your own datasets; repeatable "
                                "(cards at <data root>/[<folder>/]alignbench.yaml are found without it)")
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "dataset_file", None) or getattr(args, "data_root", None):
            from alignbench.datasets.cards import use

            use(args.dataset_file, getattr(args, "data_root", None))  # the names exist before any is resolved
        from alignbench.preflight import check

        check(args.command, args)  # every value and path, before any data is read or fitted
        from alignbench.progress import progress_scope

        with signals_as_interrupts(), progress_scope(False if getattr(args, "no_progress", False) else None):
            rc = int(args._main(args) or 0)  # progress_scope: every bar, training too
        sys.stdout.flush()  # a closed pipe must fail here, inside the handler, not at interpreter exit
        return rc
    except AlignbenchError as exc:
        print(f"alignbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"alignbench {args.command}: terminated (SIGTERM); finished work is kept, rerun to continue",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"alignbench {args.command}: interrupted; finished work is kept, rerun to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `alignbench ls | head`: the reader left; stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
