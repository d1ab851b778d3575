"""3D MRI on readout slabs: a (ky, kz) mask makes AᵀA act slice by slice along the readout, so a
partitioned patch's exact S AᵀA Sᵀ, Ã and Ãᵀ need only the patch's readout slices. Every fast
path is compared with the full-volume one it replaces."""

from __future__ import annotations

import pytest
import torch

from unroll3d.normal import DiagCirculantWrapper
from unroll3d.partition import PartitionedPhysics, PartitionedReconstructor, embed_patch
from unroll3d.physics import MultiCoilMRI3D, partial_kz_mask, poisson_disc_mask

D, H, W = 7, 10, 9  # odd sizes: the centring shifts differ from their inverses


class _FullVolumeMRI(MultiCoilMRI3D):
    """The same operator without the slab operators: PartitionedPhysics takes the full-volume
    path (the reference)."""

    readout_slabs = False


def _relerr(a, b):
    return float((a - b).norm() / b.norm())


def _mri(gen, n_coils=3, batch_maps=1, cls=MultiCoilMRI3D, dtype=torch.float32):
    mask = poisson_disc_mask((H, W), acceleration=3, calib=1, seed=2) * partial_kz_mask((H, W), 0.8)
    shape = (batch_maps, n_coils, D, H, W) if batch_maps > 1 else (n_coils, D, H, W)
    maps = torch.randn(shape, dtype=torch.complex64, generator=gen)
    return cls(mask, maps, (D, H, W)), mask, maps


def _pair(gen, **kw):
    fast, mask, maps = _mri(gen, **kw)
    return fast, _FullVolumeMRI(mask, maps, (D, H, W))


@pytest.mark.parametrize("first,length", [(0, 1), (0, 3), (2, 4), (4, 3), (0, D)])
def test_slab_operators_equal_the_full_operator(gen, first, length):
    physics, _, _ = _mri(gen, n_coils=4, batch_maps=2)
    assert physics.readout_mask() is not None
    x = torch.zeros(2, 2, D, H, W)
    x[:, :, first : first + length] = torch.randn(2, 2, length, H, W, generator=gen)
    slab = x[:, :, first : first + length]
    full_normal = physics.A_adjoint(physics.A(x))
    assert (
        _relerr(physics.normal_slab(slab, first), full_normal[:, :, first : first + length]) < 1e-5
    )
    # AᵀA of a slab-supported x is zero off the slab (to round-off): the exactness itself
    off = full_normal.clone()
    off[:, :, first : first + length] = 0
    assert float(off.norm()) < 1e-5 * float(full_normal.norm())
    assert _relerr(physics.A_slab(slab, first), physics.A(x)) < 1e-5
    y = torch.randn(2, 2, 4, D, H, W, generator=gen)
    ref = physics.A_adjoint(y)[:, :, first : first + length]
    assert _relerr(physics.A_adjoint_slab(y, first, length), ref) < 1e-5


def test_a_mask_that_varies_along_the_readout_has_no_slab_normal(gen):
    """A kx-dependent mask does not commute with the readout FFT: no slab normal (the partitioned
    patch falls back to the full volume), while A and Aᵀ on slabs stay exact."""
    mask = (torch.rand(D, H, W, generator=gen) > 0.5).float()
    maps = torch.randn(2, D, H, W, dtype=torch.complex64, generator=gen)
    physics = MultiCoilMRI3D(mask, maps, (D, H, W))
    assert physics.readout_mask() is None
    assert physics.normal_slab(torch.randn(1, 2, 2, H, W, generator=gen), 1) is None
    x = torch.zeros(1, 2, D, H, W)
    x[:, :, 1:3] = torch.randn(1, 2, 2, H, W, generator=gen)
    full = physics.A_adjoint(physics.A(x))
    assert float(full[:, :, 3:].norm()) > 0.01 * float(full.norm())  # really not separable
    assert _relerr(physics.A_slab(x[:, :, 1:3], 1), physics.A(x)) < 1e-5
    ref = _FullVolumeMRI(mask, maps, (D, H, W))
    starts, patch = [(1, 2, 3), (0, 0, 0)], (2, 5, 4)
    y = physics.A(torch.randn(1, 2, D, H, W, generator=gen))
    ctx = torch.randn(1, 2, D, H, W, generator=gen)
    fast = PartitionedPhysics(physics, (2, D, H, W), starts, patch, y, ctx)
    slow = PartitionedPhysics(ref, (2, D, H, W), starts, patch, y, ctx)
    u = torch.randn(2, 2, *patch, generator=gen)
    assert _relerr(fast.A_adjoint_A(u), slow.A_adjoint_A(u)) < 1e-5
    # an in-place update of the mask is seen (the check is cached per tensor and version)
    physics.mask.copy_(physics.mask[:, :, :1].expand_as(physics.mask).clone())
    assert physics.readout_mask() is not None


def test_a_kykz_mask_needs_no_check_and_a_new_mask_is_checked(gen, monkeypatch):
    """A mask given as (H, W) is the same on every slice by construction: no comparison (a host
    sync on a GPU) per freshly drawn mask; a mask set later is compared once."""
    physics, mask, _ = _mri(gen)
    calls = []
    real_equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: calls.append(1) or real_equal(a, b))
    assert physics.readout_mask() is not None and not calls
    varying = physics.mask.clone()
    varying[:, :, 0] = 1 - varying[:, :, 0]
    physics.update_parameters(mask=varying)
    assert physics.readout_mask() is None and physics.readout_mask() is None
    assert len(calls) == 1


PATCHES = [
    ((0, 0, 0), (3, 4, 5)),  # corner
    ((D - 3, H - 4, W - 5), (3, 4, 5)),  # opposite corner
    ((2, 3, 1), (1, 6, 8)),  # one readout slice
    ((0, 0, 0), (D, H, W)),  # the whole volume
    ((3, 0, 0), (4, H, W)),  # a readout slab across the whole ky-kz plane
]


@pytest.mark.parametrize("start,patch", PATCHES)
@pytest.mark.parametrize("batch_maps", [1, 2])
def test_partitioned_mri_fast_path_equals_full_volume(gen, start, patch, batch_maps):
    fast, slow = _pair(gen, n_coils=4, batch_maps=batch_maps)
    b = 2
    x = torch.randn(b, 2, D, H, W, generator=gen)
    y = slow.A(x) + 0.01 * torch.randn(b, 2, 4, D, H, W, generator=gen)
    ctx = torch.randn(b, 2, D, H, W, generator=gen)
    pf = PartitionedPhysics(fast, (2, D, H, W), start, patch, y, ctx, x_init=x)
    ps = PartitionedPhysics(slow, (2, D, H, W), start, patch, y, ctx, x_init=x)
    u = torch.randn(b, 2, *patch, generator=gen)
    v = torch.randn_like(y)
    assert _relerr(pf.A_adjoint_A(u), ps.A_adjoint_A(u)) < 1e-5
    assert _relerr(pf.A(u), ps.A(u)) < 1e-5
    assert _relerr(pf.A_adjoint(v), ps.A_adjoint(v)) < 1e-5
    assert _relerr(pf.A_adjoint(pf.y_tilde), ps.A_adjoint(ps.y_tilde)) < 1e-5
    # adjointness and ÃᵀÃ = Ãᵀ Ã of the fast operators
    lhs = (pf.A(u).double() * v.double()).sum()
    rhs = (u.double() * pf.A_adjoint(v).double()).sum()
    assert float((lhs - rhs).abs()) < 1e-5 * float(pf.A(u).norm() * v.norm())
    assert _relerr(pf.A_adjoint_A(u), pf.A_adjoint(pf.A(u))) < 1e-5


def test_batched_patch_positions_use_each_patch_own_slab(gen):
    fast, slow = _pair(gen, n_coils=3, batch_maps=2)
    starts, patch = [(0, 0, 0), (4, 6, 4), (2, 3, 2)], (3, 4, 5)
    x = torch.randn(2, 2, D, H, W, generator=gen)
    y, ctx = slow.A(x), torch.randn(2, 2, D, H, W, generator=gen)
    pf = PartitionedPhysics(fast, (2, D, H, W), starts, patch, y, ctx)
    ps = PartitionedPhysics(slow, (2, D, H, W), starts, patch, y, ctx)
    u = torch.randn(6, 2, *patch, generator=gen)
    assert _relerr(pf.A_adjoint_A(u), ps.A_adjoint_A(u)) < 1e-5
    assert _relerr(pf.A(u), ps.A(u)) < 1e-5
    assert _relerr(pf.A_adjoint(pf.y_tilde), ps.A_adjoint(ps.y_tilde)) < 1e-5
    assert _relerr(pf.A_adjoint(y), ps.A_adjoint(y)) < 1e-5  # one y for every patch


def test_fast_patch_operators_gradcheck(gen):
    """Double-precision gradcheck of Ã, Ãᵀ and ÃᵀÃ on the slab path (the backward of the
    graph-free operators is the adjoint, so this checks the slab adjoints exactly)."""
    physics, _, _ = _mri(gen, n_coils=2)
    x = torch.randn(1, 2, D, H, W, dtype=torch.float64, generator=gen)
    y = physics.A(x)
    pp = PartitionedPhysics(physics, (2, D, H, W), (3, 4, 6), (2, 3, 3), y, x)
    u = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(y.shape, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(pp.A_adjoint_A, (u,))
    assert torch.autograd.gradcheck(pp.A, (u,))
    assert torch.autograd.gradcheck(pp.A_adjoint, (v,), fast_mode=True)


def test_unrolled_training_pair_same_loss_and_gradients(gen):
    """A partitioned training step (K gradient steps with a learned step size and a small
    convolution) gives the same estimate and parameter gradients on both paths."""
    fast, slow = _pair(gen, n_coils=3)
    x = torch.randn(1, 2, D, H, W, generator=gen)
    y = slow.A(x)
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 2, 3, padding=1)
    eta = torch.nn.Parameter(torch.tensor(0.5))

    def base(y_tilde, physics, **_):
        z = physics.initial_reconstruction(y_tilde)
        aty = physics.A_adjoint(y_tilde)
        for _ in range(3):
            z = z - eta * (physics.A_adjoint_A(z) - aty)
            z = z + 0.1 * conv(z)
        return z

    out = []
    for physics in (fast, slow):
        rec = PartitionedReconstructor(base, (2, D, H, W), (3, 5, 4))
        est, tgt = rec.training_pair(y, physics, x, start=(4, 5, 0), x0=slow.A_adjoint(y))
        loss = (est - tgt).pow(2).mean()
        grads = torch.autograd.grad(loss, [eta, *conv.parameters()])
        out.append((est.detach(), grads))
    assert _relerr(out[0][0], out[1][0]) < 1e-5
    for gf, gs in zip(out[0][1], out[1][1], strict=True):
        assert _relerr(gf, gs) < 1e-4


def test_wrapped_physics_keeps_the_slab_path(gen):
    """Under DiagCirculantWrapper (the H variants) the patch's Ã, Ãᵀ and the exact normal used by
    the anchored step stay exact and take the slab path."""
    fast, slow = _pair(gen, n_coils=2)
    wf = DiagCirculantWrapper(fast, (2, D, H, W))
    ws = DiagCirculantWrapper(slow, (2, D, H, W))
    assert wf.readout_slabs and not ws.readout_slabs
    x = torch.randn(1, 2, D, H, W, generator=gen)
    start, patch = (1, 2, 3), (3, 4, 4)
    pf = PartitionedPhysics(wf, (2, D, H, W), start, patch, slow.A(x), x)
    ps = PartitionedPhysics(ws, (2, D, H, W), start, patch, slow.A(x), x)
    u = torch.randn(1, 2, *patch, generator=gen)
    assert _relerr(pf._normal(u), ps._normal(u)) < 1e-5
    assert _relerr(pf.A_adjoint(pf.y_tilde), ps.A_adjoint(ps.y_tilde)) < 1e-5
    slab = embed_patch(u, (0, 2, 3), (3, H, W))
    assert _relerr(wf.normal_slab(slab, 1), fast.normal_slab(slab, 1)) < 1e-7
