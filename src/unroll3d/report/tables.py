"""Tables 1/2, the ablation and the §6.4 data-step table: aggregation, cells
(ours / paper (Δ)), footnotes and Markdown; LaTeX is :mod:`.latex`, writing :mod:`.output`."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unroll3d.data.masks import MASK_SOURCES
from unroll3d.paper_numbers import PAPER_MISSING_NOTE, PAPER_ONLY_ROWS, paper_value
from unroll3d.report.common import (
    DEFAULT_METRIC_CONVENTION,
    TABLES,
    TASK_TITLE,
    ReportError,
    ablation_label,
    method_label,
)
from unroll3d.report.csvio import missing, pick_column, read_rows
from unroll3d.report.provenance import config_footnote, git_commit
from unroll3d.report.records import EvalRecord, mean_or_none, task_settings
from unroll3d.variants import ablation_variants

log = logging.getLogger("unroll3d.report")


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


def aggregate(records: list[EvalRecord] | None, metric: str) -> Agg:
    """Mean of ``metric`` over the records; ``oom`` if any record is OOM."""
    if not records:
        return Agg("missing")
    if any(r.status == "failed" for r in records):
        return Agg("failed", n=len(records))
    if any(r.status == "unavailable" for r in records):
        return Agg("unavailable", n=len(records))
    train = metric in ("train_peak_mem_gb", "train_step_s")
    if any(r.status == "oom" or (train and r.train_status == "oom") for r in records):
        needed = [r.oom_needed_gb for r in records if r.oom_needed_gb is not None]
        return Agg("oom", n=len(records), needed_gb=max(needed) if needed else None)
    if metric == "train_peak_mem_gb":
        vals = [r.train_peak_mem_gb for r in records if r.train_peak_mem_gb is not None]
        value = max(vals) if vals else None
    else:
        value = mean_or_none([getattr(r, metric) for r in records])
    acc = max(r.train_accumulate for r in records)
    cpu_rss = metric == "train_peak_mem_gb" and any(r.train_mem_kind == "cpu_rss" for r in records)
    return Agg("ok", value, len(records), accumulate=acc, cpu_rss=cpu_rss)


def aggregate_settings(aggs: list[Agg], metric: str) -> Agg:
    """Combine per-setting cells (the ablation's average over settings)."""
    if not aggs or any(a.status == "missing" for a in aggs):
        return Agg("missing")
    if any(a.status == "failed" for a in aggs):
        return Agg("failed", n=sum(a.n for a in aggs))
    if any(a.status == "unavailable" for a in aggs):
        return Agg("unavailable", n=sum(a.n for a in aggs))
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


_DIGITS = {
    "psnr": 2,
    "ssim": 3,
    "ssim_slices": 3,
    "train_peak_mem_gb": 2,
    "train_step_s": 2,
    "speed": 2,
}
#: our metric -> the paper's name for it (Table 1's SSIM is the slice-wise one, docs/paper-notes.md §5)
_PAPER_METRIC = {"train_peak_mem_gb": "train_mem_gb", "ssim_slices": "ssim"}
#: per task, the SSIM that the paper's table reports, and extra SSIM columns shown without a
#: paper value (CBCT: Table 1 follows the earlier Walnut protocol, 2D SSIM averaged over slices)
TABLE_SSIM = {"cbct": ("ssim_slices", ["ssim"]), "mri": ("ssim", [])}
_COLUMN_NAME = {"ssim": "SSIM", "ssim_slices": "SSIM", "psnr": "PSNR (dB)"}


def _fmt(value: float | None, metric: str, accumulate: int = 1) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):  # records are screened when read; this is the last guard
        raise ReportError(f"a non-finite {metric} ({value}) reached a table")
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


def make_cell(
    agg: Agg, task: str, variant: str, metric: str, setting: str, source=None, compare=True
) -> Cell:
    """``ours / paper (Δ)``; OOM cells state the memory needed when it is known. With
    ``compare=False`` the cell has no paper value (a metric the paper does not report)."""
    pm = _PAPER_METRIC.get(metric, metric)
    paper = paper_value(task, variant, pm, setting, source=source) if compare else None
    if agg.status == "oom":
        if metric == "train_peak_mem_gb":
            ours_text = "OOM" + (f" (needs ≥{agg.needed_gb:.1f} GB)" if agg.needed_gb else "")
        else:
            ours_text = "✗ OOM"
    elif agg.status == "missing":
        ours_text = "—"
    elif agg.status == "failed":
        ours_text = "failed"
    elif agg.status == "unavailable":
        ours_text = "weights not available"
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


def _mask_note(recs: list[EvalRecord]) -> str:
    """Where the MRI test masks came from (``mri.mask_source`` as each evaluation recorded it),
    per setting when the settings differ."""
    by_setting: dict[str, set[str]] = {}
    for r in recs:
        by_setting.setdefault(r.setting, set()).add(r.extra.get("mask_source", "not recorded"))
    kinds = sorted(set().union(*by_setting.values()))
    old = "evaluated before evaluations recorded it"
    text = "; ".join(f"{k} = {MASK_SOURCES.get(k, old)}" for k in kinds)
    if len(kinds) > 1:  # which setting used which
        each = [f"{s}: {', '.join(sorted(v))}" for s, v in sorted(by_setting.items())]
        text += f" ({'; '.join(each)})"
    return f"ky-kz sampling masks (mri.mask_source): {text}."


def _normal_fit_note(recs: list[EvalRecord]) -> str | None:
    """The H the -H rows used, per setting: one fit (on which volume) or a fit per test volume
    (``normal.per_sample``), with the held-out error ‖AᵀAx − Hx‖/‖AᵀAx‖ of the fits."""
    by_setting: dict[str, dict[str, tuple[str, float | None]]] = {}
    own: dict[str, bool] = {}  # every evaluation used the fit of its own test volume
    built: dict[str, bool] = {}  # every H was built from the test volume's own mask (MRI)
    for r in recs:
        fit = r.extra.get("normal_fit")
        if isinstance(fit, dict):
            fitted_on = str(fit.get("fitted_on", "?"))
            mask = fit.get("h") == "mask"
            key = f"mask:{r.volume}" if mask else fit.get("file", "?")
            by_setting.setdefault(r.setting, {})[key] = (fitted_on, fit.get("heldout_rel_error"))
            own[r.setting] = own.get(r.setting, True) and fitted_on == r.volume
            built[r.setting] = built.get(r.setting, True) and mask
    parts = []
    for setting, fits in sorted(by_setting.items()):
        errors = [e for _, e in fits.values() if e is not None]
        err = (
            f"{min(errors):.3f}–{max(errors):.3f}"
            if len(errors) > 1
            else (f"{errors[0]:.3f}" if errors else "not recorded")
        )
        volumes = {v for v, _ in fits.values()}
        if built.get(setting):
            parts.append(
                f"{setting}: H built from each test volume's own mask (normal.mri_h; training "
                f"draws likewise), error {err}"
            )
        elif own.get(setting):
            n = len(fits)
            parts.append(
                f"{setting}: one H per test volume, fitted to its own operator ({n} "
                f"fit{'s' if n != 1 else ''}), held-out error {err}"
            )
        else:
            parts.append(f"{setting}: one H fitted on {', '.join(volumes)}, held-out error {err}")
    if not parts:
        return None
    return (
        "H of the -H rows (held-out relative error ‖AᵀAx − Hx‖/‖AᵀAx‖ on Gaussian probes): "
        + "; ".join(parts)
        + "."
    )


def _footnotes(
    task_cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    config_path: str | None,
    commit: str,
    tasks: Sequence[str],
) -> list[str]:
    notes = [
        "Cells: ours / paper (Δ = ours − paper). Paper values are the [summary] numbers of "
        "docs/paper-notes.md §6 (not checked against the PDF); — = not reported by the paper or not run. "
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
            f"volume{'s' if len(vols) != 1 else ''} per cell ({', '.join(vols)}); "
            "mean over volumes."
        )
        conv = sorted({r.metric_convention for r in recs if r.metric_convention})
        notes.append(f"{title} metrics: {'; '.join(conv) or DEFAULT_METRIC_CONVENTION[task]}.")
        if task == "mri":
            notes.append(f"{title}: {_mask_note(recs)}")
        h_note = _normal_fit_note(recs)
        if h_note:
            notes.append(f"{title}: {h_note}")
        runs = sorted(
            {(r.variant, r.extra.get("refinement", "n/a")) for r in recs} - {(None, None)}
        )
        runs = [(v, what) for v, what in runs if what != "n/a"]
        if runs:
            notes.append(
                f"{title}: test time of the partitioned rows (Algorithm 1; first pass = exact "
                "full-volume data steps, so H acts only in a refinement with H): "
                + "; ".join(f"{v}: {what}" for v, what in runs)
                + "."
            )
        if TABLE_SSIM[task][0] == "ssim_slices":
            notes.append(
                f"{title}: SSIM = mean of 2D SSIM over the axial slices, as the earlier Walnut "
                "protocol that the paper's Table 1 follows (docs/paper-notes.md §5); SSIM 3D (extra) = "
                "3D SSIM of the volume, which the paper does not report."
            )
        if PAPER_ONLY_ROWS.get(task):
            extra = f"; {PAPER_MISSING_NOTE[task]}" if task in PAPER_MISSING_NOTE else ""
            notes.append(
                f"{title}: paper rows not reimplemented here: {', '.join(PAPER_ONLY_ROWS[task])}"
                f"{extra}."
            )
    for status, key, meaning in (
        ("failed", "path", "failed = an evaluation without a usable result, left out of every mean"),
        ("unavailable", "variant", "weights not available = a pretrained method whose weights "
         "file is absent here (no other weights are substituted)"),
    ):  # fmt: skip
        cases = sorted(
            {(getattr(r, key), r.message or "no message") for rs in task_cells.values() for r in rs
             if r.status == status}
        )  # fmt: skip
        if cases:
            notes.append(f"{meaning}: " + "; ".join(f"{k}: {m}" for k, m in cases) + ".")
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
    notes.append(config_footnote(config, config_path, commit))
    return notes


def build_table(
    kind: str,
    cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    config_path: str | None = None,
    commit: str | None = None,
) -> Table | None:
    """Build ``table1_cbct``, ``table2_mri`` or ``table_ablation``; ``None`` if no task applies."""
    commit = commit or git_commit()
    variants = list(config.get("variants", []))
    if kind in ("table1_cbct", "table2_mri"):
        task = "cbct" if kind == "table1_cbct" else "mri"
        if task not in config.get("tasks", []):
            return None
        sets = task_settings(config, task)
        ssim, extra = TABLE_SSIM[task]
        columns = [(ssim, True), ("psnr", True)] + [(m, False) for m in extra]
        header = ["Method"]
        for metric, compared in columns:
            name = _COLUMN_NAME[metric] if compared else f"{_COLUMN_NAME[metric]} 3D (extra)"
            header += [f"{name} {s}" for s in sets]
        header += ["Train VRAM (GB)", "s/step"]
        rows, long = [], []
        for v in variants:
            row: list[Cell | str] = [method_label(task, v)]
            for metric, compared in columns:
                for s in sets:
                    agg = aggregate(cells.get((task, s, v)), metric)
                    cell = make_cell(agg, task, v, metric, s, compare=compared)
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
        abl = [v for v in ablation_variants() if v in variants]
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
            row: list[Cell | str] = [ablation_label(v), v]
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
        "method": method_label(task, variant),
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


def cell_text(c: Cell | str) -> str:
    """The text of a table entry (a :class:`Cell` or a plain label)."""
    return c if isinstance(c, str) else c.text


def render_markdown(table: Table) -> str:
    """GitHub Markdown with numbered footnotes."""
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(cell_text(c).replace("|", "\\|") for c in row) + " |")
    lines.append("")
    lines += [f"{i}. {note}" for i, note in enumerate(table.footnotes, 1)]
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
    read = read_rows(bench_csv)
    if read is None or not read[1]:
        return None
    columns, data = read
    for c in ("volume", "patch", "method", "it_per_s"):
        pick_column(columns, (c,), bench_csv)
    keys = [c for c in ("volume", "patch", "views", "device") if c in columns]
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
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in data:  # as DataFrame.groupby(keys, sort=True): rows with an empty key dropped
        key = tuple(row[k] for k in keys)
        if not any(missing(v) for v in key):
            groups.setdefault(key, []).append(row)
    for key_values in sorted(groups):
        sub = groups[key_values]
        key = dict(zip(keys, key_values, strict=True))
        rate = {}
        for method in sorted({str(r["method"]) for r in sub if not missing(r["method"])}):
            vals = [r["it_per_s"] for r in sub if str(r["method"]) == method]
            vals = [float(v) for v in vals if not missing(v)]
            rate[method] = float(np.mean(vals)) if vals else None
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
                    "paper_source": "docs/paper-notes.md §6.4 [summary]",
                    "text": text,
                }
            )
        n = key.get("volume")
        pch = key.get("patch")
        rows.append([f"{n}³", f"{pch}³", str(key.get("views", "?")), *cells])
    devices = sorted({str(r["device"]) for r in data if not missing(r.get("device"))})
    notes = [
        "Cells: ours / paper (Δ). The paper reports 4.19 it/s (exact) and 12.5 it/s (H) on "
        "Walnut-CBCT without stating patch size or view count (docs/paper-notes.md §6.4, [summary]); our "
        "rows are synthetic circular cone-beam geometries of the sizes shown.",
        "One data step x ← x − η(N x − b) on a cubic patch; N = exact S AᵀA Sᵀ (zero-pad, project, "
        "back-project, crop) or S H Sᵀ with the kernel cropped to 2p (§4.6). Time after warm-up.",
        f"Hardware: {', '.join(devices) or 'not recorded'} (paper: one NVIDIA H100 80 GB). "
        f"Source: {bench_csv}.",
        config_footnote(config, config_path, commit),
    ]
    return Table(
        "table_datastep", "Data-step speed on a patch: exact vs H (§6.4)", header, rows, notes, long
    )
