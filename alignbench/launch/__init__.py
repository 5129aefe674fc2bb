"""Plan, submit and track a sweep: encode jobs first, then ONE job array of runs.

Why this shape (after submitit's and dinov2's launchers):

* Stage 1 submits one encode job per feature set still missing from the
  feature store, and waits for them, so hundreds of array tasks do not all
  queue on the same encode lock.  Stage 2 submits every missing run as one
  job array (capped parallelism); several cheap closed-form runs can share an
  array task ("packs"), which amortises job start-up.
* Workers write their own result files (``run_one``); nothing here reads
  ``job.result()``.  Done = the result JSON exists.
* A ledger per sweep (``results/sweeps/<sweep_id>.json``, beside ``results/runs``; written
  atomically) maps run id → job id, array index and log paths.  It makes
  ``--status`` possible (done / running / failed / lost / missing) and makes a
  re-run submit only what is missing or failed: runs whose job is still alive
  (squeue) are left alone, so killing the submitter and re-running neither
  duplicates nor loses a run.  A submission is recorded *before* sbatch with a
  unique job name, so even a kill between sbatch and the ledger update is
  recovered by looking the name up in squeue/sacct.
* Imports stay lazy: re-running a finished sweep only scans names and checks
  files (no torch, no submitit) and returns in well under 5 s.
"""
from __future__ import annotations

from alignbench.launch.ledger import LEDGER_VERSION, Ledger, sweep_id
from alignbench.launch.planning import (check_executor_available, check_results_writable, feature_needs,
                                        group_packs, missing_features, resolve_for_planning)
from alignbench.launch.profiles import (CHEAP_METHODS, DEFAULTS, OUR_PROFILE_KEYS, REPO_SLURM_DIR, Profile,
                                        load_profile, profile_from_dict, resolve_profile_path, valid_executor_keys)
from alignbench.launch.scheduler import local_alive, slurm_final_states, slurm_jobs_named, slurm_live_jobs
from alignbench.launch.status import RunStatus, SweepReport, collect_status
from alignbench.launch.sweep import all_ledgers_status, prepare, run_sweep, sweep_status, wait_for
from alignbench.sweep_config import SweepConfig

__all__ = ["CHEAP_METHODS", "DEFAULTS", "LEDGER_VERSION", "OUR_PROFILE_KEYS", "REPO_SLURM_DIR", "Ledger", "Profile",
           "RunStatus", "SweepConfig", "SweepReport", "all_ledgers_status", "check_executor_available",
           "check_results_writable", "collect_status", "feature_needs", "group_packs", "load_profile", "local_alive",
           "missing_features", "prepare", "resolve_for_planning", "profile_from_dict", "resolve_profile_path", "run_sweep",
           "slurm_final_states", "slurm_jobs_named", "slurm_live_jobs", "sweep_id", "sweep_status",
           "valid_executor_keys", "wait_for"]
