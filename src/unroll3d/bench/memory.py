"""Memory readings for the benchmarks, all in GB = 10⁹ bytes (the project's one unit).

CPU: the process's resident set (Linux ``VmRSS``) and its high-water mark (``VmHWM``), which
:func:`reset_peak_rss` restarts; ``None`` where ``/proc`` is unavailable. CUDA: bytes from
``torch.cuda`` through :func:`gb`.
"""

from __future__ import annotations

from pathlib import Path

from unroll3d.utils import reset_peak_rss

__all__ = ["GB", "gb", "peak_rss_gb", "reset_peak_rss", "rss_gb"]

#: bytes per GB
GB = 1e9


def gb(n_bytes: float) -> float:
    """Bytes to GB (10⁹ B)."""
    return n_bytes / GB


def _proc_status_gb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (given in kB = 1024 B) in GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return gb(float(line.split()[1]) * 1024)
    except OSError:
        return None
    return None


def rss_gb() -> float | None:
    """Resident memory of this process now, in GB (Linux ``VmRSS``; None elsewhere)."""
    return _proc_status_gb("VmRSS")


def peak_rss_gb() -> float | None:
    """Peak resident memory of this process in GB (Linux ``VmHWM``; None elsewhere): since the
    start, or since the last :func:`reset_peak_rss`."""
    return _proc_status_gb("VmHWM")
