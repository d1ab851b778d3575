"""Fig. 1: time and memory of the data step vs the network step against the volume size
(``bench_steps.csv``)."""

from __future__ import annotations

from pathlib import Path

from unroll3d.report.figures.base import (
    device_label,
    find_column,
    mark_oom,
    memory_column_gb,
    no_data,
    pyplot,
    read_csv,
    save_figure,
    size_axes,
    size_column,
)
from unroll3d.report.figures.style import STYLE


def fig_data_vs_network(bench_csv: Path, out_dir: Path, reason: str | None = None) -> list[Path]:
    """Fig. 1: peak memory and time of one data step vs one 3D DRUNet step against N."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.6))
        df = None if reason else read_csv(bench_csv)
        if df is None or df.empty:
            for ax, what in zip(axes, ("peak memory", "time of forward + backward"), strict=True):
                no_data(ax, reason or f"{bench_csv} not found")
                ax.set_title(what)
            fig.suptitle("Data step vs network step (Fig. 1)", fontsize=8)
        else:
            ncol = size_column(df, bench_csv)
            scol = find_column(df, ("step", "component", "kind"), bench_csv)
            df = df.assign(_mem=memory_column_gb(df, bench_csv))
            tcol = find_column(df, ("time_s", "wall_s", "seconds"), bench_csv)
            status = df["status"] if "status" in df.columns else None
            labels = {
                "data": "data step  x − ηAᵀ(Ax − y)",
                "network": "network step  D_φ(x) (3D DRUNet)",
            }
            colors = {"data": "#1f77b4", "network": "#d62728"}
            for ax, ycol, ylabel, ls in (
                (axes[0], "_mem", "peak memory (GB)", "--"),
                (axes[1], tcol, "time fwd+bwd (s)", ":"),
            ):
                for step, sub in df.groupby(scol):
                    sub = sub.sort_values(ncol)
                    ok = sub[ycol].notna() & (sub[ycol] > 0)
                    c = colors.get(str(step), None)
                    ax.plot(
                        sub[ncol][ok],
                        sub[ycol][ok],
                        ls=ls,
                        marker="o",
                        color=c,
                        label=labels.get(str(step), str(step)),
                    )
                    if status is not None:
                        bad = sub[sub["status"].astype(str) != "ok"]
                        mark_oom(ax, bad[ncol], c)
                size_axes(ax, df[ncol], ylabel)
            handles, labels_ = axes[0].get_legend_handles_labels()
            fig.legend(
                handles,
                labels_,
                loc="lower center",
                ncol=2,
                frameon=False,
                bbox_to_anchor=(0.5, -0.06),
            )
            method = ""
            if "mem_method" in df.columns:
                method = ", memory: " + ", ".join(
                    sorted(set(df["mem_method"].dropna().astype(str)))
                )
            fig.suptitle(f"Data step vs network step ({device_label(df)}{method})", fontsize=8)
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig1_data_vs_network")
