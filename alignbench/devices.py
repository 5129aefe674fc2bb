"""The one table of devices: what ``--device`` accepts and what it resolves to.

Why one place: ``encode``, ``run``, ``sweep`` and the Python API all take a
device; parsing it in each would let one of them accept ``tpu`` or record
``cuda`` while running on the CPU.  Text is checked here once, at the edge,
into a :class:`DeviceChoice`; the core only ever sees ``DeviceChoice.resolved``.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

from alignbench.errors import ConfigError

log = logging.getLogger(__name__)

#: Accepted spellings; ``cuda:N`` picks one GPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceChoice:
    """What the user asked for (``requested``) and the device that will run (``resolved``)."""

    requested: str
    resolved: str

    @property
    def is_cuda(self) -> bool:
        return is_cuda(self.resolved)

    def __str__(self) -> str:
        return self.resolved


def is_cuda(device: Any) -> bool:
    """Whether a resolved device (``"cuda:0"``, a ``torch.device``, a DeviceChoice) is a CUDA GPU."""
    return str(device).startswith("cuda")


def is_cpu(device: Any) -> bool:
    """Whether a resolved device is the CPU (``"cpu"`` or a ``torch.device("cpu")``)."""
    return str(device) == "cpu"


#: A GPU driver leaves one of these; without any, CUDA cannot be there and torch need not be imported
#: (so ``auto`` stays instant for a cached ``alignbench encode``).
_GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def cuda_device_count() -> int:
    """Visible CUDA devices (0 without CUDA or without a CUDA build of torch)."""
    import os
    import sys

    if "torch" not in sys.modules and not any(os.path.exists(p) for p in _GPU_DRIVER_PATHS):
        return 0
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver must read as "no CUDA", not crash the CLI
        return 0


def check_device_text(text: str | None) -> str:
    """The normalised spelling of a device request, checked but NOT resolved.

    For requests resolved elsewhere: a sweep submitted from a login node without
    GPUs names the device its jobs will use on the compute nodes.
    """
    s = "auto" if text is None else str(text).strip().lower()
    m = _PATTERN.match(s)
    if not m or (m.group(1) != "cuda" and m.group(2) is not None):
        import difflib

        close = difflib.get_close_matches(s, ["auto", "cpu", "cuda"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown device {text!r}{hint}: use one of {', '.join(DEVICE_CHOICES)}")
    return s


def parse_device(text: str | None) -> DeviceChoice:
    """``auto|cpu|cuda|cuda:N`` → a DeviceChoice whose ``resolved`` device exists here.

    ``auto`` takes the first CUDA device when one is visible, else the CPU.
    Raises ConfigError (one line, with what to use instead) for an unknown
    spelling, ``cuda`` without CUDA and a ``cuda:N`` index that is not visible.
    """
    s = check_device_text(text)
    m = _PATTERN.match(s)
    assert m is not None
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return DeviceChoice(s, "cpu")
    n = cuda_device_count()
    if kind == "auto":
        return DeviceChoice(s, "cuda:0" if n else "cpu")
    if n == 0:
        raise ConfigError(f"--device {s}: no CUDA device is visible here; use --device cpu or --device auto")
    i = int(index) if index is not None else 0
    if i >= n:
        raise ConfigError(f"--device {s}: only {n} CUDA device(s) visible (cuda:0..cuda:{n - 1}); "
                          "use --device auto or a visible index")
    return DeviceChoice(s, f"cuda:{i}")


# -- what the CPU computes fast ----------------------------------------------------------
#: CPU flags (``/proc/cpuinfo``) that make bf16 matmuls native: AMX tiles or AVX-512 bf16 dot products.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo_field(names: tuple[str, ...]) -> str | None:
    """The first ``/proc/cpuinfo`` line's value whose field is one of ``names`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    return frozenset((_cpuinfo_field(("flags", "Features")) or "").split())


@functools.lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`; None when neither says).

    Recorded with every result: encoders and LAPACK pick kernels by CPU, so two
    CPUs may give features and fits that differ in their last bits.
    """
    import platform

    return _cpuinfo_field(("model name", "Hardware", "cpu model")) or platform.processor() or None


def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of :data:`BF16_CPU_FLAGS` this CPU has (empty: bf16 is emulated, several times slower than fp32)."""
    flags = cpu_flags()
    found = tuple(f for f in BF16_CPU_FLAGS if f in flags)
    if found or flags:
        return found
    try:  # no /proc/cpuinfo (macOS, Windows): ask torch, which only tells AVX-512 from AVX2
        import torch

        return ("avx512_bf16",) if torch.backends.cpu.get_cpu_capability() == "AVX512_BF16" else ()
    except Exception:
        return ()


def cpu_has_fast_bf16() -> bool:
    return bool(cpu_bf16_flags())


def warn_if_slow_dtype(dtype: str, device: str) -> None:
    """Log a warning when ``dtype`` will run emulated here: bf16 on a CPU without AMX / AVX-512 bf16.

    It still works (same numbers as native bf16), only slower than fp32.
    """
    if dtype == "bf16" and is_cpu(device) and not cpu_has_fast_bf16():
        log.warning("this CPU has no native bf16 (no %s): bf16 runs emulated, several times slower than fp32; "
                    "use --dtype fp32 here", " / ".join(BF16_CPU_FLAGS))


#: What a method's ``dtype`` option accepts for its large matmuls: ``auto`` picks the fastest faithful one here.
MATMUL_DTYPES = ("auto", "fp32", "bf16")


def matmul_dtype(requested: str, device: Any) -> tuple[str, str]:
    """(``fp32`` | ``bf16``, why) for a fit's large matmuls on ``device``.

    ``auto``: bf16 (fp32 accumulation inside the matmul, fp32 master weights
    outside it) where the hardware has native bf16 matmuls — AMX or AVX-512
    bf16 on a CPU, any bf16-capable GPU — else fp32 (emulated bf16 is several
    times SLOWER than fp32; benchmarks/bench_pal.py prints both).  An explicit
    ``fp32``/``bf16`` is kept as asked.
    """
    if requested not in MATMUL_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {requested!r}")
    if requested != "auto":
        return requested, "asked"
    if is_cuda(device):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(torch.device(str(device)))} has bf16 matmuls"
        return "fp32", "auto: this GPU has no bf16 matmuls"
    flags = cpu_bf16_flags()
    if flags:
        return "bf16", f"auto: this CPU has {' + '.join(flags)}"
    return "fp32", f"auto: this CPU has no native bf16 ({' / '.join(BF16_CPU_FLAGS)})"


__all__ = ["BF16_CPU_FLAGS", "MATMUL_DTYPES", "matmul_dtype", "DEVICE_CHOICES", "DeviceChoice", "check_device_text", "is_cpu", "is_cuda", "cpu_bf16_flags", "cpu_flags", "cpu_model",
           "cpu_has_fast_bf16", "cuda_device_count", "parse_device", "warn_if_slow_dtype"]
