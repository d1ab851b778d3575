"""Accuracy convergence study (``make study``): does each accuracy gap of the paper's ablation
close with training length, with volume size, or not at all?

A study file (``config/study.yaml``) names a base pipeline config, training lengths and *points*:
each point is a task, the variants to compare and config overrides (a volume size, a patch
shape). For every (length, point) this runs the real pipeline (``snakemake`` on the repository's
Snakefile) in its own folder ``<out>/<point>/s<steps>/`` with ``train.steps = steps``, asking only
for the evaluations of the point's variants. The data and the fitted H of a point are made once,
by its first length, and linked into the others (they do not depend on the length). Then it
gathers every evaluation into ``study.csv`` (one row per volume), the gaps between variants into
``gaps.csv`` and ``gaps.md``, and draws ``gaps.png`` (gap against training steps, one panel per
comparison). Lengths run shortest first, so a stopped study still has its short runs.

    unroll3d bench study --study config/study.yaml [--only cbct24] [--collect-only]
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from unroll3d import paths
from unroll3d.config import read_yaml
from unroll3d.utils import atomic_write_csv, atomic_write_text

#: the diagnostic's measures gathered per (point, length): (model, measure), mean over k
ACCURACY = [
    ("partition", "psnr_exact_refine"),
    ("partition", "psnr_H_refine"),
    ("partition", "psnr_anchored_H_refine"),
    ("partition-H", "psnr_exact_refine"),
    ("partition-H", "psnr_H_refine"),
    ("partition", "h_rel_error_H_refine"),
    ("partition", "h_grad_ratio_H_refine"),
    ("", "h_grad_ratio_gt"),
]
ACCURACY_VARIANTS = ("partition", "partition-H")
ROWS = ["point", "task", "steps", "setting", "variant", "volume", "psnr", "ssim", "train_s"]
GAP_ROWS = ["point", "task", "steps", "comparison", "a", "b", "mean_gap_db", "n"]
#: shared between the lengths of one point (they do not depend on train.steps)
SHARED = ("resources", "results/data", "results/normal")
REPO = Path(__file__).resolve().parents[3]


def set_dotted(cfg: dict, key: str, value) -> None:
    """``cfg["a"]["b"] = value`` for ``key = "a.b"``; a missing section is an error naming it."""
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            raise KeyError(f"study override {key!r}: no section {'.'.join(parents[: i + 1])!r}")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"study override {key!r}: the base config has no key {leaf!r} there")
    node[leaf] = value


def load_study(path: str | Path) -> dict:
    """The study file, checked: base, out, steps and points with task and variants."""
    study = read_yaml(path)  # a syntax error: one line naming the file
    for key in ("base", "out", "steps", "points"):
        if key not in study:
            raise KeyError(f"{path}: missing key {key!r}")
    for name, point in study["points"].items():
        for key in ("task", "variants"):
            if key not in point:
                raise KeyError(f"{path}: point {name!r} has no {key!r}")
    study["steps"] = sorted(int(s) for s in study["steps"])
    return study


def point_config(study: dict, name: str, steps: int) -> dict:
    """The pipeline config of one (point, length)."""
    base = read_yaml(REPO / study["base"])
    point = study["points"][name]
    cfg = copy.deepcopy(base)
    cfg["name"] = f"study-{name}-s{steps}"
    cfg["tasks"] = [point["task"]]
    cfg["variants"] = list(point["variants"])
    for key, value in {**study.get("set", {}), **point.get("set", {})}.items():
        set_dotted(cfg, key, value)
    cfg["train"]["steps"] = int(steps)
    cfg["train"]["val_every"] = max(1, int(steps) // 2)
    cfg["train"]["checkpoint_every"] = max(1, int(steps) // 4)
    return cfg


def _volumes(cfg: dict, task: str) -> list[str]:
    test = cfg[task]["splits"]["test"]
    return [f"walnut{v}" if task == "cbct" else str(v) for v in test]


def _settings(cfg: dict, task: str) -> list[str]:
    if task == "cbct":
        return [f"v{n}" for n in cfg["cbct"]["views"]]
    return [f"R{r:g}" for r in cfg["mri"]["accelerations"]]


def accuracy_target(cfg: dict) -> str | None:
    """The point's H-accuracy diagnostic (rule bench_accuracy), when it trains both
    ``partition`` and ``partition-H``."""
    if not set(ACCURACY_VARIANTS) <= set(cfg["variants"]):
        return None
    return f"{paths.benchmarks_dir('results')}/accuracy/{cfg['tasks'][0]}.csv"


def targets(cfg: dict) -> list[str]:
    """What the study asks Snakemake for: the evaluation files of a point's variants, and its
    H-accuracy diagnostic."""
    task = cfg["tasks"][0]
    evals = [
        paths.eval_json("results", task, s, v, vol)
        for s in _settings(cfg, task)
        for v in cfg["variants"]
        for vol in _volumes(cfg, task)
    ]
    acc = accuracy_target(cfg)
    return evals + ([acc] if acc else [])


def _link_shared(first: Path, run_dir: Path) -> None:
    """Link the first length's data and H into ``run_dir`` (made once per point)."""
    for rel in SHARED:
        src, dst = first / rel, run_dir / rel
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(os.path.relpath(src, dst.parent), target_is_directory=True)


def run_point(study: dict, name: str, steps: int, cores: int, log) -> Path:
    """Run the pipeline for one (point, length); returns its folder."""
    out = REPO / study["out"] / name
    run_dir = out / f"s{steps}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = point_config(study, name, steps)
    cfg_path = run_dir / "config.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    first = out / f"s{study['steps'][0]}"
    if first != run_dir:
        _link_shared(first, run_dir)
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(snakemake),
        *targets(cfg),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(run_dir),
        "--configfile", str(cfg_path),
        "--cores", str(cores),
        "--rerun-incomplete",
        "--rerun-triggers", "mtime", "params", "input",
        "--set-threads", "train=1", "evaluate=1", "fit_normal=1", "fit_normal_sample=1",
        "--quiet", "rules",
    ]  # fmt: skip
    t0 = time.perf_counter()
    print(f"study: {name} s{steps}: running {len(targets(cfg))} evaluations", file=log, flush=True)
    env = {**os.environ, "PATH": f"{snakemake.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"study point {name} s{steps} failed (exit {proc.returncode}); see {log.name}")
    print(f"study: {name} s{steps}: done in {time.perf_counter() - t0:.0f} s", file=log, flush=True)
    return run_dir


def collect(study: dict) -> list[dict]:
    """One row per evaluation found under the study folder."""
    rows = []
    for name, point in study["points"].items():
        task = point["task"]
        for steps in study["steps"]:
            run_dir = REPO / study["out"] / name / f"s{steps}"
            cfg_path = run_dir / "config.yaml"
            if not cfg_path.exists():
                continue
            cfg = yaml.safe_load(cfg_path.read_text())
            for target in targets(cfg):
                f = run_dir / target
                if not target.endswith(".json"):
                    continue
                if not f.exists():
                    continue
                ev = json.loads(f.read_text())
                stats = ev.get("train_stats") or {}
                mean_s = stats.get("step_time_mean_s")
                rows.append(
                    {
                        "point": name,
                        "task": task,
                        "steps": steps,
                        "setting": ev["setting"],
                        "variant": ev["variant"],
                        "volume": ev["volume"],
                        "psnr": ev.get("psnr"),
                        "ssim": ev.get("ssim"),
                        "train_s": None if mean_s is None else round(mean_s * steps, 1),
                    }
                )
    return rows


def _resolve(ref: str, point: str) -> tuple[str, str]:
    """``"variant"`` (of ``point``) or ``"other_point:variant"`` -> (point, variant)."""
    p, _, v = ref.rpartition(":")
    return (p or point), v


def gaps(study: dict, rows: list[dict]) -> list[dict]:
    """Mean PSNR difference a − b over the (setting, volume) pairs both were evaluated on, per
    point and length, for each of ``study.comparisons`` (name -> {a, b, points, paper}; a and b
    are variants of the point, or ``other_point:variant``)."""
    psnr = {
        (r["point"], r["steps"], r["variant"], r["setting"], r["volume"]): r["psnr"]
        for r in rows
        if r["psnr"] is not None
    }
    cases = sorted({(r["setting"], r["volume"]) for r in rows})
    out = []
    for comp, spec in study.get("comparisons", {}).items():
        for name in spec.get("points", list(study["points"])):
            pa, va = _resolve(spec["a"], name)
            pb, vb = _resolve(spec["b"], name)
            for steps in study["steps"]:
                diffs = [
                    psnr[(pa, steps, va, s, vol)] - psnr[(pb, steps, vb, s, vol)]
                    for s, vol in cases
                    if (pa, steps, va, s, vol) in psnr and (pb, steps, vb, s, vol) in psnr
                ]
                if diffs:
                    out.append(
                        {
                            "point": name,
                            "task": study["points"][name]["task"],
                            "steps": steps,
                            "comparison": comp,
                            "a": f"{pa}:{va}",
                            "b": f"{pb}:{vb}",
                            "mean_gap_db": round(statistics.fmean(diffs), 3),
                            "n": len(diffs),
                        }
                    )
    return out


def gaps_markdown(gap_rows: list[dict], study: dict) -> str:
    """Each comparison's gap (dB) per point and length."""
    lines = ["# Accuracy gaps against training length (PSNR a − b, dB; mean over test volumes and settings)", ""]
    steps = study["steps"]
    lines.append("| comparison | point | " + " | ".join(f"{s} steps" for s in steps) + " | paper |")
    lines.append("|---|---|" + "---|" * len(steps) + "---|")
    seen = []
    for r in gap_rows:
        if (r["comparison"], r["point"]) not in seen:
            seen.append((r["comparison"], r["point"]))
    for comp, point in seen:
        by = {r["steps"]: r["mean_gap_db"] for r in gap_rows if (r["comparison"], r["point"]) == (comp, point)}
        paper = study.get("comparisons", {}).get(comp, {}).get("paper", "")
        cells = " | ".join("" if by.get(s) is None else f"{by[s]:+.2f}" for s in steps)
        lines.append(f"| {comp} | {point} | {cells} | {paper} |")
    return "\n".join(lines) + "\n"


def variants_markdown(rows: list[dict]) -> str:
    """Mean PSNR and training seconds per point, length and variant (the price of each gain)."""
    lines = ["", "## Mean PSNR (dB) and training time (s) per variant", "",
             "| point | steps | variant | PSNR | train s |", "|---|---|---|---|---|"]  # fmt: skip
    keys = list(dict.fromkeys((r["point"], r["steps"], r["variant"]) for r in rows))
    for point, steps, variant in keys:
        sel = [r for r in rows if (r["point"], r["steps"], r["variant"]) == (point, steps, variant)]
        psnr = [r["psnr"] for r in sel if r["psnr"] is not None]
        secs = [r["train_s"] for r in sel if r["train_s"] is not None]
        p = f"{statistics.fmean(psnr):.2f}" if psnr else ""
        t = f"{statistics.fmean(secs):.0f}" if secs else ""
        lines.append(f"| {point} | {steps} | {variant} | {p} | {t} |")
    return "\n".join(lines) + "\n"


def collect_accuracy(study: dict) -> list[dict]:
    """One row per (point, length) with the diagnostic's headline measures (mean over k)."""
    from unroll3d.bench.accuracy import read_rows

    out = []
    for name, point in study["points"].items():
        for steps in study["steps"]:
            run_dir = REPO / study["out"] / name / f"s{steps}"
            cfg_path = run_dir / "config.yaml"
            acc = accuracy_target(yaml.safe_load(cfg_path.read_text())) if cfg_path.exists() else None
            rows = read_rows([run_dir / acc]) if acc else []
            if not rows:
                continue
            row = {"point": name, "task": point["task"], "steps": steps,
                   "setting": rows[0]["setting"], "volume": rows[0]["volume"]}  # fmt: skip
            for model, measure in ACCURACY:
                vals = [r["value"] for r in rows if (r["model"], r["measure"]) == (model, measure)]
                row[f"{model or 'gt'}:{measure}"] = round(statistics.fmean(vals), 3) if vals else None
            out.append(row)
    return out


def accuracy_markdown(acc_rows: list[dict]) -> str:
    """The diagnostic per point and length (PSNR dB of each refinement; H's error ratios)."""
    if not acc_rows:
        return ""
    cols = [k for k in acc_rows[0] if ":" in k]
    lines = ["", "## H-accuracy diagnostic (unroll3d bench accuracy, first test volume and setting)",
             "", "| point | steps | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]  # fmt: skip
    for r in acc_rows:
        cells = " | ".join("" if r[c] is None else f"{r[c]:g}" for c in cols)
        lines.append(f"| {r['point']} | {r['steps']} | {cells} |")
    return "\n".join(lines) + "\n"


def _paper_value(text) -> float | None:
    """The paper's gap as a number, when the study file gives one ("-0.38"), else None."""
    try:
        return float(str(text).replace("−", "-"))
    except ValueError:
        return None


def gaps_figure(gap_rows: list[dict], study: dict, out: Path) -> None:
    """One panel per comparison: gap (dB) against training steps, one line per point, the
    paper's gap dashed where it has one."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = list(dict.fromkeys(r["comparison"] for r in gap_rows))
    if not comps:
        return
    ncols = min(4, len(comps))
    nrows = -(-len(comps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.1 * nrows), squeeze=False)
    for ax in axes.flat[len(comps):]:
        ax.set_visible(False)
    for ax, comp in zip(axes.flat, comps, strict=False):
        rows = [r for r in gap_rows if r["comparison"] == comp]
        for point in dict.fromkeys(r["point"] for r in rows):
            pts = sorted((r["steps"], r["mean_gap_db"]) for r in rows if r["point"] == point)
            ax.plot(*zip(*pts, strict=True), marker="o", label=point)
        ax.axhline(0.0, color="0.6", lw=0.8)
        paper = _paper_value(study.get("comparisons", {}).get(comp, {}).get("paper"))
        if paper is not None:
            ax.axhline(paper, color="k", ls="--", lw=0.8, label="paper")
        ax.set_xscale("log")
        ax.set_xlabel("training steps")
        ax.set_ylabel("PSNR gap (dB)")
        ax.set_title("\n".join(textwrap.wrap(comp, 34)), fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def write_outputs(study: dict) -> Path:
    """study.csv, gaps.csv, gaps.md, gaps.png under the study folder; returns the folder."""
    out = REPO / study["out"]
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(study)
    gap_rows = gaps(study, rows)
    atomic_write_csv(out / "study.csv", rows, ROWS)
    atomic_write_csv(out / "gaps.csv", gap_rows, GAP_ROWS)
    acc_rows = collect_accuracy(study)
    if acc_rows:
        atomic_write_csv(out / "accuracy.csv", acc_rows, list(acc_rows[0]))
    text = gaps_markdown(gap_rows, study) + variants_markdown(rows) + accuracy_markdown(acc_rows)
    atomic_write_text(out / "gaps.md", text)
    gaps_figure(gap_rows, study, out / "gaps.png")
    return out


def run_study(
    study_file: str | Path,
    *,
    only: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    out: str | None = None,
    cores: int | None = None,
    collect_only: bool = False,
) -> Path:
    """Run the points ``only`` (default: all) at the lengths ``steps`` (default: the study's)
    with ``cores`` snakemake cores (default: the study's), shortest first, then gather; with
    ``collect_only`` just gather what has run. Returns the study folder."""
    study = load_study(study_file)
    if out:
        study["out"] = out
    folder = REPO / study["out"]
    folder.mkdir(parents=True, exist_ok=True)
    if not collect_only:
        names = only or list(study["points"])
        unknown = [n for n in names if n not in study["points"]]
        if unknown:
            raise KeyError(f"unknown study point(s) {unknown}; the study has {list(study['points'])}")
        lengths = steps or study["steps"]
        n_cores = int(cores or study.get("cores", 2))
        with open(folder / "study.log", "a") as log:
            for length in lengths:
                for name in names:
                    run_point(study, name, length, n_cores, log)
                    write_outputs(study)
    folder = write_outputs(study)
    print((folder / "gaps.md").read_text())
    return folder
