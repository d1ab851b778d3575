"""The training loop without hidden copies or host syncs: losses read once per logging interval,
samples resident or parked (pinned, prefetched), fresh MRI masks drawn on resident k-space, and
only the patch copied; each path gives the same numbers as the plain one."""

from __future__ import annotations

import sys

import pytest
import torch
from toys import loader, make_job, toy_config, toy_H

import unroll3d.engine.train as tr
import unroll3d.engine.train_loop as loop
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
    for fn, key in ((loop._one_step, "step"), (loop._read_back, "read_back")):

        def within(*args, _fn=fn, _key=key, **kwargs):
            phase.append(_key)
            reads["calls"] += _key == "read_back"
            try:
                return _fn(*args, **kwargs)
            finally:
                phase.pop()

        monkeypatch.setattr(loop, fn.__name__, within)
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


def _two_volume_job(tmp_path, variant, device_cache, H=None, steps=6):
    cfg = toy_config(steps=steps, accumulate=2, device_cache=device_cache)
    job = make_job(tmp_path, variant, cfg, H=H)
    job.train_paths = ["toy0", "toy1", "toy2"]
    return job


@pytest.mark.parametrize("variant", ["partition-H", "unrolled"])
def test_parked_samples_train_as_resident_ones_and_the_next_draw_is_prefetched(
    tmp_path, monkeypatch, variant
):
    """device_cache 0 parks every volume (host copies, copied over when drawn, the next step's
    first draw ahead of it): the same losses and weights, to the last bit, as every volume kept
    (device_cache 8), and each prefetch names the volume the next step then draws first."""
    import unroll3d.engine.samples as engine_samples

    spec = variant_spec(variant)
    H = toy_H(loader("toy0")) if spec.use_H else None
    kept = _two_volume_job(tmp_path / "kept", variant, 8, H)
    tr.train(kept)
    fetched, prefetched = [], []
    real_fetch, real_prefetch = engine_samples.SampleCache._fetch, engine_samples.SampleCache.prefetch

    def fetch(self, i, whole):
        fetched.append((i, i in self._inflight))
        return real_fetch(self, i, whole)

    def prefetch(self, i):
        prefetched.append(i)
        return real_prefetch(self, i)

    monkeypatch.setattr(engine_samples.SampleCache, "_fetch", fetch)
    monkeypatch.setattr(engine_samples.SampleCache, "prefetch", prefetch)
    parked = _two_volume_job(tmp_path / "parked", variant, 0, H)
    stats = tr.train(parked)
    monkeypatch.undo()
    a, wa = _losses_and_weights(kept)
    b, wb = _losses_and_weights(parked)
    assert a == b and _same_weights(wa, wb)
    assert stats["device_cache"] == 0 and stats["resident_samples_gb"] is None  # CPU
    # two draws per step: the prefetch (after a step's first draw) names the next step's first
    firsts = fetched[2::2]  # the first draw of steps 1..6 (after setup's two get(0))
    assert len(firsts) == 6 and prefetched == [i for i, _ in firsts[1:]]
    # a prefetched volume is found in flight unless it was already the one on the device
    assert any(hit for _, hit in firsts[1:])


class _Spy:
    """A Prefetcher double that records which tensors a parked sample's draw copies."""

    def __init__(self):
        self.copied = []

    def copy(self, t):
        self.copied.append(t)
        return t.clone()

    def ready(self, tensors):
        pass


@pytest.mark.parametrize(
    "variant, copies",
    [("unrolled", {"x", "y", "x0"}), ("partition", {"x", "y"}), ("pnp", set())],
)
def test_a_parked_draw_copies_only_what_its_variant_needs(variant, copies):
    """Whole-volume variants copy x, y and x0; partitioned ones x and y (x0's patch goes over in
    the estimate); PnP nothing (the estimate copies the ground truth's patch)."""
    from unroll3d.engine.samples import SampleCache

    cache = SampleCache(["toy0"], loader, variant_spec(variant), None, on_device=0)
    prep = cache.get(0)  # loaded and parked
    spy = cache._prefetcher = _Spy()
    cache._active = None
    got = cache.get(0)
    host = cache._cache[0]
    names = {"x": host.sample.x, "y": host.sample.y, "x0": host.x0}
    assert {k for k, t in names.items() if any(t is c for c in spy.copied)} == copies
    assert len(spy.copied) == len(copies)
    assert got.offloaded and torch.equal(got.sample.x, prep.sample.x)


@pytest.mark.parametrize("variant", ["partition", "partition-H", "pnp"])
def test_the_patch_only_estimate_is_the_whole_volume_one(variant):
    """estimate_pair of a parked sample (x0's or the ground truth's patch copied alone) gives
    the same estimate and target, to the last bit, as with the whole volumes there."""
    from unroll3d.engine import operators
    from unroll3d.engine.partitioning import estimate_pair, make_partitioner
    from unroll3d.physics import initial_reconstruction

    spec = variant_spec(variant)
    s = loader("toy1")
    H = toy_H(loader("toy0")) if spec.use_H else None
    cfg = toy_config()
    torch.manual_seed(0)
    model = tr.build_variant(variant, "cbct", cfg, lipschitz=s.meta["op_norm_sq"])
    part = make_partitioner(model, "cbct", cfg, s.x.shape[1:])
    phys = operators.physics_for(s, spec, H, s.meta["op_norm_sq"])
    x0 = initial_reconstruction(s.physics, s.y)
    out = []
    for device in (None, torch.device("cpu")):
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            out.append(estimate_pair(model, spec, s, phys, x0, gen, part, device))
    assert all(torch.equal(a, b) for a, b in zip(out[0], out[1], strict=True))


def test_a_fresh_mask_draw_reads_the_file_once_and_is_the_loaded_sample(mri_volume, monkeypatch):
    """Each draw of FreshMaskLoader is load_sample's sample with that mask seed (bit for bit),
    while the file is read once: only the mask is new."""
    import unroll3d.engine.samples as engine_samples
    from unroll3d.data import load_sample

    reads = []
    real = engine_samples.read_sample_file
    monkeypatch.setattr(
        engine_samples, "read_sample_file", lambda *a, **k: (reads.append(a), real(*a, **k))[1]
    )
    draw = engine_samples.FreshMaskLoader("R2", "cpu")
    masks = set()
    for seed in (5, 17, 5, 123):
        got = draw(mri_volume, seed)
        want = load_sample(mri_volume, "R2", mask_seed=seed)
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
        assert torch.equal(got.physics.mask, want.physics.mask)
        scale = got.meta.pop("scale")  # kept on the device, unread: the value in float32
        assert isinstance(scale, torch.Tensor)
        assert float(scale) == float(torch.tensor(want.meta.pop("scale"), dtype=torch.float32))
        assert got.meta == want.meta
        masks.add(got.physics.mask.sum().item())
    assert len(reads) == 1 and len(masks) > 1


@pytest.mark.parametrize("variant", ["partition", "unrolled"])
def test_mri_fresh_masks_train_as_when_the_file_was_loaded_per_draw(tmp_path, mri_volume, variant):
    """Training with fresh masks on the kept k-space gives the losses and weights, to the last
    bit, of the former path that loaded the file again for every draw."""
    from unroll3d.data import load_sample

    cfg = toy_config(steps=4, accumulate=2, fresh_masks=True)
    cfg["mri"] = {"K": 1, "patch_size": [4, 8, 8], "stride": None}
    jobs = []
    for name in ("kept", "reloaded"):
        job = tr.TrainJob(
            task="mri", setting="R2", variant=variant, config=cfg, train_paths=[mri_volume],
            val_paths=[], out=tmp_path / name / "m.pt", progress=False,
        )  # fmt: skip
        if name == "reloaded":
            job.redraw = lambda p, seed: load_sample(p, "R2", mask_seed=seed)
        assert tr.train(job)["masks"] == "fresh per draw"
        jobs.append(job)
    a, wa = _losses_and_weights(jobs[0])
    b, wb = _losses_and_weights(jobs[1])
    assert a == b and len(a) == 4 and _same_weights(wa, wb)


def test_a_parked_operator_is_swapped_in_and_out_without_copying_back(monkeypatch):
    """A parked sample's heavy operator (MRI coil maps) gets its device copy installed when
    drawn, and the previous one gets its host copy back (no copy to the host): one sample's
    operator on the device at a time, computing as before."""
    import unroll3d.engine.samples as engine_samples
    from unroll3d.data.sample import Sample
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask

    monkeypatch.setattr(engine_samples, "HEAVY_PHYSICS_BYTES", 0)  # toy coil maps count
    samples = {}
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        maps = torch.randn((3, 4, 8, 6), dtype=torch.complex64, generator=g)
        phys = MultiCoilMRI3D(poisson_disc_mask((8, 6), 2, calib=2, seed=i), maps, (4, 8, 6))
        x = torch.randn((1, 2, 4, 8, 6), generator=g)
        samples[f"s{i}"] = Sample(x, phys.A(x), phys, {"op_norm_sq": 1.0, "setting": "R2"})
    ref = {k: s.physics.A_adjoint(s.y) for k, s in samples.items()}
    cache = engine_samples.SampleCache(
        list(samples), samples.__getitem__, variant_spec("unrolled"), None, on_device=0
    )
    cache.get(0), cache.get(1)  # loaded and parked
    host = {i: dict((n, t) for _, n, t in cache._cache[i].buffers) for i in (0, 1)}
    cache._prefetcher, cache._active = _Spy(), None
    for i in (0, 1, 0):
        prep = cache.get(i)
        here, other = samples[f"s{i}"].physics, samples[f"s{1 - i}"].physics
        assert here.coil_maps is not host[i]["coil_maps"]  # the device copy
        assert torch.equal(here.coil_maps, host[i]["coil_maps"])
        assert other.coil_maps is host[1 - i]["coil_maps"]  # parked: its host copy, as it was
        assert torch.equal(prep.physics.A_adjoint(prep.sample.y), ref[f"s{i}"])


def test_a_cropped_context_draw_copies_the_residual_and_trains_to_rounding(tmp_path, monkeypatch):
    """With the context cropped (the default on CUDA, forced here), a parked partitioned sample
    keeps y − A x: a draw copies that alone (the ground truth and x0 go over as patches), ỹ =
    (y − A x) + Ã S x matches y − A S⊥ᵀ S⊥ x to rounding, and training gives the resident run's
    losses to float32 rounding."""
    from unroll3d.engine import operators
    from unroll3d.engine.partitioning import estimate_pair, make_partitioner
    from unroll3d.engine.samples import SampleCache

    spec = variant_spec("partition-H")
    H = toy_H(loader("toy0"))
    monkeypatch.setattr(SampleCache, "crop_context", True)
    lip = loader("toy1").meta["op_norm_sq"]
    cache = SampleCache(["toy1"], loader, spec, H, on_device=0)
    cache.get(0)
    spy = cache._prefetcher = _Spy()
    cache._active = None
    got = cache.get(0)
    host = cache._cache[0]
    assert got.y_residual and spy.copied == [host.residual]  # neither y, x nor x0
    s = loader("toy1")
    assert torch.allclose(host.residual, s.y - s.physics.A(s.x))
    # the estimate from the residual and the patches equals the whole-volume one, to rounding
    cfg = toy_config()
    torch.manual_seed(0)
    model = tr.build_variant("partition-H", "cbct", cfg, lipschitz=lip)
    part = make_partitioner(model, "cbct", cfg, s.x.shape[1:])
    phys = operators.physics_for(s, spec, H, lip)
    whole = SampleCache(["toy1"], loader, spec, H).get(0)
    out = []
    for prep, device in ((whole, None), (got, torch.device("cpu"))):
        gen = torch.Generator().manual_seed(4)
        with torch.no_grad():
            est, target = estimate_pair(
                model, spec, prep.sample, phys if device is None else prep.physics, prep.x0,
                gen, part, device, prep.y_residual,
            )  # fmt: skip
        out.append((est, target))
    assert torch.equal(out[0][1], out[1][1])  # the same patch of the ground truth
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    # training: the parked run with cropped context against the resident one
    kept = _two_volume_job(tmp_path / "kept", "partition-H", 8, H)
    tr.train(kept)
    parked = _two_volume_job(tmp_path / "parked", "partition-H", 0, H)
    tr.train(parked)
    a, wa = _losses_and_weights(kept)
    b, wb = _losses_and_weights(parked)
    assert [float(v) for v in a] == pytest.approx([float(v) for v in b], rel=1e-4)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5) for k in wa)


def test_the_residual_estimate_of_mri_readout_slabs_is_the_whole_one(monkeypatch):
    """MRI (readout slabs): the estimate from y − A x and the patches alone equals the one
    from the whole volumes to float32 rounding, with the same target."""
    from unroll3d.data.sample import Sample
    from unroll3d.engine.partitioning import estimate_pair, make_partitioner
    from unroll3d.engine.samples import SampleCache
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask

    g = torch.Generator().manual_seed(0)
    maps = torch.randn((3, 8, 12, 10), dtype=torch.complex64, generator=g)
    phys = MultiCoilMRI3D(poisson_disc_mask((12, 10), 2, calib=2, seed=0), maps, (8, 12, 10))
    x = torch.randn((1, 2, 8, 12, 10), generator=g)
    y = phys.A(x)
    sample = Sample(x, y + 0.01 * torch.randn(y.shape, generator=g), phys, {"op_norm_sq": 1.0})
    spec = variant_spec("partition")
    monkeypatch.setattr(SampleCache, "crop_context", True)
    parked = SampleCache(["v"], lambda p: sample, spec, None, on_device=0)
    parked.get(0)
    got = parked.get(0)
    whole = SampleCache(["v"], lambda p: sample, spec, None).get(0)
    cfg = toy_config()
    cfg["mri"] = {"K": 2, "patch_size": [4, 8, 8], "stride": None}
    torch.manual_seed(0)
    model = tr.build_variant("partition", "mri", cfg, lipschitz=1.0)
    part = make_partitioner(model, "mri", cfg, x.shape[1:])
    out = []
    for prep, device in ((whole, None), (got, torch.device("cpu"))):
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            out.append(
                estimate_pair(model, spec, prep.sample, prep.physics, prep.x0, gen, part, device,
                              prep.y_residual)  # fmt: skip
            )
    assert got.y_residual and torch.equal(out[0][1], out[1][1])
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
