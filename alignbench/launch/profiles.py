"""Sweep profiles: submitit executor parameters plus our packing and parallelism options (YAML)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignbench.errors import ConfigError

CHEAP_METHODS = ("cca", "csa", "asif", "random")  # closed-form: seconds each, worth packing
REPO_SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"

# Our profile keys (everything else must be a submitit AutoExecutor parameter).
OUR_PROFILE_KEYS = {
    "description": "free text shown nowhere; document the profile",
    "pack": "closed-form runs per array task (default 4; 1 = one run per task)",
    "pack_methods": f"methods that count as cheap for packing (default {list(CHEAP_METHODS)})",
    "parallel_jobs": "local executor: concurrent jobs (default: CPU count); slurm: default array parallelism",
    "encode": "mapping of executor parameters overriding these ones for stage-1 encode jobs",
    "poll_seconds": "how often --wait polls the scheduler (default 1)",
    "max_num_timeout": "times a timed-out job is requeued before it is given up (submitit; default 3)",
}
DEFAULTS = {"slurm": {"timeout_min": 60, "cpus_per_task": 1}, "local": {"timeout_min": 24 * 60}, "debug": {}}


# Profiles
@dataclass
class Profile:
    """Executor parameters for submitit plus our packing/parallelism options."""

    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # AutoExecutor.update_parameters(**params)
    encode_params: dict[str, Any] = field(default_factory=dict)
    pack: int = 4
    pack_methods: tuple[str, ...] = CHEAP_METHODS
    parallel_jobs: int | None = None
    poll_seconds: float = 1.0
    max_num_timeout: int = 3
    description: str = ""


def valid_executor_keys() -> set[str]:
    """Keys submitit's AutoExecutor accepts: generic ones plus ``<executor>_<parameter>``."""
    from submitit.auto.auto import AutoExecutor
    from submitit.core import plugins

    keys = set(AutoExecutor._valid_parameters())
    for name, ex in plugins.get_executors().items():
        keys |= {f"{name}_{p}" for p in ex._valid_parameters()}
        keys |= {f"{name}_{p}" for p in AutoExecutor._valid_parameters()}
    return keys


def resolve_profile_path(name: str) -> Path:
    """A path, or a bare name looked up in the repository's ``slurm/`` folder (``local`` → slurm/local.yaml)."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for cand in (REPO_SLURM_DIR / name, REPO_SLURM_DIR / f"{name}.yaml"):
        if cand.exists():
            return cand
    known = sorted(x.stem for x in REPO_SLURM_DIR.glob("*.yaml")) if REPO_SLURM_DIR.is_dir() else []
    where = f"; profiles in {REPO_SLURM_DIR}: {', '.join(known)}" if known else ""
    raise ConfigError(f"profile {name!r} not found{where}")


def load_profile(name: str | None) -> Profile:
    """Read and validate a profile YAML (ConfigError naming unknown keys); None → built-in defaults."""
    if not name:
        return Profile()
    import yaml

    path = resolve_profile_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path} must be a mapping of executor parameters")
    return profile_from_dict(raw, path=str(path))


def profile_from_dict(raw: dict[str, Any], *, path: str | None = None) -> Profile:
    where = f"profile {path}" if path else "profile"
    valid = valid_executor_keys()
    params = {k: v for k, v in raw.items() if k not in OUR_PROFILE_KEYS}
    _check_keys(params, valid, where)
    encode = raw.get("encode") or {}
    if not isinstance(encode, dict):
        raise ConfigError(f"{where}: 'encode' must be a mapping of executor parameters")
    _check_keys(encode, valid, f"{where} (encode:)")
    prof = Profile(path=path, params=params, encode_params=dict(encode), description=str(raw.get("description", "")))
    try:
        if "pack" in raw:
            prof.pack = int(raw["pack"])
        if "pack_methods" in raw:
            prof.pack_methods = tuple(str(m) for m in raw["pack_methods"] or ())
        if raw.get("parallel_jobs") is not None:
            prof.parallel_jobs = int(raw["parallel_jobs"])
        if "poll_seconds" in raw:
            prof.poll_seconds = float(raw["poll_seconds"])
        if "max_num_timeout" in raw:
            prof.max_num_timeout = int(raw["max_num_timeout"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if prof.pack < 1 or (prof.parallel_jobs is not None and prof.parallel_jobs < 1):
        raise ConfigError(f"{where}: pack and parallel_jobs must be at least 1")
    return prof


def _check_keys(params: dict[str, Any], valid: set[str], where: str) -> None:
    import difflib

    unknown = sorted(k for k in params if k not in valid)
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, sorted(valid | set(OUR_PROFILE_KEYS)), n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    generic = sorted(k for k in valid if "_" not in k or not k.split("_", 1)[0] in ("slurm", "local", "debug"))
    raise ConfigError(
        f"unknown key(s) in {where}: {', '.join(parts)}. Use submitit's parameters — generic "
        f"({', '.join(generic)}) or slurm_<sbatch option> such as slurm_partition, slurm_gres, "
        f"slurm_array_parallelism, slurm_additional_parameters — or ours: {', '.join(sorted(OUR_PROFILE_KEYS))}"
    )
