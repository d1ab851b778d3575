"""The training loop without hidden copies or host syncs: losses read once per logging interval,
samples resident or parked (pinned, prefetched), fresh MRI masks drawn on resident k-space, and
only the patch copied; each path gives the same numbers as the plain one."""

from __future__ import annotations

import sys

import pytest
import torch
from toys import loader, make_job, toy_config, toy_H

import unroll3d.engine.train as tr
from unroll3d.variants import variant_spec

torch.set_num_threads(1)

#: tensor methods that copy a value to the host (a sync on CUDA)
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__bool__")


def count_host_reads(monkeypatch) -> dict:
    """Patch the host reads of torch.Tensor and count, per phase of the loop (``step``: inside
    ``_one_step``; ``read_back``: inside ``_read_back``), the reads our own code (src/unroll3d)
    makes of float or bool tensors (the random draws' integer reads are host values on any
    device and do not count)."""
    reads: dict = {"step": [], "read_back": [], "calls": 0}
    phase: list = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            wanted = self.is_floating_point() or self.dtype == torch.bool
            if phase and "/unroll3d/" in caller and wanted:
                reads[phase[-1]].append((_name, caller, sys._getframe(1).f_lineno))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for fn, key in ((tr._one_step, "step"), (tr._read_back, "read_back")):

        def within(*args, _fn=fn, _key=key, **kwargs):
            phase.append(_key)
            reads["calls"] += _key == "read_back"
            try:
                return _fn(*args, **kwargs)
            finally:
                phase.pop()

        monkeypatch.setattr(tr, fn.__name__, within)
    return reads


def _losses_and_weights(job):
    rows = job.csv_path.read_text().splitlines()[1:]
    weights = torch.load(job.out, weights_only=False)["state_dict"]
    return [r.split(",")[1] for r in rows], weights


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", ["partition-H", "unrolled"])
def test_the_loop_reads_the_device_once_per_logging_interval(tmp_path, monkeypatch, variant):
    """Eight steps with log_every 4: two host reads of the losses (none inside a step), and the
    same losses and weights, to the last bit, as a read after every step."""
    spec = variant_spec(variant)
    H = toy_H(loader("toy0")) if spec.use_H else None
    cfg = toy_config(steps=8, accumulate=2)
    every = make_job(tmp_path / "every", variant, cfg, H=H)
    every.log_every = 1
    tr.train(every)
    job = make_job(tmp_path / "interval", variant, cfg, H=H)
    job.log_every = 4
    reads = count_host_reads(monkeypatch)
    stats = tr.train(job)
    assert reads["step"] == []  # nothing inside a step reads a value back
    assert reads["calls"] == 2 and len(reads["read_back"]) == 2  # steps 4 and 8: one read each
    monkeypatch.undo()
    a, wa = _losses_and_weights(every)
    b, wb = _losses_and_weights(job)
    assert a == b and len(a) == 8 and _same_weights(wa, wb)
    assert stats["step_time_mean_s"] > 0
