"""One GPU per job: pick a free CUDA device with lock files, fall back to the CPU.

Snakemake's ``--resources gpu=N`` caps how many GPU jobs run at once but never says *which*
card a job should use (snakemake#281). Each GPU job therefore takes an exclusive ``flock`` on
``<lock_dir>/gpu<i>.lock`` for the first free index ``i``. The kernel drops the lock when the
process exits, crash or not, so a killed job never leaves a card blocked. Under SLURM the
scheduler already restricts ``CUDA_VISIBLE_DEVICES``; the locks then index the visible cards.

:Example:

>>> from unroll3d.devices import job_device
>>> with job_device(n_devices=0) as device:  # no CUDA: the CPU, with a warning
...     device.type
'cpu'
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOCK_DIR = Path(os.environ.get("UNROLL3D_GPU_LOCK_DIR", "/tmp/unroll3d-gpu-locks"))


def cuda_device_count() -> int:
    """Number of usable CUDA devices (``UNROLL3D_FAKE_GPUS`` overrides it, for tests)."""
    fake = os.environ.get("UNROLL3D_FAKE_GPUS")
    if fake is not None:
        try:
            count = int(fake)
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(f"UNROLL3D_FAKE_GPUS must be a whole number ≥ 0, got {fake!r}")
        return count
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


_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_forwarding_signals(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` and wait for it, passing SIGTERM/SIGINT/SIGHUP on to it instead of dying
    first: the caller (who holds the GPU lock) returns only once the child has exited, so a
    cancelled job never hands its card to the next one while it still runs. Returns the child's
    exit code (128 + N when a signal N ended it, as a shell reports it)."""
    child = subprocess.Popen(command, env=env)
    previous = {}

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in _FORWARDED:
        previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    """``unroll3d device run -- CMD...``: run CMD with CUDA_VISIBLE_DEVICES set to a free GPU."""
    parser = argparse.ArgumentParser(prog="unroll3d device", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run a command on one free GPU (or the CPU)")
    run.add_argument("--lock-dir", default=str(DEFAULT_LOCK_DIR))
    run.add_argument("--timeout", type=float, default=None)
    run.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("count", help="print the number of CUDA devices")
    args = parser.parse_args(argv)
    try:
        count = cuda_device_count()
    except ValueError as err:
        print(f"unroll3d device: {err}", file=sys.stderr)
        return 2
    if args.action == "count":
        print(count)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after 'run --'")
    env = dict(os.environ)
    if count == 0:
        print("unroll3d device: no CUDA device, running on the CPU", file=sys.stderr)
        env["CUDA_VISIBLE_DEVICES"] = ""
        return run_forwarding_signals(command, env)
    lock = acquire_gpu(count, args.lock_dir, args.timeout)
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(count)]
        env["CUDA_VISIBLE_DEVICES"] = ids[lock.index]
        print(f"unroll3d device: GPU {ids[lock.index]}", file=sys.stderr)
        return run_forwarding_signals(command, env)
    finally:
        lock.release()  # only after the child has exited
