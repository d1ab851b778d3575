"""The paper's tables and figures, regenerated from the pipeline's results
(verb ``unroll3d report``, :mod:`unroll3d.cli.report`).

Reads only small files, so it re-renders in seconds from existing results:

- evaluation JSONs ``{results}/eval/{task}/{setting}/{variant}/{volume}.json`` (one per test
  volume; see :func:`read_eval` for the keys used and their accepted spellings);
- optional slice files (``.npz``) named by an evaluation JSON (qualitative figures);
- benchmark CSVs ``{results}/benchmarks/bench_steps.csv`` (Fig. 1),
  ``{results}/benchmarks/bench_partition.csv`` (partitioned memory) and
  ``{results}/benchmarks/bench_normal.csv`` (data-step speed, §6.4);
- the patch-size sweep (Figs. 7/8)
  ``{results}/eval/{task}/{setting}/sweep/p{D}x{H}x{W}/{volume}.json``;
- normal-operator illustrations ``{results}/figures/data/normal_{task}_{setting}.npz``, computed
  once by ``unroll3d report normal-illustration`` (the only sub-command that touches an operator).

Writes ``{results}/tables/<name>.{csv,md,tex}`` (names in :data:`TABLES`) and
``{results}/figures/<name>.{png,pdf}`` (names in :data:`FIGURES`).

Layers, each importing only the ones above it: :mod:`.common` (names, labels and styles from
the variant registry :mod:`unroll3d.variants`) and :mod:`.csvio` / :mod:`.provenance`;
:mod:`.records` (the one reader of eval JSON, paths from :mod:`unroll3d.paths`); :mod:`.tables`
← :mod:`.latex` ← :mod:`.output`; :mod:`.figures` (one module per figure, rc style in
:mod:`.figures.style`; the only place matplotlib and pandas are imported). :mod:`.illustration`
is the compute step of Figs. 9/10; the verb's argparse is :mod:`unroll3d.cli.report`.

Table cells read ``ours / paper (Δ)`` with Δ = ours − paper; the paper's numbers come from
:mod:`unroll3d.paper_numbers`. A requested cell (task × setting × variant of the config) without
evaluation files is an error; a figure whose inputs are absent (a task or the benchmarks disabled)
is drawn as a labelled "no data" panel.

Usage::

    unroll3d report --results results --config config/smoke.yaml
    unroll3d report normal-illustration --normal results/normal/cbct/v30.pt \\
        --data results/data/cbct/walnut_01.pt --setting v30 \\
        --out results/figures/data/normal_cbct_v30.npz
"""

from unroll3d.report.common import FIGURES, TABLES, TASKS, ReportError
from unroll3d.report.figures import fig_patch_sweep, write_figures
from unroll3d.report.figures.slices import slice_psnr
from unroll3d.report.illustration import normal_illustration
from unroll3d.report.latex import render_latex
from unroll3d.report.output import write_tables
from unroll3d.report.records import (
    EvalRecord,
    SweepPoint,
    collect_evals,
    collect_sweep,
    read_eval,
    task_settings,
)
from unroll3d.report.tables import aggregate, build_table, make_cell, render_markdown

__all__ = [
    "EvalRecord",
    "FIGURES",
    "ReportError",
    "SweepPoint",
    "TABLES",
    "TASKS",
    "aggregate",
    "build_table",
    "collect_evals",
    "collect_sweep",
    "fig_patch_sweep",
    "make_cell",
    "normal_illustration",
    "read_eval",
    "render_latex",
    "render_markdown",
    "slice_psnr",
    "task_settings",
    "write_figures",
    "write_tables",
]
