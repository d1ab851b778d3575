"""What every figure shares: the matplotlib handle, empty panels, atomic saving, benchmark CSVs
as DataFrames (memory in GB, ``peak_memory_gb``), image helpers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unroll3d.report.common import ReportError
from unroll3d.report.csvio import pick_column
from unroll3d.utils import atomic_path

log = logging.getLogger("unroll3d.report")


def pyplot():
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
    pyplot().close(fig)
    return paths


def mark_oom(ax, sizes, color) -> None:
    """A faint vertical line labelled "OOM" at each volume size that ran out of memory."""
    for n in sizes:
        ax.axvline(n, color=color, alpha=0.3, lw=0.8)
        ax.text(
            n, 0.95, " OOM", color=color, fontsize=6, va="top", transform=ax.get_xaxis_transform()
        )


def log_y_axis(ax) -> None:
    """Log y axis with plain tick labels (0.2, 1, 3 rather than 2×10⁻¹)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def size_axes(ax, sizes, ylabel: str) -> None:
    """A measurement against the volume size N: log y (:func:`log_y_axis`), one x tick per size."""
    log_y_axis(ax)
    ax.set_xlabel("volume size N (N³ voxels)")
    ax.set_ylabel(ylabel)
    sizes = sorted(sizes.unique())
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(int(s)) for s in sizes])


def read_csv(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - any parse failure is reported with the file name
        raise ReportError(f"{path}: cannot read CSV ({err})") from err
    return df


def find_column(df, names: Sequence[str], path: Path, required: bool = True):
    return pick_column(df.columns, names, path, required)


def size_column(df, path):
    return find_column(df, ("n", "size", "N", "volume_size", "img_size"), path)


def memory_column_gb(df, path, name: str = "peak_memory_gb"):
    """A memory column, in GB (10⁹ B) as every benchmark writes it (``peak_memory_gb``,
    ``*_memory_gb``); no other name or unit is read, and a missing column is an error that names
    the file and the column."""
    if name not in df.columns:
        raise ReportError(
            f"{path}: missing column {name!r} (memory in GB, as `unroll3d bench` writes it); "
            f"has {list(df.columns)}"
        )
    return pd_numeric(df[name])


def pd_numeric(series):
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").astype(float)


def device_label(df) -> str:
    if df is None or "device" not in df.columns:
        return ""
    return ", ".join(sorted({str(d) for d in df["device"].dropna()}))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError as err:
        raise ReportError(f"missing file {path}") from err
    except Exception as err:  # noqa: BLE001
        raise ReportError(f"{path}: cannot read .npz ({err})") from err


def to_image(a: np.ndarray, name: str = "") -> np.ndarray:
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


def imshow(ax, img, vmin=None, vmax=None, cmap="gray", title=None):
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    return im
