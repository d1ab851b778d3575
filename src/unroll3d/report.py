"""The paper's tables and figures, regenerated from the pipeline's results (verb ``unroll3d report``).

Reads only small files, so it re-renders in seconds from existing results:

- evaluation JSONs ``{results}/eval/{task}/{setting}/{variant}/{volume}.json`` (one per test
  volume; see :func:`read_eval` for the keys used and their accepted spellings);
- optional slice files (``.npz``) named by an evaluation JSON (qualitative figures);
- benchmark CSVs ``{results}/benchmarks/bench_steps.csv`` (Fig. 1),
  ``{results}/benchmarks/bench_partition.csv`` (partitioned memory) and
  ``{results}/benchmarks/bench_normal.csv`` (data-step speed, §6.4);
- the patch-size sweep (Figs. 7/8) ``{results}/eval/{task}/{setting}/sweep/p{D}x{H}x{W}/{volume}.json``;
- normal-operator illustrations ``{results}/figures/data/normal_{task}_{setting}.npz``, computed
  once by ``unroll3d report normal-illustration`` (the only sub-command that touches an operator).

Writes ``{results}/tables/<name>.{csv,md,tex}`` (names in :data:`TABLES`) and
``{results}/figures/<name>.{png,pdf}`` (names in :data:`FIGURES`).

Table cells read ``ours / paper (Δ)`` with Δ = ours − paper; the paper's numbers come from
:mod:`unroll3d.paper_numbers`. A requested cell (task × setting × variant of the config) without
evaluation files is an error; a figure whose inputs are absent (a task or the benchmarks disabled)
is drawn as a labelled "no data" panel.

Usage::

    unroll3d report --results results --config config/smoke.yaml
    unroll3d report normal-illustration --normal results/normal/cbct/v30.pt \\
        --data results/data/cbct/walnut_01.pt --task cbct --setting v30 \\
        --out results/figures/data/normal_cbct_v30.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unroll3d.paper_numbers import PAPER_MISSING_NOTE, PAPER_ONLY_ROWS, paper_value
from unroll3d.utils import atomic_path, atomic_write_text

log = logging.getLogger("unroll3d.report")

__all__ = [
    "EvalRecord",
    "ReportError",
    "read_eval",
    "collect_evals",
    "build_table",
    "render_markdown",
    "render_latex",
    "write_tables",
    "write_figures",
    "task_settings",
    "TABLES",
    "FIGURES",
    "main",
]

TASKS = ("cbct", "mri")
TABLES = ("table1_cbct", "table2_mri", "table_ablation", "table_datastep")
FIGURES = (
    "fig1_data_vs_network",
    "fig2_partition_schematic",
    "fig_normal_cbct",
    "fig_normal_mri",
    "fig_slices_cbct",
    "fig_slices_mri",
    "fig_psnr_vs_setting",
    "fig_partition_memory",
    "fig7_patch_sweep_cbct",
    "fig8_patch_sweep_mri",
)
SWEEP_FIGURE = {"cbct": "fig7_patch_sweep_cbct", "mri": "fig8_patch_sweep_mri"}
ABLATION_VARIANTS = ("unrolled", "unrolled-H", "partition", "partition-H")
TASK_TITLE = {"cbct": "Walnut-CBCT", "mri": "MC-MRI"}

#: Row labels, by task (the paper's wording where it has the row).
METHOD_LABEL = {
    "cbct": {
        "fdk": "FDK (analytical)",
        "adjoint": "Adjoint Aᵀy",
        "tv": "TV (variational)",
        "postproc": "DRUNet[3D] (post-processing)",
        "unrolled": "Unrolled[3D] (standard)",
        "unrolled-H": "Unrolled[3D] + H",
        "partition": "Unrolled[3D] + partition (exact)",
        "partition-H": "Unrolled[3D] + partition + H (paper: ours)",
    },
    "mri": {
        "fdk": "Zero-filled (Aᴴy)",
        "adjoint": "Zero-filled (Aᴴy)",
        "tv": "TV (variational)",
        "postproc": "DRUNet[3D] (post-processing)",
        "unrolled": "Unrolled[3D] (standard)",
        "unrolled-H": "Unrolled[3D] + H",
        "partition": "Unrolled[3D] + partition (paper: ours)",
        "partition-H": "Unrolled[3D] + partition + H",
    },
}
#: Short labels for figure panels and legends.
SHORT_LABEL = {
    "cbct": {
        "fdk": "FDK",
        "adjoint": "Aᵀy",
        "tv": "TV",
        "postproc": "Post-proc. 3D",
        "unrolled": "Unrolled",
        "unrolled-H": "Unrolled + H",
        "partition": "Partition",
        "partition-H": "Partition + H*",
    },
    "mri": {
        "fdk": "Zero-filled",
        "adjoint": "Zero-filled",
        "tv": "TV",
        "postproc": "Post-proc. 3D",
        "unrolled": "Unrolled",
        "unrolled-H": "Unrolled + H",
        "partition": "Partition*",
        "partition-H": "Partition + H",
    },
}
ABLATION_LABEL = {
    "unrolled": "Unrolled[3D] (no partitioning, exact operator)",
    "unrolled-H": "+ Approx only",
    "partition": "+ Partitioning only",
    "partition-H": "+ Partitioning + Approx",
}
#: One colour and marker per variant, shared by every figure.
VARIANT_STYLE = {
    "fdk": ("#7f7f7f", "v"),
    "adjoint": ("#bcbd22", "v"),
    "tv": ("#8c564b", "^"),
    "postproc": ("#1f77b4", "s"),
    "unrolled": ("#2ca02c", "D"),
    "unrolled-H": ("#98df8a", "d"),
    "partition": ("#ff7f0e", "o"),
    "partition-H": ("#d62728", "*"),
}
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "lines.markersize": 5,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}
DEFAULT_METRIC_CONVENTION = {
    "cbct": "PSNR/SSIM on the prior-work crop (slices 100–400, [100:400, 100:400]) clipped at 0, "
    "fixed data range (paper.md §10)",
    "mri": "PSNR/SSIM on magnitude images over the whole volume, data range = ground-truth max "
    "per volume (paper.md §10)",
}
REPORT_DEFAULTS = {
    "qualitative_volume": None,
    "qualitative_setting": None,
    "inset_center": [0.5, 0.5],
    "inset_size": 0.25,
}


class ReportError(RuntimeError):
    """A requested table cell or input file is missing or malformed."""


# --------------------------------------------------------------------------------------------
# Evaluation records


@dataclass
class EvalRecord:
    """One evaluation JSON, with keys normalised (see :func:`read_eval`)."""

    task: str
    setting: str
    variant: str
    volume: str
    status: str = "ok"
    psnr: float | None = None
    ssim: float | None = None
    train_peak_mem_gb: float | None = None
    train_step_s: float | None = None
    train_accumulate: int = 1
    infer_time_s: float | None = None
    infer_peak_mem_gb: float | None = None
    device: str | None = None
    message: str = ""
    oom_needed_gb: float | None = None
    volume_shape: tuple[int, ...] | None = None
    slices: str | None = None
    metric_convention: str | None = None
    data_range: float | None = None
    train_status: str | None = None  # "oom" when the timed training steps ran out of memory
    train_mem_kind: str = "gpu"  # "cpu_rss": train_peak_mem_gb is the CPU peak-RSS growth
    train_message: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_ALIASES: dict[str, tuple[str, ...]] = {
    "psnr": ("psnr", "psnr_db"),
    "ssim": ("ssim",),
    "train_peak_mem_gb": ("train_peak_mem_gb", "train_mem_gb", "train_peak_memory_gb"),
    "train_step_s": ("train_step_s", "train_time_per_step_s", "train_s_per_step"),
    "train_accumulate": ("train_accumulate", "accumulate"),
    "infer_time_s": ("infer_time_s", "inference_time_s"),
    "infer_peak_mem_gb": ("infer_peak_mem_gb", "inference_peak_memory_gb", "inference_peak_mem_gb"),
    "device": ("device", "device_name"),
    "message": ("message",),
    "oom_needed_gb": ("oom_needed_gb",),
    "volume_shape": ("volume_shape", "shape", "img_size"),
    "slices": ("slices", "slices_path"),
    "metric_convention": ("metric_convention",),
    "data_range": ("data_range",),
}
#: Nested objects searched (in this order) when a key is not at the top level.
_NESTED = ("metrics",)
#: Training-cost sources: the evaluation's own timed micro-steps first, then the training run.
_TRAIN_SOURCES = (
    ("train_step", "step_time_s", "peak_memory_gb"),
    ("train_stats", "step_time_mean_s", "peak_memory_gb"),
)
_OOM_RE = re.compile(r"peak\s*(?:of\s*)?([0-9.]+)\s*(GB|GiB|MB|MiB)", re.IGNORECASE)
_STATUSES = ("ok", "oom", "failed")


def _lookup(d: dict, names: Iterable[str]) -> Any:
    """First key of ``names`` found in ``d``, else in its ``metrics`` object."""
    for name in names:
        if d.get(name) is not None:
            return d[name]
    for nest in _NESTED:
        sub = d.get(nest)
        if isinstance(sub, dict):
            for name in names:
                if sub.get(name) is not None:
                    return sub[name]
    return None


def _as_float(value: Any, key: str, path: Path) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise ReportError(f"{path}: key {key!r} must be a number or null, got {value!r}") from err
    return None if math.isnan(out) else out


def _needed_gb(message: str) -> float | None:
    match = _OOM_RE.search(message or "")
    if not match:
        return None
    scale = {"gb": 1.0, "gib": 1.073741824, "mb": 1e-3, "mib": 1.048576e-3}
    return float(match.group(1)) * scale[match.group(2).lower()]


def read_eval(path: str | Path) -> EvalRecord:
    """Read one evaluation JSON (``src/unroll3d/schemas/eval.schema.json``) into an :class:`EvalRecord`.

    Used keys: ``task``, ``setting``, ``variant``, ``volume`` (from the path
    ``.../{task}/{setting}/{variant}/{volume}.json`` when absent); ``status`` (``ok``, ``oom`` or
    ``failed``; default ``ok``) with ``message`` (for OOM "OOM at volume N³, peak X GB");
    ``psnr`` (required when ok), ``ssim``, ``data_range``, ``shape``, ``device``,
    ``metric_convention``, ``inference_time_s``, ``inference_peak_memory_gb``,
    ``train_accumulate``; the training cost from ``train_step`` (``step_time_s``,
    ``peak_memory_gb``, ``status``, ``message``: timed micro-steps of the evaluation), else
    ``train_stats`` (``step_time_mean_s``, ``peak_memory_gb``: the training run), else flat
    ``train_step_s`` / ``train_peak_mem_gb``; slices from ``slices`` or the ``.npz`` beside the JSON.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ReportError(f"missing evaluation file {path}") from err
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    parts = path.with_suffix("").parts
    from_path = dict(zip(("task", "setting", "variant", "volume"), parts[-4:], strict=False))
    ids = {k: str(data.get(k) or from_path.get(k, "")) for k in from_path}
    for k, v in ids.items():
        if not v:
            raise ReportError(f"{path}: missing key {k!r}")
    status = str(data.get("status", "ok")).lower()
    if status not in _STATUSES:
        raise ReportError(f"{path}: status must be one of {_STATUSES}, got {status!r}")
    rec = EvalRecord(**ids, status=status, path=str(path))
    for name in (
        "psnr",
        "ssim",
        "infer_time_s",
        "infer_peak_mem_gb",
        "oom_needed_gb",
        "data_range",
    ):
        setattr(rec, name, _as_float(_lookup(data, _ALIASES[name]), name, path))
    rec.train_step_s = _as_float(_lookup(data, _ALIASES["train_step_s"]), "train_step_s", path)
    rec.train_peak_mem_gb = _as_float(
        _lookup(data, _ALIASES["train_peak_mem_gb"]), "train_peak_mem_gb", path
    )
    for key, t_key, m_key in _TRAIN_SOURCES:
        sub = data.get(key)
        if not isinstance(sub, dict):
            continue
        if str(sub.get("status", "ok")).lower() == "oom":
            rec.train_status = "oom"
            rec.train_message = str(sub.get("message") or "")
        if rec.train_step_s is None:
            rec.train_step_s = _as_float(sub.get(t_key), f"{key}.{t_key}", path)
        if rec.train_peak_mem_gb is None and rec.train_status != "oom":
            rec.train_peak_mem_gb = _as_float(sub.get(m_key), f"{key}.{m_key}", path)
        if rec.train_step_s is not None or rec.train_status == "oom":
            break
    stats = data.get("train_stats")
    if rec.train_peak_mem_gb is None and rec.train_status != "oom" and isinstance(stats, dict):
        # CPU runs: no CUDA peak; the training's peak-RSS growth stands in, marked as such
        rss = _as_float(stats.get("peak_rss_growth_gb"), "train_stats.peak_rss_growth_gb", path)
        if rss is not None:
            rec.train_peak_mem_gb, rec.train_mem_kind = rss, "cpu_rss"
    acc = _lookup(data, _ALIASES["train_accumulate"])
    rec.train_accumulate = int(acc) if acc else 1
    for name in ("device", "message", "metric_convention"):
        value = _lookup(data, _ALIASES[name])
        if value is not None:
            setattr(rec, name, str(value))
    shape = _lookup(data, _ALIASES["volume_shape"])
    if isinstance(shape, (list, tuple)) and shape:
        rec.volume_shape = tuple(int(s) for s in shape)
    elif isinstance(shape, (int, float)):
        rec.volume_shape = (int(shape),) * 3
    slices = _lookup(data, _ALIASES["slices"])
    if slices:
        p = Path(str(slices))
        if not p.is_absolute() and not p.exists() and (path.parent / p).exists():
            p = path.parent / p
        rec.slices = str(p)
    elif path.with_suffix(".npz").exists():
        rec.slices = str(path.with_suffix(".npz"))
    if rec.status == "ok" and rec.psnr is None:
        raise ReportError(f"{path}: status 'ok' but no 'psnr' value")
    if rec.status == "oom":
        rec.train_status = "oom"
        rec.train_message = rec.train_message or rec.message
    if rec.train_status == "oom" and rec.oom_needed_gb is None:
        rec.oom_needed_gb = _needed_gb(rec.train_message) or _needed_gb(rec.message)
    if rec.status == "failed":
        log.warning("%s: evaluation failed: %s", path, rec.message)
    return rec


def task_settings(config: dict, task: str) -> list[str]:
    """Setting names of a task in the config: ``v30``... (CBCT views) or ``R5``... (MRI)."""
    if task == "cbct":
        return [f"v{int(n)}" for n in config.get("cbct", {}).get("views", [])]
    return [f"R{float(r):g}" for r in config.get("mri", {}).get("accelerations", [])]


def test_volumes(config: dict, task: str) -> list[str] | None:
    """Test volume ids of a task from ``config[task]["splits"]["test"]`` (as ``data.smk`` names
    them: ``walnut<N>`` for CBCT), or ``None`` when the config has no split (then the volumes
    found on disk are used)."""
    test = ((config.get(task) or {}).get("splits") or {}).get("test")
    if not test:
        return None
    return [f"walnut{v}" if task == "cbct" else str(v) for v in test]


def setting_value(setting: str) -> float:
    """The number in a setting name (``v30`` → 30, ``R5`` → 5)."""
    return float(setting[1:])


def collect_evals(
    results: str | Path, config: dict, allow_missing: bool = False
) -> dict[tuple[str, str, str], list[EvalRecord]]:
    """Read every requested evaluation JSON: {(task, setting, variant): records sorted by volume}.

    The requested cells are the config's tasks × settings × variants. Every cell must have at
    least one file, and all variants of a (task, setting) the same test volumes; otherwise a
    :class:`ReportError` lists the missing files (unless ``allow_missing``, which skips them).
    """
    results = Path(results)
    cells: dict[tuple[str, str, str], list[EvalRecord]] = {}
    problems: list[str] = []
    for task in config.get("tasks", []):
        wanted = test_volumes(config, task)
        for setting in task_settings(config, task):
            volumes: dict[str, set[str]] = {}
            for variant in config.get("variants", []):
                folder = results / "eval" / task / setting / variant
                if wanted is not None:
                    files = [folder / f"{v}.json" for v in wanted]
                    for f in files:
                        if not f.exists():
                            problems.append(f"missing {f} (test volume of {task} in the config)")
                    files = [f for f in files if f.exists()]
                else:
                    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
                    if not files:
                        problems.append(
                            f"no evaluation files in {folder}/ (cell {task}/{setting}/{variant})"
                        )
                volumes[variant] = {f.stem for f in files}
                if not files:
                    continue
                recs = [read_eval(f) for f in files]
                for r in recs:
                    if (r.task, r.setting, r.variant) != (task, setting, variant):
                        raise ReportError(
                            f"{r.path}: says task/setting/variant = {r.task}/{r.setting}/"
                            f"{r.variant} but lies under {folder}"
                        )
                cells[(task, setting, variant)] = recs
            if wanted is None:
                union = set().union(*volumes.values()) if volumes else set()
                for variant, vols in volumes.items():
                    for v in sorted(union - vols) if vols else []:
                        problems.append(
                            f"missing {results / 'eval' / task / setting / variant / (v + '.json')}"
                            " (other variants have this test volume)"
                        )
    if problems and not allow_missing:
        raise ReportError("evaluation results incomplete:\n  " + "\n  ".join(problems))
    for p in problems:
        log.warning(p)
    return cells


# --------------------------------------------------------------------------------------------
# Aggregation and cells


@dataclass
class Agg:
    """One aggregated cell of ours: mean over test volumes (or OOM)."""

    status: str  # ok | oom | failed | missing
    value: float | None = None
    n: int = 0
    accumulate: int = 1
    needed_gb: float | None = None
    cpu_rss: bool = False  # a memory value measured as CPU peak-RSS growth, not GPU memory


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def aggregate(records: list[EvalRecord] | None, metric: str) -> Agg:
    """Mean of ``metric`` over the records; ``oom`` if any record is OOM."""
    if not records:
        return Agg("missing")
    if any(r.status == "failed" for r in records):
        return Agg("failed", n=len(records))
    train = metric in ("train_peak_mem_gb", "train_step_s")
    if any(r.status == "oom" or (train and r.train_status == "oom") for r in records):
        needed = [r.oom_needed_gb for r in records if r.oom_needed_gb is not None]
        return Agg("oom", n=len(records), needed_gb=max(needed) if needed else None)
    if metric == "train_peak_mem_gb":
        vals = [r.train_peak_mem_gb for r in records if r.train_peak_mem_gb is not None]
        value = max(vals) if vals else None
    else:
        value = _mean([getattr(r, metric) for r in records])
    acc = max(r.train_accumulate for r in records)
    cpu_rss = metric == "train_peak_mem_gb" and any(r.train_mem_kind == "cpu_rss" for r in records)
    return Agg("ok", value, len(records), accumulate=acc, cpu_rss=cpu_rss)


def aggregate_settings(aggs: list[Agg], metric: str) -> Agg:
    """Combine per-setting cells (the ablation's average over settings)."""
    if not aggs or any(a.status == "missing" for a in aggs):
        return Agg("missing")
    if any(a.status == "failed" for a in aggs):
        return Agg("failed", n=sum(a.n for a in aggs))
    if any(a.status == "oom" for a in aggs):
        needed = [a.needed_gb for a in aggs if a.needed_gb is not None]
        return Agg("oom", n=sum(a.n for a in aggs), needed_gb=max(needed) if needed else None)
    vals = [a.value for a in aggs if a.value is not None]
    if not vals:
        value = None
    elif metric == "train_peak_mem_gb":
        value = max(vals)
    else:
        value = float(np.mean(vals))
    return Agg(
        "ok",
        value,
        sum(a.n for a in aggs),
        accumulate=max(a.accumulate for a in aggs),
        cpu_rss=any(a.cpu_rss for a in aggs),
    )


_DIGITS = {"psnr": 2, "ssim": 3, "train_peak_mem_gb": 2, "train_step_s": 2, "speed": 2}
_PAPER_METRIC = {"train_peak_mem_gb": "train_mem_gb"}


def _fmt(value: float | None, metric: str, accumulate: int = 1) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{_DIGITS.get(metric, 3)}f}"
    return text + (f"×{accumulate}" if accumulate > 1 else "")


def _signed(value: float, metric: str) -> str:
    text = f"{value:+.{_DIGITS.get(metric, 3)}f}"
    return text.replace("-", "−")


@dataclass
class Cell:
    """One rendered table cell with its parts (for the CSV)."""

    text: str
    ours: float | None
    ours_status: str
    paper: float | None
    paper_status: str | None
    diff: float | None
    paper_source: str | None
    n: int


def make_cell(agg: Agg, task: str, variant: str, metric: str, setting: str, source=None) -> Cell:
    """``ours / paper (Δ)``; OOM cells state the memory needed when it is known."""
    pm = _PAPER_METRIC.get(metric, metric)
    paper = paper_value(task, variant, pm, setting, source=source)
    if agg.status == "oom":
        if metric == "train_peak_mem_gb":
            ours_text = "OOM" + (f" (needs ≥{agg.needed_gb:.1f} GB)" if agg.needed_gb else "")
        else:
            ours_text = "✗ OOM"
    elif agg.status == "missing":
        ours_text = "—"
    elif agg.status == "failed":
        ours_text = "failed"
    elif agg.cpu_rss and agg.value is not None:
        ours_text = f"{agg.value:.3f} CPU"  # peak-RSS growth: not comparable, so no Δ
    else:
        ours_text = _fmt(agg.value, metric, agg.accumulate if metric == "train_step_s" else 1)
    diff = None
    if paper is None:
        text = f"{ours_text} / —" if agg.status != "missing" else ours_text
    else:
        text = f"{ours_text} / {paper.display(_DIGITS.get(metric, 2))}"
        if (
            agg.status == "ok"
            and agg.value is not None
            and paper.value is not None
            and not agg.cpu_rss
        ):
            diff = agg.value - paper.value
            text += f" ({_signed(diff, metric)})"
    return Cell(
        text=text,
        ours=agg.value if agg.status == "ok" else None,
        ours_status=agg.status,
        paper=None if paper is None else paper.value,
        paper_status=None if paper is None else paper.status,
        diff=diff,
        paper_source=None if paper is None else paper.source,
        n=agg.n,
    )


# --------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    """A rendered table: header, rows of :class:`Cell` (first column = method label), footnotes."""

    name: str
    title: str
    header: list[str]
    rows: list[list[Cell | str]]
    footnotes: list[str]
    long: list[dict[str, Any]]  # tidy rows for the CSV


def _git_commit(cwd: str | Path = ".") -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _footnotes(
    task_cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    config_path: str | None,
    commit: str,
    tasks: Sequence[str],
) -> list[str]:
    notes = [
        "Cells: ours / paper (Δ = ours − paper). Paper values are the [summary] numbers of "
        "paper.md §6 (not checked against the PDF); — = not reported by the paper or not run. "
        "Training costs are setting-independent; for a row the main table lacks they come from "
        "the paper's ablation table.",
    ]
    for task in tasks:
        recs = [r for (t, _, _), rs in task_cells.items() if t == task for r in rs]
        if not recs:
            continue
        title = TASK_TITLE[task]
        shapes = sorted({r.volume_shape for r in recs if r.volume_shape})
        shape_text = ", ".join("×".join(map(str, s)) for s in shapes) if shapes else "not recorded"
        vols = sorted({r.volume for r in recs})
        notes.append(
            f"{title}: volume size {shape_text} (paper: "
            f"{'501³' if task == 'cbct' else '218×170×256, 12 coils'}); {len(vols)} test "
            f"volume{'s' if len(vols) != 1 else ''} per cell ({', '.join(vols)}); mean over volumes."
        )
        conv = sorted({r.metric_convention for r in recs if r.metric_convention})
        notes.append(f"{title} metrics: {'; '.join(conv) or DEFAULT_METRIC_CONVENTION[task]}.")
        if PAPER_ONLY_ROWS.get(task):
            extra = f"; {PAPER_MISSING_NOTE[task]}" if task in PAPER_MISSING_NOTE else ""
            notes.append(
                f"{title}: paper rows not reimplemented here: {', '.join(PAPER_ONLY_ROWS[task])}"
                f"{extra}."
            )
    devices = sorted({r.device for rs in task_cells.values() for r in rs if r.device})
    notes.append(
        f"Hardware: {', '.join(devices) or 'not recorded'} (paper: one NVIDIA H100 80 GB). "
        "Train VRAM = peak torch.cuda.max_memory_allocated over timed training steps; on a CPU "
        "(“x CPU”) the growth of the peak resident memory during training instead, not comparable "
        "with GPU memory and so given without Δ; "
        "s/step = mean seconds per micro-step after warm-up, ×k = gradient-accumulation "
        "micro-steps per optimiser step; OOM = training did not fit, with the peak reached "
        "before failing."
    )
    notes.append(
        f"Config: {config.get('name', '?')}"
        + (f" ({config_path})" if config_path else "")
        + f"; commit {commit}; generated by `unroll3d report`."
    )
    return notes


def build_table(
    kind: str,
    cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    config_path: str | None = None,
    commit: str | None = None,
) -> Table | None:
    """Build ``table1_cbct``, ``table2_mri`` or ``table_ablation``; ``None`` if no task applies."""
    commit = commit or _git_commit()
    variants = list(config.get("variants", []))
    if kind in ("table1_cbct", "table2_mri"):
        task = "cbct" if kind == "table1_cbct" else "mri"
        if task not in config.get("tasks", []):
            return None
        sets = task_settings(config, task)
        header = ["Method"]
        header += [f"SSIM {s}" for s in sets] + [f"PSNR (dB) {s}" for s in sets]
        header += ["Train VRAM (GB)", "s/step"]
        rows, long = [], []
        for v in variants:
            row: list[Cell | str] = [METHOD_LABEL[task].get(v, v)]
            for metric in ("ssim", "psnr"):
                for s in sets:
                    cell = make_cell(aggregate(cells.get((task, s, v)), metric), task, v, metric, s)
                    row.append(cell)
                    long.append(_long(kind, task, v, s, metric, cell))
            for metric in ("train_peak_mem_gb", "train_step_s"):
                agg = aggregate_settings(
                    [aggregate(cells.get((task, s, v)), metric) for s in sets], metric
                )
                cell = make_cell(agg, task, v, metric, "all")
                row.append(cell)
                long.append(_long(kind, task, v, "all", metric, cell))
            rows.append(row)
        # inference costs (ours only) for the CSV
        for v in variants:
            for s in sets:
                for metric in ("infer_time_s", "infer_peak_mem_gb"):
                    agg = aggregate(cells.get((task, s, v)), metric)
                    cell = make_cell(agg, task, v, metric, s)
                    long.append(_long(kind, task, v, s, metric, cell))
        title = (
            "Table 1: sparse-view Walnut-CBCT"
            if task == "cbct"
            else "Table 2: MC-MRI (Calgary-Campinas)"
        )
        task_cells = {k: r for k, r in cells.items() if k[0] == task}
        notes = _footnotes(task_cells, config, config_path, commit, [task])
        return Table(kind, title, header, rows, notes, long)
    if kind == "table_ablation":
        tasks = [t for t in ("mri", "cbct") if t in config.get("tasks", [])]
        abl = [v for v in ABLATION_VARIANTS if v in variants]
        if not tasks or not abl:
            return None
        header = ["Configuration", "Variant"]
        for t in tasks:
            header += [
                f"{TASK_TITLE[t]} PSNR (dB)",
                f"{TASK_TITLE[t]} VRAM (GB)",
                f"{TASK_TITLE[t]} s/step",
            ]
        rows, long = [], []
        for v in abl:
            row: list[Cell | str] = [ABLATION_LABEL[v], v]
            for t in tasks:
                sets = task_settings(config, t)
                for metric in ("psnr", "train_peak_mem_gb", "train_step_s"):
                    agg = aggregate_settings(
                        [aggregate(cells.get((t, s, v)), metric) for s in sets], metric
                    )
                    cell = make_cell(agg, t, v, metric, "mean", source="ablation")
                    row.append(cell)
                    long.append(_long(kind, t, v, "mean", metric, cell))
            rows.append(row)
        task_cells = {k: r for k, r in cells.items() if k[0] in tasks and k[2] in abl}
        notes = [
            "PSNR is the mean over the settings of each task (CBCT views, MRI accelerations) and "
            "the test volumes; VRAM is the largest over settings."
        ] + _footnotes(task_cells, config, config_path, commit, tasks)
        return Table(
            kind,
            "Ablation: partitioning × normal-operator approximation",
            header,
            rows,
            notes,
            long,
        )
    raise ValueError(f"unknown table {kind!r}; expected one of {TABLES}")


def _long(table: str, task: str, variant: str, setting: str, metric: str, cell: Cell) -> dict:
    return {
        "table": table,
        "task": task,
        "variant": variant,
        "method": METHOD_LABEL[task].get(variant, variant),
        "setting": setting,
        "metric": metric,
        "ours": cell.ours,
        "ours_status": cell.ours_status,
        "paper": cell.paper,
        "paper_status": cell.paper_status,
        "delta": cell.diff,
        "paper_source": cell.paper_source,
        "n_volumes": cell.n,
        "text": cell.text,
    }


def _text(c: Cell | str) -> str:
    return c if isinstance(c, str) else c.text


def render_markdown(table: Table) -> str:
    """GitHub Markdown with numbered footnotes."""
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_text(c).replace("|", "\\|") for c in row) + " |")
    lines.append("")
    lines += [f"{i}. {note}" for i, note in enumerate(table.footnotes, 1)]
    return "\n".join(lines) + "\n"


_TEX = [
    ("\\", r"\textbackslash{}"),
    ("&", r"\&"),
    ("%", r"\%"),
    ("$", r"\$"),
    ("#", r"\#"),
    ("_", r"\_"),
    ("{", r"\{"),
    ("}", r"\}"),
    ("~", r"\textasciitilde{}"),
    ("^", r"\textasciicircum{}"),
]
_TEX_UNICODE = {
    "Δ": r"$\Delta$",
    "−": "$-$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "✗": r"\ding{55}",
    "³": r"$^3$",
    "²": r"$^2$",
    "ᴴ": r"$^H$",
    "ᵀ": r"$^T$",
    "α": r"$\alpha$",
    "λ": r"$\lambda$",
    "—": "---",
    "–": "--",
    "§": r"\S{}",
    "·": r"$\cdot$",
}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the Unicode symbols used in cells to math."""
    for a, b in _TEX:
        text = text.replace(a, b)
    text = re.sub(r"`([^`]*)`", r"\\texttt{\1}", text)
    for a, b in _TEX_UNICODE.items():
        text = text.replace(a, b)
    return text


def render_latex(table: Table) -> str:
    """A booktabs ``table`` float (needs ``booktabs`` and ``pifont``), footnotes below."""
    ncol = len(table.header)
    lines = [
        f"% {table.title} -- generated by `unroll3d report`; needs \\usepackage{{booktabs,pifont}}",
        r"\begin{table*}[t]",
        r"\centering\scriptsize",
        f"\\caption{{{tex_escape(table.title)}}}",
        f"\\label{{tab:{table.name}}}",
        r"\begin{tabular}{l" + "c" * (ncol - 1) + "}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in table.header) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        lines.append(" & ".join(tex_escape(_text(c)) for c in row) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\smallskip",
        r"\begin{minipage}{\linewidth}\tiny",
    ]
    lines += [f"({i}) {tex_escape(n)}\\par" for i, n in enumerate(table.footnotes, 1)]
    lines += [r"\end{minipage}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def build_datastep_table(
    bench_csv: str | Path | None,
    config: dict,
    config_path: str | None = None,
    commit: str | None = None,
) -> Table | None:
    """§6.4: patch data-step speed, exact S AᵀA Sᵀ vs the kernel-cropped H (``bench_normal.csv``).

    Columns read: ``volume``, ``patch``, ``views``, ``method`` (``exact``/``H``), ``it_per_s``,
    ``device``. ``None`` when the file is absent.
    """
    if bench_csv is None:
        return None
    bench_csv = Path(bench_csv)
    df = _read_csv(bench_csv)
    if df is None or df.empty:
        return None
    for c in ("volume", "patch", "method", "it_per_s"):
        _col(df, (c,), bench_csv)
    keys = [c for c in ("volume", "patch", "views", "device") if c in df.columns]
    p_exact = paper_value("cbct", "partition", "data_step_it_s")
    p_h = paper_value("cbct", "partition-H", "data_step_it_s")
    p_speed = p_h.value / p_exact.value
    header = [
        "Volume",
        "Patch",
        "Views",
        "Exact S AᵀA Sᵀ (it/s)",
        "H, cropped kernel (it/s)",
        "Speed-up",
    ]
    rows, long = [], []
    for key, sub in df.groupby(keys, sort=True):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        rate = {str(m): float(g["it_per_s"].mean()) for m, g in sub.groupby("method")}
        ex, h = rate.get("exact"), rate.get("H")
        cells = []
        for name, ours, paper in (
            ("exact_it_s", ex, p_exact.value),
            ("H_it_s", h, p_h.value),
            ("speedup", (h / ex) if ex and h else None, p_speed),
        ):
            diff = None if ours is None else ours - paper
            text = ("n/a" if ours is None else f"{ours:.2f}") + f" / {paper:.2f}"
            text += "" if diff is None else f" ({_signed(diff, 'speed')})"
            cell = Cell(
                text, ours, "ok" if ours is not None else "missing", paper, "ok", diff, "text", 1
            )
            cells.append(cell)
            long.append(
                {
                    "table": "table_datastep",
                    **key,
                    "metric": name,
                    "ours": ours,
                    "paper": paper,
                    "delta": diff,
                    "paper_source": "paper.md §6.4 [summary]",
                    "text": text,
                }
            )
        n = key.get("volume")
        pch = key.get("patch")
        rows.append([f"{n}³", f"{pch}³", str(key.get("views", "?")), *cells])
    devices = sorted({str(d) for d in df["device"].dropna()}) if "device" in df.columns else []
    notes = [
        "Cells: ours / paper (Δ). The paper reports 4.19 it/s (exact) and 12.5 it/s (H) on "
        "Walnut-CBCT without stating patch size or view count (paper.md §6.4, [summary]); our "
        "rows are synthetic circular cone-beam geometries of the sizes shown.",
        "One data step x ← x − η(N x − b) on a cubic patch; N = exact S AᵀA Sᵀ (zero-pad, project, "
        "back-project, crop) or S H Sᵀ with the kernel cropped to 2p (§4.6). Time after warm-up.",
        f"Hardware: {', '.join(devices) or 'not recorded'} (paper: one NVIDIA H100 80 GB). "
        f"Source: {bench_csv}.",
        f"Config: {config.get('name', '?')}"
        + (f" ({config_path})" if config_path else "")
        + f"; commit {commit or _git_commit()}; generated by `unroll3d report`.",
    ]
    return Table(
        "table_datastep", "Data-step speed on a patch: exact vs H (§6.4)", header, rows, notes, long
    )


def write_tables(
    cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    out_dir: str | Path,
    config_path: str | None = None,
    commit: str | None = None,
    bench_normal: str | Path | None = None,
) -> list[Path]:
    """Write every table as CSV (tidy, one row per cell), Markdown and LaTeX; return the paths.

    A table whose task is not in the config (or, for ``table_datastep``, whose benchmark file
    ``bench_normal`` is absent) is written with a one-line "no data" note, so the set of output
    files does not depend on the config.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    commit = commit or _git_commit()
    written = []
    for kind in TABLES:
        if kind == "table_datastep":
            table = build_datastep_table(bench_normal, config, config_path, commit)
            why = f"benchmark file {bench_normal} not available"
        else:
            table = build_table(kind, cells, config, config_path, commit)
            why = f"{kind} needs a task that configuration {config.get('name')!r} disables"
        if table is None:
            note = f"no data: {why}"
            md, tex = f"_{note}_\n", f"% {note}\n"
            df = pd.DataFrame(columns=["table", "metric", "ours", "paper", "delta", "text"])
        else:
            md, tex = render_markdown(table), render_latex(table)
            df = pd.DataFrame(table.long)
        for ext, text in (("md", md), ("tex", tex)):
            atomic_write_text(out_dir / f"{kind}.{ext}", text)
            written.append(out_dir / f"{kind}.{ext}")
        with atomic_path(out_dir / f"{kind}.csv") as tmp:
            df.to_csv(tmp, index=False)
        written.append(out_dir / f"{kind}.csv")
    return written


# --------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def no_data(ax, reason: str, head: str = "no data") -> None:
    """Turn ``ax`` into a clearly labelled empty panel."""
    ax.set_facecolor("#f2f2f2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color("#bbbbbb")
    ax.text(
        0.5,
        0.5,
        head + ("\n" + reason if reason else ""),
        ha="center",
        va="center",
        fontsize=7,
        color="#555555",
        wrap=True,
        transform=ax.transAxes,
    )


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Save ``fig`` as ``name.png`` and ``name.pdf`` atomically; close it."""
    out_dir = Path(out_dir)
    paths = []
    for fmt in ("png", "pdf"):
        path = out_dir / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp, format=fmt, metadata={"Software": "unroll3d report"} if fmt == "png" else None
            )
        paths.append(path)
    _plt().close(fig)
    return paths


def _mark_oom(ax, sizes, color) -> None:
    """A faint vertical line labelled "OOM" at each volume size that ran out of memory."""
    for n in sizes:
        ax.axvline(n, color=color, alpha=0.3, lw=0.8)
        ax.text(
            n, 0.95, " OOM", color=color, fontsize=6, va="top", transform=ax.get_xaxis_transform()
        )


def _log_y(ax) -> None:
    """Log y axis with plain tick labels (0.2, 1, 3 rather than 2×10⁻¹)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _read_csv(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - any parse failure is reported with the file name
        raise ReportError(f"{path}: cannot read CSV ({err})") from err
    return df


def _col(df, names: Sequence[str], path: Path, required: bool = True):
    for n in names:
        if n in df.columns:
            return n
    if required:
        raise ReportError(
            f"{path}: none of the columns {list(names)} found (has {list(df.columns)})"
        )
    return None


def _size_col(df, path):
    return _col(df, ("n", "size", "N", "volume_size", "img_size"), path)


def _mem_gb(df, path, names=("peak_mem_gb", "mem_gb", "peak_memory_gb", "peak_mb", "peak_mem_mb")):
    """Memory column in GB (``*_mb`` columns are MiB, as the benchmarks write them)."""
    c = _col(df, names, path)
    scale = 2**20 / 1e9 if c.endswith("_mb") else 1.0
    return pd_numeric(df[c]) * scale


def pd_numeric(series):
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").astype(float)


def _devices(df) -> str:
    if df is None or "device" not in df.columns:
        return ""
    return ", ".join(sorted({str(d) for d in df["device"].dropna()}))


def fig_data_vs_network(bench_csv: Path, out_dir: Path, reason: str | None = None) -> list[Path]:
    """Fig. 1: peak memory and time of one data step vs one 3D DRUNet step against N."""
    plt = _plt()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.6))
        df = None if reason else _read_csv(bench_csv)
        if df is None or df.empty:
            for ax, what in zip(axes, ("peak memory", "time of forward + backward"), strict=True):
                no_data(ax, reason or f"{bench_csv} not found")
                ax.set_title(what)
            fig.suptitle("Data step vs network step (Fig. 1)", fontsize=8)
        else:
            ncol = _size_col(df, bench_csv)
            scol = _col(df, ("step", "component", "kind"), bench_csv)
            df = df.assign(_mem=_mem_gb(df, bench_csv))
            tcol = _col(df, ("time_s", "wall_s", "seconds"), bench_csv)
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
                        _mark_oom(ax, bad[ncol], c)
                _log_y(ax)
                ax.set_xlabel("volume size N (N³ voxels)")
                ax.set_ylabel(ylabel)
                sizes = sorted(df[ncol].unique())
                ax.set_xticks(sizes)
                ax.set_xticklabels([str(int(s)) for s in sizes])
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
            fig.suptitle(f"Data step vs network step ({_devices(df)}{method})", fontsize=8)
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig1_data_vs_network")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError as err:
        raise ReportError(f"missing file {path}") from err
    except Exception as err:  # noqa: BLE001
        raise ReportError(f"{path}: cannot read .npz ({err})") from err


def _to_image(a: np.ndarray, name: str = "") -> np.ndarray:
    """2D float image: magnitude of (2, H, W) real/imag or complex arrays, squeezed."""
    a = np.asarray(a)
    if np.iscomplexobj(a):
        a = np.abs(a)
    a = np.squeeze(a)
    if a.ndim == 3 and a.shape[0] == 2:
        a = np.sqrt(a[0] ** 2 + a[1] ** 2)
    if a.ndim != 2:
        raise ReportError(f"slice {name!r} must be 2D (or 2×H×W real/imag), got shape {a.shape}")
    return a.astype(np.float64)


def _imshow(ax, img, vmin=None, vmax=None, cmap="gray", title=None):
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    return im


def fig_normal(
    task: str, npz_paths: dict[str, Path], out_dir: Path, reason: str | None = None
) -> list[Path]:
    """Figs. 9/10: x, AᵀAx, Hx / λ, m, (AᵀAx − Hx)², plus the fit curve of every setting.

    ``npz_paths`` maps setting → illustration file (see :func:`normal_illustration`); the first
    existing one gives the six panels.
    """
    plt = _plt()
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
        z = _load_npz(path)
        for key in ("x", "AtAx", "Hx", "lam", "mask"):
            if key not in z:
                raise ReportError(f"{path}: missing array {key!r} (has {sorted(z)})")
        x, ata, hx = (_to_image(z[k], k) for k in ("x", "AtAx", "Hx"))
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
                _to_image(z["lam"], "lam"),
                None,
                None,
                "viridis",
                "filter λ\n(log₁₀|λ|, centred)",
            ),
            (_to_image(z["mask"], "mask"), None, None, "viridis", "mask m"),
            (err, None, None, "magma", f"(AᵀAx − Hx)²\n‖AᵀAx − Hx‖/‖AᵀAx‖ = {rel:.3f}"),
        ]
        for ax, (img, a, b, cmap, title) in zip(axes, panels, strict=True):
            im = _imshow(ax, img, a, b, cmap=cmap, title=title)
            cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, format="%.3g")
            cbar.ax.tick_params(labelsize=5.5)
        drew = False
        for s_, p in existing.items():
            zz = _load_npz(p)
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
            _log_y(curve)
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
    z = _load_npz(path)
    out = {}
    for key, names in _SLICE_KEYS.items():
        hit = next((n for n in names if n in z), None)
        if hit is None:
            raise ReportError(
                f"{path}: missing slice {key!r} (accepted names {names}; has {sorted(z)})"
            )
        out[key] = _to_image(z[hit], f"{path}:{hit}")
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
    """PSNR (dB) of a 2D slice against the reference; data range = reference max − min by default."""
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
    """Figs. 3/4: axial and vertical slices of the ground truth and each method, PSNR in the corner."""
    plt = _plt()
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
                _imshow(
                    axes[i, 0], gts[orient], vmin, vmax, title="ground truth" if i == 0 else None
                )
                axes[i, 0].set_ylabel(row_names[orient])
                _inset(axes[i, 0], gts[orient], vmin, vmax, rep["inset_center"], rep["inset_size"])
                for j, v in enumerate(variants, 1):
                    ax = axes[i, j]
                    title = SHORT_LABEL[task].get(v, v) if i == 0 else None
                    r = recs[v]
                    if r is not None and r.status == "oom":
                        need = f"needs ≥{r.oom_needed_gb:.0f} GB" if r.oom_needed_gb else ""
                        no_data(ax, need, head="OOM\n(not trainable)")
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
                    _imshow(ax, img, vmin, vmax, title=title)
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
                f"{TASK_TITLE[task]}, {setting}, volume {volume} (shared grey scale; PSNR per slice; "
                "* = the paper's method)",
                fontsize=8,
            )
        fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.4)
        return save_figure(fig, out_dir, name)


def _box(ax, x0, y0, w, h, d, face, edge, alpha=1.0, z=1):
    """An oblique-projection cuboid (front face at (x0, y0), depth offset d·(0.5, 0.35))."""
    from matplotlib.patches import Polygon

    dx, dy = 0.5 * d, 0.35 * d
    faces = [
        [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)],
        [(x0, y0 + h), (x0 + w, y0 + h), (x0 + w + dx, y0 + h + dy), (x0 + dx, y0 + h + dy)],
        [(x0 + w, y0), (x0 + w + dx, y0 + dy), (x0 + w + dx, y0 + h + dy), (x0 + w, y0 + h)],
    ]
    for i, f in enumerate(faces):
        shade = 1.0 - 0.12 * i
        ax.add_patch(
            Polygon(
                f,
                closed=True,
                facecolor=face,
                edgecolor=edge,
                lw=0.8,
                alpha=alpha * shade,
                zorder=z,
            )
        )


def fig_partition_schematic(out_dir: Path) -> list[Path]:
    """Fig. 2 equivalent: a patch x_patch recovered given the context, with the exact reduced problem."""
    plt = _plt()
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(6.6, 2.6))
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 4)
        ax.set_aspect("equal")
        ax.axis("off")
        _box(ax, 0.4, 0.5, 2.6, 2.4, 1.4, "#9ecae1", "#3182bd", alpha=0.55)
        _box(ax, 1.2, 1.4, 1.0, 0.45, 0.9, "#fb6a4a", "#a50f15", z=3)
        ax.text(1.7, 0.2, r"volume $x \in \mathbb{R}^n$", ha="center", fontsize=7)
        ax.text(
            0.45,
            3.55,
            r"context $x_{\mathrm{context}} = S_\perp x \in \mathbb{R}^q$",
            color="#08519c",
            fontsize=7,
        )
        ax.annotate(
            r"patch $x_{\mathrm{patch}} = S x \in \mathbb{R}^p$",
            xy=(2.0, 1.45),
            xytext=(2.6, 0.75),
            color="#a50f15",
            fontsize=7,
            arrowprops={"arrowstyle": "->", "color": "#a50f15", "lw": 0.8},
        )
        ax.annotate(
            "",
            xy=(5.2, 1.9),
            xytext=(4.0, 1.9),
            arrowprops={"arrowstyle": "-|>", "color": "k", "lw": 1.0},
        )
        ax.text(4.6, 2.05, "A", ha="center", fontsize=8)
        lines = [
            ("measurements of the whole volume:", r"$y = A x + \varepsilon$"),
            (
                "remove the context's contribution:",
                r"$\tilde{y} = y - A S_\perp^\top S_\perp x_{\mathrm{context}}$",
            ),
            (
                "exact reduced operator on the patch:",
                r"$\tilde{A} = A S^\top,\quad \tilde{y} = \tilde{A} x_{\mathrm{patch}} + \varepsilon$",
            ),
            (
                "data step on the patch:",
                r"$S A^\top A S^\top$  or  $S H S^\top$ (kernel cropped to 2p)",
            ),
            (
                "network on the patch only:",
                r"$x_{\mathrm{patch}} \leftarrow R_\phi(\tilde{y}, \tilde{A})$",
            ),
        ]
        for i, (what, eq) in enumerate(lines):
            yy = 3.4 - 0.68 * i
            ax.text(5.4, yy, what, fontsize=6.5, color="#555555", va="bottom")
            ax.text(5.4, yy - 0.05, eq, fontsize=7.5, va="top")
        fig.suptitle(
            "Domain partitioning (Fig. 2 equivalent): an exact smaller inverse problem "
            "for one patch",
            fontsize=8,
        )
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig2_partition_schematic")


def fig_psnr_vs_setting(
    cells: dict[tuple[str, str, str], list[EvalRecord]], config: dict, out_dir: Path
) -> list[Path]:
    """PSNR against views (CBCT) and acceleration (MRI) per method; the paper's values dashed."""
    plt = _plt()
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
                color, marker = VARIANT_STYLE.get(v, ("k", "o"))
                aggs = [aggregate(cells.get((task, s, v)), "psnr") for s in sets]
                ours = [a.value if a.status == "ok" else np.nan for a in aggs]
                paper = [paper_value(task, v, "psnr", s) for s in sets]
                pv = [p.value if p is not None and p.value is not None else np.nan for p in paper]
                oom = any(a.status == "oom" for a in aggs)
                label = SHORT_LABEL[task].get(v, v) + (" (OOM)" if oom else "")
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


def fig_partition_memory(bench_csv: Path, out_dir: Path, reason: str | None = None) -> list[Path]:
    """Peak training memory of a partitioned step (fixed patch) vs full-volume unrolling, against N."""
    plt = _plt()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        df = None if reason else _read_csv(bench_csv)
        if df is None or df.empty:
            no_data(ax, reason or f"{bench_csv} not found")
            ax.set_title("Partitioned vs full-volume training memory", fontsize=7)
        else:
            ncol = _size_col(df, bench_csv)
            mcol = _col(df, ("method", "variant", "mode", "kind"), bench_csv)
            df = df.assign(_mem=_mem_gb(df, bench_csv))
            step_col = _col(df, ("step_mb", "step_mem_gb"), bench_csv, required=False)
            if step_col:
                df = df.assign(_step=_mem_gb(df, bench_csv, (step_col,)))
            names = {"full": "full-volume unrolling", "partitioned": "partitioned (fixed patch)"}
            for method, sub in df.groupby(mcol):
                sub = sub.sort_values(ncol)
                m = str(method)
                color, marker = VARIANT_STYLE.get(
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
                _mark_oom(ax, sub[ncol][~ok], color)
            _log_y(ax)
            ax.set_xlabel("volume size N (N³ voxels)")
            ax.set_ylabel("peak training memory (GB)")
            sizes = sorted(df[ncol].unique())
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(int(s)) for s in sizes])
            patch = ""
            pcol = _col(df, ("patch", "patch_size"), bench_csv, required=False)
            if pcol:
                vals = sorted(set(df[pcol].astype(str)))
                patch = ", patch " + ", ".join(v + "³" if v.isdigit() else v for v in vals)
            ax.legend(frameon=False, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22))
            ax.set_title(f"Partitioned vs full-volume training{patch}\n{_devices(df)}", fontsize=7)
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig_partition_memory")


@dataclass
class SweepPoint:
    """One patch size of the Figs. 7/8 sweep: means over the test volumes."""

    patch: tuple[int, int, int]
    psnr: float | None
    ssim: float | None
    memory_gb: float | None
    memory_kind: str
    step_s: float | None
    device: str
    n_volumes: int


def collect_sweep(results: str | Path, config: dict, task: str) -> list[SweepPoint]:
    """Read the sweep's evaluations of ``task`` (config key ``sweep``); [] when it is off.

    Memory is the training peak: ``train_stats.peak_memory_gb`` (CUDA) or else
    ``train_stats.peak_rss_growth_gb`` (CPU: host peak RSS during training minus the RSS before).
    A configured patch size without evaluation files is an error, as for the tables.
    """
    sweep = config.get("sweep") or {}
    if not sweep.get("enabled") or task not in config.get("tasks", []):
        return []
    setting = task_settings(config, task)[0]
    points = []
    for patch in sweep.get(task, []):
        label = "x".join(str(int(p)) for p in patch)
        folder = Path(results) / "eval" / task / setting / "sweep" / f"p{label}"
        names = test_volumes(config, task)
        paths = [folder / f"{v}.json" for v in names] if names else sorted(folder.glob("*.json"))
        if not paths:
            raise ReportError(f"no sweep evaluation files in {folder}")
        recs, mems, kinds, steps = [], [], set(), []
        for path in paths:
            rec = read_eval(path)
            recs.append(rec)
            stats = json.loads(path.read_text()).get("train_stats") or {}
            if stats.get("peak_memory_gb") is not None:
                mems.append(float(stats["peak_memory_gb"]))
                kinds.add("GPU peak allocated")
            elif stats.get("peak_rss_growth_gb") is not None:
                mems.append(float(stats["peak_rss_growth_gb"]))
                kinds.add("CPU peak RSS growth")
            if stats.get("step_time_mean_s") is not None:
                steps.append(float(stats["step_time_mean_s"]))
        ok = [r for r in recs if r.status == "ok"]
        points.append(
            SweepPoint(
                patch=tuple(int(p) for p in patch),
                psnr=_mean([r.psnr for r in ok]) if ok else None,
                ssim=_mean([r.ssim for r in ok]) if ok else None,
                memory_gb=max(mems) if mems else None,
                memory_kind=" / ".join(sorted(kinds)) or "not recorded",
                step_s=_mean(steps) if steps else None,
                device=", ".join(sorted({r.device for r in recs if r.device})) or "?",
                n_volumes=len(recs),
            )
        )
    return points


def _patch_text(patch: Sequence[int]) -> str:
    d, h, w = patch
    return f"{d}×{h}²" if h == w else f"{d}×{h}×{w}"


def fig_patch_sweep(
    task: str, results: str | Path, config: dict, out_dir: Path, reason: str | None = None
) -> list[Path]:
    """Figs. 7/8: mean test PSNR and training s/step against training peak memory, one point per
    partition patch size (config ``sweep``)."""
    plt = _plt()
    name = SWEEP_FIGURE[task]
    points = [] if reason else collect_sweep(results, config, task)
    if not reason and not points:
        reason = f"sweep disabled or empty for {task} in config {config.get('name')!r}"
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.9))
        setting = task_settings(config, task)[0] if task in config.get("tasks", []) else "?"
        variant = (config.get("sweep") or {}).get("variant", "partition-H")
        title = f"{TASK_TITLE[task]}, {setting}: {SHORT_LABEL[task].get(variant, variant)}"
        if reason:
            for ax in axes:
                no_data(ax, reason)
            fig.suptitle(title, fontsize=8)
        else:
            pts = sorted(points, key=lambda p: (p.memory_gb is None, p.memory_gb or 0.0))
            color, marker = VARIANT_STYLE.get(variant, ("#d62728", "o"))
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
    :param bench_partition: partitioned-memory CSV (default ``results/benchmarks/bench_partition.csv``).
    :param normal_dir: folder of ``normal_{task}_{setting}.npz`` (default ``results/figures/data``).
    """
    results, out_dir = Path(results), Path(out_dir)
    bench_steps = Path(bench_steps or results / "benchmarks" / "bench_steps.csv")
    bench_partition = Path(bench_partition or results / "benchmarks" / "bench_partition.csv")
    normal_dir = Path(normal_dir or results / "figures" / "data")
    bench_on = (config.get("benchmarks") or {}).get("enabled", True)
    off = None if bench_on else f"benchmarks disabled in config {config.get('name')!r}"
    paths = fig_data_vs_network(bench_steps, out_dir, reason=off)
    paths += fig_partition_schematic(out_dir)
    for task in TASKS:
        reason = (
            None
            if task in config.get("tasks", [])
            else f"task {task} disabled in config {config.get('name')!r}"
        )
        sets = task_settings(config, task) if not reason else []
        npz = {s: normal_dir / f"normal_{task}_{s}.npz" for s in sets}
        paths += fig_normal(task, npz, out_dir, reason=reason)
        paths += fig_slices(task, cells, config, out_dir, reason=reason)
    paths += fig_psnr_vs_setting(cells, config, out_dir)
    paths += fig_partition_memory(bench_partition, out_dir, reason=off)
    for task in TASKS:
        off_task = (
            None
            if task in config.get("tasks", [])
            else f"task {task} disabled in config {config.get('name')!r}"
        )
        paths += fig_patch_sweep(task, results, config, out_dir, reason=off_task)
    return paths


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
    from unroll3d.normal import load_normal

    sample = load_sample(data_path, setting, device=device)
    try:
        fit = load_normal(normal_path)
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


# --------------------------------------------------------------------------------------------
# Command line


def load_config(path: str | Path) -> dict:
    """Read a workflow config YAML (the same file Snakemake validates)."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ReportError(f"config file {path} not found") from err
    _check_config(config, path)
    return config


def _check_config(config: Any, where: Any) -> None:
    if not isinstance(config, dict):
        raise ReportError(f"{where}: expected a mapping at the top level")
    for key in ("tasks", "variants"):
        if key not in config:
            raise ReportError(f"{where}: missing key {key!r}")
    bad = set(config["tasks"]) - set(TASKS)
    if bad:
        raise ReportError(f"{where}: unknown task(s) {sorted(bad)}; allowed {list(TASKS)}")


def _main_illustration(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="unroll3d report normal-illustration",
        description="Compute the panels of the normal-operator figure (x, AᵀAx, Hx, λ, m) once.",
    )
    p.add_argument(
        "--normal", required=True, help="fitted H file results/normal/{task}/{setting}.pt"
    )
    p.add_argument(
        "--data", required=True, help="one preprocessed volume results/data/{task}/{volume}.pt"
    )
    p.add_argument("--setting", required=True, help="v30, R5, ...")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (the visible GPU, else CPU), cpu, cuda:0")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    normal_illustration(args.normal, args.data, args.setting, args.out, device=torch.device(device))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``unroll3d report``: render tables and figures from existing results (seconds)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        if argv and argv[0] == "normal-illustration":
            return _main_illustration(argv[1:])
        p = argparse.ArgumentParser(
            prog="unroll3d report",
            description="Render the paper's tables (CSV, Markdown, LaTeX) and figures (PNG, PDF).",
            epilog="Sub-command: `unroll3d report normal-illustration --help`.",
        )
        p.add_argument("--results", default="results", help="results folder (default: results)")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--config", help="workflow config YAML (config/config.yaml)")
        src.add_argument("--config-json", help="the resolved config as JSON (from Snakemake)")
        p.add_argument(
            "--config-label",
            default=None,
            help="how the footnotes name the config (default: its path)",
        )
        p.add_argument("--tables", default=None, help="tables folder (default: RESULTS/tables)")
        p.add_argument("--figures", default=None, help="figures folder (default: RESULTS/figures)")
        p.add_argument("--bench-steps", default=None, help="Fig. 1 benchmark CSV")
        p.add_argument("--bench-partition", default=None, help="partitioned-memory benchmark CSV")
        p.add_argument("--bench-normal", default=None, help="data-step speed benchmark CSV (§6.4)")
        p.add_argument("--normal-dir", default=None, help="folder of normal_{task}_{setting}.npz")
        p.add_argument("--only", choices=("tables", "figures"), default=None)
        p.add_argument(
            "--allow-missing",
            action="store_true",
            help="skip missing evaluation files with a warning instead of failing (exploration only)",
        )
        args = p.parse_args(argv)
        results = Path(args.results)
        if args.config_json:
            try:
                config = json.loads(args.config_json)
            except json.JSONDecodeError as err:
                raise ReportError(f"--config-json is not valid JSON ({err})") from err
            _check_config(config, "--config-json")
        else:
            config = load_config(args.config)
        label = args.config_label or args.config
        cells = collect_evals(results, config, allow_missing=args.allow_missing)
        written: list[Path] = []
        if args.only in (None, "tables"):
            bench_normal = args.bench_normal or results / "benchmarks" / "bench_normal.csv"
            written += write_tables(
                cells, config, args.tables or results / "tables", label, bench_normal=bench_normal
            )
        if args.only in (None, "figures"):
            written += write_figures(
                cells,
                config,
                results,
                args.figures or results / "figures",
                bench_steps=args.bench_steps,
                bench_partition=args.bench_partition,
                normal_dir=args.normal_dir,
            )
    except ReportError as err:
        print(f"unroll3d report: error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
