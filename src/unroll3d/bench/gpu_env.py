"""The GPU check's ``env`` (card, memory, versions) and ``tests`` (``pytest -m gpu``) sections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unroll3d.bench.gpu_recorder import Recorder
from unroll3d.bench.memory import gb
from unroll3d.utils import atomic_write_text, device_name


def section_env(rec: Recorder, device, backend: str) -> None:
    import torch

    rec.header.update(card=device_name(device), torch=torch.__version__, cuda=torch.version.cuda)
    try:
        import astra

        rec.header["astra"] = astra.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        rec.header["astra"] = f"not importable ({type(exc).__name__}: {exc})"
    rec.add("env", "device", "name", rec.header["card"])
    rec.add("env", "device", "cone-beam backend", backend)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.add("env", "device", "memory", gb(props.total_memory), "GB")
    rec.add(
        "env", "software", "versions", f"torch {torch.__version__}, astra {rec.header['astra']}"
    )


def section_tests(rec: Recorder, tiny: bool, timeout_s: float) -> None:
    if tiny:
        rec.add("tests", "pytest -m gpu", "run", "", status="skipped", note="--tiny (no CUDA)")
        return
    root = Path(__file__).resolve().parents[3]
    log = rec.out_dir / "pytest_gpu.txt"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider"]
    cmd += ["--continue-on-collection-errors"]  # a module needing ITK or Snakemake must not stop it
    cmd += [str(root / "tests")]
    try:
        proc = subprocess.run(
            cmd, cwd=root, capture_output=True, text=True, timeout=max(30.0, timeout_s)
        )
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"{exc.stdout or ''}\n(timeout after {timeout_s:.0f} s)", "timeout"
    atomic_write_text(log, text if isinstance(text, str) else text.decode())
    tail = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["(no output)"]
    status = "ok" if rc == 0 else f"rc {rc}"
    rec.add(
        "tests",
        "pytest -m gpu",
        "summary",
        tail[0].strip("= "),
        status=status,
        note="full log: pytest_gpu.txt",
    )
    for ln in text.splitlines():
        if ln.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL")):
            word, _, name = ln.partition(" ")
            rec.add("tests", name.split(" - ")[0][:120], "result", word.lower())
