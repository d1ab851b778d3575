"""The paper's illustration of H (Figs. 9/10) and the fitting curve (matplotlib, lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from unroll3d.normal.io import NormalFit, load_normal
from unroll3d.normal.operator import physics_device, relative_error
from unroll3d.utils import atomic_path

__all__ = ["plot_normal"]


def plot_normal(
    fit: NormalFit | str | Path,
    physics: LinearPhysics,
    x: torch.Tensor,
    out: str | Path,
    axis: int = 0,
    index: int | None = None,
) -> dict[str, float]:
    """The paper's illustration of H (Fig. 9/10) plus the fitting curve; writes ``out`` .png + .pdf.

    Panels: a slice of x, AᵀAx, Hx (same colour range), log|λ| (centred, the central slice of
    the frequency grid), m, (AᵀAx − Hx)², and the held-out relative error over the fit.

    :param fit: a :class:`NormalFit` or its path.
    :param physics: the exact operator.
    :param x: an image (1, C, D, H, W), e.g. the ground truth of the reference volume.
    :param out: output path; the suffix is replaced by .png and .pdf.
    :param axis: which spatial axis to slice (0 = z).
    :return: ``{"rel_error": ‖AᵀAx − scaling·Hx‖/‖AᵀAx‖}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(fit, NormalFit):
        fit = load_normal(fit)
    H = fit.operator()
    device = physics_device(physics)
    x = x.to(device)
    H = H.to(device)
    with torch.no_grad():
        exact = physics.A_adjoint_A(x)
        approx = fit.scaling * H(x)
    rel = relative_error(exact, approx)

    def mag(t: torch.Tensor) -> np.ndarray:
        t = t[0].detach().cpu()
        v = t[0] if t.shape[0] == 1 else torch.sqrt(t[0] ** 2 + t[1] ** 2)
        return v.double().numpy()

    def sl(v: np.ndarray) -> np.ndarray:
        i = v.shape[axis] // 2 if index is None else index
        return np.take(v, i, axis=axis)

    xv, ev, av = mag(x), mag(exact), mag(approx)
    lam = fit.fourier_filter
    if lam.shape[-1] != fit.grid[-1]:  # rfft layout -> full spectrum for display
        lam = torch.fft.fftn(torch.fft.irfftn(lam, s=fit.grid))
    lam_img = np.fft.fftshift(np.log10(np.abs(lam.detach().cpu().numpy()) + 1e-8))
    m = fit.spatial_mask.detach().cpu().abs().double().numpy()
    err = (ev - av) ** 2

    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    vmin, vmax = float(min(sl(ev).min(), sl(av).min())), float(max(sl(ev).max(), sl(av).max()))
    panels = [
        (axes[0, 0], sl(xv), "x", "gray", None),
        (axes[0, 1], sl(ev), "AᵀA x", "gray", (vmin, vmax)),
        (axes[0, 2], sl(av), "H x", "gray", (vmin, vmax)),
        (axes[1, 0], sl(lam_img), "log₁₀|λ| (centred)", "viridis", None),
        (axes[1, 1], sl(m), "m", "viridis", None),
        (axes[1, 2], sl(err), "(AᵀAx − Hx)²", "magma", None),
    ]
    for ax, img, title, cmap, lim in panels:
        kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
        im = ax.imshow(img, cmap=cmap, **kw)
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    hist = fit.history or {}
    ax = axes[0, 3]
    if hist.get("step"):
        ax.semilogy(hist["step"], hist["heldout_rel_error"], label="held-out probes")
        tr = np.asarray(hist["train_rel_error"], dtype=float)
        if np.isfinite(tr).any():
            ax.semilogy(hist["step"], tr, alpha=0.6, label="training probes")
        ax.legend()
    ax.set_xlabel("Adam step")
    ax.set_ylabel("‖AᵀAx − Hx‖ / ‖AᵀAx‖")
    ax.set_title("fit")
    axes[1, 3].axis("off")
    axes[1, 3].text(0.0, 0.5, f"relative error on x: {rel:.3f}", fontsize=12)
    fig.tight_layout()
    out = Path(out)
    for suffix in (".png", ".pdf"):
        with atomic_path(out.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=120)
    plt.close(fig)
    return {"rel_error": rel}
