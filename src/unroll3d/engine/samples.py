"""Samples as training and evaluation use them: loaded lazily, with their x0 = A†y, the physics
their variant sees and their H, cached (parked in host memory past ``train.device_cache``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unroll3d.data.loading import load_sample
from unroll3d.data.sample import check_same_shape
from unroll3d.engine.operators import lipschitz_of, physics_for
from unroll3d.normal import NormalFit
from unroll3d.physics import initial_reconstruction
from unroll3d.variants import VariantSpec

__all__ = ["Prepared", "SampleCache", "default_loader", "fresh_mask_loader"]


@dataclass
class Prepared:
    """A loaded sample with the physics its variant sees, its x0 = A†y, the ‖A‖² of its setting
    (the unrolled step size's normalisation) and the H of its setting (None without H)."""

    sample: Any
    physics: Any
    x0: torch.Tensor
    offloaded: bool = False
    device: Any = None
    lipschitz: float | None = None
    H: Any = None


def _moved(prep: Prepared, device: torch.device | str) -> Prepared:
    """A copy of ``prep`` whose volumes (x, y, x0) live on ``device`` (physics unchanged)."""
    sample = copy.copy(prep.sample)
    sample.x = prep.sample.x.to(device, non_blocking=True)
    sample.y = prep.sample.y.to(device, non_blocking=True)
    x0 = prep.x0.to(device, non_blocking=True)
    return Prepared(sample, prep.physics, x0, prep.offloaded, prep.device, prep.lipschitz, prep.H)


#: an operator whose buffers exceed this many bytes moves with its parked sample (MRI coil maps
#: and masks); smaller ones (cone-beam geometry vectors) stay where they are
HEAVY_PHYSICS_BYTES = 64e6


def _heavy(physics) -> bool:
    return sum(b.numel() * b.element_size() for b in physics.buffers()) > HEAVY_PHYSICS_BYTES


class SampleCache:
    """Loads samples lazily (``loader(path)``), computes their x0 = A†y once and caches them.
    With ``h_of`` each sample (and each fresh draw) gets the H of its own operator
    (:func:`h_builder`), else the setting's ``H``. Every volume must have the shape of the first
    one loaded by any cache sharing ``shape_ref`` (MRI: but kz), else a :class:`DataError`.

    The first ``on_device`` samples stay on the device; the others are parked in host memory,
    volumes (x, y, x0) and the sample's own operator (MRI coil maps ≈ 0.9 GB each at
    256×218×170×12), and copied over one at a time when drawn (``train.device_cache``; the paper
    config keeps none: 40 MRI volumes would hold ≈ 36 GB of coil maps). ‖A‖² is computed on the
    first sample and shared by all (``lipschitz``).
    """

    def __init__(
        self,
        paths: Sequence[str],
        loader: Callable,
        spec: VariantSpec,
        H: NormalFit | None,
        lipschitz_fn: Callable | None = None,
        on_device: int | None = None,
        h_of: Callable | None = None,
        shape_ref: dict | None = None,
    ):
        self.paths = list(paths)
        self.h_of = h_of  # (sample, setting fit) -> the sample's own H (normal.mri_h: mask)
        self.loader = loader
        self.spec = spec
        self.H = H
        self.lipschitz: float | None = None
        self._cache: dict[int, Prepared] = {}
        self.lipschitz_fn = lipschitz_fn or lipschitz_of
        self.on_device = on_device
        self._active: int | None = None  # the parked sample whose operator is on the device
        # the first volume's (path, shape); one dict shared by the caches of one data set
        self.shape_ref: dict = {} if shape_ref is None else shape_ref

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> Prepared:
        if i not in self._cache:
            sample = self.loader(self.paths[i])
            check_same_shape(self.shape_ref, self.paths[i], sample)
            with torch.no_grad():
                x0 = initial_reconstruction(sample.physics, sample.y).float()
            if self.lipschitz is None:
                self.lipschitz = self.lipschitz_fn(sample, x0)
            H = self.H if self.h_of is None else self.h_of(sample, self.H)
            phys = physics_for(sample, self.spec, H, self.lipschitz)
            prep = Prepared(sample, phys, x0, lipschitz=self.lipschitz, H=H)
            full = self.on_device is not None and len(self._cache) >= self.on_device
            if full and x0.device.type != "cpu":
                prep = _moved(prep, "cpu")
                prep.offloaded, prep.device = True, x0.device
                self._park_operator(prep)
            self._cache[i] = prep
        prep = self._cache[i]
        if not prep.offloaded:
            return prep
        if self._active not in (None, i):  # one parked sample's operator on the device at a time
            self._park_operator(self._cache[self._active])
        self._active = i
        if _heavy(prep.sample.physics):
            prep.sample.physics.to(prep.device)  # in place: the variant's wrapper holds it too
        return _moved(prep, prep.device)

    @staticmethod
    def _park_operator(prep: Prepared) -> None:
        """Move a parked sample's own operator to host memory when it is heavy (coil maps)."""
        if _heavy(prep.sample.physics):
            prep.sample.physics.to("cpu")

    def fresh(self, i: int, redraw: Callable, seed: int) -> Prepared:
        """Sample ``i`` drawn again by ``redraw(path, seed)`` (a new MRI mask), with its x0 and
        the variant's physics; not cached. ‖A‖² stays the one of the first sample (RSS-normalised
        coil maps: ‖A‖ ≈ 1 whatever the mask)."""
        if self.lipschitz is None:
            self.get(0)
        sample = redraw(self.paths[i], seed)
        with torch.no_grad():
            x0 = initial_reconstruction(sample.physics, sample.y).float()
        H = self.H if self.h_of is None else self.h_of(sample, self.H)  # the draw's own mask
        phys = physics_for(sample, self.spec, H, self.lipschitz)
        return Prepared(sample, phys, x0, lipschitz=self.lipschitz, H=H)

    def device_bytes(self) -> int:
        """Bytes of the cached samples (volumes and operators) on a non-CPU device."""
        total = 0
        for prep in self._cache.values():
            tensors = [prep.sample.x, prep.sample.y, prep.x0, *prep.sample.physics.buffers()]
            total += sum(t.numel() * t.element_size() for t in tensors if t.device.type != "cpu")
        return total


def default_loader(setting: str, device: torch.device) -> Callable:
    """``path -> Sample`` through :func:`unroll3d.data.load_sample` for one setting."""

    def load(path):
        return load_sample(path, setting, device=device)

    return load


def fresh_mask_loader(setting: str, device: torch.device) -> Callable:
    """``(path, seed) -> Sample``: an MRI volume under ``setting`` with the mask of ``seed`` (a
    fresh mask per training draw, docs/paper-notes.md §10). The file is memory-mapped, so a draw reads the
    k-space pages again (from the page cache after the first) instead of keeping every
    volume's full k-space in memory."""

    def load(path, seed: int):
        return load_sample(path, setting, device=device, mask_seed=seed)

    return load
