"""Toy problems shared by the tests (not a test module): a masked 3D blur operator (pure torch),
seeded blob volumes, a tiny model config, a training-job factory and model doubles.

Tests import these with ``from toys import ...``; fixtures built on them live in conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from deepinv.physics import LinearPhysics

from unroll3d.engine.train import TrainJob
from unroll3d.normal import NormalFit, fit_normal_operator
from unroll3d.physics import sqnorm

TINY = {"channels": [4, 8, 8, 8], "blocks": 1}


class ToyBlur(LinearPhysics):
    """A = M ⊙ (k * x): a 3×3×3 blur (zero padding) followed by a random voxel mask.

    ``A_adjoint`` is the exact adjoint (transposed convolution); ``A_dagger`` is the adjoint
    scaled by 1/‖A‖² (a cheap stand-in for FDK). Channels are blurred independently.
    """

    def __init__(self, shape, channels=1, keep=0.6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        k = torch.rand((3, 3, 3), generator=g) + 0.5
        self.register_buffer("kernel", (k / k.sum()).expand(channels, 1, 3, 3, 3).clone())
        self.register_buffer("mask", (torch.rand((1, 1, *shape), generator=g) < keep).float())
        self.channels = channels
        self.sqnorm = 1.0

    def A(self, x, **kw):
        return self.mask * F.conv3d(x, self.kernel, padding=1, groups=self.channels)

    def A_adjoint(self, y, **kw):
        return F.conv_transpose3d(self.mask * y, self.kernel, padding=1, groups=self.channels)

    def A_dagger(self, y, **kw):
        return self.A_adjoint(y) / self.sqnorm


@dataclass
class ToySample:
    x: torch.Tensor
    y: torch.Tensor
    physics: LinearPhysics
    meta: dict = field(default_factory=dict)


def toy_volume(shape, channels=1, seed=0):
    """A few smooth blobs on a zero background, values in about [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = torch.zeros(shape)
    for _ in range(3):
        c = torch.rand(3, generator=g) * 1.2 - 0.6
        r = 0.2 + 0.3 * torch.rand(1, generator=g)
        d2 = sum((gr - ci) ** 2 for gr, ci in zip(grids, c, strict=True))
        vol = vol + (d2 < r**2).float() * (0.3 + 0.7 * torch.rand(1, generator=g))
    vol = vol.clamp(0, 1)
    if channels == 2:
        phase = grids[0] * 0.5
        return torch.stack([vol * torch.cos(phase), vol * torch.sin(phase)])[None]
    return vol[None, None]


def toy_sample(shape=(16, 16, 16), channels=1, seed=0, noise=0.01):
    """A seeded toy volume, its measurements and ‖A‖² (seeded power method: deepinv's
    ``compute_sqnorm`` starts from the global RNG, which a fresh interpreter seeds at random)."""
    x = toy_volume(shape, channels, seed)
    phys = ToyBlur(shape, channels, seed=seed)
    sq = sqnorm(phys, img_size=tuple(x.shape[1:]), max_iter=300, rtol=1e-7, seed=seed)
    phys.sqnorm = sq
    g = torch.Generator().manual_seed(seed + 100)
    y = phys.A(x) + noise * torch.randn(x.shape, generator=g)
    return ToySample(x=x, y=y, physics=phys, meta={"op_norm_sq": sq, "volume": f"toy{seed}"})


SHAPE = (16, 16, 16)


def toy_config(**train):
    cfg = {
        "name": "test",
        "seed": 0,
        "model": dict(TINY, residual=False),
        "cbct": {"K": 2, "patch_size": [8, 8, 8], "stride": None},
        "mri": {"K": 2, "patch_size": [8, 8, 8], "stride": None},
        "train": {
            "steps": 30,
            "lr": 3e-3,
            "lr_min": 1e-4,
            "weight_decay": 0.0,
            "accumulate": 1,
            "grad_clip": 1.0,
            "checkpoint_every": 1000,
            "val_every": 1000,
            "bf16": False,
            "warmup_steps": 2,
            "val_max": 1,
            "tv_grid": [0.003, 0.03],
            "tv_iters": 10,
            "tv_inner": 5,
        },
        "evaluate": {"refine": True, "timing_steps": 1, "cbct_crop": None, "cbct_data_range": 1.0},
    }
    cfg["train"].update(train)
    return cfg


_SAMPLES: dict[str, object] = {}


def loader(path):
    """Test double of load_sample: 'toyN' -> the seeded toy sample N (cached)."""
    if path not in _SAMPLES:
        seed = int(str(path).rsplit("toy", 1)[1].split(".")[0])
        _SAMPLES[path] = toy_sample(SHAPE, seed=seed)
    return _SAMPLES[path]


def toy_H(sample) -> NormalFit:
    """A quickly fitted H (3 steps) of a toy sample's operator."""
    lam, m, hist = fit_normal_operator(
        sample.physics,
        tuple(sample.x.shape[1:]),
        n_steps=3,
        heldout=1,
        progress=False,
        sqnorm=sample.meta["op_norm_sq"],
    )
    return NormalFit(
        fourier_filter=lam,
        spatial_mask=m,
        img_size=tuple(sample.x.shape[1:]),
        grid=tuple(hist["grid"]),
        two_sided=bool(hist["two_sided"]),
        scaling=float(hist["sqnorm"]),
    )


def make_job(tmp_path, variant, config, name="m", **kw):
    job = TrainJob(
        task="cbct",
        setting="v30",
        variant=variant,
        config=config,
        train_paths=["toy0"],
        val_paths=kw.pop("val_paths", []),
        out=tmp_path / f"{name}.pt",
        loader=loader,
        progress=False,
        **kw,
    )
    return job


class OOMModel(torch.nn.Module):
    """Model double whose forward raises CUDA's out-of-memory error."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.bf16 = False

    def forward(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
