"""The operators a variant sees: ‖A‖² of a sample, the fitted H (from its file, or built from
an MRI sample's own mask), and the physics wrapped with H: the one object that carries H to the
model and to the partitioner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from unroll3d.normal import (
    DiagCirculantWrapper,
    NormalFit,
    check_fit_matches,
    check_operator_hash,
    load_normal,
    operator_hash,
)
from unroll3d.normal.mask import mask_normal, probe_error
from unroll3d.physics import sqnorm
from unroll3d.variants import VariantSpec

__all__ = [
    "check_fit_operator",
    "h_builder",
    "h_kwargs",
    "h_record",
    "lipschitz_of",
    "load_H",
    "mri_h_mode",
    "own_normal",
    "physics_for",
]


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


def check_fit_operator(H: NormalFit, sample) -> None:
    """:func:`~unroll3d.normal.load_normal`'s operator-hash check for ``H`` used on the volume
    it was fitted on (:meth:`~unroll3d.normal.NormalFit.fitted_on`: the setting's reference
    volume in training, a per-sample fit at test time): that volume's operator must hash as the
    one ``H`` was fitted to, else a one-line error naming both hashes. On the other volumes of
    its setting a setting's fit is used by design (another walnut, another MRI mask), with no
    operator of its own to be checked against."""
    meta = getattr(sample, "meta", None) or {}
    if H.operator_hash is None or not H.fitted_on(meta):
        return
    actual = operator_hash(sample.physics, tuple(sample.x.shape[1:]))
    check_operator_hash(H.operator_hash, actual, H.source or "the fitted H")


def h_kwargs(spec: VariantSpec, physics) -> dict:
    """Keyword arguments of a ``PartitionedReconstructor`` call for a variant: ``anchored`` when
    its H step is anchored at the patch's initial iterate. H itself travels as ``physics``, the
    :class:`~unroll3d.normal.DiagCirculantWrapper` of :func:`physics_for`."""
    if not spec.use_H:
        return {}
    if not isinstance(physics, DiagCirculantWrapper):
        raise ValueError(
            f"variant {spec.name!r} uses H but its physics is {type(physics).__name__}, not the "
            "DiagCirculantWrapper of physics_for"
        )
    return {"anchored": True} if spec.anchored_H else {}


def physics_for(sample, spec: VariantSpec, H: NormalFit | None, lipschitz: float):
    """The physics a variant sees: the sample's own, or wrapped with H (``scaling`` = ‖A‖²;
    :meth:`~unroll3d.normal.DiagCirculantWrapper.from_fit`, so H is built once per fit).
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
    check_fit_operator(H, sample)
    return DiagCirculantWrapper.from_fit(
        sample.physics,
        H,
        scaling=float(lipschitz if H.scaling is None else H.scaling),
        img_size=tuple(sample.x.shape[1:]),
        device=sample.x.device,
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
        check_fit_operator(reference, sample)
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
