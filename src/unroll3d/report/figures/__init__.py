"""The paper's figures, one module each; :func:`write_figures` renders them all.

matplotlib and pandas are imported here and in the figure modules only (``make lint`` bans them
at module level elsewhere), and lazily inside functions, so importing the report stays light.
"""

from __future__ import annotations

from pathlib import Path

from unroll3d import paths
from unroll3d.report.common import TASKS
from unroll3d.report.figures.fig1_data_vs_network import fig_data_vs_network
from unroll3d.report.figures.normal_operator import fig_normal
from unroll3d.report.figures.partition_memory import fig_partition_memory
from unroll3d.report.figures.partition_schematic import fig_partition_schematic
from unroll3d.report.figures.patch_sweep import fig_patch_sweep
from unroll3d.report.figures.psnr_vs_setting import fig_psnr_vs_setting
from unroll3d.report.figures.slices import fig_slices
from unroll3d.report.records import EvalRecord, task_settings

__all__ = [
    "fig_data_vs_network",
    "fig_normal",
    "fig_partition_memory",
    "fig_partition_schematic",
    "fig_patch_sweep",
    "fig_psnr_vs_setting",
    "fig_slices",
    "write_figures",
]


def write_figures(
    cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    results: str | Path,
    out_dir: str | Path,
    bench_steps: str | Path | None = None,
    bench_partition: str | Path | None = None,
    normal_dir: str | Path | None = None,
) -> list[Path]:
    """Render every figure of :data:`FIGURES` (PNG + PDF) under ``out_dir``.

    :param bench_steps: Fig. 1 CSV (default ``results/benchmarks/bench_steps.csv``).
    :param bench_partition: partitioned-memory CSV
        (default ``results/benchmarks/bench_partition.csv``).
    :param normal_dir: folder of ``normal_{task}_{setting}.npz`` (default ``results/figures/data``).
    """
    root, out_dir = str(results), Path(out_dir)
    bench_dir = Path(paths.benchmarks_dir(root))
    bench_steps = Path(bench_steps or bench_dir / "bench_steps.csv")
    bench_partition = Path(bench_partition or bench_dir / "bench_partition.csv")
    normal_dir = Path(normal_dir or paths.illustrations_dir(root))
    bench_on = (config.get("benchmarks") or {}).get("enabled", True)
    off = None if bench_on else f"benchmarks disabled in config {config.get('name')!r}"
    written = fig_data_vs_network(bench_steps, out_dir, reason=off)
    written += fig_partition_schematic(out_dir)
    for task in TASKS:
        reason = (
            None
            if task in config.get("tasks", [])
            else f"task {task} disabled in config {config.get('name')!r}"
        )
        sets = task_settings(config, task) if not reason else []
        npz = {s: normal_dir / Path(paths.illustration(root, task, s)).name for s in sets}
        written += fig_normal(task, npz, out_dir, reason=reason)
        written += fig_slices(task, cells, config, out_dir, reason=reason)
    written += fig_psnr_vs_setting(cells, config, out_dir)
    written += fig_partition_memory(bench_partition, out_dir, reason=off)
    for task in TASKS:
        off_task = (
            None
            if task in config.get("tasks", [])
            else f"task {task} disabled in config {config.get('name')!r}"
        )
        written += fig_patch_sweep(task, results, config, out_dir, reason=off_task)
    return written
