"""Figs. 3/4: axial and vertical slices of every method with an inset."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from unroll3d.report.common import REPORT_DEFAULTS, TASK_TITLE, ReportError, short_label
from unroll3d.report.figures.base import imshow, load_npz, no_data, pyplot, save_figure, to_image
from unroll3d.report.figures.style import STYLE
from unroll3d.report.records import EvalRecord, task_settings

log = logging.getLogger("unroll3d.report")


_SLICE_KEYS = {
    "axial": ("rec_axial", "axial", "recon_axial", "x_axial", "pred_axial"),
    "vertical": (
        "rec_vertical",
        "vertical",
        "coronal",
        "recon_vertical",
        "x_vertical",
        "pred_vertical",
        "recon_coronal",
    ),
    "gt_axial": ("gt_axial", "truth_axial", "target_axial", "x_true_axial"),
    "gt_vertical": (
        "gt_vertical",
        "gt_coronal",
        "truth_vertical",
        "target_vertical",
        "x_true_vertical",
    ),
}


def read_slices(path: str | Path) -> dict[str, np.ndarray]:
    """Read a slices ``.npz``: reconstruction and ground truth, axial and vertical (2D each).

    Keys: ``axial``, ``vertical`` (or ``coronal``), ``gt_axial``, ``gt_vertical`` (aliases in
    :data:`_SLICE_KEYS`); optional ``data_range`` (scalar) for the corner PSNR.
    """
    path = Path(path)
    z = load_npz(path)
    out = {}
    for key, names in _SLICE_KEYS.items():
        hit = next((n for n in names if n in z), None)
        if hit is None:
            raise ReportError(
                f"{path}: missing slice {key!r} (accepted names {names}; has {sorted(z)})"
            )
        out[key] = to_image(z[hit], f"{path}:{hit}")
    if "data_range" in z:
        out["data_range"] = np.asarray(z["data_range"], dtype=float)
    elif "meta" in z:
        try:
            meta = json.loads(str(z["meta"]))
            if meta.get("data_range") is not None:
                out["data_range"] = np.asarray(float(meta["data_range"]))
        except (ValueError, TypeError, AttributeError):
            pass
    return out


def slice_psnr(x: np.ndarray, ref: np.ndarray, data_range: float | None = None) -> float:
    """PSNR (dB) of a 2D slice against the reference; data range = reference max − min by
    default."""
    rng = float(data_range) if data_range else float(ref.max() - ref.min())
    mse = float(np.mean((x - ref) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(max(rng, 1e-30) ** 2 / mse)


def _inset(ax, img, vmin, vmax, center, size):
    h, w = img.shape
    ch, cw = max(int(size * h), 2), max(int(size * w), 2)
    y0 = int(np.clip(center[0] * h - ch / 2, 0, h - ch))
    x0 = int(np.clip(center[1] * w - cw / 2, 0, w - cw))
    axin = ax.inset_axes([0.62, 0.0, 0.38, 0.38])
    axin.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    axin.set_xlim(x0 - 0.5, x0 + cw - 0.5)
    axin.set_ylim(y0 + ch - 0.5, y0 - 0.5)
    axin.set_xticks([])
    axin.set_yticks([])
    for spine in axin.spines.values():
        spine.set_edgecolor("#ffcc00")
        spine.set_linewidth(0.8)
    ax.indicate_inset_zoom(axin, edgecolor="#ffcc00", alpha=0.9, linewidth=0.6)


def fig_slices(
    task: str,
    cells: dict[tuple[str, str, str], list[EvalRecord]] | None,
    config: dict,
    out_dir: Path,
    reason: str | None = None,
) -> list[Path]:
    """Figs. 3/4: axial and vertical slices of the ground truth and each method, PSNR in the
    corner."""
    plt = pyplot()
    name = f"fig_slices_{task}"
    rep = {**REPORT_DEFAULTS, **(config.get("report") or {})}
    variants = list(config.get("variants", []))
    sets = task_settings(config, task) if task in config.get("tasks", []) else []
    setting = rep["qualitative_setting"] or (sets[0] if sets else None)
    if not reason and setting not in sets:
        raise ReportError(
            f"report.qualitative_setting {setting!r} is not a setting of {task} ({sets})"
        )
    vols = sorted({r.volume for v in variants for r in (cells or {}).get((task, setting, v), [])})
    with plt.rc_context(STYLE):
        if reason or not vols:
            fig, ax = plt.subplots(figsize=(6.4, 2.4))
            no_data(ax, reason or f"no evaluation results for {task} at {setting}")
            fig.suptitle(f"{TASK_TITLE[task]}: qualitative slices", fontsize=8)
            return save_figure(fig, out_dir, name)
        volume = rep["qualitative_volume"] or (vols[0] if vols else None)
        if volume not in vols:
            raise ReportError(
                f"report.qualitative_volume {volume!r} not among the test volumes {vols}"
            )
        recs = {
            v: next((r for r in cells.get((task, setting, v), []) if r.volume == volume), None)
            for v in variants
        }
        slices = {}
        for v, r in recs.items():
            if r is not None and r.status == "ok" and r.slices:
                slices[v] = read_slices(r.slices)
        ncol = len(variants) + 1
        fig, axes = plt.subplots(2, ncol, figsize=(1.35 * ncol, 3.1), squeeze=False)
        if not slices:
            for ax in axes.ravel():
                no_data(ax, "")
            no_data(axes[0, 0], "no slice files (.npz) named by the evaluation JSONs")
        else:
            ref = next(iter(slices.values()))
            gts = {"axial": ref["gt_axial"], "vertical": ref["gt_vertical"]}
            both = np.concatenate([gts["axial"].ravel(), gts["vertical"].ravel()])
            vmin, vmax = np.percentile(both, [0.5, 99.5])
            if task == "cbct":
                vmin = max(vmin, 0.0)
            row_names = {"axial": "axial", "vertical": "vertical" if task == "cbct" else "coronal"}
            for i, orient in enumerate(("axial", "vertical")):
                imshow(
                    axes[i, 0], gts[orient], vmin, vmax, title="ground truth" if i == 0 else None
                )
                axes[i, 0].set_ylabel(row_names[orient])
                _inset(axes[i, 0], gts[orient], vmin, vmax, rep["inset_center"], rep["inset_size"])
                for j, v in enumerate(variants, 1):
                    ax = axes[i, j]
                    title = short_label(task, v) if i == 0 else None
                    r = recs[v]
                    if r is not None and r.status == "oom":
                        need = f"needs ≥{r.oom_needed_gb:.0f} GB" if r.oom_needed_gb else ""
                        no_data(ax, need, head="OOM\n(not trainable)")
                        if title:
                            ax.set_title(title)
                        continue
                    if r is not None and r.status == "unavailable":
                        no_data(ax, "", head="weights not\navailable")
                        if title:
                            ax.set_title(title)
                        continue
                    if v not in slices:
                        no_data(ax, "not evaluated" if r is None else "no slices saved")
                        if title:
                            ax.set_title(title)
                        continue
                    img = slices[v][orient]
                    if img.shape != gts[orient].shape:
                        raise ReportError(
                            f"{r.slices}: {orient} slice shape {img.shape} differs from the ground "
                            f"truth's {gts[orient].shape}"
                        )
                    imshow(ax, img, vmin, vmax, title=title)
                    dr = slices[v].get("data_range", r.data_range)
                    p = slice_psnr(img, gts[orient], float(dr) if dr is not None else None)
                    ax.text(
                        0.03,
                        0.97,
                        f"{p:.2f} dB",
                        transform=ax.transAxes,
                        ha="left",
                        va="top",
                        color="white",
                        fontsize=6.5,
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.2, "lw": 0},
                    )
                    _inset(ax, img, vmin, vmax, rep["inset_center"], rep["inset_size"])
            fig.suptitle(
                f"{TASK_TITLE[task]}, {setting}, volume {volume} (shared grey scale; "
                "PSNR per slice; * = the paper's method)",
                fontsize=8,
            )
        fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.4)
        return save_figure(fig, out_dir, name)
