"""Partitioned vs full-volume training memory against the volume size (bench_partition)."""

from __future__ import annotations

from pathlib import Path

from unroll3d.report.common import variant_style
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


def fig_partition_memory(bench_csv: Path, out_dir: Path, reason: str | None = None) -> list[Path]:
    """Peak training memory of a partitioned step (fixed patch) vs full-volume unrolling,
    against N (``peak_memory_gb``, and ``step_memory_gb`` when present)."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        df = None if reason else read_csv(bench_csv)
        if df is None or df.empty:
            no_data(ax, reason or f"{bench_csv} not found")
            ax.set_title("Partitioned vs full-volume training memory", fontsize=7)
        else:
            ncol = size_column(df, bench_csv)
            mcol = find_column(df, ("method", "variant", "mode", "kind"), bench_csv)
            df = df.assign(_mem=memory_column_gb(df, bench_csv))
            step_col = find_column(df, ("step_memory_gb",), bench_csv, required=False)
            if step_col:
                df = df.assign(_step=memory_column_gb(df, bench_csv, step_col))
            names = {"full": "full-volume unrolling", "partitioned": "partitioned (fixed patch)"}
            for method, sub in df.groupby(mcol):
                sub = sub.sort_values(ncol)
                m = str(method)
                color, marker = variant_style(
                    m, ("#d62728", "o") if "part" in m else ("#2ca02c", "D")
                )
                ok = sub["_mem"].notna()
                if "status" in sub.columns:
                    ok &= sub["status"].astype(str) == "ok"
                label = names.get(m, m)
                ax.plot(
                    sub[ncol][ok],
                    sub["_mem"][ok],
                    marker=marker,
                    color=color,
                    label=f"{label}: peak",
                )
                if step_col:
                    ax.plot(
                        sub[ncol][ok],
                        sub["_step"][ok],
                        marker=marker,
                        mfc="none",
                        ls="--",
                        color=color,
                        label=f"{label}: added by the step",
                    )
                mark_oom(ax, sub[ncol][~ok], color)
            size_axes(ax, df[ncol], "peak training memory (GB)")
            patch = ""
            pcol = find_column(df, ("patch", "patch_size"), bench_csv, required=False)
            if pcol:
                vals = sorted(set(df[pcol].astype(str)))
                patch = ", patch " + ", ".join(v + "³" if v.isdigit() else v for v in vals)
            ax.legend(frameon=False, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22))
            ax.set_title(
                f"Partitioned vs full-volume training{patch}\n{device_label(df)}", fontsize=7
            )
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig_partition_memory")
