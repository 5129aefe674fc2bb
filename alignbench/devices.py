"""The one table of devices: what ``--device`` accepts and what it resolves to.

Why one place: ``encode``, ``run``, ``sweep`` and the Python API all take a
device; parsing it in each would let one of them accept ``tpu`` or record
``cuda`` while running on the CPU.  Text is checked here once, at the edge,
into a :class:`DeviceChoice`; the core only ever sees ``DeviceChoice.resolved``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from alignbench.errors import ConfigError

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
        return self.resolved.startswith("cuda")

    def __str__(self) -> str:
        return self.resolved


def cuda_device_count() -> int:
    """Visible CUDA devices (0 without CUDA or without a CUDA build of torch)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver must read as "no CUDA", not crash the CLI
        return 0


def parse_device(text: str | None) -> DeviceChoice:
    """``auto|cpu|cuda|cuda:N`` → a DeviceChoice whose ``resolved`` device exists here.

    ``auto`` takes the first CUDA device when one is visible, else the CPU.
    Raises ConfigError (one line, with what to use instead) for an unknown
    spelling, ``cuda`` without CUDA and a ``cuda:N`` index that is not visible.
    """
    s = "auto" if text is None else str(text).strip().lower()
    m = _PATTERN.match(s)
    if not m or (m.group(1) != "cuda" and m.group(2) is not None):
        raise ConfigError(f"unknown device {text!r}: use one of {', '.join(DEVICE_CHOICES)}")
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


__all__ = ["DEVICE_CHOICES", "DeviceChoice", "cuda_device_count", "parse_device"]
