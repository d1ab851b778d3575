"""3D multi-coil MRI: masks, coil maps, adjointness and exactness."""

from __future__ import annotations

import math

import pytest
import torch

from unroll3d.physics import (
    MultiCoilMRI3D,
    estimate_coil_maps,
    kspace_scale,
    partial_kz_mask,
    poisson_disc_mask,
    rss_normalize,
)

D, H, W = 6, 20, 14  # odd-ish, tiny: readout D, (ky, kz) = (H, W)


def _smooth_maps(n_coils, shape, seed=0):
    """Smooth complex coil maps (Gaussian blobs around the volume, linear phases), RSS-normalised."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = shape
    z, y, x = torch.meshgrid(
        torch.linspace(-1, 1, d), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"
    )
    maps = []
    for c in range(n_coils):
        a = 2 * math.pi * c / n_coils
        cy, cx = 1.2 * math.cos(a), 1.2 * math.sin(a)
        mag = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 1.5)
        phase = 0.5 * torch.randn(3, generator=g)
        maps.append(mag * torch.exp(1j * (phase[0] * z + phase[1] * y + phase[2] * x)))
    return rss_normalize(torch.stack(maps)[None].to(torch.complex64))[0]


def _rel_adjoint_error(physics, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *physics.img_size), generator=g)
    y = torch.randn((2, 2, physics.n_coils, *physics.img_size[1:]), generator=g)
    ax, aty = physics.A(x), physics.A_adjoint(y)
    lhs, rhs = (ax.double() * y.double()).sum(), (x.double() * aty.double()).sum()
    return float((lhs - rhs).abs() / (ax.double().norm() * y.double().norm()))


@pytest.mark.parametrize("shape", [(218, 170), (20, 14), (33, 17)])
@pytest.mark.parametrize("acceleration", [5, 10])
def test_mask_acceleration_calib_and_seed(shape, acceleration):
    calib = 18 if shape[0] > 100 else 2
    if shape[0] > 100 and acceleration == 10:
        pytest.skip("one full-size mask is enough")
    mask = poisson_disc_mask(shape, acceleration, calib=calib, seed=3)
    assert mask.shape == shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    r = mask.numel() / mask.sum().item()
    assert abs(r - acceleration) <= 0.02 * acceleration, r
    ny, nz = shape
    assert mask[ny // 2, nz // 2] == 1
    assert mask[ny // 2 - calib : ny // 2 + calib + 1, nz // 2].all()  # calibration line
    assert torch.equal(mask, poisson_disc_mask(shape, acceleration, calib=calib, seed=3))
    assert not torch.equal(mask, poisson_disc_mask(shape, acceleration, calib=calib, seed=4))


def test_mask_density_decreases_outwards():
    mask = poisson_disc_mask((64, 48), 5, calib=4, seed=0)
    ky = (torch.arange(64) - 32)[:, None] / 32.0
    kz = (torch.arange(48) - 24)[None, :] / 24.0
    rho = (ky**2 + kz**2).sqrt()
    inner = mask[(rho > 0.2) & (rho < 0.5)].mean()
    outer = mask[rho > 0.8].mean()
    assert inner > 1.5 * outer


def test_mask_errors_and_partial_kz():
    with pytest.raises(ValueError, match="calibration region"):
        poisson_disc_mask((10, 10), 10, calib=4)
    pk = partial_kz_mask((8, 20), 0.85)
    assert pk[:, :17].all() and not pk[:, 17:].any()


@pytest.fixture(scope="module")
def maps():
    return _smooth_maps(4, (D, H, W))


@pytest.mark.parametrize("acceleration", [1, 4])
def test_adjointness(maps, acceleration):
    mask = poisson_disc_mask((H, W), acceleration, calib=2, seed=0) * partial_kz_mask((H, W))
    physics = MultiCoilMRI3D(mask, maps, (D, H, W))
    err = _rel_adjoint_error(physics)
    print(f"MRI R={acceleration}: relative adjointness error {err:.3e}")
    assert err < 1e-5


def test_full_sampling_exact_maps_is_identity(maps):
    physics = MultiCoilMRI3D(torch.ones(H, W), maps, (2, D, H, W))
    assert physics.acceleration == 1.0
    x = torch.randn((2, 2, D, H, W), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(physics.A_adjoint_A(x), x, atol=1e-5)
    assert torch.allclose(physics.zero_filled(physics.A(x)), x, atol=1e-5)
    # autograd's gradient of <Ax, w> is A^H w
    xg = x.clone().requires_grad_(True)
    w = torch.randn((2, 2, 4, D, H, W), generator=torch.Generator().manual_seed(2))
    (physics.A(xg) * w).sum().backward()
    assert torch.allclose(xg.grad, physics.A_adjoint(w), atol=1e-5)


def test_mask_broadcast_along_readout(maps):
    mask = poisson_disc_mask((H, W), 4, calib=2, seed=0)
    physics = MultiCoilMRI3D(mask, maps, (D, H, W))
    y = physics.A(torch.randn(1, 2, D, H, W))
    zero = mask == 0
    assert (y[..., zero] == 0).all()
    assert physics.acceleration == pytest.approx(4.0, rel=0.02)
    with pytest.raises(ValueError, match="mask must be"):
        MultiCoilMRI3D(torch.ones(H + 1, W), maps, (D, H, W))
    with pytest.raises(ValueError, match="complex"):
        MultiCoilMRI3D(mask, maps.real, (D, H, W))


def test_estimated_coil_maps(maps):
    """Maps estimated from the calibration centre are RSS-normalised and close to the truth
    inside a smooth positive object; the operator they define is then exact at R = 1."""
    z, y, x = torch.meshgrid(
        torch.linspace(-1, 1, D), torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij"
    )
    obj = torch.exp(-(y**2 + x**2) / 0.5) + 0.2
    xt = torch.stack([obj, torch.zeros_like(obj)])[None]
    mask = poisson_disc_mask((H, W), 3, calib=3, seed=0)
    truth = MultiCoilMRI3D(mask, maps, (D, H, W))
    est = estimate_coil_maps(truth.A(xt), calib=6)
    assert est.shape == (1, 4, D, H, W)
    assert torch.allclose((est.abs() ** 2).sum(1), torch.ones(1, D, H, W), atol=1e-4)
    inner = (y.abs() < 0.6) & (x.abs() < 0.6)  # away from the periodic FFT border
    rel = float((est[0] - maps)[:, inner].abs().norm() / maps[:, inner].abs().norm())
    assert rel < 0.08, rel
    full = MultiCoilMRI3D(torch.ones(H, W), est, (D, H, W))
    xr = torch.randn(1, 2, D, H, W)
    assert torch.allclose(full.A_adjoint_A(xr), xr, atol=1e-4)
    s = kspace_scale(truth.A(xt), truth)
    assert s > 0


def test_complex_layout_is_deepinvs():
    """The vmap-able real/complex conversions give deepinv's values bit for bit."""
    from deepinv.utils.mixins import MRIMixin

    x = torch.randn((2, 2, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    z = MultiCoilMRI3D.to_torch_complex(x)
    assert torch.equal(z, MRIMixin.to_torch_complex(x))
    assert torch.equal(MultiCoilMRI3D.from_torch_complex(z), MRIMixin.from_torch_complex(z))
