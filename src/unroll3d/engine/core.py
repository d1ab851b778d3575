"""What training and evaluation share: the physics a variant sees, the partitioner, one
training pair, full-volume reconstruction (Algorithm 1), timed training steps, sample caching and
model loading. :mod:`unroll3d.engine.train` and :mod:`unroll3d.engine.evaluate` both build on
this module and never import each other.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unroll3d.config import evaluate_settings, resolve_patch_size, train_settings
from unroll3d.data.loading import load_sample
from unroll3d.data.sample import check_same_shape
from unroll3d.models import build_variant
from unroll3d.models.build import configure_network
from unroll3d.normal import DiagCirculantWrapper, NormalFit, check_fit_matches, load_normal
from unroll3d.normal.mask import mask_normal, probe_error
from unroll3d.partition import PartitionedReconstructor, crop_patch, sample_patch_start
from unroll3d.physics import initial_reconstruction, sqnorm
from unroll3d.variants import VariantSpec

__all__ = [
    "ModelFileError",
    "Prepared",
    "SampleCache",
    "default_loader",
    "estimate_pair",
    "h_builder",
    "h_kwargs",
    "h_record",
    "load_H",
    "load_trained",
    "make_partitioner",
    "mri_h_mode",
    "own_normal",
    "patch_ranges",
    "peak_memory_gb",
    "physics_for",
    "reconstruct",
    "refine_enabled",
    "refine_record",
    "resolve_device",
    "shape_text",
    "sync",
    "time_train_steps",
]


# --------------------------------------------------------------------------- devices, timing


class ModelFileError(ValueError):
    """A model file that cannot be read or was not written by ``unroll3d train``."""


class DeviceError(ValueError):
    """A ``--device`` this machine does not have (one line, no torch traceback)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a
    :class:`DeviceError` for a device the machine lacks (``cuda`` without CUDA)."""
    import argparse

    from unroll3d.utils import check_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_device(name)
    except argparse.ArgumentTypeError as err:
        raise DeviceError(f"--device {err}") from None
    return torch.device(name)


def peak_memory_gb(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in GB (10⁹ B) on CUDA, else None."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 1e9
    return None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock timings mean something on CUDA."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def shape_text(x: torch.Tensor) -> str:
    """``"24³"`` for a cube, else ``"16×20×18"`` (the volume named in OOM messages)."""
    s = list(x.shape[-3:])
    return f"{s[0]}³" if len(set(s)) == 1 else "×".join(str(v) for v in s)


# --------------------------------------------------------------------------- operators


def lipschitz_of(sample, x0: torch.Tensor | None = None) -> float:
    """:math:`\\|A\\|^2` of a sample's operator: ``sample.meta["op_norm_sq"]`` when the loader
    stored it, else the power method (:func:`unroll3d.physics.sqnorm`)."""
    stored = (getattr(sample, "meta", None) or {}).get("op_norm_sq")
    if stored is not None:
        return float(stored)
    ref = sample.x if x0 is None else x0
    return sqnorm(sample.physics, img_size=tuple(ref.shape[1:]), device=ref.device)


def load_H(path: str | Path | None, device: torch.device | str = "cpu") -> NormalFit | None:
    """The fitted H of ``path`` on ``device`` (None when no path is given)."""
    if path is None:
        return None
    return load_normal(path).to(device)


def h_kwargs(spec: VariantSpec, H: NormalFit | None, img_size: Sequence[int]) -> dict:
    """Keyword arguments that carry H to a ``PartitionedReconstructor`` call (the
    :class:`~unroll3d.normal.DiagCirculant`, built once per image size by ``H.operator``, and
    ``anchored`` for a variant whose H step is anchored at the patch's initial iterate)."""
    if not spec.use_H:
        return {}
    if H is None:
        raise ValueError(f"variant {spec.name!r} uses H but no normal-operator file was given")
    anchored = {"anchored": True} if spec.anchored_H else {}
    return {"normal": H.operator(tuple(img_size)), **anchored}


def physics_for(sample, spec: VariantSpec, H: NormalFit | None, lipschitz: float):
    """The physics a variant sees: the sample's own, or wrapped with H (``scaling`` = ‖A‖²).
    H must have been fitted for the sample's setting and image size
    (:func:`unroll3d.normal.check_fit_matches`)."""
    if not spec.use_H:
        return sample.physics
    if H is None:
        raise ValueError(f"variant {spec.name!r} uses H but no normal-operator file was given")
    meta = getattr(sample, "meta", None) or {}
    check_fit_matches(
        H,
        meta.get("setting"),
        sample.x.shape[1:],
        meta.get("source") or f"volume {meta.get('volume', '?')}",
    )
    return DiagCirculantWrapper(
        sample.physics,
        img_size=tuple(sample.x.shape[1:]),
        scaling=float(lipschitz if H.scaling is None else H.scaling),
        device=sample.x.device,
        fourier_filter=H.fourier_filter,
        spatial_mask=H.spatial_mask,
        two_sided=H.two_sided,
        grid=H.grid,
    )


def mri_h_mode(task: str, config: dict) -> str:
    """``normal.mri_h`` of an MRI job (``fit`` for CBCT): ``mask`` / ``mask-coils`` build each
    sample's H from its own mask (:func:`own_normal`), ``fit`` uses the data-free fit files."""
    if task != "mri":
        return "fit"
    from unroll3d.config import section_defaults

    return str((config.get("normal") or {}).get("mri_h") or section_defaults("normal")["mri_h"])


def own_normal(sample, reference: NormalFit | None, mode: str) -> NormalFit:
    """The H of ``sample``'s own operator: λ from its Cartesian mask weighted by its
    coils' coherence (:func:`unroll3d.normal.mask_normal`), m from ``reference`` (the setting's
    data-free fit, ``mode`` ``mask``) or from the coil maps (``mask-coils``)."""
    meta = getattr(sample, "meta", None) or {}
    img = tuple(sample.x.shape[1:])
    where = meta.get("source") or f"volume {meta.get('volume', '?')}"
    if mode == "mask":
        if reference is None:
            raise ValueError(
                "normal.mri_h: mask takes m from the setting's data-free fit, but no "
                "normal-operator file was given (--normal), or use normal.mri_h: mask-coils"
            )
        check_fit_matches(reference, meta.get("setting"), img, where)
        m, grid, m_from = reference.spatial_mask, reference.grid, reference.source or "fit"
    elif mode == "mask-coils":
        m, grid, m_from = "coils", None, "coil maps"
    else:
        raise ValueError(f"normal.mri_h {mode!r} does not build H from the mask")
    with torch.no_grad():
        return mask_normal(
            sample.physics,
            img,
            m=m,
            grid=grid,
            meta={
                "setting": meta.get("setting"),
                "input": str(meta.get("source") or meta.get("volume", "?")),
                "m_from": str(m_from),
                "mask_seed": meta.get("mask_seed"),
            },
        )


def h_builder(spec: VariantSpec, task: str, config: dict) -> Callable | None:
    """``(sample, setting_fit) -> H`` for a variant with H under ``normal.mri_h`` mask /
    mask-coils (MRI), None otherwise (the setting's fit is used as is)."""
    mode = mri_h_mode(task, config)
    if not spec.use_H or mode == "fit":
        return None
    return lambda sample, reference: own_normal(sample, reference, mode)


def h_record(H: NormalFit, sample, probes: int = 4) -> dict:
    """What an evaluation records about a mask-built H (the eval JSON's ``normal_fit``): its
    kind, where m came from and its error ‖AᵀAx − Hx‖/‖AᵀAx‖ on seeded Gaussian probes."""
    meta = getattr(sample, "meta", None) or {}
    err = probe_error(sample.physics, H.operator(tuple(sample.x.shape[1:])), H.scaling, probes)
    return {
        "file": "mask of the volume",
        "fitted_on": str(meta.get("volume") or Path(str(H.meta.get("input", "?"))).stem),
        "heldout_rel_error": err,
        "h": "mask",
        "m_from": str(H.meta.get("m_from", "?")),
    }


# --------------------------------------------------------------------------- partitioning


def patch_ranges(spatial: Sequence[int], patch: Sequence[int], margin: Sequence[float] | None):
    """Training patch-corner bounds from margins given as fractions of each axis.

    Corner ``c`` on an axis of size ``n`` with patch ``p`` and margin ``f`` lies in
    ``[round(f n), n − round(f n) − p]`` (docs/paper-notes.md §10, CBCT: z ∈ [80, 421 − D] and
    y, x ∈ [50, 451 − H] at 501³ ≈ margins (0.16, 0.1, 0.1)). An axis too small for its margin
    falls back to the whole axis. ``None`` = uniform over the volume.
    """
    if margin is None:
        return None
    out = []
    for n, p, f in zip(spatial, patch, margin, strict=True):
        m = int(round(float(f) * int(n)))
        lo, hi = m, int(n) - m - int(p)
        out.append((lo, hi) if hi >= lo else None)
    return out


def make_partitioner(model, task: str, config: dict, img_size: Sequence[int]):
    """``PartitionedReconstructor`` around ``model`` with the task's patch size and stride (a
    patch larger than the volume is an error, not silently clamped)."""
    tcfg = config.get(task, {})
    # -1 = the whole axis; a patch larger than the volume is an error, never clamped
    patch = resolve_patch_size(
        tcfg.get("patch_size", [8, 16, 16]), img_size[-3:], f"{task}.patch_size"
    )
    stride = tcfg.get("stride")
    margin = train_settings(config).get(f"{task}_patch_margin")
    return PartitionedReconstructor(
        base_reconstructor=model,
        img_size=tuple(img_size),
        patch_size=tuple(patch),
        stride=None if stride is None else tuple(stride),
        train_ranges=patch_ranges(img_size[-3:], patch, margin),
    )


@contextmanager
def tiled(model, partitioner):
    """Within the block, ``model``'s network runs patch by patch on the partitioner's grid and
    blending (no-grad inference); restored afterwards, also on an error."""
    model.set_tiling(lambda fn, v: partitioner.apply_patchwise(fn, v, progress=False))
    try:
        yield model
    finally:
        model.set_tiling(None)


def estimate_pair(
    model,
    spec: VariantSpec,
    sample,
    physics,
    x0: torch.Tensor,
    generator: torch.Generator,
    partitioner=None,
    H: NormalFit | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, target) of one training sample: a random patch or the full volume (PnP: the
    denoiser on a noisy random patch of the ground truth)."""
    if spec.kind == "pnp":
        start = sample_patch_start(
            partitioner.img_size, partitioner.patch_size, partitioner.train_ranges, generator
        )
        return model.denoising_pair(crop_patch(sample.x, start, partitioner.patch_size), generator)
    if spec.partition:
        return partitioner.training_pair(
            sample.y,
            physics,
            sample.x,
            generator=generator,
            x0=x0,
            **h_kwargs(spec, H, sample.x.shape[1:]),
        )
    return model(sample.y, physics, x_init=x0), sample.x


# --------------------------------------------------------------------------- inference


def refine_enabled(task: str, config: dict, spec: VariantSpec | None = None) -> bool:
    """Whether Algorithm 1's refinement pass runs for ``spec``: ``evaluate.refine`` and, for MRI,
    ``evaluate.mri_refine``: false = the paper's protocol (first pass only: its data steps are
    exact, so H never acts), true = every partitioned variant, ``H`` = only the variants that
    use H (their refinement uses H, so the H rows measure H at test time)."""
    ecfg = evaluate_settings(config)
    on = bool(ecfg["refine"])
    if task == "mri":
        mode = ecfg["mri_refine"]
        if mode == "H":
            return on and spec is not None and spec.use_H
        on = on and bool(mode)
    return on


def refine_record(task: str, config: dict, spec: VariantSpec) -> str:
    """What a partitioned unrolled variant's test time ran (the eval JSON's ``refinement``):
    ``first pass only``, ``exact refinement`` or ``H refinement``; ``n/a`` for the others."""
    if spec.kind != "unrolled" or not spec.partition:
        return "n/a"
    if not refine_enabled(task, config, spec):
        return "first pass only"
    return "H refinement" if spec.use_H else "exact refinement"


def reconstruct(
    model,
    spec: VariantSpec,
    task: str,
    config: dict,
    sample,
    physics,
    x0: torch.Tensor,
    H: NormalFit | None = None,
    refine: bool | None = None,
) -> torch.Tensor:
    """Full-volume reconstruction of ``sample`` by a variant (no gradient).

    Partitioned unrolled variants follow Algorithm 1 (paper §4.4): a first pass of the network on
    the whole problem (data steps on the full volume with the exact operator, prior step patch
    by patch), then, when ``refine`` (default: :func:`refine_enabled`), one refinement pass per
    patch with that estimate as context (with H when the variant uses it). ``postproc`` is the
    DRUNet applied patch by patch to x0 (the same grid and blending); ``pnp`` runs α-PGD on the
    whole volume with its denoiser applied the same way; ``inr`` and ``dpir`` reconstruct the
    whole volume themselves.
    """
    refine = refine_enabled(task, config, spec) if refine is None else refine
    with torch.no_grad():
        if spec.kind in ("analytical", "adjoint"):  # FDK returns x0; RSS and Aᵀy compute theirs
            return model(sample.y, sample.physics, x_init=x0)
        if not spec.partition:
            return model(sample.y, physics, x_init=x0)
        partitioner = make_partitioner(model, task, config, sample.x.shape[1:])
        with tiled(model, partitioner):
            est = model(sample.y, sample.physics, x_init=x0)
        if spec.kind != "unrolled" or not refine:  # post-processing, PnP: one pass
            return est
        return partitioner(
            sample.y,
            physics,
            x0=x0,
            x_init=est,
            refine=True,
            **h_kwargs(spec, H, sample.x.shape[1:]),
        )


def time_train_steps(
    model, spec: VariantSpec, task, config, prep_sample, physics, x0, H, n_steps: int, device
) -> dict:
    """Time ``n_steps`` training micro-steps (batch 1) after one warm-up, on a copy of ``model``."""
    net = copy.deepcopy(model).train()
    # deepcopy keeps bf16 and the layout but drops a torch.compile: apply the keys again
    net = configure_network(net, train_settings(config), device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-12)
    partitioner = (
        make_partitioner(net, task, config, prep_sample.x.shape[1:]) if spec.partition else None
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(n_steps + 1):
            gen = torch.Generator(device="cpu").manual_seed(i)
            sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            est, target = estimate_pair(net, spec, prep_sample, physics, x0, gen, partitioner, H)
            loss = torch.mean((est.float() - target.float()) ** 2)
            loss.backward()
            opt.step()
            sync(device)
            if i > 0:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        peak = peak_memory_gb(device) or 0.0
        return {
            "status": "oom",
            "message": f"OOM at volume {shape_text(prep_sample.x)}, peak {peak:.2f} GB",
            "step_time_s": None,
            "peak_memory_gb": peak,
            "steps": len(times),
        }
    finally:
        del net, opt
    return {
        "status": "ok",
        "message": None,
        "step_time_s": float(np.mean(times)),
        "peak_memory_gb": peak_memory_gb(device),
        "steps": len(times),
    }


# --------------------------------------------------------------------------- samples


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


def use_lipschitz(model, lipschitz: float | None) -> None:
    """Normalise ``model``'s step sizes by ``lipschitz`` (‖A‖² of the sample at hand): one
    model shared across settings sees operators whose norms differ (30 vs 100 views)."""
    buf = getattr(model, "lipschitz", None)
    if lipschitz is not None and isinstance(buf, torch.Tensor):
        buf.fill_(float(lipschitz))


def load_trained(
    path: str | Path, task: str, config: dict, device="cpu", setting=None, variant=None
):
    """Rebuild a variant from its model file; returns (model or None, payload).

    The file must have been written for ``task`` and, when given, ``variant`` (a model file is
    never trusted by its name: evaluating ``tv`` with the ``fdk`` file is an error naming both).

    A model trained on several settings (``train.share_across_settings``) is set up for
    ``setting``: its ‖A‖² and, for PnP, the parameters chosen on that setting's validation
    volumes; a setting it was not trained on is an error. ``payload["lipschitz"]`` is the one
    used."""
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated or foreign file: name it
        raise ModelFileError(
            f"{path} is not a readable model file ({type(err).__name__}: {err}); rerun its "
            "train job"
        ) from err
    if not isinstance(payload, dict) or "status" not in payload or "variant" not in payload:
        raise ModelFileError(f"{path} is not a model file written by unroll3d train")
    wrote = {"task": payload.get("task"), "variant": payload.get("variant")}
    asked = {"task": task, "variant": variant if variant is not None else wrote["variant"]}
    if wrote != asked:
        raise ModelFileError(
            f"{path} holds the {wrote['variant']} model of task {wrote['task']}, but it is used "
            f"as the {asked['variant']} model of task {asked['task']}; rerun its train job"
        )
    if payload.get("status") != "ok":
        return None, payload
    trained_on = payload.get("settings")
    if setting is not None and trained_on and setting not in trained_on:
        raise ModelFileError(
            f"{path} was trained on settings {trained_on}, not on {setting}; rerun its train job"
        )
    by_setting = payload.get("lipschitz_by_setting") or {}
    payload = {**payload, "lipschitz": by_setting.get(setting, payload.get("lipschitz"))}
    model = build_variant(
        payload["variant"],
        task,
        config,
        lipschitz=payload.get("lipschitz") or 1.0,
        alpha=payload.get("alpha"),
        device=device,
    )
    if payload.get("state_dict") is not None:
        model.load_state_dict(payload["state_dict"])
        use_lipschitz(model, payload["lipschitz"])  # the buffer saved is the last one trained
    algo = payload.get("algo_params") or {}  # {setting: the parameters chosen on validation}
    if algo:
        model.set_algo_params(**(algo[setting] if setting in algo else next(iter(algo.values()))))
    model.eval()
    return model, payload
