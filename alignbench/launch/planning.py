"""Planning a sweep: packs of runs, the feature sets stage 1 encodes, checks before submitting."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignbench.config import RunSpec
from alignbench.errors import ConfigError
from alignbench.launch.profiles import Profile
from alignbench.sweep_config import SweepConfig

if TYPE_CHECKING:
    from alignbench.feature_kinds import FeatureSet
    from alignbench.identity import ResolvedRun


# Planning helpers
def group_packs(specs: list[RunSpec], profile: Profile) -> list[list[RunSpec]]:
    """Expensive runs one per task (first: they set the makespan), cheap ones ``pack`` at a time."""
    cheap = [s for s in specs if s.method in profile.pack_methods]
    heavy = [s for s in specs if s.method not in profile.pack_methods]
    packs = [[s] for s in heavy]
    for i in range(0, len(cheap), profile.pack):
        packs.append(cheap[i : i + profile.pack])
    return packs


def check_results_writable(cfg: SweepConfig) -> None:
    """Fail before submitting anything if results cannot be written (a job would fail later, silently)."""
    for d in (cfg.runs_dir, cfg.sweeps_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"results folder {d} is not writable ({exc.strerror or exc}); "
                              "choose another with --results DIR") from None


def check_executor_available(executor: str) -> None:
    if executor == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("--executor slurm needs SLURM's sbatch on PATH, and there is none on this machine; "
                          "use --executor local to run the sweep here (or start a test cluster: "
                          "bash slurm/cluster.sh install && bash slurm/cluster.sh start)")


def resolve_for_planning(cfg: SweepConfig, specs: list[RunSpec]) -> list["ResolvedRun"]:
    """The ResolvedRuns of a sweep's specs as far as the code decides them without data or weights.

    Planning needs canonical encoders, methods, dtype and splits; a plan is made
    on a login node, often before the data or the weights are there, so layers
    stay as requested (None: the encoder's default, which the encode job resolves).
    """
    from alignbench.identity import Resolver

    resolver = Resolver(cfg.store_root, cfg.data_path)
    return [resolver.resolve(s, data=False, layers=False) for s in specs]


def feature_needs(runs: list["ResolvedRun"]) -> list["FeatureSet"]:
    """Every feature set the runs read (training/validation pairs and task needs), once each.

    Canonical encoders, the runs' layers and dtype, canonical splits: nothing is re-read from spec strings.
    """
    from alignbench import feature_kinds

    needs: dict[str, feature_kinds.FeatureSet] = {}
    tasks: dict[Any, Any] = {}
    for run in runs:
        pair = (run.image.encoder, run.text.encoder)
        wanted = [("pairs", ref.dataset, ref.split, None) for ref in (run.train, run.val) if ref is not None]
        for ev in run.evals:
            task = tasks.setdefault(ev, ev.task_object())
            wanted += [(need.what, need.dataset, need.split, need.view) for need in task.needs(ev.dataset, ev.split)]
        for what, dataset, split, view in wanted:
            for kind in feature_kinds.expand(what):
                fs = feature_kinds.feature_set(kind, pair, dataset, split, image_layer=run.image.layer,
                                               text_layer=run.text.layer, dtype=run.dtype, view=view)
                needs.setdefault(fs.key, fs)
    return list(needs.values())


def missing_features(needs: list["FeatureSet"], store_root: Path | None, data_root: Path | None) -> list["FeatureSet"]:
    """The feature sets not (validly) in the store; nothing is encoded."""
    from alignbench.store import FeatureStore

    store = FeatureStore(store_root)
    return [n for n in needs if not n.spec.has(store, n, data_root=data_root)]
