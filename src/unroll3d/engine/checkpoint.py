"""What a training checkpoint must match to be resumed (:func:`run_fingerprint`: config section,
input files, H, code, the config's plugins' source), reading one back, and the RNG states it
carries."""

from __future__ import annotations

import hashlib
import json
import random
from functools import cache
from pathlib import Path

import numpy as np
import torch

from unroll3d import __version__
from unroll3d.plugins import source_digests, without_empty_plugins
from unroll3d.utils import resumable_checkpoint, source_digest

__all__ = ["resumable_state", "rng_state", "run_fingerprint", "set_rng_state"]


#: modules whose code decides what a training step computes (part of the run fingerprint)
STEP_CODE = (
    "engine/train.py",
    "engine/train_loop.py",
    "engine/operators.py",
    "engine/partitioning.py",
    "engine/samples.py",
    "engine/model_file.py",
    "engine/tuning.py",
    "models",
    "partition",
    "normal/operator.py",
    "normal/wrapper.py",
)


@cache
def _code_version() -> str:
    """Hash of the package version and the source of the modules a training step runs."""
    return hashlib.sha256((__version__ + source_digest(*STEP_CODE)).encode()).hexdigest()


def _file_stamp(path: str | Path | None) -> str:
    """Size and modification time of an input file (``absent`` when it does not exist)."""
    if path is None:
        return "none"
    try:
        st = Path(path).stat()
    except OSError:
        return "absent"
    return f"{st.st_size}:{st.st_mtime_ns}"


def run_fingerprint(job) -> str:
    """What a checkpoint must match to be resumed: the task, setting, variant, the job's config
    section, every input file (training/validation volumes and H: path, size, mtime), the H
    tensors when H is given in memory, the code of the training step and the source of the
    plugins the config lists (none listed: the fingerprint is the one without plugins)."""
    h = hashlib.sha256()
    config = without_empty_plugins(job.config)
    head = {"task": job.task, "setting": job.setting, "variant": job.variant, "config": config}
    head["settings"] = job.settings
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for role, paths in (("train", job.train_paths), ("val", job.val_paths)):
        for p in paths:
            h.update(f"{role}:{p}:{_file_stamp(p)}\n".encode())
    files = job.normal_path if isinstance(job.normal_path, list) else [job.normal_path]
    for f in files:
        h.update(f"normal:{f}:{_file_stamp(f)}\n".encode())
    fits = job.H.values() if isinstance(job.H, dict) else [job.H]
    for fit in (f for f in fits if f is not None):
        for t in (fit.fourier_filter, fit.spatial_mask):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(_code_version().encode())
    for entry, source in source_digests(config.get("plugins")).items():  # a plugin edited: no resume
        h.update(f"plugin:{entry}:{source['sha256']}\n".encode())
    return h.hexdigest()[:32]


def resumable_state(job, fingerprint: str, device) -> dict | None:
    """The checkpoint's state if it can be resumed, else None; a checkpoint written for other
    inputs, or one that cannot be read (truncated), is deleted with a log line
    (:func:`unroll3d.utils.resumable_checkpoint`, shared with ``fit-normal``)."""
    return resumable_checkpoint(
        job.ckpt_path,
        fingerprint,
        required=("step", "model", "optimizer"),
        map_location=device,
        what="config, data, H file or code",
        restart="training from step 0",
    )


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
