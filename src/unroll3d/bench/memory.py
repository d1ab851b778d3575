"""Memory readings for the benchmarks, all in GB = 10⁹ bytes (the project's one unit).

CPU: the process's resident set now and its high-water mark since :func:`reset_peak_rss`
(Linux ``VmRSS`` / ``VmHWM`` through :mod:`unroll3d.utils`; ``None`` elsewhere). CUDA: the byte
counts of ``torch.cuda`` through :func:`gb`.
"""

from __future__ import annotations

from unroll3d.utils import peak_rss_gb, reset_peak_rss, rss_gb

__all__ = ["GB", "gb", "peak_rss_gb", "reset_peak_rss", "rss_gb"]

#: bytes per GB
GB = 1e9


def gb(n_bytes: float) -> float:
    """Bytes to GB (10⁹ B)."""
    return n_bytes / GB
