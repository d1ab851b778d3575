"""Figs. 9/10: x, AᵀAx, Hx, λ and m of the fitted normal operator (from the .npz of
``unroll3d report normal-illustration``, :mod:`unroll3d.report.illustration`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from unroll3d.report.common import TASK_TITLE, ReportError
from unroll3d.report.figures.base import (
    imshow,
    load_npz,
    log_y_axis,
    no_data,
    pyplot,
    save_figure,
    to_image,
)
from unroll3d.report.figures.style import STYLE

log = logging.getLogger("unroll3d.report")


def fig_normal(
    task: str, npz_paths: dict[str, Path], out_dir: Path, reason: str | None = None
) -> list[Path]:
    """Figs. 9/10: x, AᵀAx, Hx / λ, m, (AᵀAx − Hx)², plus the fit curve of every setting.

    ``npz_paths`` maps setting → illustration file (see :func:`normal_illustration`); the first
    existing one gives the six panels.
    """
    plt = pyplot()
    name = f"fig_normal_{task}"
    title = f"{TASK_TITLE[task]}: diagonal-circulant H ≈ AᵀA"
    existing = {s: p for s, p in npz_paths.items() if p.exists()} if not reason else {}
    with plt.rc_context(STYLE):
        if not existing:
            why = reason or (
                "missing " + ", ".join(str(p) for p in npz_paths.values())
                if npz_paths
                else "no settings"
            )
            fig, ax = plt.subplots(figsize=(6.4, 2.4))
            no_data(ax, why)
            fig.suptitle(title, fontsize=8)
            fig.tight_layout()
            return save_figure(fig, out_dir, name)
        fig = plt.figure(figsize=(7.2, 3.8))
        gs = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1.25])
        axes = [fig.add_subplot(gs[i, j]) for i in range(2) for j in range(3)]
        curve = fig.add_subplot(gs[:, 3])
        setting, path = next(iter(existing.items()))
        z = load_npz(path)
        for key in ("x", "AtAx", "Hx", "lam", "mask"):
            if key not in z:
                raise ReportError(f"{path}: missing array {key!r} (has {sorted(z)})")
        x, ata, hx = (to_image(z[k], k) for k in ("x", "AtAx", "Hx"))
        err = (ata - hx) ** 2
        lo, hi = np.percentile(np.concatenate([ata.ravel(), hx.ravel()]), [0.5, 99.5])
        rel = (
            float(z["rel_err_x"])
            if "rel_err_x" in z
            else float(np.linalg.norm(ata - hx) / max(np.linalg.norm(ata), 1e-30))
        )
        panels = [
            (x, None, None, "gray", "x"),
            (ata, lo, hi, "gray", "AᵀA x (exact)"),
            (hx, lo, hi, "gray", "H x"),
            (
                to_image(z["lam"], "lam"),
                None,
                None,
                "viridis",
                "filter λ\n(log₁₀|λ|, centred)",
            ),
            (to_image(z["mask"], "mask"), None, None, "viridis", "mask m"),
            (err, None, None, "magma", f"(AᵀAx − Hx)²\n‖AᵀAx − Hx‖/‖AᵀAx‖ = {rel:.3f}"),
        ]
        for ax, (img, a, b, cmap, title) in zip(axes, panels, strict=True):
            im = imshow(ax, img, a, b, cmap=cmap, title=title)
            cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, format="%.3g")
            cbar.ax.tick_params(labelsize=5.5)
        drew = False
        for s_, p in existing.items():
            zz = load_npz(p)
            hist = np.asarray(zz.get("history", np.array([])), dtype=float).ravel()
            if not hist.size:
                continue
            steps = np.asarray(zz.get("history_step", np.arange(hist.size)), dtype=float)
            steps = steps.ravel() if steps.size == hist.size else np.arange(hist.size)
            (line,) = curve.plot(steps, hist, label=f"{s_} held-out")
            train = np.asarray(zz.get("history_train", np.array([])), dtype=float).ravel()
            if train.size == hist.size and np.isfinite(train).any():
                curve.plot(
                    steps,
                    train,
                    ls=":",
                    color=line.get_color(),
                    alpha=0.7,
                    label=f"{s_} training probes",
                )
            drew = True
        if drew:
            log_y_axis(curve)
            curve.set_xlabel("Adam step")
            curve.set_ylabel("‖AᵀAx − Hx‖ / ‖AᵀAx‖ (Gaussian probes)")
            curve.set_title("fit of H to AᵀA/‖A‖²")
            curve.legend(frameon=False, loc="upper right", fontsize=6)
        else:
            no_data(curve, "no fit history in the illustration files")
        fig.suptitle(
            f"{TASK_TITLE[task]}: diagonal-circulant H ≈ AᵀA ({setting}, central slice)",
            fontsize=8,
        )
        fig.tight_layout()
        return save_figure(fig, out_dir, name)
