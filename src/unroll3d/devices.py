"""One GPU per job: pick a free CUDA device with lock files, fall back to the CPU.

Snakemake's ``--resources gpu=N`` caps how many GPU jobs run at once but never says *which*
card a job should use (snakemake#281). Each GPU job therefore takes an exclusive ``flock`` on
``<lock_dir>/gpu<i>.lock`` for the first free index ``i``. The kernel drops the lock when the
process exits, crash or not, so a killed job never leaves a card blocked. Under SLURM the
scheduler already restricts ``CUDA_VISIBLE_DEVICES``; the locks then index the visible cards.

``unroll3d device run -- CMD`` (:mod:`unroll3d.cli.device`) finds the cards without torch or
CUDA (``/proc/driver/nvidia``, ``nvidia-smi -L``, ``CUDA_VISIBLE_DEVICES``), locks one and
*becomes* CMD (``exec``), handing it the lock: a bare interpreter's start-up (~0.1 s, ~15 MB)
instead of ``import torch``'s.

:Example:

>>> from unroll3d.devices import job_device
>>> with job_device(n_devices=0) as device:  # no CUDA: the CPU, with a warning
...     device.type
'cpu'
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOCK_DIR = Path(os.environ.get("UNROLL3D_GPU_LOCK_DIR", "/tmp/unroll3d-gpu-locks"))
PROC_GPUS = Path("/proc/driver/nvidia/gpus")


def _fake_gpu_count() -> int | None:
    """``UNROLL3D_FAKE_GPUS`` (tests): the device count to pretend, or None when unset."""
    fake = os.environ.get("UNROLL3D_FAKE_GPUS")
    if fake is None:
        return None
    try:
        count = int(fake)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"UNROLL3D_FAKE_GPUS must be a whole number ≥ 0, got {fake!r}")
    return count


def driver_gpu_count(proc_gpus: Path = PROC_GPUS) -> int:
    """Physical NVIDIA cards the driver reports, without CUDA: one folder per card in
    ``/proc/driver/nvidia/gpus``, else the ``GPU n:`` lines of ``nvidia-smi -L``, else 0."""
    if proc_gpus.is_dir():
        return sum(1 for entry in proc_gpus.iterdir() if entry.is_dir())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def visible_gpu_ids(physical: int, visible: str | None) -> list[str]:
    """The ids CUDA would enumerate: ``0..physical-1``, or the entries of ``CUDA_VISIBLE_DEVICES``
    (``visible``) up to the first one CUDA would reject, as CUDA reads it (an empty value hides
    every card; an index out of range, a negative one, a repeat or junk ends the list; ``GPU-``/
    ``MIG-`` UUIDs are taken as given)."""
    if physical <= 0:
        return []
    if visible is None:
        return [str(i) for i in range(physical)]
    ids: list[str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.startswith(("GPU-", "MIG-")):
            valid = True
        else:
            valid = entry.isdigit() and int(entry) < physical
        if not valid or entry in ids:
            break
        ids.append(entry)
    return ids


def gpu_ids() -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` ids a job may be given, found without importing torch or
    initialising CUDA (``UNROLL3D_FAKE_GPUS=n`` pretends ``n`` physical cards, for tests)."""
    fake = _fake_gpu_count()
    physical = driver_gpu_count() if fake is None else fake
    return visible_gpu_ids(physical, os.environ.get("CUDA_VISIBLE_DEVICES"))


def cuda_device_count() -> int:
    """Number of usable CUDA devices as torch sees them (imports torch; ``UNROLL3D_FAKE_GPUS``
    overrides it, for tests). The ``device run`` wrapper uses :func:`gpu_ids` instead."""
    fake = _fake_gpu_count()
    if fake is not None:
        return fake
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class GpuLock:
    """An exclusive claim on GPU ``index``; release it with :meth:`release` (or exit)."""

    index: int
    path: Path
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def acquire_gpu(
    n_devices: int, lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, timeout: float | None = None,
    poll: float = 0.5,
) -> GpuLock:
    """Claim the first free GPU index among ``n_devices``; wait (up to ``timeout`` s) if all are taken."""
    if n_devices < 1:
        raise ValueError("acquire_gpu needs at least one device")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for index in range(n_devices):
            path = lock_dir / f"gpu{index}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return GpuLock(index, path, fd)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"all {n_devices} GPU(s) stayed busy for {timeout} s (locks in {lock_dir}); "
                "run Snakemake with --resources gpu=N no larger than the number of cards"
            )
        time.sleep(poll)


@contextlib.contextmanager
def job_device(
    prefer: str = "auto", n_devices: int | None = None,
    lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, timeout: float | None = None,
) -> Iterator:
    """Yield the ``torch.device`` a job should use, holding its GPU lock for the block.

    :param str prefer: ``"auto"`` (a free GPU if any, else CPU), ``"cpu"`` or ``"cuda"`` (error if none).
    :param int n_devices: device count; default :func:`cuda_device_count`.
    """
    import torch

    if prefer not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device preference must be auto, cpu or cuda, not {prefer!r}")
    count = cuda_device_count() if n_devices is None else n_devices
    if prefer == "cpu" or count == 0:
        if prefer == "cuda":
            raise RuntimeError("a CUDA device was requested but none is available")
        if prefer == "auto":
            warnings.warn("no CUDA device available: running on the CPU", stacklevel=3)
        yield torch.device("cpu")
        return
    lock = acquire_gpu(count, lock_dir, timeout)
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(lock.index)
        yield torch.device("cuda", lock.index)
    finally:
        lock.release()


def exec_holding_lock(command: list[str], env: dict[str, str], lock: GpuLock | None) -> int:
    """Replace this process by ``command`` (``os.execvpe``). The lock's file descriptor is
    handed down (inheritable), so the job itself holds the card's ``flock`` and the kernel frees
    it when the job exits, crash or signal; signals reach the job directly, no wrapper stays
    behind. Returns only on failure (the command cannot be run: 127, as a shell reports it)."""
    if lock is not None:
        os.set_inheritable(lock._fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        print(f"unroll3d device: cannot run {command[0]!r}: {err.strerror}", file=sys.stderr)
        if lock is not None:
            lock.release()
        return 127
    return 127  # pragma: no cover - execvpe does not return
