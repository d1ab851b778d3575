"""The network's speed keys (train.bf16, tf32, channels_last, cudnn_benchmark, compile): the
channels-last layout computes the same numbers as the contiguous one, bf16 autocast wraps the
network only (the data step stays fp32), and the CUDA-only keys are validated and skipped on the
CPU with a message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toys import TINY, loader, make_job, toy_config, toy_sample

import unroll3d.engine.train as tr
from unroll3d.config import ConfigError, validate
from unroll3d.models import DRUNet3D, DRUNetSlices, build_variant
from unroll3d.models.build import network_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(cls, **kw):
    torch.manual_seed(0)
    a = cls(1, TINY["channels"], TINY["blocks"], **kw)
    b = cls(1, TINY["channels"], TINY["blocks"], **kw)
    b.load_state_dict(a.state_dict())
    return a, b.use_channels_last(True)


@pytest.mark.parametrize("cls", [DRUNet3D, DRUNetSlices])
def test_channels_last_gives_the_contiguous_numbers_and_gradients(cls):
    a, b = _pair(cls, residual=True)
    conv = next(m for m in b.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d)))
    fmt = torch.channels_last_3d if cls is DRUNet3D else torch.channels_last
    assert conv.weight.is_contiguous(memory_format=fmt)  # the layout really changed
    x = torch.randn(1, 1, 6, 12, 10, generator=torch.Generator().manual_seed(1))  # padded to 8
    out_a, out_b = a(x, 0.1), b(x, 0.1)
    assert out_b.is_contiguous() and out_b.shape == x.shape
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    (out_a**2).sum().backward()
    (out_b**2).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the weights saved in one layout load in the other
    a.load_state_dict(b.state_dict())


def test_build_variant_applies_the_keys_and_a_channels_last_model_matches():
    s = toy_sample((8, 8, 8))
    plain = build_variant("unrolled", "cbct", toy_config(), lipschitz=s.meta["op_norm_sq"])
    fast = build_variant(
        "unrolled", "cbct", toy_config(channels_last=True), lipschitz=s.meta["op_norm_sq"]
    )
    fast.load_state_dict(plain.state_dict())
    assert fast.denoiser.channels_last and not plain.denoiser.channels_last
    torch.testing.assert_close(fast(s.y, s.physics), plain(s.y, s.physics), rtol=1e-5, atol=1e-5)


class RecordingPhysics(torch.nn.Module):
    """Wraps a physics and records the dtype of everything its data step sees and returns."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.dtypes = inner, []

    def _rec(self, fn, x):
        out = fn(x)
        self.dtypes += [x.dtype, out.dtype]
        return out

    def A_dagger(self, y, **kw):
        return self._rec(self.inner.A_dagger, y)

    def A_adjoint(self, y, **kw):
        return self._rec(self.inner.A_adjoint, y)

    def A_adjoint_A(self, x, **kw):
        return self._rec(lambda v: self.inner.A_adjoint(self.inner.A(v)), x)


def test_bf16_autocast_wraps_the_network_only():
    """With train.bf16 (CPU autocast here) the convolutions of the DRUNet run in bf16 while every
    input and output of the data step (Aᵀ, AᵀA, A†) and the model's output stay fp32; the result
    stays close to the fp32 model's."""
    s = toy_sample((8, 8, 8))
    lip = s.meta["op_norm_sq"]
    ref = build_variant("unrolled", "cbct", toy_config(), lipschitz=lip)
    model = build_variant("unrolled", "cbct", toy_config(bf16=True), lipschitz=lip)
    model.load_state_dict(ref.state_dict())
    assert model.bf16 and not ref.bf16
    conv_dtypes = []
    for m in model.denoiser.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(lambda mod, inp, out: conv_dtypes.append(out.dtype))
    phys = RecordingPhysics(s.physics)
    out = model(s.y, phys)
    out.sum().backward()
    assert set(conv_dtypes) == {torch.bfloat16}
    assert phys.dtypes and set(phys.dtypes) == {torch.float32}
    assert out.dtype == torch.float32
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    expect = ref(s.y, s.physics)
    err = float((out - expect).detach().norm() / expect.detach().norm())
    assert 0 < err < 0.05  # bf16 rounding: different, but close


def test_cuda_only_keys_are_skipped_on_the_cpu_with_a_message(capsys):
    cfg = toy_config(compile=True, cudnn_benchmark=True, tf32=False)
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    model = build_variant("partition", "cbct", cfg, device="cpu")
    assert "train.compile: skipped on the CPU" in capsys.readouterr().err
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) == flags
    assert network_settings(cfg["train"] | {"channels_last": False}, "cpu") == {
        "bf16": False,
        "tf32": None,
        "channels_last": False,
        "cudnn_benchmark": None,
        "compile": None,
    }
    assert model.denoiser.channels_last is False


@pytest.mark.parametrize("key", ["channels_last", "cudnn_benchmark", "compile", "tf32"])
def test_the_keys_are_validated(key):
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "smoke.yaml").read_text())
    config["train"][key] = "yes"
    with pytest.raises(ConfigError, match=key):
        validate(config)


def test_training_in_channels_last_reaches_the_same_weights(tmp_path):
    """Three optimiser steps of partition training, contiguous vs channels-last: the same losses
    and weights to rounding, and the stats say which layout ran."""
    loader("toy0")  # loaded once before both runs (a first load draws from the global RNG)
    runs = {}
    for cl in (False, True):
        job = make_job(tmp_path / str(cl), "partition", toy_config(steps=3, channels_last=cl))
        stats = tr.train(job)
        assert stats["network"]["channels_last"] is cl
        runs[cl] = (stats, torch.load(job.out, weights_only=False)["state_dict"])
    assert runs[True][0]["loss_last"] == pytest.approx(runs[False][0]["loss_last"], rel=1e-4)
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_precision_ab_names_a_run_without_its_config(tmp_path, capsys):
    """`unroll3d bench precision_ab` on a folder that is not a prepared run: a one-line error."""
    from unroll3d.bench import precision_ab
    from unroll3d.cli.bench.precision_ab import main

    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path), "--task", "cbct"])
    assert "no config.yaml there" in capsys.readouterr().err
    assert set(precision_ab.MODES) == {"fp32", "bf16+channels_last"}


def _old_train_step(model, optimizer, spec, pick, generator, accumulate, grad_clip, part):
    """The step as it was before the losses stayed on the device (a host read per micro-step)."""
    from unroll3d.engine.model_file import use_lipschitz
    from unroll3d.engine.partitioning import estimate_pair

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(accumulate):
        prep = pick(generator)
        use_lipschitz(model, prep.lipschitz)
        est, target = estimate_pair(
            model, spec, prep.sample, prep.physics, prep.x0, generator, part
        )
        loss = torch.mean((est.float() - target.float()) ** 2)
        (loss / accumulate).backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total / accumulate


def test_train_step_reads_the_device_once_and_gives_the_same_numbers():
    """train_step keeps the micro-steps' losses on the device and reads them once per step: the
    same mean loss (to the last bit) and the same weights as a read per micro-step."""
    import copy

    from unroll3d.engine.partitioning import make_partitioner
    from unroll3d.engine.samples import SampleCache
    from unroll3d.variants import variant_spec

    spec = variant_spec("partition")
    cache = SampleCache(["toy0", "toy1"], loader, spec, None)
    first = cache.get(0)
    cfg = toy_config()
    model = build_variant("partition", "cbct", cfg, lipschitz=cache.lipschitz)
    part = make_partitioner(model, "cbct", cfg, first.sample.x.shape[1:])
    twin = copy.deepcopy(model)
    part_twin = make_partitioner(twin, "cbct", cfg, first.sample.x.shape[1:])

    def pick(gen):
        return cache.get(int(torch.randint(2, (1,), generator=gen)))

    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (model, twin)]
    for step in range(2):
        g1, g2 = (torch.Generator().manual_seed(step) for _ in range(2))
        new = tr.train_step(model, opts[0], spec, pick, g1, 3, 1.0, part)
        old = _old_train_step(twin, opts[1], spec, pick, g2, 3, 1.0, part_twin)
        assert isinstance(new, torch.Tensor) and float(new) == old  # unread until the loop asks
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
