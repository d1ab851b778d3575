"""Samples as training and evaluation use them: loaded lazily, with their x0 = A†y, the physics
their variant sees and their H, cached (parked in host memory past ``train.device_cache``)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from unroll3d.data.loading import load_sample, read_sample_file
from unroll3d.data.mri import DrawnMask, draw_sample_mask, make_sample
from unroll3d.data.sample import check_same_shape, parse_setting
from unroll3d.engine.operators import lipschitz_of, physics_for
from unroll3d.engine.transfer import Prefetcher, Residency, host_copy, nbytes
from unroll3d.normal import NormalFit
from unroll3d.physics import initial_reconstruction
from unroll3d.variants import VariantSpec

__all__ = [
    "FreshMaskLoader",
    "MaskPrefetch",
    "Prepared",
    "SampleCache",
    "VolumeStore",
    "close_redraws",
    "default_loader",
    "fresh_mask_loader",
]


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
    #: a parked sample's heavy operator buffers, ``[(module, name, tensor)]``: host copies in
    #: the cache, device copies in what :meth:`SampleCache.get` returns
    buffers: list | None = None
    #: a parked partitioned sample's residual y − A x (host copy): a draw copies it in place of
    #: y and x (``y_residual`` on the drawn copy), the ground truth then goes over as a patch
    residual: Any = None
    y_residual: bool = False


def _with(prep: Prepared, move, x: bool, y: bool, x0: bool, buffers: bool) -> Prepared:
    """A copy of ``prep`` whose chosen volumes (and heavy operator buffers) went through
    ``move`` (physics object unchanged)."""
    sample = copy.copy(prep.sample)
    sample.x = move(prep.sample.x) if x else prep.sample.x
    sample.y = move(prep.sample.y) if y else prep.sample.y
    bufs = prep.buffers
    if buffers and bufs:
        bufs = [(m, name, move(t)) for m, name, t in bufs]
    x0_ = move(prep.x0) if x0 else prep.x0
    return dataclasses.replace(prep, sample=sample, x0=x0_, buffers=bufs)


def _heavy_buffers(physics) -> list:
    """``[(module, name, tensor)]`` of every buffer of ``physics`` when it is heavy, else []."""
    if not _heavy(physics):
        return []
    return [
        (m, name, b) for m in physics.modules() for name, b in m._buffers.items() if b is not None
    ]


def _install(buffers: list) -> None:
    """Point each module's buffer at the given tensor (no copy)."""
    for module, name, t in buffers:
        module._buffers[name] = t


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

    Samples stay on the device while ``residency`` admits them (``train.device_cache``: the
    first N, or ``auto``: those that fit in half the free device memory; ``on_device`` = N is
    the short form); the others are parked in host memory (pinned on CUDA), volumes (x, y, x0)
    and the sample's own operator when heavy (MRI coil maps ≈ 0.9 GB each at 256×218×170×12).
    A parked sample is copied over when drawn, or ahead of its draw by :meth:`prefetch` on a
    side stream, and only what its variant needs: nothing for ``pnp`` (the estimate copies the
    patch), x, y and the operator for a partitioned variant (x0 stays on the host: only its
    patch goes over, :func:`unroll3d.engine.partitioning.estimate_pair`), everything for a
    whole-volume one. On CUDA (``crop_context``) a partitioned sample keeps its residual
    y − A x, computed once when parked, and a draw copies that and the operator only: the ground
    truth goes over as a patch too (ỹ = (y − A x) + Ã S x, the same ỹ up to rounding). The last parked sample drawn stays on the device until another is drawn.
    Without CUDA every copy is a no-op and the numbers are those of a resident sample. ‖A‖² is
    computed on the first sample and shared by all (``lipschitz``).
    """

    #: parked partitioned samples keep y − A x to copy instead of y and x (None = on CUDA)
    crop_context: bool | None = None

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
        residency: Residency | None = None,
    ):
        self.paths = list(paths)
        self.h_of = h_of  # (sample, setting fit) -> the sample's own H (normal.mri_h: mask)
        self.loader = loader
        self.spec = spec
        self.H = H
        self.lipschitz: float | None = None
        self._cache: dict[int, Prepared] = {}
        self.lipschitz_fn = lipschitz_fn or lipschitz_of
        self.residency = residency or Residency(count=on_device)
        self._prefetcher: Prefetcher | None = None
        self._active: tuple | None = None  # (i, Prepared, whole): the parked one on the device
        self._inflight: dict[int, Prepared] = {}  # parked samples being copied over
        # the first volume's (path, shape); one dict shared by the caches of one data set
        self.shape_ref: dict = {} if shape_ref is None else shape_ref

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> Prepared:
        sample = self.loader(self.paths[i])
        check_same_shape(self.shape_ref, self.paths[i], sample)
        with torch.no_grad():
            x0 = initial_reconstruction(sample.physics, sample.y).float()
        if self.lipschitz is None:
            self.lipschitz = self.lipschitz_fn(sample, x0)
        H = self.H if self.h_of is None else self.h_of(sample, self.H)
        phys = physics_for(sample, self.spec, H, self.lipschitz)
        return Prepared(sample, phys, x0, lipschitz=self.lipschitz, H=H)

    def get(self, i: int, whole: bool = False) -> Prepared:
        """Sample ``i`` as a step uses it (``whole``: every volume on the device, whatever the
        variant needs, as evaluation and PnP's parameter search use it)."""
        if i not in self._cache:
            prep = self._load(i)
            heavy = _heavy_buffers(prep.sample.physics)
            size = nbytes([prep.sample.x, prep.sample.y, prep.x0, *(t for *_, t in heavy)])
            if not self.residency.admit(size):
                prep = self._park(prep, heavy)
            self._cache[i] = prep
        prep = self._cache[i]
        return self._fetch(i, whole) if prep.offloaded else prep

    def _park(self, prep: Prepared, heavy: list) -> Prepared:
        """``prep`` moved to (pinned) host memory, its heavy operator buffers too."""
        device = prep.x0.device
        self._prefetcher = self._prefetcher or Prefetcher(device)
        residual = None
        crop = self.crop_context
        if self.spec.partition and (crop or (crop is None and device.type == "cuda")):
            with torch.no_grad():  # once per volume: ỹ = r + Ã S x needs x's patch only
                residual = host_copy(prep.sample.y - prep.sample.physics.A(prep.sample.x), device)
        prep = dataclasses.replace(prep, buffers=heavy)
        parked = _with(prep, lambda t: host_copy(t, device), True, True, True, True)
        _install(parked.buffers or [])
        return dataclasses.replace(parked, offloaded=True, device=device, residual=residual)

    def _start(self, i: int, whole: bool = False) -> Prepared:
        """Start copying parked sample ``i`` to its device: what its variant needs (``whole``:
        all of it)."""
        prep = self._cache[i]
        if prep.residual is not None and not whole:  # y − A x instead of y and x
            sample = copy.copy(prep.sample)
            sample.y = self._prefetcher.copy(prep.residual)
            prep = dataclasses.replace(prep, sample=sample, y_residual=True)
            return _with(prep, self._prefetcher.copy, False, False, False, True)
        needs = whole or self.spec.kind != "pnp"
        x0 = whole or (needs and not self.spec.partition)
        return _with(prep, self._prefetcher.copy, needs, needs, x0, needs)

    def prefetch(self, i: int) -> None:
        """Start copying parked sample ``i`` now (side stream), so that its draw finds it there;
        nothing for a resident, not yet loaded, already copied or in-flight sample."""
        prep = self._cache.get(i)
        if prep is None or not prep.offloaded or i in self._inflight:
            return
        if self._active is None or self._active[0] != i:
            self._inflight[i] = self._start(i)

    def _fetch(self, i: int, whole: bool) -> Prepared:
        """Parked sample ``i`` on the device: the one there already, the prefetched one, or a
        copy started now; its operator's device buffers installed, the previous one's parked."""
        if self._active is not None and self._active[0] == i and (self._active[2] or not whole):
            return self._active[1]
        dev = (None if whole else self._inflight.pop(i, None)) or self._start(i, whole)
        bufs = dev.buffers or []
        self._prefetcher.ready([dev.sample.x, dev.sample.y, dev.x0, *(t for *_, t in bufs)])
        if self._active is not None:  # one parked sample's operator on the device at a time
            _install(self._cache[self._active[0]].buffers or [])
        _install(bufs)
        self._active = (i, dev, whole)
        return dev

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
        preps = [*self._cache.values(), *self._inflight.values()]
        preps += [self._active[1]] if self._active is not None else []
        tensors = [t for p in preps for t in (p.sample.x, p.sample.y, p.x0)]
        tensors += [t for p in self._cache.values() for t in p.sample.physics.buffers()]
        tensors += [t for p in preps for *_, t in (p.buffers or [])]
        return nbytes(t for t in tensors if t.device.type != "cpu")


def default_loader(setting: str, device: torch.device) -> Callable:
    """``path -> Sample`` through :func:`unroll3d.data.load_sample` for one setting."""

    def load(path):
        return load_sample(path, setting, device=device)

    return load


class MaskPrefetch:
    """The next fresh MRI mask, drawn ahead on one worker thread (numpy releases the GIL for
    most of a Poisson-disc draw), so that the draw that needs it finds it done. One draw is
    pending at a time, under its key (setting, path, seed); :meth:`take` hands it over only to
    the draw with that key. :meth:`close` ends the thread (a later :meth:`start` starts one)."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._next: tuple[tuple, Future] | None = None

    def start(self, key: tuple, draw: Callable[[], DrawnMask]) -> None:
        """Start ``draw()`` for ``key`` (replacing another pending draw; nothing if ``key``'s is
        pending already)."""
        if self._next is not None:
            if self._next[0] == key:
                return
            self._next[1].cancel()  # a replaced draw not yet started never runs
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="unroll3d-mask")
        self._next = (key, self._pool.submit(draw))

    def take(self, key: tuple) -> DrawnMask | None:
        """The mask drawn ahead for ``key`` (waiting for it if in flight), else None (a pending
        draw for another key stays pending)."""
        if self._next is None or self._next[0] != key:
            return None
        _, future = self._next
        self._next = None
        return future.result()

    def close(self) -> None:
        """Drop the pending draw and end the worker thread (waits for a draw in flight)."""
        self._next = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class VolumeStore:
    """The arrays of preprocessed MRI files that fresh-mask draws rebuild their samples from
    (k-space, coil maps, ground truth), read once per file and kept: on ``device`` while
    ``residency`` admits them, otherwise in pinned host memory and copied over per draw (the
    last one drawn stays; :meth:`prefetch` starts the next one's copy on a side stream). Off
    CUDA the arrays stay the memory-mapped ones (no copy). One store serves every setting."""

    KEPT = ("kspace", "coil_maps", "x")

    def __init__(self, device, residency: Residency | None = None):
        self.device = torch.device(device)
        self.residency = residency or Residency()
        self._files: dict[str, tuple[dict, dict, bool]] = {}  # path -> (arrays, meta, parked)
        self._prefetcher = Prefetcher(self.device)
        self._active: tuple[str, dict] | None = None
        self._inflight: dict[str, dict] = {}
        self.masks = MaskPrefetch()  # the next draw's mask, drawn ahead

    def kept(self, path: str) -> tuple[dict, dict] | None:
        """``(arrays, meta)`` of ``path`` as kept (resident or parked), None while unread."""
        entry = self._files.get(path)
        return None if entry is None else entry[:2]

    def _read(self, path: str, setting: str) -> tuple[dict, dict, bool]:
        if path not in self._files:
            data, meta, _task, _value = read_sample_file(path, setting)
            data = dict(data)
            parked = not self.residency.admit(nbytes(data[k] for k in self.KEPT))
            for k in self.KEPT:
                data[k] = host_copy(data[k], self.device) if parked else data[k].to(self.device)
            self._files[path] = (data, meta, parked)
        return self._files[path]

    def _copy(self, data: dict) -> dict:
        return {**data, **{k: self._prefetcher.copy(data[k]) for k in self.KEPT}}

    def arrays(self, path: str, setting: str) -> tuple[dict, dict]:
        """``(arrays, meta)`` of ``path`` with the kept arrays on the device."""
        data, meta, parked = self._read(path, setting)
        if not parked:
            return data, meta
        if self._active is None or self._active[0] != path:
            dev = self._inflight.pop(path, None) or self._copy(data)
            self._prefetcher.ready([dev[k] for k in self.KEPT])
            self._active = (path, dev)
        return self._active[1], meta

    def prefetch(self, path: str) -> None:
        """Start copying a parked file's arrays now (nothing when resident, unread, already
        there or in flight)."""
        entry = self._files.get(path)
        if entry is None or not entry[2] or path in self._inflight:
            return
        if self._active is None or self._active[0] != path:
            self._inflight[path] = self._copy(entry[0])


class FreshMaskLoader:
    """``(path, seed) -> Sample``: an MRI volume under ``setting`` with the mask of ``seed`` (a
    fresh mask per training draw, docs/paper-notes.md §10), the same sample as
    ``load_sample(path, setting, mask_seed=seed)``. The file's k-space, coil maps and ground
    truth are read once and kept by ``store`` (resident on the device, or parked in pinned host
    memory), so a draw builds and copies only its (ky, kz) mask instead of reading the volume
    again; :meth:`prefetch` draws the next draw's mask ahead, on the store's worker thread
    (:class:`MaskPrefetch`; the same mask, bit for bit). :meth:`close` ends that thread."""

    def __init__(self, setting: str, device, store: VolumeStore | None = None):
        self.setting = setting
        self.device = torch.device(device)
        self.store = store or VolumeStore(device)

    def __call__(self, path, seed: int):
        path = str(path)
        data, meta = self.store.arrays(path, self.setting)
        _task, value = parse_setting(self.setting)
        mask = self.store.masks.take((self.setting, path, seed))  # drawn ahead by prefetch
        if mask is None:
            mask = draw_sample_mask(data, meta, value, seed)
        return make_sample(
            data, meta, self.setting, value, seed, self.device, host_scale=False, mask=mask
        )

    def prefetch(self, path, seed: int | None = None) -> None:
        """Start copying ``path``'s parked arrays and, given the draw's ``seed``, drawing its mask
        on the store's worker thread (once the file was read: its first draw draws inline)."""
        path = str(path)
        self.store.prefetch(path)
        kept = self.store.kept(path)
        if seed is None or kept is None:
            return
        (data, meta), (_task, value) = kept, parse_setting(self.setting)
        self.store.masks.start(
            (self.setting, path, seed), lambda: draw_sample_mask(data, meta, value, seed)
        )

    def close(self) -> None:
        """End the store's mask worker thread."""
        self.store.masks.close()


def close_redraws(redraws: Iterable) -> None:
    """Close each redraw that has a ``close`` (the fresh-mask loaders' worker threads)."""
    for redraw in redraws:
        close = getattr(redraw, "close", None)
        if close is not None:
            close()


def fresh_mask_loader(setting: str, device, store: VolumeStore | None = None) -> FreshMaskLoader:
    """``(path, seed) -> Sample``: an MRI volume under ``setting`` with the mask of ``seed``
    (:class:`FreshMaskLoader`; ``store`` shares the kept arrays between settings)."""
    return FreshMaskLoader(setting, device, store)
