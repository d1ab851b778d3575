"""``unroll3d report normal-illustration``'s compute step, the one report step that applies an
operator: the panels of Figs. 9/10 as a small ``.npz``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from unroll3d.report.common import ReportError
from unroll3d.utils import atomic_path

log = logging.getLogger("unroll3d.report")


# --------------------------------------------------------------------------------------------
# Normal-operator illustration (the one step that applies an operator; run once per setting)


def _central(a, axis: int = 0) -> np.ndarray:
    """Central slice of a (…, D, H, W) tensor/array along ``axis`` of (D, H, W), as numpy."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if a.is_complex():
            a = a.abs()
        a = a.numpy()
    a = np.asarray(a)
    while a.ndim > 4:
        a = a[0]
    if a.ndim == 4:  # (C, D, H, W): magnitude over real/imag channels
        a = np.sqrt((a.astype(np.float64) ** 2).sum(axis=0)) if a.shape[0] > 1 else a[0]
    idx = [slice(None)] * 3
    idx[axis] = a.shape[axis] // 2
    return np.asarray(a[tuple(idx)], dtype=np.float64)


def _lam_center_slice(lam, grid: tuple[int, ...]) -> np.ndarray:
    """``log10|λ|`` on the zero-frequency plane k0 = 0, centred in (k1, k2).

    Only that plane is built, so a filter on a ~1000³ grid is never expanded in full. An
    ``rfftn``-layout filter (last axis ``N2 // 2 + 1``) is extended to the full last axis by
    Hermitian symmetry, λ(0, k1, k2) = conj λ(0, −k1, N2 − k2) (a real kernel).
    """
    import torch

    lam = torch.as_tensor(lam).detach().cpu()
    while lam.dim() > 3:
        lam = lam[0]
    plane = lam[0]  # (N1, N2 or N2 // 2 + 1)
    n2 = grid[-1] if grid else plane.shape[-1]
    if plane.shape[-1] != n2:  # rfft layout
        half = plane.shape[-1]
        if not plane.is_complex():
            plane = plane.to(torch.complex64)
        rest = torch.flip(plane, dims=(0,)).roll(1, dims=0)  # index −k1
        ks = torch.arange(half, n2)
        tail = torch.conj(rest[:, n2 - ks])
        plane = torch.cat([plane, tail], dim=-1)
    mag = plane.abs().double().numpy()
    return np.fft.fftshift(np.log10(mag + 1e-8))


def normal_illustration(
    normal_path: str | Path,
    data_path: str | Path,
    setting: str,
    out: str | Path,
    device: Any = "cpu",
) -> Path:
    """Compute the panels of Figs. 9/10 once and store them as a small ``.npz``.

    Loads the fitted H (:func:`unroll3d.normal.load_normal`) and the preprocessed volume it was
    fitted on (:func:`unroll3d.data.load_sample`), applies the exact normal operator and
    ``scaling · H`` to the ground truth, and stores central axial slices of ``x``, ``AtAx``,
    ``Hx``, the centred ``log10|λ|`` slice ``lam``, the mask ``mask``, the fit curve
    (``history_step``, ``history`` = held-out relative error, ``history_train``) and
    ``heldout_rel_err`` (the last held-out value), plus ``rel_err_x`` = ‖AᵀAx − Hx‖/‖AᵀAx‖ on the
    volume itself.
    """
    import torch

    from unroll3d.data import load_sample
    from unroll3d.normal import load_normal, operator_hash

    sample = load_sample(data_path, setting, device=device)
    try:  # H and the volume it was fitted on: the same operator
        fit = load_normal(
            normal_path,
            expected_operator_hash=operator_hash(sample.physics, tuple(sample.x.shape[1:])),
        )
    except (FileNotFoundError, ValueError) as err:
        raise ReportError(str(err)) from err
    fit = fit.to(device)
    H = fit.operator()
    x = sample.x.float()
    if tuple(x.shape[1:]) != tuple(fit.img_size):
        raise ReportError(
            f"{normal_path} was fitted for img_size {tuple(fit.img_size)}, but {data_path} "
            f"holds a volume of shape {tuple(x.shape[1:])}"
        )
    with torch.no_grad():
        ata = sample.physics.A_adjoint_A(x)
        hx = float(fit.scaling) * H(x)
    rel = float(torch.linalg.vector_norm(ata - hx) / torch.linalg.vector_norm(ata).clamp_min(1e-30))
    lam_img = _lam_center_slice(fit.fourier_filter, tuple(fit.grid or ()))
    mask = fit.spatial_mask.detach().cpu().abs().double().numpy()
    hist = fit.history or {}
    arrays = {
        "x": _central(x),
        "AtAx": _central(ata),
        "Hx": _central(hx),
        "lam": lam_img,
        "mask": _central(mask),
        "history_step": np.asarray(hist.get("step", []), dtype=np.float64),
        "history": np.asarray(hist.get("heldout_rel_error", []), dtype=np.float64),
        "history_train": np.asarray(hist.get("train_rel_error", []), dtype=np.float64),
        "rel_err_x": np.asarray(rel),
        "setting": np.asarray(setting),
    }
    if arrays["history"].size:
        arrays["heldout_rel_err"] = np.asarray(arrays["history"][-1])
    out = Path(out)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out
