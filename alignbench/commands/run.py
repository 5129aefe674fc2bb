"""``alignbench run``: methods × pairs × budgets × seeds in this process, then a summary table.

The same spec expansion as ``alignbench sweep`` (so run ids match and a sweep
skips what ``run`` already did) and the same ``runner.run_one`` that SLURM
jobs call.  Every name, hyperparameter and budget is checked before anything
is encoded; finished runs are kept when interrupted (rerun to continue).
"""
from __future__ import annotations

import argparse
import sys
import time

HELP = "fit and evaluate methods on cached features (encodes on first use), then print a summary"
EXAMPLES = [
    "alignbench run --methods pal,asif,csa --budget 10k",
    "alignbench run --methods pal:K=128,linear --budget 1k,10k --seeds 0,1,2",
    "alignbench run --methods cca --pair all --tasks retrieval",
    "alignbench run --methods asif --budget max --datasets flickr8k,voc --data-root /data",
]
DEFAULT_METHODS = "pal,asif,csa"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", "--method", dest="methods", default=DEFAULT_METHODS,
                   help=f"comma-separated methods with options, e.g. pal:K=128,asif (default: {DEFAULT_METHODS})")
    p.add_argument("--budget", "--budgets", dest="budget", default="10k",
                   help="paired-data budget(s): 1000, 1k, 2.5k, 10k, max, or a comma list (default: 10k)")
    p.add_argument("--pair", "--pairs", dest="pair", default=None,
                   help="encoder pair VISION+TEXT, a comma list, or 'all' (default: effnet-lite0+minilm-l6)")
    p.add_argument("--seeds", "--seed", dest="seeds", default="0", help="seeds, e.g. 0,1,2 or 0-4 (default: 0)")
    p.add_argument("--tasks", default=None, help="keep only these tasks: retrieval,classification,segmentation")
    p.add_argument("--datasets", default=None,
                   help="evaluate these datasets (each with its kind's task), e.g. flickr8k,cifar10,voc")
    p.add_argument("--evals", default=None, help="explicit evaluations TASK:DATASET[:SPLIT][:OPTION=VALUE...], comma-separated "
                   "(e.g. segmentation:voc:val:protocol=slide, ClearCLIP/SAIL sliding windows)")
    p.add_argument("--train", default=None, help="training pairs DATASET:SPLIT (default: flickr8k:train)")
    p.add_argument("--val", default=None, help="validation pairs DATASET:SPLIT or 'none' (default: flickr8k:dev)")
    p.add_argument("--results", default="results/runs", help="folder for result JSONs (default: results/runs)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $ALIGNBENCH_DATA)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $ALIGNBENCH_CACHE)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="encoder precision")
    p.add_argument("--image-layer", default=None,
                   help="image encoder block (default: last), or 'best': the choice stored by `alignbench layers`")
    p.add_argument("--text-layer", default=None,
                   help="text encoder layer (default: last), or 'best': the choice stored by `alignbench layers`")
    p.add_argument("--device", default="auto", help="where encoders and fits compute: auto (CUDA when present, "
                   "default), cpu, cuda, cuda:N")
    p.add_argument("--tuned", action="store_true",
                   help="run every method with the best config of its (pair, budget) study (as METHOD:tuned)")
    p.add_argument("--tune-dir", default=None, help="study files for :tuned methods (default: results/tune)")
    p.add_argument("--tuned-now", action="store_true",
                   help="for a :tuned study another process is still tuning, take its best finished trial now "
                        "(default: wait for its running trials)")
    p.add_argument("--overwrite", action="store_true", help="redo runs whose result already exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_specs(args: argparse.Namespace) -> list:
    """The RunSpecs of this command, every name and hyperparameter checked (no data read)."""
    import dataclasses

    from alignbench.runner import validate_spec
    from alignbench.sweep_config import build_config, expand

    _check_task_dataset_kinds(args.tasks, args.datasets)
    methods = args.methods
    if getattr(args, "tuned", False):
        from alignbench.config import split_methods

        methods = [m if m.split(":")[-1] == "tuned" else f"{m}:tuned" for m in split_methods(methods)]
    cfg = build_config(
        methods=methods, pairs=args.pair, budgets=args.budget, seeds=args.seeds, tasks=args.tasks,
        datasets=args.datasets, evals=args.evals, train=args.train, val=args.val, executor="debug",
        tune_dir=getattr(args, "tune_dir", None), tuned_wait=False if getattr(args, "tuned_now", False) else None,
    )  # fmt: skip
    printed: set[str] = set()  # each layer note once per command, not once per process
    specs = [dataclasses.replace(s, encoder=_encoder_options(s, args, printed)) for s in expand(cfg)]
    checked = set()
    for s in specs:
        key = (s.method, tuple(sorted(s.method_options.items())), s.pair)
        if key not in checked:
            checked.add(key)
            validate_spec(s)
    return specs


def _encoder_options(spec, args: argparse.Namespace, printed: set[str]):
    """The spec's layers and dtype; 'best' is resolved from the stored layer choice of its pair and train split."""
    from alignbench.config import EncoderOptions
    from alignbench.layer_choices import BEST, parse_layer, resolve_run_layers

    image, text = parse_layer(args.image_layer), parse_layer(args.text_layer)
    if BEST in (image, text):
        budget = spec.budget if isinstance(spec.budget, int) else None  # 'max': every pair may be seen
        image, text, note = resolve_run_layers(spec.pair, spec.train, image, text, store_root=args.cache,
                                               dtype=args.dtype, budget=budget)
        if note not in printed:
            printed.add(note)
            print(note, file=sys.stderr)
    return EncoderOptions(image_layer=image, text_layer=text, dtype=args.dtype)


def _check_task_dataset_kinds(tasks: str | None, datasets: str | None) -> None:
    """'--tasks segmentation --datasets flickr8k' → "flickr8k has no segmentation masks; …"."""
    if not tasks or not datasets:
        return
    from alignbench.config import split_list
    from alignbench.registry import DATASETS, TASKS
    from alignbench.tasks.base import dataset_kind

    task_objs = [TASKS.get(t)() for t in split_list(tasks)]
    for name in split_list(datasets):
        ds = DATASETS.canonical(name.split(":")[0])
        kind = dataset_kind(ds)
        if not any(t.kind == kind for t in task_objs):
            task_objs[0].check_dataset(ds, kind)


def resolve_specs(specs: list, args: argparse.Namespace) -> list:
    """ResolvedRuns of the specs: budgets above the available pairs, overlapping splits… refused before any encoding."""
    from alignbench.identity import Resolver

    resolver = Resolver(args.cache, args.data_root)
    runs = [resolver.resolve(s) for s in specs]
    for run in runs:  # training/validation images never evaluated: refused before any encoding or fitting
        resolver.check_splits(run)
    return runs


def main(args: argparse.Namespace) -> int:
    from alignbench.devices import parse_device, warn_if_slow_dtype
    from alignbench.planning import plan_runs
    from alignbench.runner import now_iso

    args.started_at = now_iso()  # results another command writes from now on are not redone by --overwrite
    device = parse_device(args.device).resolved  # preflight already resolved it; a no-op then
    specs = build_specs(args)
    runs = resolve_specs(specs, args)
    p = plan_runs(runs, args.results, overwrite=args.overwrite)
    todo, done = p.todo, p.done
    warn_if_slow_dtype(args.dtype, device)
    n = len(todo) + len(done)
    dup = f" ({len(specs) - n} equivalent spellings merged)" if len(specs) > n else ""
    print(f"{n} run(s): {len(todo)} to do, {len(done)} already done in {args.results}{dup}"
          + (" (--overwrite redoes them)" if done else ""), file=sys.stderr)
    for run in todo:
        if run.run_id in p.why:
            print(f"redoing {run}: {p.why[run.run_id]}", file=sys.stderr)
    failed: list = []
    t_all = time.perf_counter()
    took: dict[tuple, list[float]] = {}
    busy = []  # runs whose fit another process is running now: taken up after the others
    for i, run in enumerate(todo, 1):
        label = f"[{i}/{len(todo)}] {run}"
        print(f"{label}: running", file=sys.stderr)
        if not _attempt(run, label, args, device, took, failed, todo[i:]):
            busy.append((label, run))
            print(f"{label}: another process is running its fit; back to it after the others", file=sys.stderr)
    for label, run in busy:  # now wait for the other process, then take its result (or run it, if it died first)
        print(f"{label}: waiting for the other process that runs its fit", file=sys.stderr)
        _attempt(run, label, args, device, took, failed, [], wait=True)
    if todo:
        print(f"finished {len(todo) - len(failed)}/{len(todo)} run(s) in {time.perf_counter() - t_all:.1f} s",
              file=sys.stderr)
    _print_summary(todo + done, args.results)
    return 1 if failed else 0


def _attempt(run, label: str, args: argparse.Namespace, device: str, took: dict, failed: list, left: list,
             wait: bool = False) -> bool:
    """Run ``run`` here (or take what another process stored), printing how it went.

    False when another process is running its fit now and ``wait`` is off.
    """
    from alignbench.errors import AlignbenchError, TrainingDivergedError
    from alignbench.results import ResultStore
    from alignbench.run_lock import RunBusy
    from alignbench.runner import run_or_take

    t = time.perf_counter()
    try:
        outcome = run_or_take(run, results_dir=args.results, store_root=args.cache, data_root=args.data_root,
                              overwrite=args.overwrite, fresh_since=args.started_at, device=device,
                              progress=not args.no_progress, wait_if_busy=wait)
    except RunBusy:
        return False
    except TrainingDivergedError as exc:
        failed.append((run, exc))
        print(f"{label}: FAILED ({exc})", file=sys.stderr)
        return True
    except AlignbenchError:
        raise  # a user/data error would repeat for every run: stop and say it once
    except Exception as exc:
        failed.append((run, exc))
        record = ResultStore(args.results).failed_path_for(run.spec)
        where = f"traceback in {record}" if record.exists() else "its failure record could not be written"
        print(f"{label}: FAILED ({type(exc).__name__}: {exc}); {where}", file=sys.stderr)
        return True
    path = outcome.path
    if not outcome.ran:  # stored meanwhile by another command: nothing was run here
        print(f"{label}: done by another process {_timings(path)}", file=sys.stderr)
        return True
    took.setdefault(_kind(run), []).append(time.perf_counter() - t)
    print(f"{label}: done in {time.perf_counter() - t:.1f} s {_timings(path)}{_eta(took, left)}", file=sys.stderr)
    return True


def _kind(run) -> tuple:
    """Runs alike in cost: same method and options, pair and budget (seeds differ)."""
    return run.method.label, run.pair, run.budget


def _eta(took: dict[tuple, list[float]], left: list) -> str:
    """'; 3 left, ETA ~7 min' from the mean time of finished runs of the same kind (nothing after the last run).

    Why per kind: a sweep's methods differ in cost by 1000× (PAL fits minutes, ASIF a second), so one
    mean over all runs would be wrong both ways; runs of a kind not timed yet are counted, not guessed.
    """
    from alignbench.progress import format_eta

    if not left:
        return ""
    known = [sum(took[k]) / len(took[k]) for k in map(_kind, left) if k in took]
    untimed = len(left) - len(known)
    if not known:
        return f"; {len(left)} left, none of a kind timed yet"
    rest = f" + {untimed} run(s) of kinds not timed yet" if untimed else ""
    return f"; {len(left)} left, ETA {format_eta(sum(known))}{rest}"


def _timings(path) -> str:
    import json

    try:
        t = json.loads(open(path, encoding="utf-8").read())["timings"]
        ev = sum(t.get("eval", {}).values())
        return f"(encode {t['encode']:.1f} s, fit {t['fit']:.1f} s, eval {ev:.1f} s)"
    except (OSError, KeyError, ValueError, TypeError):
        return ""


def _print_summary(runs: list, results: str) -> None:
    """Method × headline-metric table of this command's runs (finished ones)."""
    from alignbench.planning import ResultIndex
    from alignbench.report import render

    index = ResultIndex(results)
    records = []
    for run in runs:
        rec = index.find(run)
        if rec is not None:
            records.append({**rec, "_label": run.method.label})
    if not records:
        return
    print()
    print(render(records, fmt="markdown"))
