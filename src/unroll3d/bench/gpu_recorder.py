"""The GPU check's rows (CSV and ``summary.md``, rewritten after every section), its time budget,
and the device helpers its sections share: synchronise, free, peak memory, median time; with
:mod:`unroll3d.bench.gpu_accuracy`, the two size profiles and the device of a run.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from pathlib import Path

from unroll3d.bench.memory import gb
from unroll3d.utils import atomic_write_csv, atomic_write_text

FIELDS = ["section", "case", "metric", "value", "unit", "status", "note"]


class Recorder:
    """Rows of the check, rewritten to CSV and Markdown after every section; the time budget."""

    def __init__(self, out_dir: Path, budget_s: float, mode: str):
        self.out_dir, self.budget_s, self.mode = Path(out_dir), float(budget_s), mode
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.header: dict[str, str] = {}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, section, case, metric, value, unit="", status="ok", note=""):
        if isinstance(value, float):
            value = float(f"{value:.6g}")
        if value is None:
            value, status = "", ("n/a" if status == "ok" else status)
            note = (note + "; " if note else "") + "not tracked on the CPU"
        row = dict(section=section, case=case, metric=metric, value=value, unit=unit)
        row.update(status=status, note=note)
        self.rows.append(row)
        shown = f"{value} {unit}".strip()
        print(f"[{section}] {case} {metric}: {shown} ({status}) {note}".rstrip(), flush=True)

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(self.out_dir / "gpu_check.csv", self.rows, FIELDS)
        atomic_write_text(self.out_dir / "summary.md", self.markdown())

    def markdown(self) -> str:
        h = self.header
        lines = [
            f"# GPU check on {h.get('card', '?')}",
            "",
            f"- mode: {self.mode}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{time.perf_counter() - self.t0:.0f} s of a {self.budget_s:.0f} s budget",
            f"- torch {h.get('torch', '?')}, CUDA {h.get('cuda', '?')}, astra {h.get('astra', '?')}, "
            f"Python {platform.python_version()}",
            "- synthetic volumes, untrained networks, H = impulse response of AᵀA: memory and speed "
            "only. Memory is torch's peak allocation in GB (10⁹ B); astra's own buffers are not in it.",
            "",
        ]
        for section in dict.fromkeys(r["section"] for r in self.rows):
            lines += [f"## {section}", "", "| case | metric | value | unit | status | note |"]
            lines.append("|---|---|---|---|---|---|")
            for r in self.rows:
                if r["section"] == section:
                    cells = [str(r[k]).replace("|", "/") for k in FIELDS[1:]]
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)


NO_CUDA = "no CUDA device: run on a GPU, or use --tiny for the CPU toy check"


def profiles(**sizes: tuple) -> dict[str, dict]:
    """``{"gpu": {...}, "tiny": {...}}`` from each size's ``(gpu, tiny)`` pair."""
    return {mode: {k: v[i] for k, v in sizes.items()} for i, mode in enumerate(("gpu", "tiny"))}


def mode_device(tiny: bool):
    """The device of a run: the CPU for ``tiny``, else CUDA (an error naming ``--tiny`` if none)."""
    import torch

    if not tiny and not torch.cuda.is_available():
        raise RuntimeError(NO_CUDA)
    return torch.device("cpu" if tiny else "cuda")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float | None:
    import torch

    return gb(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def timed(fn, arg, repeats: int, device) -> tuple[float, object]:
    """Median seconds of ``fn(arg)`` over ``repeats`` calls after one warm-up; the last output."""
    out = fn(arg)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn(arg)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
