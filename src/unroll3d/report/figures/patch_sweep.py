"""Figs. 7/8: PSNR and s/step against training memory over patch sizes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from unroll3d.report.common import SWEEP_FIGURE, TASK_TITLE, short_label, variant_style
from unroll3d.report.figures.base import no_data, pyplot, save_figure
from unroll3d.report.figures.style import STYLE
from unroll3d.report.records import collect_sweep, task_settings

log = logging.getLogger("unroll3d.report")


def _patch_text(patch: Sequence[int]) -> str:
    d, h, w = patch
    return f"{d}×{h}²" if h == w else f"{d}×{h}×{w}"


def fig_patch_sweep(
    task: str, results: str | Path, config: dict, out_dir: Path, reason: str | None = None
) -> list[Path]:
    """Figs. 7/8: mean test PSNR and training s/step against training peak memory, one point per
    partition patch size (config ``sweep``)."""
    plt = pyplot()
    name = SWEEP_FIGURE[task]
    points = [] if reason else collect_sweep(results, config, task)
    if not reason and not points:
        reason = f"sweep disabled or empty for {task} in config {config.get('name')!r}"
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.9))
        setting = task_settings(config, task)[0] if task in config.get("tasks", []) else "?"
        variant = (config.get("sweep") or {}).get("variant", "partition-H")
        title = f"{TASK_TITLE[task]}, {setting}: {short_label(task, variant)}"
        if reason:
            for ax in axes:
                no_data(ax, reason)
            fig.suptitle(title, fontsize=8)
        else:
            pts = sorted(points, key=lambda p: (p.memory_gb is None, p.memory_gb or 0.0))
            color, marker = variant_style(variant, ("#d62728", "o"))
            for ax, attr, ylabel in (
                (axes[0], "psnr", "mean test PSNR (dB)"),
                (axes[1], "step_s", "training time (s/step)"),
            ):
                xy = [(p.memory_gb, getattr(p, attr), p) for p in pts]
                xy = [(x, y, p) for x, y, p in xy if x is not None and y is not None]
                if not xy:
                    no_data(ax, "memory or " + attr + " not recorded")
                    continue
                ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], marker=marker, color=color)
                for x, y, p in xy:
                    ax.annotate(
                        _patch_text(p.patch),
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=6,
                    )
                ax.margins(x=0.2, y=0.2)
                ax.set_xlabel(f"training peak memory (GB, {pts[0].memory_kind})")
                ax.set_ylabel(ylabel)
            devices = ", ".join(sorted({p.device for p in pts}))
            fig.suptitle(f"{title}; patch size sweep ({devices})", fontsize=8)
        fig.tight_layout()
        return save_figure(fig, out_dir, name)
