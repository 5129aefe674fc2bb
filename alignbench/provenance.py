"""Where a result came from: package versions, git revision, host, CPU, device, dtype.

Every result JSON carries this block so a number in a table can be traced to
the code and software stack that produced it (DESIGN.md: "every result
records its resolved config, package versions, git revision, device and
dtype").  Nothing here may fail a run: unknown values are recorded as None.
"""
from __future__ import annotations

import importlib.metadata
import logging
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from alignbench.devices import cpu_bf16_flags, cpu_model, is_cuda

log = logging.getLogger(__name__)

PACKAGES = (
    "alignbench",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "timm",
    "transformers",
    "sentence-transformers",
    "onnxruntime",
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when absent)."""
    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


@lru_cache(maxsize=1)
def git_revision(path: str | None = None) -> dict[str, Any]:
    """Commit of the source tree alignbench is imported from, and whether it had local changes."""
    where = Path(path) if path else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_info(device: str = "cpu") -> dict[str, Any]:
    """The device a run used, with the GPU's name when it is one."""
    info: dict[str, Any] = {"device": str(device)}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if is_cuda(device) and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except Exception as exc:  # provenance must never fail a run
        log.debug("device info unavailable: %s", exc)
    return info


def cpu_info() -> dict[str, Any]:
    """The CPU a run computed on: its model, the kernel level PyTorch dispatches to, its native bf16 flags.

    Why: the same code on the same features gives the same bits on one machine,
    but another CPU's kernels may move the last bits of features and fits, and
    with them a query's rank at a tie (README: "Reproducing these numbers").
    """
    info: dict[str, Any] = {"model": None, "capability": None, "bf16": []}
    try:
        info["model"] = cpu_model()
        info["bf16"] = list(cpu_bf16_flags())
        import torch

        info["capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception as exc:  # provenance must never fail a run
        log.debug("cpu info unavailable: %s", exc)
    return info


def collect(device: str = "cpu", dtype: str = "fp32") -> dict[str, Any]:
    """The provenance block stored in every result."""
    return {
        "packages": package_versions(),
        "git": git_revision(),
        **device_info(device),
        "dtype": dtype,
        "cpu": cpu_info(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
