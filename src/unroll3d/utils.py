"""Small shared helpers: atomic file writes, seeding, provenance."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``: on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _proc_status_gb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (kB) in GB = 10⁹ bytes, the project's one unit."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024 / 1e9
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


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0, ``clear_refs`` 5), so that
    :func:`peak_rss_gb` measures from now on. False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(
    path: str | os.PathLike, rows: list[dict], fieldnames: list[str] | None = None
) -> None:
    """Write ``rows`` as CSV with a header to ``path`` atomically; columns ``fieldnames`` (default:
    the keys of the first row); a missing value is written empty, None as empty."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames or rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what ``platform`` knows)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """The name recorded beside every measured number: the GPU model, or ``CPU: <model>``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()}"


def check_count(value: str | int) -> int:
    """``value`` as a whole number ≥ 1 (a count: threads, steps); else a ValueError in one line
    (``--threads 0`` is refused, not ignored)."""
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number ≥ 1, got {value!r}") from None
    if count < 1:
        raise ValueError(f"expected a whole number ≥ 1, got {count}")
    return count


def check_device(name: str) -> str:
    """``name`` if it names a device this machine has (``auto``, ``lock``, ``cpu``, ``cuda``,
    ``cuda:N``); else a ValueError in one line (``--device cuda`` without CUDA stops here, not
    in a torch traceback)."""
    if name in ("auto", "lock", "cpu"):
        return name
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}: CUDA is not available on this machine; use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{name!r} is not a device (auto, cpu, cuda or cuda:N)")
    return name


class OutputPathError(ValueError):
    """An output that cannot be written (a folder above it is a file, or not writable)."""


#: command-line options that name an output file or folder, checked before any verb's work
OUTPUT_OPTIONS = (
    "--out",
    "--dest",
    "--csv",
    "--stats",
    "--history",
    "--figure",
    "--slices",
    "--summary",
    "--checkpoint",
    "--tables",
    "--figures",
)


def check_output_path(path: str | os.PathLike, option: str = "output") -> None:
    """Fail in one line, before any work, when ``path`` cannot be written: the nearest existing
    folder above it is a file, or is not writable (folders still missing are created later)."""
    path = Path(path)
    above = path.parent
    while not above.exists() and above != above.parent:
        if above.is_symlink():  # a dangling link: writing through it fails
            break
        above = above.parent
    if not above.is_dir():
        raise OutputPathError(f"{option} {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: folder {above} is not writable")


def check_output_args(argv: list[str]) -> None:
    """:func:`check_output_path` for every output option in a verb's ``argv`` (``--out X`` and
    ``--out=X``; nothing after ``--``, which is another command's)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return
        name, eq, value = arg.partition("=")
        if name not in OUTPUT_OPTIONS:
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                continue
            value = argv[i + 1]
        check_output_path(value, name)


# ---- resumable jobs: a checkpoint is resumed only for the inputs it was written for ----


def _digest_update(h: Any, value: Any) -> None:
    if hasattr(value, "detach"):  # a torch tensor: its dtype, shape and bytes (any dtype)
        import torch

        value = value.detach().cpu().contiguous()
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif hasattr(value, "tobytes") and hasattr(value, "dtype"):  # a numpy array
        h.update(f"{value.dtype}{value.shape}".encode() + value.tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())


def fingerprint(*parts: Any) -> str:
    """A 32-hex digest of ``parts``: JSON-able values (dict keys sorted), torch tensors and numpy
    arrays (dtype, shape and bytes). What a resumable job's checkpoint must match."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        _digest_update(h, part)
    return h.hexdigest()[:32]


def source_digest(*modules: str) -> str:
    """sha256 of the source of ``modules`` (paths under the package, a folder = all its ``.py``):
    part of a fingerprint, so a checkpoint written by other code is not resumed."""
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for rel in modules:
        path = root / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.read_bytes())
    return h.hexdigest()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def _what_differs(old: Any, new: Any, limit: int = 4) -> str | None:
    """``key old -> new, ...`` between two input descriptions (None when unknown or equal)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not keys:
        return None
    text = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def resumable_checkpoint(
    path: str | os.PathLike,
    fingerprint: str,
    *,
    required: tuple[str, ...] = (),
    inputs: dict | None = None,
    map_location: Any = "cpu",
    what: str = "config, data or code",
    restart: str = "starting from step 0",
) -> dict | None:
    """The state in checkpoint ``path`` if it may be resumed, else None.

    It may be resumed when it is a dict holding ``required`` whose ``"fingerprint"`` equals
    ``fingerprint`` (:func:`fingerprint` of everything that defines the result). Any other
    checkpoint is deleted with one line on stderr naming the file and why: one that cannot be
    read (truncated, not a checkpoint), or one written for other inputs (``what``; when the
    checkpoint and the caller both give ``inputs``, a JSON-able description of them, the keys
    that differ are named). A rerun therefore never resumes another job's state and never stops
    on a stale file.
    """
    import sys

    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
        readable = isinstance(state, dict) and set(required) <= set(state)
        why = None if readable else "not a checkpoint of this job"
    except Exception as err:  # noqa: BLE001 - any unreadable file: discard, never block a rerun
        state, readable = None, False
        why = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        )
    if readable and state.get("fingerprint") == fingerprint:
        return state
    if not readable:
        print(
            f"warning: discarding unreadable checkpoint {path} ({why}); {restart}",
            file=sys.stderr,
            flush=True,
        )
    else:
        diff = _what_differs(state.get("inputs"), inputs)
        print(
            f"discarding checkpoint {path}: it was written for other inputs "
            f"({diff or what}); {restart}",
            file=sys.stderr,
            flush=True,
        )
    path.unlink(missing_ok=True)
    return None
