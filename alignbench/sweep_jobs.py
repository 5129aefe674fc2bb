"""What a sweep job runs on the worker: encode one feature set, or a pack of runs.

Why a separate module: these callables are pickled by reference by submitit
and imported inside the job, so they must live in the installed package (not
in a test or the planner), and they subclass
``submitit.helpers.Checkpointable``: a job that is preempted or hits its time
limit is requeued with the same arguments.  That is safe because everything
here is idempotent — ``run_one`` skips a run whose result exists and the
feature store reuses (or resumes) an entry — so a requeued pack simply does
what is left.

Workers write their own results (``run_one`` writes the result JSON, or
``<run_id>.failed.json`` with the traceback); the planner never depends on
``job.result()``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import submitit

log = logging.getLogger("alignbench.sweep")


def _worker_setup(store_root: str | None, threads: int | None) -> None:
    """Logging to the job log, the feature cache location and the CPU thread budget."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if store_root:
        # FeatureStore() reads $ALIGNBENCH_CACHE: the same store whatever run_one does with its argument.
        os.environ["ALIGNBENCH_CACHE"] = str(store_root)
    n = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
    if n > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
        import torch

        torch.set_num_threads(n)


class RunPack(submitit.helpers.Checkpointable):
    """Run several specs one after the other in one job (cheap closed-form runs share a job).

    A failing run does not stop the pack: its failure record is written by
    ``run_one`` and the next run starts.  The job fails at the end if any run
    failed, so the scheduler's state reflects it too.
    """

    def __call__(self, specs: list[dict[str, Any]], runs_dir: str, store_root: str | None = None,
                 data_root: str | None = None, threads: int | None = None, device: str = "auto") -> dict[str, Any]:
        from alignbench.config import RunSpec
        from alignbench.devices import parse_device
        from alignbench.runner import run_one

        _worker_setup(store_root, threads)
        job = _job_label()
        try:
            device = parse_device(device).resolved  # on the worker: its own GPU (ConfigError if cuda is absent)
        except Exception as exc:  # e.g. --device cuda on a node without a GPU: every run says why
            for d in specs:
                _ensure_failure_record(RunSpec.from_dict(d), exc, runs_dir)
            raise
        log.info("job %s on %s: %d runs, device %s, CUDA_VISIBLE_DEVICES=%s", job, _host(), len(specs), device,
                 os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        done, failed = [], []
        for d in specs:
            spec = RunSpec.from_dict(d)
            t0 = time.perf_counter()
            log.info("job %s: run %s", job, spec.run_id)
            try:
                run_one(spec, results_dir=runs_dir, store_root=store_root, data_root=data_root, device=device,
                        progress=False)
                done.append(spec.run_id)
                log.info("job %s: run %s finished in %.1f s", job, spec.run_id, time.perf_counter() - t0)
            except Exception as exc:  # recorded in <run_id>.failed.json by run_one; keep going
                log.exception("job %s: run %s failed: %s", job, spec.run_id, exc)
                _ensure_failure_record(spec, exc, runs_dir)
                failed.append(spec.run_id)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(specs)} runs failed: {', '.join(failed)} "
                               f"(tracebacks in {runs_dir}/<run_id>.failed.json)")
        return {"done": done}


def _job_label() -> str:
    """'123_4' for an array task, '123' for a plain job, the pid when run locally."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID") or str(os.getpid())


def _host() -> str:
    import socket

    return socket.gethostname()


def _ensure_failure_record(spec: Any, exc: Exception, runs_dir: str) -> None:
    """run_one writes the failure record; write one only if it could not (e.g. it failed to import)."""
    import traceback

    from alignbench.results import ResultStore

    store = ResultStore(runs_dir)
    if store.failed_path_for(spec).exists():
        return
    try:
        store.write_failure({
            "schema_version": 1, "status": "failed", "run_id": spec.run_id, "spec": spec.to_dict(),
            "error": {"type": type(exc).__name__, "message": str(exc), "user_error": False,
                      "traceback": traceback.format_exc()},
            "phase": "start",
        })
    except OSError as write_exc:
        log.error("cannot write the failure record of %s: %s", spec.run_id, write_exc)


class EncodeJob(submitit.helpers.Checkpointable):
    """Encode one feature set into the feature store (stage 1 of a sweep).

    The kind's row in :mod:`alignbench.feature_kinds` says which store call and
    encoder options make it, so every kind a task can need is pre-encoded.  The
    store checkpoints as it encodes, so a requeued job resumes where it stopped.
    """

    def __call__(self, fs: Any, *, store_root: str | None = None, data_root: str | None = None,
                 threads: int | None = None, device: str = "auto") -> str:
        from alignbench.devices import parse_device
        from alignbench.store import FeatureStore

        _worker_setup(store_root, threads)
        store = FeatureStore(store_root, device=parse_device(device).resolved)
        t0 = time.perf_counter()
        fs.spec.get(store, fs, data_root=data_root, progress=False)
        log.info("%s on %s: %s in %.1f s", fs.label(), store.device, store.last_action, time.perf_counter() - t0)
        return store.last_action
