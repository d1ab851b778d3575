"""Exact cases of H: operators whose AᵀA is exactly diag × circulant, so the H variants
must reproduce the exact ones with the same weights.

* a periodic blur (circular convolution): H on the image grid (circular FFT);
* a linear convolution on the zero-padded grid (A x = the full convolution, AᵀA Toeplitz): H on
  the padded grid, a linear convolution;
* single-coil MRI with a real and with a complex coil map s: AᵀA = diag(s̄) Fᴴ M F diag(s), the
  two-sided H with m = s.

For each, with the same network weights (``build_variant``, a tiny DRUNet, K = 2):
``partition-H`` ≡ ``partition`` on a training patch (``training_pair``, same generator) and
through the whole-volume reconstruction with refinement (``engine.reconstruct.reconstruct``, the pass
that uses H), and ``unrolled-H`` ≡ ``unrolled`` on the whole volume, to 1e-5 relative. An H
scaled by 1.1 must make them differ, so the checks can fail.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import deepinv as dinv
import pytest
import torch
import torch.nn.functional as F
from deepinv.physics import LinearPhysics
from toys import toy_config, toy_volume

from unroll3d.engine.operators import physics_for
from unroll3d.engine.partitioning import make_partitioner
from unroll3d.engine.reconstruct import reconstruct
from unroll3d.models import build_variant
from unroll3d.normal import NormalFit, padded_grid
from unroll3d.physics import MultiCoilMRI3D
from unroll3d.variants import variant_spec

SHAPE = (16, 12, 12)  # patches of 8³ with stride 4: 3 × 2 × 2 of them
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class FullConvolution(LinearPhysics):
    """A x = the full linear convolution of x with a 3³ kernel (output 2 voxels larger per axis):
    AᵀA is exactly a linear convolution (Toeplitz) on the volume, no boundary term."""

    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel[None, None])

    def A(self, x, **kw):
        return F.conv3d(x, self.kernel, padding=2)

    def A_adjoint(self, y, **kw):
        return F.conv_transpose3d(y, self.kernel, padding=2)


def _kernel(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = 0.3 * torch.rand((3, 3, 3), generator=g)
    k[1, 1, 1] += 1.0
    return k / k.sum()


def _impulse(img_size, at) -> torch.Tensor:
    e = torch.zeros(1, *img_size)
    e[(0, 0, *at)] = 1.0
    return e


def _on_grid(r: torch.Tensor, centre, grid) -> torch.Tensor:
    """The kernel r (the response to an impulse at ``centre``) laid on the FFT ``grid`` with
    offset 0 at index 0 (wrapping negative offsets)."""
    idx = [(torch.arange(n) - c) % g for n, c, g in zip(r.shape, centre, grid, strict=True)]
    h = torch.zeros(grid, dtype=r.dtype)
    h[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]] = r
    return h


def _sqnorm(physics, img_size) -> float:
    x = torch.randn(1, *img_size, generator=torch.Generator().manual_seed(1))
    for _ in range(100):
        x = physics.A_adjoint_A(x)
        x = x / x.norm()
    return float((x * physics.A_adjoint_A(x)).sum())


def periodic_blur():
    """Circular blur: AᵀA circulant on the image grid; λ from its impulse response at 0."""
    physics = dinv.physics.Blur(filter=_kernel(0)[None, None], padding="circular")
    img_size = (1, *SHAPE)
    s = _sqnorm(physics, img_size)
    r = physics.A_adjoint_A(_impulse(img_size, (0, 0, 0)))[0, 0]
    lam = torch.fft.rfftn(r / s)
    return physics, img_size, s, lam, torch.ones(SHAPE), SHAPE, False


def padded_convolution():
    """Full linear convolution: AᵀA a linear convolution, λ on the padded grid from the impulse
    response at the centre voxel (the kernel lies inside the volume)."""
    physics = FullConvolution(_kernel(1))
    img_size = (1, *SHAPE)
    s = _sqnorm(physics, img_size)
    grid = padded_grid(SHAPE)
    c = tuple(n // 2 for n in SHAPE)
    r = physics.A_adjoint_A(_impulse(img_size, c))[0, 0]
    lam = torch.fft.rfftn(_on_grid(r / s, c, grid))
    return physics, img_size, s, lam, torch.ones(SHAPE), grid, False


def single_coil_mri(complex_map: bool):
    """One coil s: AᵀA = diag(s̄) C diag(s) with C = Fᴴ M F circulant; λ from C's impulse
    response (a unit coil map), m = s (real, or complex for the complex map)."""
    g = torch.Generator().manual_seed(2)
    D, H, W = SHAPE
    mask = (torch.rand(H, W, generator=g) < 0.4).float()
    mask[H // 2 - 2 : H // 2 + 2, W // 2 - 2 : W // 2 + 2] = 1.0
    zz = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    mag = 0.6 + 0.4 * torch.exp(-((zz[1] - 0.3) ** 2 + (zz[2] + 0.2) ** 2))
    phase = 0.8 * zz[0] + 0.5 * torch.sin(2 * zz[1]) if complex_map else torch.zeros(SHAPE)
    smap = (mag * torch.exp(1j * phase)).to(torch.complex64)
    img_size = (2, *SHAPE)
    physics = MultiCoilMRI3D(mask, smap[None], img_size)
    unit = MultiCoilMRI3D(mask, torch.ones(1, *SHAPE, dtype=torch.complex64), img_size)
    s = _sqnorm(physics, img_size)
    r = unit.A_adjoint_A(_impulse(img_size, (0, 0, 0)))[0]
    lam = torch.fft.fftn(torch.complex(r[0], r[1]) / s).to(torch.complex64)
    m = smap if complex_map else smap.real.contiguous()
    return physics, img_size, s, lam, m, SHAPE, True


CASES = {
    "periodic-blur": periodic_blur,
    "padded-convolution": padded_convolution,
    "mri-real-map": lambda: single_coil_mri(False),
    "mri-complex-map": lambda: single_coil_mri(True),
}


def _setup(case: str, scale: float = 1.0):
    """Sample, exact H (a NormalFit; ``scale`` ≠ 1 makes it wrong), task, config and ‖A‖²."""
    physics, img_size, s, lam, m, grid, two_sided = CASES[case]()
    task = "mri" if img_size[0] == 2 else "cbct"
    x = toy_volume(SHAPE, img_size[0], seed=3)
    y = physics.A(x)
    sample = SimpleNamespace(x=x, y=y, physics=physics, meta={"volume": case})
    H = NormalFit(
        fourier_filter=lam * scale,
        spatial_mask=m,
        img_size=img_size,
        grid=tuple(grid),
        two_sided=two_sided,
        scaling=s,
    )
    return sample, H, task, toy_config(), s


def _models(task, config, s):
    """The exact and the H variant of one family with the same weights."""
    torch.manual_seed(0)
    exact = build_variant("partition", task, config, lipschitz=s)
    with_h = build_variant("partition-H", task, config, lipschitz=s)
    with_h.load_state_dict(exact.state_dict())
    return exact.eval(), with_h.eval()


def _pair(model, name, sample, H, task, config, s, x0):
    spec = variant_spec(name)
    physics = physics_for(sample, spec, H, s)
    part = make_partitioner(model, task, config, sample.x.shape[1:])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the H variant's H travels in physics (a DiagCirculantWrapper)
        est, target = part.training_pair(sample.y, physics, sample.x, generator=g, x0=x0)
    return est, target, part.last_start


def _volume(model, name, sample, H, task, config, s, x0):
    spec = variant_spec(name)
    physics = physics_for(sample, spec, H, s)
    return reconstruct(model, spec, task, config, sample, physics, x0, refine=True)


def _compare(case: str, scale: float = 1.0) -> dict[str, float]:
    sample, H, task, config, s = _setup(case, scale)
    x0 = sample.physics.A_adjoint(sample.y) / s
    exact, with_h = _models(task, config, s)
    est, target, start = _pair(exact, "partition", sample, H, task, config, s, x0)
    est_h, target_h, start_h = _pair(with_h, "partition-H", sample, H, task, config, s, x0)
    assert start == start_h and torch.equal(target, target_h)
    vol = _volume(exact, "partition", sample, H, task, config, s, x0)
    vol_h = _volume(with_h, "partition-H", sample, H, task, config, s, x0)
    full = _volume(exact, "unrolled", sample, H, task, config, s, x0)
    full_h = _volume(with_h, "unrolled-H", sample, H, task, config, s, x0)
    for t in (est, vol, full):
        assert torch.isfinite(t).all() and t.norm() > 0
    return {
        "patch": relerr(est_h, est),
        "volume": relerr(vol_h, vol),
        "unrolled": relerr(full_h, full),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_exact_h_is_exact(case):
    """H = AᵀA/‖A‖² exactly: the exact H on every patch and on the volume."""
    sample, H, _, _, s = _setup(case)
    x = torch.randn(1, *sample.x.shape[1:], generator=torch.Generator().manual_seed(5))
    assert relerr(s * H.operator()(x), sample.physics.A_adjoint_A(x)) < 1e-5
    part = H.operator().restrict((4, 2, 3), (8, 8, 8))
    u = torch.randn(1, x.shape[1], 8, 8, 8, generator=torch.Generator().manual_seed(6))
    full = torch.zeros_like(x)
    full[..., 4:12, 2:10, 3:11] = u
    exact_patch = sample.physics.A_adjoint_A(full)[..., 4:12, 2:10, 3:11]
    assert relerr(s * part(u), exact_patch) < 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_h_variants_equal_exact_variants(case):
    """partition-H ≡ partition (training patch, whole volume with refinement) and
    unrolled-H ≡ unrolled (whole volume), same weights, to 1e-5 relative."""
    err = _compare(case)
    assert max(err.values()) < TOL, err


@pytest.mark.parametrize("case", ["padded-convolution", "mri-complex-map"])
def test_wrong_h_makes_them_differ(case):
    """H scaled by 1.1: every comparison above fails, so the equalities are not vacuous."""
    err = _compare(case, scale=1.1)
    assert min(err.values()) > 100 * TOL, err
    assert math.isfinite(max(err.values()))
