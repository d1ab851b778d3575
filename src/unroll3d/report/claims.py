"""The paper's claims as a checked table (``results/tables/claims.{md,csv,tex}``).

Each row is one claim of the paper, the numbers this run measured for it, the paper's numbers,
the tolerance, and a verdict: ✓ (holds here), ✗ (does not hold here) or "not measurable" with
the reason (a variant or setting absent from this run, a training that ran out of memory, a
benchmark disabled). Nothing is hard-coded: every measured number comes from the evaluation JSONs
and the benchmark CSVs of the run, every paper number from :mod:`unroll3d.paper_numbers`.

Claims (docs/paper-notes.md §6):

- ``ordering``: learned unrolled > post-processing > TV > FDK / zero-filled, PSNR, per setting;
- ``partition≈unrolled``: partitioned training within 0.5 dB of full-volume unrolling (mean over
  settings; paper MRI −0.38 dB, CBCT: unrolled OOM);
- ``H≈exact``: ``partition-H`` within 0.5 dB of ``partition`` on CBCT (paper +0.04 dB);
- ``memory``: partitioned training peak below full-volume unrolled (paper MRI 37.02 vs 75.93 GB;
  CBCT 44.70 GB vs OOM);
- ``memory-flat``: partitioned step memory flat in the volume size at a fixed patch
  (``bench_partition.csv``), while full-volume memory grows;
- ``datastep``: the H patch data step ≥ 3× faster than the exact one (paper 4.19 → 12.5 it/s);
- ``H-faster``: ``partition-H`` training steps faster than ``partition`` by more than the
  timing noise (10 %; paper 1.65 → 1.21 s);
- ``settings``: more views / lower acceleration give higher PSNR, for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unroll3d.paper_numbers import paper_value
from unroll3d.report.common import TASK_TITLE, short_label
from unroll3d.report.csvio import missing, pick_column, read_rows
from unroll3d.report.provenance import config_footnote
from unroll3d.report.records import EvalRecord, setting_value, task_settings
from unroll3d.report.tables import Agg, Table, aggregate, aggregate_settings
from unroll3d.variants import variant_spec

HOLDS, FAILS, NOT_MEASURABLE = "✓", "✗", "not measurable"
#: dB: how close partitioned training must stay to full-volume unrolling, and H to exact
PSNR_TOL_DB = 0.5
#: partitioned step memory may vary by at most this factor across volume sizes
FLAT_FACTOR = 1.5
#: the H data step must be at least this many times faster than the exact one
SPEEDUP_MIN = 3.0
#: relative difference of two step times below which neither counts as faster (CPU toy steps
#: of ~0.01 s vary by this much between runs)
TIMING_NOISE = 0.10

Cells = dict[tuple[str, str, str], list[EvalRecord]]


@dataclass
class Claim:
    """One row of the claims table."""

    claim: str
    scope: str
    measured: str
    paper: str
    tolerance: str
    verdict: str
    why: str = ""


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _paper(task: str, variant: str, metric: str, setting: str) -> float | None:
    p = paper_value(task, variant, metric, setting)
    return None if p is None or p.status != "ok" else p.value


def _paper_status(task: str, variant: str, metric: str, setting: str) -> str | None:
    p = paper_value(task, variant, metric, setting)
    return None if p is None else p.status


def _variants(config: dict, kind: str) -> list[str]:
    return [v for v in config.get("variants", []) if variant_spec(v).kind == kind]


def _why_not(agg: Agg, name: str) -> str:
    if agg.status == "missing":
        return f"{name} is not in this run"
    if agg.status == "oom":
        return f"{name} ran out of memory"
    return f"{name} {agg.status}"


# ----------------------------------------------------------------------------------- claims
def claim_ordering(cells: Cells, config: dict, task: str, setting: str) -> Claim:
    """Best learned unrolled > post-processing > TV > analytical, PSNR at one setting."""
    text = "learned unrolled > post-processing > TV > " + (
        "FDK" if task == "cbct" else "zero-filled"
    )
    scope = f"{TASK_TITLE[task]} {setting}"
    tol = "strict order of mean PSNR"
    levels, paper_levels = [], []
    for kind in ("unrolled", "postproc", "tv", "analytical"):
        names = _variants(config, kind)
        aggs = {v: aggregate(cells.get((task, setting, v)), "psnr") for v in names}
        ok = {v: a for v, a in aggs.items() if a.status == "ok" and a.value is not None}
        if not ok:
            why = _why_not(next(iter(aggs.values())), names[0]) if aggs else f"no {kind} variant"
            return Claim(text, scope, "—", "—", tol, NOT_MEASURABLE, why)
        best = max(ok, key=lambda v: ok[v].value)
        levels.append((best, ok[best].value))
        # the paper's best row of the same kind (its "ours" may be another variant than ours)
        reported = [(v, _paper(task, v, "psnr", setting)) for v in names]
        reported = [(v, x) for v, x in reported if x is not None]
        paper_levels.append(max(reported, key=lambda t: t[1]) if reported else None)
    measured = _chain([(short_label(task, v), x) for v, x in levels])
    paper = _chain([None if p is None else (short_label(task, p[0]), p[1]) for p in paper_levels])
    broken = [
        f"{short_label(task, a)} ≤ {short_label(task, b)}"
        for (a, va), (b, vb) in zip(levels, levels[1:], strict=False)
        if not va > vb
    ]
    return Claim(text, scope, measured, paper, tol, FAILS if broken else HOLDS, "; ".join(broken))


def _chain(items: list[tuple[str, float] | None]) -> str:
    """``A 30.1 > B 29.0 ≤ C 29.5``: each link shows the relation that holds."""
    out = ""
    for i, item in enumerate(items):
        text = "—" if item is None else f"{item[0]} {item[1]:.2f}"
        if i:
            prev = items[i - 1]
            rel = "?" if prev is None or item is None else (">" if prev[1] > item[1] else "≤")
            out += f" {rel} "
        out += text
    return out


def _mean_over_settings(cells: Cells, config: dict, task: str, variant: str, metric: str) -> Agg:
    return aggregate_settings(
        [aggregate(cells.get((task, s, variant)), metric) for s in task_settings(config, task)],
        metric,
    )


def _paper_mean_psnr(task: str, ours: str, ref: str) -> str:
    """The ablation's mean PSNR of two variants, as the paper reports them."""
    vals = []
    for v in (ours, ref):
        p = paper_value(task, v, "psnr", "mean")
        vals.append(None if p is None else ("OOM" if p.status == "oom" else p.value))
    a, b = vals
    text = " vs ".join(
        "—" if x is None else (x if isinstance(x, str) else f"{x:.2f} dB") for x in vals
    )
    if isinstance(a, float) and isinstance(b, float):
        text += f" (Δ {a - b:+.2f})"
    return text


def claim_close(cells: Cells, config: dict, task: str, ours: str, ref: str, cause: str = ""):
    """``ours`` within PSNR_TOL_DB below ``ref`` (mean PSNR over the settings); a failing row
    adds ``cause``, the measured reason (:func:`accuracy_cause`), when one is given."""
    paper_note = _paper_mean_psnr(task, ours, ref)
    text = f"{ours} within {PSNR_TOL_DB} dB of {ref}"
    scope = f"{TASK_TITLE[task]}, mean over settings"
    tol = f"{ours} ≥ {ref} − {PSNR_TOL_DB} dB"
    a, b = (_mean_over_settings(cells, config, task, v, "psnr") for v in (ours, ref))
    for agg, name in ((a, ours), (b, ref)):
        if agg.status != "ok":
            return Claim(text, scope, "—", paper_note, tol, NOT_MEASURABLE, _why_not(agg, name))
    d = a.value - b.value
    measured = f"{a.value:.2f} vs {b.value:.2f} dB (Δ {d:+.2f})"
    holds = d >= -PSNR_TOL_DB
    why = "" if holds else f"{ours} is {-d:.2f} dB below {ref}"
    if not holds and cause:
        why += f"; measured cause: {cause}"
    return Claim(text, scope, measured, paper_note, tol, HOLDS if holds else FAILS, why)


def accuracy_cause(bench_accuracy, task: str) -> str:
    """The measured causes of an H-accuracy gap from ``unroll3d bench accuracy`` CSVs (H
    refinement's cost on the exact-trained model, the H-trained model's loss with exact steps,
    H's error-to-gradient ratio); empty without a file for ``task``."""
    from unroll3d.bench.accuracy import cause_text, read_rows

    if not bench_accuracy:
        return ""
    paths = [bench_accuracy] if isinstance(bench_accuracy, str | Path) else list(bench_accuracy)
    return cause_text(read_rows(paths), task)


def claim_memory(cells: Cells, config: dict, task: str) -> Claim:
    """Partitioned training peak memory below full-volume unrolling."""
    text = "partitioned training needs less memory than full-volume unrolling"
    scope = f"{TASK_TITLE[task]}, training peak"
    tol = "partition < unrolled"
    part = _mean_over_settings(cells, config, task, "partition", "train_peak_mem_gb")
    full = _mean_over_settings(cells, config, task, "unrolled", "train_peak_mem_gb")
    pp = _paper(task, "partition", "train_mem_gb", "all")
    pf_status = _paper_status(task, "unrolled", "train_mem_gb", "all")
    pf = _paper(task, "unrolled", "train_mem_gb", "all")
    paper = f"{_f(pp)} GB vs " + ("OOM" if pf_status == "oom" else f"{_f(pf)} GB")
    if part.status != "ok" or part.value is None:
        return Claim(text, scope, "—", paper, tol, NOT_MEASURABLE, _why_not(part, "partition"))
    unit = "GB CPU RSS growth" if part.cpu_rss else "GB"
    if full.status == "oom":
        measured = f"{part.value:.3f} {unit} vs OOM"
        return Claim(text, scope, measured, paper, tol, HOLDS, "unrolled ran out of memory")
    if full.status != "ok" or full.value is None:
        return Claim(text, scope, "—", paper, tol, NOT_MEASURABLE, _why_not(full, "unrolled"))
    if full.cpu_rss != part.cpu_rss:
        return Claim(text, scope, "—", paper, tol, NOT_MEASURABLE, "memory of different kinds")
    measured = f"{part.value:.3f} vs {full.value:.3f} {unit}"
    holds = part.value < full.value
    return Claim(
        text,
        scope,
        measured,
        paper,
        tol,
        HOLDS if holds else FAILS,
        "" if holds else "partition used at least as much memory",
    )


def _bench_rows(path: str | Path | None, needed: tuple[str, ...]) -> list[dict] | None:
    """The rows of a benchmark CSV (None when absent or empty); a missing column is an error
    naming the file."""
    read = read_rows(path) if path else None
    if not read or not read[1]:
        return None
    columns, rows = read
    for c in needed:
        pick_column(columns, (c,), path)
    return rows


def claim_memory_flat(bench_partition: str | Path | None) -> Claim:
    """Partitioned step memory flat in the volume size at a fixed patch (bench_partition.csv)."""
    text = "partitioned training memory is flat in the volume size at a fixed patch"
    tol = f"partitioned step memory varies ≤ {FLAT_FACTOR}× across sizes"
    paper = "constant at a fixed patch (§4.3, Figs. 7/8)"
    rows = _bench_rows(bench_partition, ("size", "mode", "step_memory_gb"))
    if rows is None:
        return Claim(text, "benchmark", "—", paper, tol, NOT_MEASURABLE,
                     "bench_partition.csv absent (benchmarks disabled)")  # fmt: skip

    def series(mode):
        return sorted(
            (int(r["size"]), float(r["step_memory_gb"]))
            for r in rows
            if r["mode"] == mode
            and r.get("status", "ok") == "ok"
            and not missing(r["step_memory_gb"])
        )

    part, full = series("partitioned"), series("full")
    scope = f"benchmark, patch {rows[0].get('patch', '?')}³, {rows[0].get('device', '?')}"
    if len(part) < 2:
        return Claim(
            text, scope, "—", paper, tol, NOT_MEASURABLE, "fewer than two volume sizes measured"
        )
    vals = [v for _, v in part]
    factor = max(vals) / max(min(vals), 1e-12)
    measured = "partitioned " + " → ".join(f"{n}³ {v:.4f}" for n, v in part) + " GB"
    if full:
        measured += "; full " + " → ".join(f"{n}³ {v:.4f}" for n, v in full) + " GB"
    holds = factor <= FLAT_FACTOR
    why = f"partitioned memory varies {factor:.2f}×"
    return Claim(text, scope, measured, paper, tol, HOLDS if holds else FAILS, why)


def claim_datastep(bench_normal: str | Path | None) -> Claim:
    """The H patch data step at least SPEEDUP_MIN× faster than the exact one."""
    text = f"the H patch data step is ≥ {SPEEDUP_MIN:g}× faster than the exact S AᵀA Sᵀ"
    tol = f"speed-up ≥ {SPEEDUP_MIN:g}× on every measured (volume, patch)"
    pe = _paper("cbct", "partition", "data_step_it_s", "all")
    ph = _paper("cbct", "partition-H", "data_step_it_s", "all")
    paper = f"{_f(pe)} → {_f(ph)} it/s ({ph / pe:.2f}×)" if pe and ph else "—"
    rows = _bench_rows(bench_normal, ("volume", "patch", "method", "it_per_s"))
    if rows is None:
        return Claim(text, "benchmark", "—", paper, tol, NOT_MEASURABLE,
                     "bench_normal.csv absent (benchmarks disabled)")  # fmt: skip
    rates: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if not missing(r["it_per_s"]):
            rates.setdefault((int(r["volume"]), int(r["patch"])), {})[str(r["method"])] = float(
                r["it_per_s"]
            )
    speed = {k: v["H"] / v["exact"] for k, v in sorted(rates.items()) if {"H", "exact"} <= set(v)}
    if not speed:
        return Claim(text, "benchmark", "—", paper, tol, NOT_MEASURABLE, "no exact/H pair")
    device = rows[0].get("device", "?")
    measured = "; ".join(
        f"{rates[k]['exact']:.1f} → {rates[k]['H']:.1f} it/s ({s:.1f}×, {k[1]}³ in {k[0]}³)"
        for k, s in speed.items()
    )
    slow = [f"{k[1]}³ in {k[0]}³: {s:.2f}×" for k, s in speed.items() if s < SPEEDUP_MIN]
    return Claim(
        text,
        f"benchmark, {device}",
        measured,
        paper,
        tol,
        FAILS if slow else HOLDS,
        "; ".join(slow),
    )


def claim_h_faster(cells: Cells, config: dict, task: str) -> Claim:
    """partition-H training micro-steps faster than partition."""
    text = "training with H is faster per step than with the exact operator"
    scope = f"{TASK_TITLE[task]}, s per micro-step"
    tol = f"partition-H < partition by more than {TIMING_NOISE:.0%} (timing noise)"
    a = _mean_over_settings(cells, config, task, "partition-H", "train_step_s")
    b = _mean_over_settings(cells, config, task, "partition", "train_step_s")
    pa, pb = (_paper(task, v, "train_step_s", "all") for v in ("partition-H", "partition"))
    paper = f"{_f(pa)} vs {_f(pb)} s"
    for agg, name in ((a, "partition-H"), (b, "partition")):
        if agg.status != "ok" or agg.value is None:
            return Claim(text, scope, "—", paper, tol, NOT_MEASURABLE, _why_not(agg, name))
    measured = f"{a.value:.3f} vs {b.value:.3f} s"
    ratio = a.value / max(b.value, 1e-12)
    if abs(ratio - 1) <= TIMING_NOISE:
        why = f"the two differ by {abs(ratio - 1):.0%}, within timing noise"
        return Claim(text, scope, measured, paper, tol, NOT_MEASURABLE, why)
    holds = ratio < 1
    why = "" if holds else f"H steps were {ratio - 1:.0%} slower"
    return Claim(text, scope, measured, paper, tol, HOLDS if holds else FAILS, why)


def claim_settings(cells: Cells, config: dict, task: str) -> Claim:
    """More views (CBCT) / lower acceleration (MRI) give higher PSNR for every method."""
    easier = "more views" if task == "cbct" else "lower acceleration"
    text = f"{easier} gives higher PSNR, for every method"
    settings = task_settings(config, task)
    # easiest first: most views, or lowest R
    order = sorted(settings, key=setting_value, reverse=(task == "cbct"))
    scope = f"{TASK_TITLE[task]}, {' vs '.join(order)}"
    tol = "PSNR strictly decreasing from the easiest setting"
    if len(order) < 2:
        return Claim(
            text, scope, "—", "holds in Tables 1/2", tol, NOT_MEASURABLE, "one setting in this run"
        )
    parts, broken, skipped = [], [], []
    for v in config.get("variants", []):
        aggs = [aggregate(cells.get((task, s, v)), "psnr") for s in order]
        if any(a.status != "ok" or a.value is None for a in aggs):
            skipped.append(v)
            continue
        vals = [a.value for a in aggs]
        shown = f"{vals[0]:.2f}" + "".join(
            f" {'>' if x > y else '≤'} {y:.2f}" for x, y in zip(vals, vals[1:], strict=False)
        )  # the sign each pair really has
        parts.append(f"{short_label(task, v)} {shown}")
        if not all(x > y for x, y in zip(vals, vals[1:], strict=False)):
            broken.append(short_label(task, v))
    if not parts:
        return Claim(
            text,
            scope,
            "—",
            "holds in Tables 1/2",
            tol,
            NOT_MEASURABLE,
            f"no variant has every setting ({', '.join(skipped)})",
        )
    why = ("fails for " + ", ".join(broken)) if broken else ""
    if skipped:
        why = (why + "; " if why else "") + "not measured: " + ", ".join(skipped)
    return Claim(
        text, scope, "; ".join(parts), "holds in Tables 1/2", tol, FAILS if broken else HOLDS, why
    )


def collect_claims(
    cells: Cells,
    config: dict,
    bench_partition: str | Path | None = None,
    bench_normal: str | Path | None = None,
    bench_accuracy: str | Path | list | None = None,
) -> list[Claim]:
    """Every claim for the tasks of ``config``; ``bench_accuracy``: the accuracy diagnostic's
    CSV(s), whose measured causes a failing H-accuracy claim states."""
    out: list[Claim] = []
    tasks = config.get("tasks", [])
    for task in tasks:
        out += [claim_ordering(cells, config, task, s) for s in task_settings(config, task)]
    for task in tasks:
        out.append(claim_close(cells, config, task, "partition", "unrolled"))
    if "cbct" in tasks:
        cause = accuracy_cause(bench_accuracy, "cbct")
        out.append(claim_close(cells, config, "cbct", "partition-H", "partition", cause))
    out += [claim_memory(cells, config, t) for t in tasks]
    out.append(claim_memory_flat(bench_partition))
    out.append(claim_datastep(bench_normal))
    out += [claim_h_faster(cells, config, t) for t in tasks]
    out += [claim_settings(cells, config, t) for t in tasks]
    return out


COLUMNS = ["Claim", "Scope", "Measured here", "Paper", "Tolerance", "Verdict", "Why"]


def build_claims_table(
    cells: Cells,
    config: dict,
    config_path: str | None = None,
    commit: str | None = None,
    bench_partition: str | Path | None = None,
    bench_normal: str | Path | None = None,
    bench_accuracy: str | Path | list | None = None,
) -> Table:
    """The claims as a :class:`Table` (rendered like the paper's tables)."""
    claims = collect_claims(cells, config, bench_partition, bench_normal, bench_accuracy)
    rows = [[c.claim, c.scope, c.measured, c.paper, c.tolerance, c.verdict, c.why] for c in claims]
    long = [
        {
            "table": "claims",
            **dict(
                zip(
                    ("claim", "scope", "measured", "paper", "tolerance", "verdict", "why"),
                    r,
                    strict=True,
                )
            ),
        }
        for r in rows
    ]
    counts = {v: sum(c.verdict == v for c in claims) for v in (HOLDS, FAILS, NOT_MEASURABLE)}
    notes = [
        f"{counts[HOLDS]} hold, {counts[FAILS]} do not, {counts[NOT_MEASURABLE]} not measurable "
        f"in this run (configuration {config.get('name', '?')!r}).",
        "Measured: means over the test volumes of this run's evaluation JSONs (PSNR in dB, "
        "training peak memory, s per micro-step) and its benchmark CSVs; paper: "
        "unroll3d.paper_numbers (docs/paper-notes.md §6, [summary]).",
        "A toy-size run checks that the pipeline measures each claim; its verdicts are not "
        "evidence about the paper (few training steps, tiny volumes, CPU).",
        config_footnote(config, config_path, commit),
    ]
    return Table("claims", "The paper's claims, checked on this run", COLUMNS, rows, notes, long)
