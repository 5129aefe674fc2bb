"""``alignbench sweep``: methods × pairs × budgets × seeds on SLURM (or locally), resumable.

Re-running the same command submits only what is missing or failed; with
``--status`` it reports done / running / failed / missing runs with job ids
and log paths instead of submitting.
"""
from __future__ import annotations

import argparse

HELP = "run a sweep of methods × pairs × budgets × seeds through SLURM (submitit) or locally"
EXAMPLES = [
    "alignbench sweep --methods cca,csa,asif,random --budgets 1k,10k --seeds 0-2 --executor local",
    "alignbench sweep --config sweeps/budgets.yaml --executor slurm --profile slurm/gpu-example.yaml",
    "alignbench sweep --config sweeps/budgets.yaml --status",
    "alignbench sweep --status                # every sweep recorded under results/sweeps",
    "alignbench sweep --methods pal,linear --pairs all --budgets 10k --seeds 0 --dry-run",
    "alignbench sweep --config slurm/pal-paper.yaml --plan   # jobs, GPU-hours, disk; submits nothing",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="sweep YAML file (flags given here override its values)")
    p.add_argument("--methods", default=None, help="comma-separated methods with options, e.g. cca,pal:K=128")
    p.add_argument("--pairs", default=None, help="encoder pairs VISION+TEXT, comma-separated, or 'all'")
    p.add_argument("--budgets", default=None, help="paired-data budgets, e.g. 1k,10k,max")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0,1,2 or 0-4")
    p.add_argument("--tasks", default=None, help="keep only these tasks' evaluations (retrieval,classification,…)")
    p.add_argument("--datasets", default=None, help="keep only these datasets' evaluations")
    p.add_argument("--evals", default=None, help="explicit evaluations TASK:DATASET[:SPLIT][:OPTION=VALUE...], comma-separated "
                   "(e.g. segmentation:voc:val:protocol=slide, ClearCLIP/SAIL sliding windows)")
    p.add_argument("--executor", default=None, choices=("slurm", "local", "debug"),
                   help="where runs execute (default local): slurm = job arrays via submitit; "
                        "local = processes on this machine; debug = in this process")
    p.add_argument("--profile", default=None, help="executor profile YAML, e.g. slurm/local.yaml (see slurm/README.md)")
    p.add_argument("--name", default=None, help="readable part of the sweep id (default: the config file's name)")
    p.add_argument("--results", default=None, help="folder for result JSONs, as for run/report (default: "
                   "results/runs); sweep ledgers and job logs go beside it, in ../sweeps")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $ALIGNBENCH_CACHE)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $ALIGNBENCH_DATA)")
    p.add_argument("--device", default=None, help="where each job's encoders and fits compute: auto (default: "
                   "the job's GPU when it has one), cpu, cuda, cuda:N; resolved on the worker")
    p.add_argument("--status", action="store_true", help="report the sweep's state instead of submitting")
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted, submit nothing")
    p.add_argument("--plan", action="store_true", help="print the jobs, estimated GPU-hours and disk; submit, "
                   "encode and download nothing (works before the data and weights are here)")
    p.add_argument("--wait", action="store_true", help="with --executor slurm: block until every run has ended")
    p.add_argument("--all", action="store_true", help="with --status: list finished runs too")


def main(args: argparse.Namespace) -> int:
    from alignbench.sweep_config import build_config, load_sweep_file

    file_values = load_sweep_file(args.config) if args.config else {}
    overrides = {k: getattr(args, k) for k in ("methods", "pairs", "budgets", "seeds", "tasks", "datasets",
                                               "evals", "executor", "profile", "name", "results", "cache",
                                               "data_root", "device")}
    if args.status and not args.config and not args.methods:
        from alignbench.launch import all_ledgers_status

        from alignbench.sweep_config import sweeps_dir_for

        results = overrides["results"] or "results/runs"
        reports = all_ledgers_status(results)
        if not reports:
            print(f"no sweeps recorded in {sweeps_dir_for(results)}")
            return 0
        for rep in reports:
            print(rep.format(verbose=args.all))
        return 0 if all(r.ok or not r.counts()["failed"] for r in reports) else 1
    cfg = build_config(file_values, **overrides)
    from alignbench import launch

    if args.plan:
        from alignbench.launch.estimate import format_plan
        from alignbench.sweep_config import expand

        specs = expand(cfg)
        packs = launch.group_packs(specs, launch.load_profile(cfg.profile))
        print(f"sweep {launch.sweep_id(cfg, specs)}: {len(specs)} runs ({cfg.executor}, device {cfg.device})")
        runs = launch.resolve_for_planning(cfg, specs)
        print(format_plan(runs, launch.feature_needs(runs), len(packs)))
        return 0

    if args.status:
        rep = launch.sweep_status(cfg)
        print(rep.format(verbose=args.all))
        return 1 if rep.counts()["failed"] or rep.counts()["lost"] else 0
    profile = launch.load_profile(cfg.profile)
    rep = launch.run_sweep(cfg, profile, wait=args.wait, dry_run=args.dry_run)
    c = rep.counts()
    if rep.dry_run:
        print(rep.format())
        return 0
    if rep.submitted or rep.encodes_submitted:
        after = f" after {rep.encodes_submitted} encode jobs" if rep.encodes_submitted else ""
        print(f"submitted {rep.submitted} runs{after}")
    elif c["done"] == len(rep.runs):
        print(f"sweep {rep.sweep_id}: all {len(rep.runs)} runs are done; nothing to submit")
        return 0
    print(rep.format())
    if not rep.finished:
        print(f"check progress with: alignbench sweep {_same_sweep_flags(args)} --status")
    return 1 if c["failed"] or c["lost"] else 0


def _same_sweep_flags(args: argparse.Namespace) -> str:
    parts = []
    for flag in ("config", "methods", "pairs", "budgets", "seeds", "tasks", "datasets", "evals", "name", "results"):
        v = getattr(args, flag)
        if v is not None:
            parts.append(f"--{flag.replace('_', '-')} {v}")
    return " ".join(parts)
