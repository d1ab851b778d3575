"""Models: the unrolled PGD maths, DRUNet padding, the variant registry, the physics contract."""

from __future__ import annotations

import pytest
import torch
from deepinv.physics import LinearPhysics
from toys import TINY, toy_sample

from unroll3d.models import (
    VARIANTS,
    Adjoint,
    Analytical,
    DRUNet3D,
    DRUNetSlices,
    PostProcess,
    TVReconstructor,
    UnrolledPGD,
    ZeroFilledRSS,
    apply_tiled,
    build_variant,
    variant_spec,
)
from unroll3d.models.inr import INRReconstructor
from unroll3d.models.pnp import PnPAlphaPGD
from unroll3d.physics import initial_reconstruction

torch.set_num_threads(1)


class CountingPhysics(LinearPhysics):
    """Wraps a physics and counts calls to the contract's methods."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = {"A": 0, "A_adjoint": 0, "A_adjoint_A": 0, "A_dagger": 0}

    def A(self, x, **kw):
        self.calls["A"] += 1
        return self.inner.A(x)

    def A_adjoint(self, y, **kw):
        self.calls["A_adjoint"] += 1
        return self.inner.A_adjoint(y)

    def A_adjoint_A(self, x, **kw):
        self.calls["A_adjoint_A"] += 1
        return self.inner.A_adjoint(self.inner.A(x))

    def A_dagger(self, y, **kw):
        self.calls["A_dagger"] += 1
        return self.inner.A_dagger(y)


# ------------------------------------------------------------------------------------ tests


def test_toy_physics_adjoint():
    s = toy_sample()
    u = torch.randn_like(s.x)
    v = torch.randn_like(s.y)
    lhs = (s.physics.A(u) * v).sum()
    rhs = (u * s.physics.A_adjoint(v)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8, 8), (5, 13, 10), (8, 17, 9)])
def test_drunet3d_pads_and_crops(shape):
    torch.manual_seed(0)
    net = DRUNet3D(2, TINY["channels"], TINY["blocks"]).eval()
    x = torch.randn(1, 2, *shape)
    with torch.no_grad():
        out = net(x, 0.1)
    assert out.shape == x.shape
    # the noise level is an input: changing it changes the output
    with torch.no_grad():
        out2 = net(x, 0.5)
    assert not torch.allclose(out, out2)


def test_drunet_default_size_matches_paper():
    # docs/paper-notes.md §4.2: 96.5 M parameters with default widths and a noise-map channel, 1 channel
    net = DRUNet3D(1)
    assert sum(p.numel() for p in net.parameters()) == 96_539_712


def test_unrolled_matches_hand_written_pgd():
    """With an identity denoiser the network is exactly K gradient steps from A†y."""
    s = toy_sample(shape=(8, 8, 8))
    model = UnrolledPGD(K=3, channels=1, nc=TINY["channels"], nb=1, lipschitz=s.meta["op_norm_sq"])
    model._denoise = lambda x, sigma: x  # identity prior
    with torch.no_grad():
        out = model(s.y, s.physics)
    x = initial_reconstruction(s.physics, s.y)
    eta = 1.0 / s.meta["op_norm_sq"]
    for _ in range(3):
        x = x - eta * s.physics.A_adjoint(s.physics.A(x) - s.y)
    assert torch.allclose(out, x, atol=1e-6)
    assert torch.allclose(model.step_sizes, torch.full((3,), eta))


def test_unrolled_uses_only_the_contract():
    """A†y once, Aᵀy once, AᵀA once per iteration and never A."""
    s = toy_sample(shape=(8, 8, 8))
    phys = CountingPhysics(s.physics)
    model = UnrolledPGD(K=4, channels=1, nc=TINY["channels"], nb=1)
    with torch.no_grad():
        model(s.y, phys)
    assert phys.calls == {"A": 0, "A_adjoint": 1, "A_adjoint_A": 4, "A_dagger": 1}
    phys.calls = dict.fromkeys(phys.calls, 0)
    with torch.no_grad():
        model(s.y, phys, x_init=torch.zeros_like(s.x))
    assert phys.calls["A_dagger"] == 0


def test_step_and_sigma_positive_and_learnable():
    s = toy_sample(shape=(8, 8, 8))
    model = UnrolledPGD(K=2, channels=1, nc=TINY["channels"], nb=1)
    loss = ((model(s.y, s.physics) - s.x) ** 2).mean()
    loss.backward()
    assert model.step_raw.grad is not None and model.step_raw.grad.abs().sum() > 0
    assert model.sigma_raw.grad is not None and model.sigma_raw.grad.abs().sum() > 0
    with torch.no_grad():
        model.step_raw.fill_(-50.0)
    assert (model.step_sizes > 0).all() and (model.sigmas > 0).all()


def test_mri_two_channels():
    s = toy_sample(shape=(8, 8, 8), channels=2)
    model = build_variant("unrolled", "mri", {"model": TINY, "mri": {"K": 2}})
    assert model.K == 2
    with torch.no_grad():
        assert model(s.y, s.physics).shape == (1, 2, 8, 8, 8)


def test_apply_tiled_identity_and_grid():
    x = torch.randn(1, 1, 9, 12, 7)
    out = apply_tiled(lambda v: v * 2, x, (4, 8, 8))
    assert torch.allclose(out, 2 * x)


def test_registry_builds_each_variant():
    config = {"model": TINY, "cbct": {"K": 2}, "train": {"tv_grid": [0.01]}}
    kinds = {
        "fdk": Analytical,
        "adjoint": Adjoint,
        "tv": TVReconstructor,
        "postproc": PostProcess,
        "postproc2d": PostProcess,
        "unrolled": UnrolledPGD,
        "unrolled-H": UnrolledPGD,
        "partition": UnrolledPGD,
        "partition-H": UnrolledPGD,
        "partition-Ha": UnrolledPGD,
        "pnp": PnPAlphaPGD,
        "inr": INRReconstructor,
    }
    pretrained = {"dpir"}  # built only with a checked weights file (tests/test_dpir.py)
    assert set(kinds) | pretrained == set(VARIANTS)
    for name, cls in kinds.items():
        assert isinstance(build_variant(name, "cbct", config), cls)
    with pytest.raises(ValueError, match="weights not available"):
        build_variant("dpir", "cbct", config)
    assert isinstance(build_variant("fdk", "mri", config), ZeroFilledRSS)  # Table 2's row
    assert isinstance(build_variant("postproc2d", "cbct", config).denoiser, DRUNetSlices)
    assert isinstance(build_variant("postproc", "cbct", config).denoiser, DRUNet3D)
    assert variant_spec("partition-H").partition and variant_spec("partition-H").use_H
    assert not variant_spec("unrolled").partition
    with pytest.raises(ValueError, match="unknown variant"):
        build_variant("nope", "cbct", config)


def test_tv_improves_on_x0():
    s = toy_sample(shape=(12, 12, 12), noise=0.05)
    tv = TVReconstructor(alpha=0.02, lipschitz=s.meta["op_norm_sq"], iters=30, inner=10)
    x0 = initial_reconstruction(s.physics, s.y)
    out = tv(s.y, s.physics)
    err = lambda v: float(((v - s.x) ** 2).mean())  # noqa: E731
    assert err(out) < err(x0)


def test_postproc_on_x0():
    s = toy_sample(shape=(8, 8, 8))
    phys = CountingPhysics(s.physics)
    model = PostProcess(1, TINY["channels"], 1)
    with torch.no_grad():
        out = model(s.y, phys)
    assert out.shape == s.x.shape
    assert phys.calls == {"A": 0, "A_adjoint": 0, "A_adjoint_A": 0, "A_dagger": 1}


def _saved_bytes_and_grads(model, s):
    """Bytes the autograd graph keeps for backward during one forward (saved-tensor hooks), and
    the parameter gradients of a squared-error loss."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(s.y, s.physics)
    loss = ((out - s.x) ** 2).mean()
    loss.backward()
    return sum(saved), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("K", [2, 4])
def test_checkpointed_iterations_same_gradients_one_iteration_of_memory(K):
    """With `checkpoint` the gradients equal the plain ones (1e-5), and the
    activations kept for backward no longer grow with K: plain keeps K iterations' worth,
    checkpointed only each iteration's input (here < 1/K of plain + one volume per step)."""
    s = toy_sample(shape=(16, 16, 16))
    torch.manual_seed(0)
    plain = UnrolledPGD(K=K, channels=1, nc=TINY["channels"], nb=1, lipschitz=s.meta["op_norm_sq"])
    ckpt = UnrolledPGD(
        K=K, channels=1, nc=TINY["channels"], nb=1, checkpoint=True, lipschitz=s.meta["op_norm_sq"]
    )
    ckpt.load_state_dict(plain.state_dict())
    bytes_plain, g_plain = _saved_bytes_and_grads(plain, s)
    bytes_ckpt, g_ckpt = _saved_bytes_and_grads(ckpt, s)
    for a, b in zip(g_plain, g_ckpt, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    volume = s.x.numel() * 4
    assert bytes_ckpt <= 4 * K * volume  # inputs (x, Aᵀy) of each iteration, not activations
    assert bytes_plain > 10 * bytes_ckpt
    with torch.no_grad():  # inference is unchanged
        assert torch.equal(plain(s.y, s.physics), ckpt(s.y, s.physics))


def test_saved_activations_of_plain_unrolling_grow_linearly_in_K():
    """The estimate behind the MRI memory numbers: K iterations keep K times one iteration."""
    s = toy_sample(shape=(16, 16, 16))
    sizes = {}
    for K in (1, 2, 4):
        torch.manual_seed(0)
        m = UnrolledPGD(K=K, channels=1, nc=TINY["channels"], nb=1)
        sizes[K] = _saved_bytes_and_grads(m, s)[0]
    per_iteration = sizes[2] - sizes[1]
    assert per_iteration > 0.5 * sizes[1]
    assert sizes[4] - sizes[2] == pytest.approx(2 * per_iteration, rel=0.02)


def test_checkpoint_mode_picks_the_full_volume_variants():
    from unroll3d.models import build_variant

    cfg = {
        "cbct": {"K": 2},
        "model": {"channels": TINY["channels"], "blocks": 1},
        "train": {"checkpoint_unrolled": "full-volume"},
    }
    picked = {
        v: build_variant(v, "cbct", cfg).checkpoint
        for v in ("unrolled", "unrolled-H", "partition", "partition-H")
    }
    assert picked == {
        "unrolled": True,
        "unrolled-H": True,
        "partition": False,
        "partition-H": False,
    }
    cfg["train"]["checkpoint_unrolled"] = "none"
    assert not build_variant("unrolled", "cbct", cfg).checkpoint


def test_zero_filled_rss_is_the_root_sum_of_squares_of_the_coil_images():
    """The classical MRI row. Fully sampled, with RSS-normalised coil maps, it returns
    |x|; undersampled, it is √Σ_c |F⁻¹ M y_c|² computed by hand, and differs from |Aᴴy|."""
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask, rss_normalize

    g = torch.Generator().manual_seed(0)
    shape = (6, 8, 10)
    maps = rss_normalize(torch.randn((3, *shape), dtype=torch.complex64, generator=g)[None])[0]
    x = torch.randn((1, 2, *shape), generator=g)
    mag = x.square().sum(1).sqrt()
    full = MultiCoilMRI3D(torch.ones(8, 10), maps, shape)
    out = ZeroFilledRSS()(full.A(x), full)
    assert out.shape == x.shape and torch.all(out[:, 1] == 0)
    assert torch.allclose(out[:, 0], mag, atol=1e-5)
    mask = poisson_disc_mask((8, 10), 3, calib=2, seed=0)
    under = MultiCoilMRI3D(mask, maps, shape)
    y = under.A(x)
    # each coil image by hand: the single-coil operator with a unit map, adjoint of that coil's data
    one = MultiCoilMRI3D(mask, torch.ones((1, *shape), dtype=torch.complex64), shape)
    coils = [one.A_adjoint(y[:, :, c : c + 1]) for c in range(3)]
    by_hand = sum(c.square().sum(1) for c in coils).sqrt()
    got = ZeroFilledRSS()(y, under)[:, 0]
    assert torch.allclose(got, by_hand, atol=1e-5)
    aty = Adjoint()(y, under)
    assert not torch.allclose(got, aty.square().sum(1).sqrt(), atol=1e-3)  # RSS ≠ |Aᴴy|


@pytest.mark.parametrize(("channels", "shape"), [(1, (5, 12, 9)), (2, (3, 16, 16))])
def test_drunet_slices_keeps_shapes_and_slice_order(channels, shape):
    """DRUNet[2D] post-processing is the 2D network on each axial slice, in order: the
    volume output equals the network applied to every slice alone (odd sizes padded, cropped)."""
    torch.manual_seed(0)
    net = DRUNetSlices(channels, nc=TINY["channels"], nb=1).eval()
    x = torch.randn(2, channels, *shape)
    with torch.no_grad():
        out = net(x, 0.1)
        assert out.shape == x.shape
        for d in (0, shape[0] - 1):
            alone = net(x[:, :, d : d + 1], 0.1)[:, :, 0]
            assert torch.allclose(out[:, :, d], alone, atol=1e-5)
        # a change in one slice changes that slice's output only
        x2 = x.clone()
        x2[:, :, 1] += 1.0
        diff = (net(x2, 0.1) - out).abs().amax(dim=(0, 1, 3, 4))
    assert diff[1] > 0 and torch.all(diff[torch.arange(shape[0]) != 1] == 0)
