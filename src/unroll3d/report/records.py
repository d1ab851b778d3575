"""The one reader of evaluation results: eval JSONs (:func:`read_eval`, :func:`collect_evals`)
and the Figs. 7/8 sweep (:func:`collect_sweep`). Every path is built by :mod:`unroll3d.paths`."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unroll3d import paths
from unroll3d.config import sweep_reuses_main, sweep_settings, task_settings
from unroll3d.report.common import ReportError

log = logging.getLogger("unroll3d.report")


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
    ssim: float | None = None  # 3D SSIM
    ssim_slices: float | None = None  # axial-slice mean 2D SSIM (docs/paper-notes.md §5)
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
    "ssim_slices": ("ssim_slices",),
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
_STATUSES = ("ok", "oom", "failed", "unavailable")


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
    """A number of an eval JSON; a ReportError naming the file and key for text or a NaN/±inf
    (JSON's NaN/Infinity: a cost or memory value that no table may print). Quality metrics are
    screened before (:func:`_non_finite_metrics`: a failed cell)."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise ReportError(f"{path}: key {key!r} must be a number or null, got {value!r}") from err
    if not math.isfinite(out):
        raise ReportError(f"{path}: key {key!r} is not a finite number ({out}); rerun the job")
    return out


def _needed_gb(message: str) -> float | None:
    match = _OOM_RE.search(message or "")
    if not match:
        return None
    scale = {"gb": 1.0, "gib": 1.073741824, "mb": 1e-3, "mib": 1.048576e-3}
    return float(match.group(1)) * scale[match.group(2).lower()]


def mean_or_none(values: list[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


#: quality metrics: a NaN (a diverged run) or ±inf (an exact match) makes the record a failed
#: cell named in a footnote; every other number read must be finite (:func:`_as_float`)
_METRIC_KEYS = ("psnr", "ssim", "ssim_slices")


def _non_finite_metrics(data: dict) -> list[tuple[str, float]]:
    """The metrics of an eval JSON that are NaN or infinite (JSON's NaN/Infinity literals)."""
    out = []
    for key in _METRIC_KEYS:
        value = _lookup(data, _ALIASES[key])
        if isinstance(value, (int, float)) and not math.isfinite(value):
            out.append((key, value))
    return out


#: the keys naming a cell and volume, which the file's path also names
_ID_KEYS = ("task", "setting", "variant", "volume")


def _ids(path: Path, data: dict, expected: dict[str, str] | None) -> dict[str, str]:
    """The task/setting/variant/volume of an eval JSON: its own keys, checked against what its
    path stands for (``expected``, else the layout ``.../{task}/{setting}/{variant}/{volume}``),
    which also fills a key the file lacks. A disagreement is an error naming both values."""
    if expected is None:
        expected = dict(zip(_ID_KEYS, path.with_suffix("").parts[-4:], strict=False))
    ids = {}
    for key in _ID_KEYS:
        said, meant = data.get(key), expected.get(key)
        if said not in (None, "") and meant and str(said) != meant:
            raise ReportError(f"{path}: key {key!r} is {str(said)!r} but its path says {meant!r}")
        ids[key] = str(said or meant or "")
        if not ids[key]:
            raise ReportError(f"{path}: missing key {key!r}")
    return ids


def read_eval(path: str | Path, expected: dict[str, str] | None = None) -> EvalRecord:
    """Read one evaluation JSON (``src/unroll3d/schemas/eval.schema.json``) into an
    :class:`EvalRecord`.

    Used keys: ``task``, ``setting``, ``variant``, ``volume``, which must agree with what the
    path stands for (``expected``, by default the path ``.../{task}/{setting}/{variant}/
    {volume}.json``; taken from it when absent); ``status`` (``ok``, ``oom`` or
    ``failed``; default ``ok``) with ``message`` (for OOM "OOM at volume N³, peak X GB");
    ``psnr`` (required when ok), ``ssim``, ``data_range``, ``shape``, ``device``,
    ``metric_convention``, ``inference_time_s``, ``inference_peak_memory_gb``,
    ``train_accumulate``; the training cost from ``train_step`` (``step_time_s``,
    ``peak_memory_gb``, ``status``, ``message``: timed micro-steps of the evaluation), else
    ``train_stats`` (``step_time_mean_s``, ``peak_memory_gb``: the training run), else flat
    ``train_step_s`` / ``train_peak_mem_gb``; slices from ``slices`` or the ``.npz`` beside the
    JSON. ``train_stats`` itself is kept in ``extra["train_stats"]`` (the sweep reads it).
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
    ids = _ids(path, data, expected)
    status = str(data.get("status", "ok")).lower()
    if status not in _STATUSES:
        raise ReportError(f"{path}: status must be one of {_STATUSES}, got {status!r}")
    rec = EvalRecord(**ids, status=status, path=str(path))
    bad = _non_finite_metrics(data)
    if bad:  # NaN (a diverged run) or ±inf (an exact match): a failed cell, never a number
        rec.status = "failed"
        data = {**data, "message": "non-finite " + ", ".join(f"{k} = {v}" for k, v in bad)}
        for key, _ in bad:  # never tabulated, wherever the file keeps it
            data = {**data, **dict.fromkeys(_ALIASES[key])}
            for nest in _NESTED:
                if isinstance(data.get(nest), dict):
                    data[nest] = {**data[nest], **dict.fromkeys(_ALIASES[key])}
    for name in (
        "psnr",
        "ssim",
        "ssim_slices",
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
    if isinstance(stats, dict):
        rec.extra["train_stats"] = stats
    if isinstance(data.get("normal_fit"), dict):
        rec.extra["normal_fit"] = data["normal_fit"]
    if isinstance(data.get("refinement"), str):  # what Algorithm 1 ran at test time
        rec.extra["refinement"] = data["refinement"]
    if isinstance(data.get("mask_source"), str):  # MRI: the challenge's masks or ours
        rec.extra["mask_source"] = data["mask_source"]
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


def _eval_dir(root: str, task: str, setting: str, variant: str) -> Path:
    """The folder of a cell's evaluation files (one ``{volume}.json`` per test volume)."""
    return Path(paths.eval_json(root, task, setting, variant, "-")).parent


def collect_evals(
    results: str | Path, config: dict, allow_missing: bool = False
) -> dict[tuple[str, str, str], list[EvalRecord]]:
    """Read every requested evaluation JSON: {(task, setting, variant): records sorted by volume}.

    The requested cells are the config's tasks × settings × variants. Every cell must have at
    least one file, and all variants of a (task, setting) the same test volumes; otherwise a
    :class:`ReportError` lists the missing files (unless ``allow_missing``, which skips them).
    """
    root = str(results)
    cells: dict[tuple[str, str, str], list[EvalRecord]] = {}
    problems: list[str] = []
    for task in config.get("tasks", []):
        wanted = test_volumes(config, task)
        for setting in task_settings(config, task):
            volumes: dict[str, set[str]] = {}
            for variant in config.get("variants", []):
                folder = _eval_dir(root, task, setting, variant)
                if wanted is not None:
                    files = [Path(paths.eval_json(root, task, setting, variant, v)) for v in wanted]
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
                cell = {"task": task, "setting": setting, "variant": variant}
                recs = [read_eval(f, {**cell, "volume": f.stem}) for f in files]
                cells[(task, setting, variant)] = recs
            if wanted is None:
                union = set().union(*volumes.values()) if volumes else set()
                for variant, vols in volumes.items():
                    for v in sorted(union - vols) if vols else []:
                        absent = Path(paths.eval_json(root, task, setting, variant, v))
                        problems.append(f"missing {absent} (other variants have this test volume)")
    if problems and not allow_missing:
        raise ReportError("evaluation results incomplete:\n  " + "\n  ".join(problems))
    for p in problems:
        log.warning(p)
    return cells


@dataclass
class SweepPoint:
    """One patch size of the Figs. 7/8 sweep: means over the test volumes and the sweep's
    settings (:func:`unroll3d.config.sweep_settings`)."""

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
    points = []
    root, names = str(results), test_volumes(config, task)
    variant = sweep.get("variant", "partition-H")
    for patch in sweep.get(task, []):
        label = paths.patch_label(patch)
        files = []
        main = sweep_reuses_main(config, task, patch)  # then: the main model's evaluations
        for setting in sweep_settings(config, task):
            if main:
                found = [
                    Path(paths.eval_json(root, task, setting, variant, v)) for v in names or []
                ]
                folder = Path(paths.eval_base(root, task, setting, variant, "-")).parent
            else:
                found = [
                    Path(paths.sweep_eval_json(root, task, setting, label, v)) for v in names or []
                ]
                folder = Path(paths.sweep_eval_dir(root, task, setting, label))
            found = found or sorted(folder.glob("*.json"))
            if not found:
                raise ReportError(f"no sweep evaluation files in {folder}")
            files += [(setting, f) for f in found]
        recs, mems, kinds, steps = [], [], set(), []
        for setting, path in files:
            meant = {"task": task, "setting": setting, "variant": variant, "volume": path.stem}
            rec = read_eval(path, meant)
            recs.append(rec)
            stats = rec.extra.get("train_stats") or {}
            stat = {
                k: _as_float(stats.get(k), f"train_stats.{k}", path)
                for k in ("peak_memory_gb", "peak_rss_growth_gb", "step_time_mean_s")
            }
            if stat["peak_memory_gb"] is not None:
                mems.append(stat["peak_memory_gb"])
                kinds.add("GPU peak allocated")
            elif stat["peak_rss_growth_gb"] is not None:
                mems.append(stat["peak_rss_growth_gb"])
                kinds.add("CPU peak RSS growth")
            if stat["step_time_mean_s"] is not None:
                steps.append(stat["step_time_mean_s"])
        ok = [r for r in recs if r.status == "ok"]
        points.append(
            SweepPoint(
                patch=tuple(int(p) for p in patch),
                psnr=mean_or_none([r.psnr for r in ok]) if ok else None,
                ssim=mean_or_none([r.ssim for r in ok]) if ok else None,
                memory_gb=max(mems) if mems else None,
                memory_kind=" / ".join(sorted(kinds)) or "not recorded",
                step_s=mean_or_none(steps) if steps else None,
                device=", ".join(sorted({r.device for r in recs if r.device})) or "?",
                n_volumes=len(recs),
            )
        )
    return points
