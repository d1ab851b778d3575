"""Wall-clock timing and peak memory on a device, and the timed training steps of the GPU
checks (:func:`time_train_steps`)."""

from __future__ import annotations

import copy
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from unroll3d.config import train_settings
from unroll3d.engine.partitioning import estimate_pair, make_partitioner
from unroll3d.models.build import configure_network
from unroll3d.utils import peak_rss_gb
from unroll3d.variants import VariantSpec

__all__ = [
    "StepClock",
    "peak_memory_gb",
    "rss_growth_gb",
    "shape_text",
    "sync",
    "sync_warnings",
    "time_train_steps",
]


def peak_memory_gb(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in GB (10⁹ B) on CUDA, else None."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 1e9
    return None


def rss_growth_gb(base_gb: float | None) -> float | None:
    """Host peak RSS since the training loop began minus the RSS then (GB): what the steps
    themselves added (activations, gradients, optimiser state, cached samples). The CPU
    counterpart of the CUDA peak; None where the kernel's peak counter cannot be reset."""
    peak = peak_rss_gb()
    if base_gb is None or peak is None:
        return None
    return max(0.0, peak - base_gb)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock timings mean something on CUDA."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class StepClock:
    """Step times without a host sync: CUDA events recorded in the queue on CUDA (read once the
    queue has been waited for, :meth:`seconds`), the wall clock elsewhere (where every op is
    done when it returns)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda" and torch.cuda.is_available()

    def mark(self):
        """A point in the step sequence: a recorded CUDA event, or the wall clock."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        """Seconds between two marks (on CUDA: waits for ``end``, normally already done)."""
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3


@contextmanager
def sync_warnings(device: torch.device, on: bool = True):
    """Within the block, every op that makes the host wait for the CUDA device warns
    (``torch.cuda.set_sync_debug_mode("warn")``); yields a list that receives, after the block,
    one ``"file:line: message"`` per such op; yields None when ``on`` is false or off CUDA."""
    if not on or device.type != "cuda" or not torch.cuda.is_available():
        yield None
        return
    found: list[str] = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        torch.cuda.set_sync_debug_mode("default")
    found.extend(f"{w.filename}:{w.lineno}: {w.message}" for w in caught)


def shape_text(x: torch.Tensor) -> str:
    """``"24³"`` for a cube, else ``"16×20×18"`` (the volume named in OOM messages)."""
    s = list(x.shape[-3:])
    return f"{s[0]}³" if len(set(s)) == 1 else "×".join(str(v) for v in s)


def time_train_steps(
    model, spec: VariantSpec, task, config, prep_sample, physics, x0, n_steps: int, device
) -> dict:
    """Time ``n_steps`` training micro-steps (batch 1) after one warm-up, on a copy of ``model``."""
    net = copy.deepcopy(model).train()
    # deepcopy keeps bf16 and the layout but drops a torch.compile: apply the keys again
    net = configure_network(net, train_settings(config), device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-12)
    partitioner = (
        make_partitioner(net, task, config, prep_sample.x.shape[1:]) if spec.partition else None
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(n_steps + 1):
            gen = torch.Generator(device="cpu").manual_seed(i)
            sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            est, target = estimate_pair(net, spec, prep_sample, physics, x0, gen, partitioner)
            loss = torch.mean((est.float() - target.float()) ** 2)
            loss.backward()
            opt.step()
            sync(device)
            if i > 0:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        peak = peak_memory_gb(device) or 0.0
        return {
            "status": "oom",
            "message": f"OOM at volume {shape_text(prep_sample.x)}, peak {peak:.2f} GB",
            "step_time_s": None,
            "peak_memory_gb": peak,
            "steps": len(times),
        }
    finally:
        del net, opt
    return {
        "status": "ok",
        "message": None,
        "step_time_s": float(np.mean(times)),
        "peak_memory_gb": peak_memory_gb(device),
        "steps": len(times),
    }
