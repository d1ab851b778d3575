"""Where training samples live and how they reach the device: resident on the device while they
fit (:class:`Residency`, ``train.device_cache``), otherwise parked in pinned host memory
(:func:`host_copy`) and copied over on a side CUDA stream (:class:`Prefetcher`), so that the
copy of the next draw overlaps the current step. Without CUDA every copy here is a no-op (the
tensors stay the ones given), so the CPU runs the same code path with the same numbers."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = [
    "Prefetcher",
    "Residency",
    "host_copy",
    "nbytes",
    "plan_residency",
    "resident_budget",
]

#: ``train.device_cache: auto`` keeps training volumes on the device while they take at most
#: this share of the memory free when training starts (the rest is left to the steps)
AUTO_SHARE = 0.5


def _cuda(device) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of ``tensors`` (each counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def host_copy(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` parked on the host: a pinned copy when ``device`` is a CUDA device (so that the
    copy back can run asynchronously), else ``t`` itself when already on the CPU."""
    if not _cuda(device):
        return t.to("cpu")
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t)
    return out


def resident_budget(device) -> int | None:
    """``train.device_cache: auto``: bytes of training volumes that may stay resident on
    ``device`` (:data:`AUTO_SHARE` of its free memory now); None (no limit) off CUDA, where the
    samples are in host memory anyway."""
    if not _cuda(device):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(AUTO_SHARE * free)


class Residency:
    """Which training volumes stay on the device: the first ``count`` admitted
    (``train.device_cache: N``), or, with ``budget`` bytes, those that still fit
    (``train.device_cache: auto``); ``None`` for both keeps every volume. One object may be
    shared by several caches (the settings of one model), so that they share the budget."""

    def __init__(self, count: int | None = None, budget: int | None = None):
        self.count, self.budget = count, budget
        self.volumes = 0
        self.bytes = 0

    def admit(self, size: int) -> bool:
        """True (and counted) when a volume of ``size`` bytes may stay on the device."""
        if self.count is not None and self.volumes >= self.count:
            return False
        if self.budget is not None and self.bytes + size > self.budget:
            return False
        self.volumes += 1
        self.bytes += size
        return True

    @property
    def gb(self) -> float:
        """GB (10⁹ B) of the volumes admitted."""
        return self.bytes / 1e9


def plan_residency(settings: list[str], device_cache, device) -> dict:
    """``{setting: Residency}`` of a run's training caches and ``"store"`` for the files kept
    for fresh MRI masks: ``train.device_cache`` N = N volumes (split between the settings),
    ``auto`` = one budget shared by all (:func:`resident_budget`)."""
    if device_cache == "auto":
        shared = Residency(budget=resident_budget(device))
        return {**dict.fromkeys(settings, shared), "store": shared}
    n = int(device_cache)
    per = {s: Residency(count=n // len(settings)) for s in settings}
    return {**per, "store": Residency(count=n)}


class Prefetcher:
    """Host → device copies on a side CUDA stream (:meth:`copy`), waited for by the compute
    stream only when the tensors are used (:meth:`ready`). Off CUDA, :meth:`copy` is
    ``t.to(device)`` (no copy for a CPU tensor) and :meth:`ready` does nothing."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if _cuda(self.device) else None

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        if self.stream is None:
            return t.to(self.device)
        with torch.cuda.stream(self.stream):
            return t.to(self.device, non_blocking=True)

    def ready(self, tensors: Iterable[torch.Tensor]) -> None:
        """Make the compute stream wait for the copies of ``tensors`` (and keep their memory
        from being reused before the compute stream is done with them)."""
        if self.stream is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for t in tensors:
            if t.device.type == "cuda":
                t.record_stream(current)
