"""3D MRI patch problems get Ãᵀỹ on the readout slab, without forming ỹ: with a (ky, kz) mask
``Ãᵀỹ = S Aᵀy − S AᵀA S⊥ᵀS⊥x`` and AᵀA acts per readout slice, so only the context's slab slices
enter. Every value is compared with the old path (ỹ formed by a global forward, then Ãᵀ)."""

from __future__ import annotations

import pytest
import torch

from unroll3d.models import PostProcess, UnrolledPGD
from unroll3d.partition import PartitionedPhysics, PartitionedReconstructor, crop_patch, embed_patch
from unroll3d.physics import MultiCoilMRI3D, partial_kz_mask, poisson_disc_mask

D, H, W = 7, 10, 9  # odd sizes: the centring shifts differ from their inverses
SIZE = (2, D, H, W)


class _FullVolumeMRI(MultiCoilMRI3D):
    """The same operator without the slab operators: the old path (ỹ, then Ãᵀỹ)."""

    readout_slabs = False


def _relerr(a, b):
    return float((a - b).norm() / b.norm())


def _pair(gen, n_coils=4, batch_maps=1, mask=None):
    if mask is None:
        mask = poisson_disc_mask((H, W), 3, calib=1, seed=2) * partial_kz_mask((H, W), 0.8)
    shape = (batch_maps, n_coils, D, H, W) if batch_maps > 1 else (n_coils, D, H, W)
    maps = torch.randn(shape, dtype=torch.complex64, generator=gen)  # complex, not normalised
    return MultiCoilMRI3D(mask, maps, (D, H, W)), _FullVolumeMRI(mask, maps, (D, H, W))


def _data(gen, slow, batch):
    x = torch.randn(batch, 2, D, H, W, generator=gen)
    y = slow.A(x) + 0.01 * torch.randn(batch, 2, slow.n_coils, D, H, W, generator=gen)
    return x, y, torch.randn(batch, 2, D, H, W, generator=gen)


PATCHES = [
    ((0, 0, 0), (3, 4, 5)),  # corner
    ((D - 3, H - 4, W - 5), (3, 4, 5)),  # opposite corner
    ((2, 3, 1), (1, 6, 8)),  # one readout slice
    ((0, 0, 0), (D, H, W)),  # the whole volume: no context at all
    ((3, 0, 0), (4, H, W)),  # a readout slab across the whole ky-kz plane
    ((1, 5, 0), (5, 5, W)),  # an edge in ky, the whole kz
]


@pytest.mark.parametrize("start,patch", PATCHES)
@pytest.mark.parametrize("batch_maps", [1, 2])
def test_back_projection_on_the_slab_equals_the_old_one(gen, start, patch, batch_maps):
    fast, slow = _pair(gen, batch_maps=batch_maps)
    x, y, ctx = _data(gen, slow, batch=2)
    pf = PartitionedPhysics(fast, SIZE, start, patch, y, ctx, x_init=x)
    ps = PartitionedPhysics(slow, SIZE, start, patch, y, ctx, x_init=x)
    assert pf.context_on_slabs and not ps.context_on_slabs
    b = pf.A_adjoint(None)
    assert pf._buffers["y_tilde"] is None  # Ãᵀỹ came without ỹ
    assert _relerr(b, ps.A_adjoint(ps.y_tilde)) < 1e-5
    assert torch.equal(ps.A_adjoint(None), ps.A_adjoint(ps.y_tilde))  # old path: the same call
    assert torch.equal(pf.y_tilde, ps.y_tilde)  # ỹ on demand: the old computation
    assert torch.equal(pf.A_adjoint(None), b)  # forming ỹ does not change Ãᵀỹ
    assert torch.equal(pf.initial_reconstruction(None), ps.initial_reconstruction(ps.y_tilde))


def test_batched_patch_positions(gen):
    fast, slow = _pair(gen, n_coils=3, batch_maps=2)
    starts, patch = [(0, 0, 0), (4, 6, 4), (2, 3, 2), (4, 0, 4)], (3, 4, 5)
    _, y, ctx = _data(gen, slow, batch=2)
    pf = PartitionedPhysics(fast, SIZE, starts, patch, y, ctx)
    ps = PartitionedPhysics(slow, SIZE, starts, patch, y, ctx)
    assert _relerr(pf.A_adjoint(None), ps.A_adjoint(ps.y_tilde)) < 1e-5
    for i in range(len(starts)):  # each patch against its own single-patch problem
        one = PartitionedPhysics(slow, SIZE, starts[i], patch, y, ctx)
        assert _relerr(pf.A_adjoint(None)[2 * i : 2 * i + 2], one.A_adjoint(one.y_tilde)) < 1e-5


def test_a_kx_dependent_mask_keeps_the_old_path(gen):
    """A mask that varies along the readout is not separable: ỹ is formed (on first use) as
    before and Ãᵀỹ is Ãᵀ of it, bit for bit."""
    mask = (torch.rand(D, H, W, generator=gen) > 0.5).float()
    fast, slow = _pair(gen, n_coils=2, mask=mask)
    x, y, ctx = _data(gen, slow, batch=1)
    pf = PartitionedPhysics(fast, SIZE, (1, 2, 3), (3, 4, 4), y, ctx, x_init=x)
    ps = PartitionedPhysics(slow, SIZE, (1, 2, 3), (3, 4, 4), y, ctx, x_init=x)
    assert not pf.context_on_slabs and pf._back_projection is None
    assert torch.equal(pf.y_tilde, ps.y_tilde)
    assert torch.equal(pf.A_adjoint(None), pf.A_adjoint(pf.y_tilde))
    assert _relerr(pf.A_adjoint(None), ps.A_adjoint(ps.y_tilde)) < 1e-5


def test_state_dict_and_dtype_on_the_slab_path(gen):
    """ỹ travels in the state dict (formed for it); a loaded ỹ is the data Ãᵀỹ then comes from;
    ``clone()`` carries the sources of ỹ."""
    fast, slow = _pair(gen, n_coils=2)
    x, y, ctx = _data(gen, slow, batch=1)
    start, patch = (2, 1, 3), (3, 4, 4)
    pf = PartitionedPhysics(fast, SIZE, start, patch, y, ctx, x_init=x)
    other = PartitionedPhysics(fast, SIZE, start, patch, y, x, x_init=x)
    assert _relerr(other.A_adjoint(None), pf.A_adjoint(None)) > 1e-2
    state = pf.state_dict()
    assert torch.equal(state["y_tilde"], pf.y_tilde)
    other.load_state_dict(state)
    assert torch.equal(other.y_tilde, pf.y_tilde)
    assert torch.equal(other.A_adjoint(None), pf.A_adjoint(pf.y_tilde))
    lazy = PartitionedPhysics(fast, SIZE, start, patch, y, ctx, x_init=x)
    twin = lazy.clone()
    assert twin._buffers["y_tilde"] is None
    assert torch.equal(twin.y_tilde, pf.y_tilde) and torch.equal(
        twin.A_adjoint(None), pf.A_adjoint(None)
    )


class _ScaledExact:
    """A stand-in for H (a PatchNormal): ``restrict`` gives ``0.8 · S AᵀA Sᵀ``."""

    def __init__(self, physics):
        self.physics = physics

    def restrict(self, start, patch_size):
        def apply(u):
            full = embed_patch(u, start, (D, H, W))
            return 0.8 * crop_patch(self.physics.A_adjoint(self.physics.A(full)), start, patch_size)

        return apply


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("anchored", [False, True])
@pytest.mark.parametrize("start", [(0, 0, 0), (3, 5, 4), (4, 5, 5)])
def test_unrolled_training_pair_same_estimate_and_gradients(gen, monkeypatch, start, anchored):
    """An unrolled training pair (and the anchored H variant's) gives the same estimate and
    parameter gradients on both paths, and the slab path never forms ỹ."""
    fast, slow = _pair(gen, n_coils=3)
    x, y, _ = _data(gen, slow, batch=1)
    torch.manual_seed(0)
    model = UnrolledPGD(K=2, channels=2, nc=(4, 4, 4, 4), nb=1)
    formed = []
    real = PartitionedPhysics._context_corrected
    monkeypatch.setattr(
        PartitionedPhysics, "_context_corrected", lambda s, *a: formed.append(1) or real(s, *a)
    )
    out = []
    for physics in (fast, slow):
        formed.clear()
        rec = PartitionedReconstructor(model, SIZE, (3, 5, 4))
        normal = _ScaledExact(slow) if anchored else None
        est, tgt = rec.training_pair(
            y, physics, x, start=start, x0=slow.A_adjoint(y), normal=normal, anchored=anchored
        )
        out.append((est.detach(), _grads(model, (est - tgt).pow(2).mean()), len(formed)))
    (ef, gf, nf), (es, gs, ns) = out
    assert nf == 0 and ns == 1
    assert _relerr(ef, es) < 1e-5
    for a, b in zip(gf, gs, strict=True):
        assert _relerr(a, b) < 1e-4


def test_postprocess_and_unflagged_bases(gen):
    """Post-processing reads no ỹ at all; a base without ``reads_y_via_adjoint`` still gets ỹ
    (formed on demand), so the old contract holds."""
    fast, slow = _pair(gen, n_coils=2)
    x, y, _ = _data(gen, slow, batch=1)
    torch.manual_seed(0)
    post = PostProcess(channels=2, nc=(4, 4, 4, 4), nb=1)
    rf = PartitionedReconstructor(post, SIZE, (3, 5, 4))
    rs = PartitionedReconstructor(post, SIZE, (3, 5, 4))
    x0 = slow.A_adjoint(y)
    ef, _ = rf.training_pair(y, fast, x, start=(2, 1, 3), x0=x0)
    es, _ = rs.training_pair(y, slow, x, start=(2, 1, 3), x0=x0)
    assert torch.equal(ef, es)
    seen = []

    def base(y_tilde, physics, **_):
        seen.append(y_tilde)
        return physics.A_adjoint(y_tilde)

    est, _ = PartitionedReconstructor(base, SIZE, (3, 5, 4)).training_pair(
        y, fast, x, start=(2, 1, 3), x0=x0
    )
    ref = PartitionedPhysics(slow, SIZE, (2, 1, 3), (3, 5, 4), y, x)
    assert isinstance(seen[0], torch.Tensor) and torch.equal(seen[0], ref.y_tilde)
    assert _relerr(est, ref.A_adjoint(ref.y_tilde)) < 1e-5


def test_patchwise_inference_same_volume(gen):
    """A whole reconstruction (first pass and refinement, several patches per batch) is the same
    volume on both paths."""
    fast, slow = _pair(gen, n_coils=2)
    _, y, _ = _data(gen, slow, batch=1)
    torch.manual_seed(0)
    model = UnrolledPGD(K=2, channels=2, nc=(4, 4, 4, 4), nb=1)
    vols = []
    for physics in (fast, slow):
        rec = PartitionedReconstructor(model, SIZE, (4, 6, 5), patch_batch=3, progress=False)
        vols.append(rec(y, physics))
    assert _relerr(vols[0], vols[1]) < 1e-5


@pytest.mark.parametrize("start", [(0, 0, 0), (2, 3, 1), (D - 3, H - 4, W - 5)])
def test_residual_data_on_the_slab(gen, start):
    """A parked sample's residual ``y − A x`` with the ground truth's patch alone
    (``y_is_residual``): Ãᵀỹ = S Aᵀ(y − A x) + S AᵀA Sᵀ S x on the slab, the old Ãᵀỹ."""
    fast, slow = _pair(gen, n_coils=3, batch_maps=2)
    x, y, _ = _data(gen, slow, batch=2)
    patch = (3, 4, 5)
    only = embed_patch(crop_patch(x, start, patch), start, (D, H, W))
    pf = PartitionedPhysics(fast, SIZE, start, patch, y - slow.A(x), only, y_is_residual=True)
    ps = PartitionedPhysics(slow, SIZE, start, patch, y, x)
    assert pf.context_on_slabs
    assert _relerr(pf.A_adjoint(None), ps.A_adjoint(ps.y_tilde)) < 1e-5
    assert pf._buffers["y_tilde"] is None
    assert _relerr(pf.y_tilde, ps.y_tilde) < 1e-5


@pytest.mark.parametrize("columns", ["sampled", "all"])
@pytest.mark.parametrize("kind", ["kykz", "kx-dependent", "weighted"])
def test_slab_adjoint_restricted_idft_equals_the_full_adjoint(gen, monkeypatch, columns, kind):
    """S Aᵀy on a slab (an (L, D) inverse DFT on the sampled (ky, kz) columns, or on every column
    as off the CPU) is the full adjoint's slab, for any mask; a new mask is seen."""
    if columns == "all":
        monkeypatch.setattr(MultiCoilMRI3D, "_sampled_columns", lambda self: None)
    kykz = poisson_disc_mask((H, W), 3, calib=1, seed=2) * partial_kz_mask((H, W), 0.8)
    if kind == "kykz":
        mask = kykz
    elif kind == "kx-dependent":
        mask = kykz * (torch.rand(D, H, W, generator=gen) > 0.4).float()
    else:
        mask = kykz * torch.rand(H, W, generator=gen)
    maps = torch.randn(2, 3, D, H, W, dtype=torch.complex64, generator=gen)
    physics = MultiCoilMRI3D(mask, maps, (D, H, W))
    y = torch.randn(2, 2, 3, D, H, W, generator=gen)
    for first, length in [(0, 2), (3, 4), (D - 1, 1), (0, D)]:
        ref = physics.A_adjoint(y)[:, :, first : first + length]
        assert _relerr(physics.A_adjoint_slab(y, first, length), ref) < 1e-5
    physics.update_parameters(mask=torch.ones(H, W)[None].expand(D, H, W).clone())
    assert _relerr(physics.A_adjoint_slab(y, 2, 3), physics.A_adjoint(y)[:, :, 2:5]) < 1e-5


@pytest.mark.parametrize("variant", ["partition", "postproc"])
def test_the_engine_training_pair_forms_no_y_tilde(gen, monkeypatch, variant):
    """The training loop's pair (``estimate_pair``) for an MRI partitioned variant never runs
    the global forward of ỹ, and gives the old path's estimate."""
    from types import SimpleNamespace

    from unroll3d.engine.partitioning import estimate_pair
    from unroll3d.variants import variant_spec

    fast, slow = _pair(gen, n_coils=2)
    x, y, _ = _data(gen, slow, batch=1)
    formed = []
    real = PartitionedPhysics._context_corrected
    monkeypatch.setattr(
        PartitionedPhysics, "_context_corrected", lambda s, *a: formed.append(1) or real(s, *a)
    )
    torch.manual_seed(0)
    if variant == "partition":
        model = UnrolledPGD(K=2, channels=2, nc=(4, 4, 4, 4), nb=1)
    else:
        model = PostProcess(channels=2, nc=(4, 4, 4, 4), nb=1)
    out = []
    for physics in (fast, slow):
        formed.clear()
        rec = PartitionedReconstructor(model, SIZE, (3, 5, 4))
        sample = SimpleNamespace(x=x, y=y)
        gen_draw = torch.Generator().manual_seed(3)
        est, _ = estimate_pair(
            model, variant_spec(variant), sample, physics, slow.A_adjoint(y), gen_draw, rec
        )
        out.append((est.detach(), len(formed)))
    # the full-volume path forms ỹ once for the unrolled network (Ãᵀỹ), never for post-processing
    assert out[0][1] == 0 and out[1][1] == (1 if variant == "partition" else 0)
    assert _relerr(out[0][0], out[1][0]) < 1e-5
