"""PSNR against the number of views / the acceleration, per method (Tables 1/2 as a plot)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from unroll3d.paper_numbers import paper_value
from unroll3d.report.common import TASK_TITLE, TASKS, short_label, variant_style
from unroll3d.report.figures.base import no_data, pyplot, save_figure
from unroll3d.report.figures.style import STYLE
from unroll3d.report.records import EvalRecord, setting_value, task_settings
from unroll3d.report.tables import aggregate

log = logging.getLogger("unroll3d.report")


def fig_psnr_vs_setting(
    cells: dict[tuple[str, str, str], list[EvalRecord]], config: dict, out_dir: Path
) -> list[Path]:
    """PSNR against views (CBCT) and acceleration (MRI) per method; the paper's values dashed."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.8))
        for ax, task in zip(axes, TASKS, strict=True):
            ax.set_title(TASK_TITLE[task])
            if task not in config.get("tasks", []):
                no_data(ax, f"task {task} disabled in config {config.get('name')!r}")
                continue
            sets = task_settings(config, task)
            xs = [setting_value(s) for s in sets]
            handles = []
            for v in config.get("variants", []):
                color, marker = variant_style(v, ("k", "o"))
                aggs = [aggregate(cells.get((task, s, v)), "psnr") for s in sets]
                ours = [a.value if a.status == "ok" else np.nan for a in aggs]
                paper = [paper_value(task, v, "psnr", s) for s in sets]
                pv = [p.value if p is not None and p.value is not None else np.nan for p in paper]
                oom = any(a.status == "oom" for a in aggs)
                label = short_label(task, v) + (" (OOM)" if oom else "")
                ax.plot(xs, ours, marker=marker, color=color, label=label)
                if not all(np.isnan(pv)):
                    ax.plot(xs, pv, ls="--", marker=marker, mfc="none", color=color, alpha=0.8)
                handles.append(Line2D([], [], color=color, marker=marker, label=label))
            ax.set_xlabel("number of views" if task == "cbct" else "acceleration R")
            ax.set_ylabel("PSNR (dB)")
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{x:g}" for x in xs])
            if len(xs) == 1:
                ax.set_xlim(xs[0] * 0.8, xs[0] * 1.2)
            handles += [
                Line2D([], [], color="k", marker="o", label="ours (filled, solid)"),
                Line2D(
                    [], [], color="k", ls="--", marker="o", mfc="none", label="paper (open, dashed)"
                ),
            ]
            ax.legend(
                handles=handles,
                frameon=False,
                fontsize=6,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.3),
                ncol=3,
            )
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig_psnr_vs_setting")
