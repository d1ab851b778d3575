"""The device a verb runs on: ``--device`` resolved, a one-line error for one the machine lacks."""

from __future__ import annotations

import torch

from unroll3d.utils import check_device

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """A ``--device`` this machine does not have (one line, no torch traceback)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a
    :class:`DeviceError` for a device the machine lacks (``cuda`` without CUDA)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_device(name)
    except ValueError as err:
        raise DeviceError(f"--device {err}") from None
    return torch.device(name)
