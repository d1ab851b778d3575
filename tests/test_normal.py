"""Tests of the diagonal-circulant normal-operator approximation (unroll3d.normal).

Measured relative errors ‖AᵀAx − Hx‖/‖AᵀAx‖ of fitted H (CPU, seed 0, lr 1e-2, cosine, batch 1):

* toy cone beam 32³, 30 views, source/axis 128, axis/detector 64 voxels (fan half-angle ≈ 7°),
  detector 40 × 64 at 1 voxel at the isocentre: held-out Gaussian probes 0.76 (impulse init)
  → 0.38 after 120 steps (this test), 0.357 after 2000 steps (0.370 on 16 fresh probes); on the
  phantom 0.13 (120 steps). Best H from 4,096 exact rows of this operator (``error_floor``): 0.350.
* the same with a detector of 0.5 voxel at the isocentre (80 × 128): held-out 0.270, phantom
  0.024 after 1000 steps; near-parallel beam (source at 4000): held-out 0.21 after 300 steps;
  100 views: 0.235 after 300 steps.
* toy multi-coil MRI (deepinv MultiCoilMRI, 4 coils): held-out 0.05 (two-sided, 600 steps).

Why the cone-beam bound fails: :func:`unroll3d.normal.floor.error_floor` builds the best one-sided H
from exact rows of AᵀA (``unroll3d bench normal_floor``; 32³, 30 views, 1,536 rows, CPU):

=====================================  ===========  =================  ============
geometry                               floor (m=1)  Adam 2000 steps    phantom
=====================================  ===========  =================  ============
toy (distances of this test)          0.349 0.362  0.356              0.142
toy, detector pixel 0.5 voxel          0.260 0.261  0.267              0.022
Walnut proportions (magnification 3)   0.388 0.402  0.389              0.085
near-parallel (source at 100 n)        0.202 0.205  0.205              0.030
=====================================  ===========  =================  ============

The fit ends within 0.01 of the floor: the rest belongs to the model. Sums of K diag × conv terms
(``error_floor(terms=...)``, upper bounds) reach 0.279 (K = 8) and 0.200 (K = 64) on the toy. The residual is spread
evenly in space, at high frequencies (73 % above 0.3 cycles/voxel) and far from the diagonal
(69 % at ≥ 5 voxels): each view's back-projected line is blurred differently depending on where
the voxel falls between detector pixels and voxel centres, which one kernel cannot follow. The
project's original ≤ 20 % target on held-out Gaussian probes is therefore kept as a strict xfail; it holds
on the phantom.
"""

from __future__ import annotations

import math

import pytest
import torch
from deepinv.physics import LinearPhysics

import unroll3d.cli.fit_normal as fit_normal_cli
from unroll3d.normal import (
    DiagCirculant,
    DiagCirculantWrapper,
    NormalFit,
    fit_normal_operator,
    load_normal,
    operator_hash,
    padded_grid,
    relative_error,
    save_normal,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _filter_shape(grid, channels):
    return tuple(grid) if channels == 2 else tuple(grid[:-1]) + (grid[-1] // 2 + 1,)


def _random_op(img_size, two_sided=False, symmetrize=False, circular=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = img_size[1:]
    grid = tuple(spatial) if circular else padded_grid(spatial)
    shape = _filter_shape(grid, img_size[0])
    lam = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    m = torch.rand(spatial, generator=g) + 0.5
    return DiagCirculant(lam, m, img_size, two_sided=two_sided, symmetrize=symmetrize, grid=grid)


def _dense_patch(H, x_patch, start):
    """S H Sᵀ x_patch computed on the full volume."""
    full = torch.zeros(x_patch.shape[0], *H.img_size, dtype=x_patch.dtype)
    sl = (slice(None), slice(None)) + tuple(
        slice(s, s + p) for s, p in zip(start, x_patch.shape[-3:], strict=True)
    )
    full[sl] = x_patch
    return H(full)[sl]


class ExactDiagConv(LinearPhysics):
    """A test operator whose normal operator is exactly diag(m0) · (linear convolution)."""

    def __init__(self, H):
        super().__init__(img_size=H.img_size)
        self.H = H

    def A(self, x, **kwargs):
        return self.H(x)

    def A_adjoint(self, y, **kwargs):
        return self.H.adjoint(y)

    def A_adjoint_A(self, x, **kwargs):
        return 3.7 * self.H(x)  # an arbitrary scale: the fit must be scale-independent


def _exact_operator(img_size, two_sided=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    spatial = img_size[1:]
    grid = padded_grid(spatial)
    cplx = img_size[0] == 2
    h = torch.zeros(grid, dtype=torch.complex64 if cplx else torch.float32)
    r = 2
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            for c in range(-r, r + 1):
                w = math.exp(-(a * a + b * b + c * c) / 2.0) * (
                    1 + 0.3 * torch.randn(1, generator=g).item()
                )
                h[a % grid[0], b % grid[1], c % grid[2]] = w * (1 + 0.2j) if cplx else w
    lam = torch.fft.fftn(h) if cplx else torch.fft.rfftn(h)
    zz = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in spatial], indexing="ij"))
    m = 1 + 0.5 * torch.cos(2 * zz[0]) * torch.sin(1.5 * zz[1] + 0.3) + 0.2 * zz[2]
    return ExactDiagConv(DiagCirculant(lam.to(torch.complex64), m, img_size, two_sided=two_sided))


# ---------------------------------------------------------------------------------------------
# the operator and its exact kernel crop


@pytest.mark.parametrize(
    "channels,two_sided,symmetrize,circular",
    [
        (1, False, False, False),
        (1, False, True, False),
        (1, False, False, True),
        (2, False, False, False),
        (2, True, False, False),
        (2, True, True, True),
    ],
)
def test_restrict_equals_full_restriction(channels, two_sided, symmetrize, circular):
    """S H Sᵀ via the cropped kernel (k = min(2p, N)) equals the full H restricted, in 3D,
    non-cubic, at borders, interior, and for a patch as large as the volume."""
    img_size = (channels, 9, 7, 11)
    H = _random_op(img_size, two_sided, symmetrize, circular)
    g = torch.Generator().manual_seed(1)
    cases = [
        ((0, 0, 0), (4, 3, 5)),  # corner
        ((5, 4, 6), (4, 3, 5)),  # opposite corner
        ((2, 1, 3), (5, 6, 4)),  # interior, 2p ≥ n on some axes
        ((0, 2, 0), (9, 2, 11)),  # spans whole axes
        ((0, 0, 0), (9, 7, 11)),  # whole volume
        ((3, 0, 10), (1, 7, 1)),  # thin
    ]
    for start, p in cases:
        x = torch.randn(2, channels, *p, generator=g)
        ref = _dense_patch(H, x, start)
        out = H.restrict(start, p)(x)
        assert relative_error(ref, out) < 1e-5, (start, p)


def test_restrict_float64_is_exact_to_roundoff():
    H = _random_op((1, 10, 6, 8))
    H = DiagCirculant(
        H.fourier_filter.to(torch.complex128), H.spatial_mask.double(), H.img_size, grid=H.grid
    )
    x = torch.randn(1, 1, 4, 3, 5, dtype=torch.float64)
    ref = _dense_patch(H, x, (6, 3, 2))
    assert relative_error(ref, H.restrict((6, 3, 2), (4, 3, 5))(x)) < 1e-12


def test_padded_h_is_a_linear_convolution():
    """With m = 1, H on the padded grid does not wrap around: shifting a small object inside
    the volume shifts the output (no circular coupling of opposite borders)."""
    img_size = (1, 8, 8, 8)
    H = _random_op(img_size)
    H.spatial_mask.fill_(1.0)
    x = torch.zeros(1, *img_size)
    x[0, 0, 0, 0, 0] = 1.0
    y0 = H(x)
    x1 = torch.roll(x, (3, 2, 1), dims=(2, 3, 4))
    y1 = H(x1)
    # y1 restricted to indices ≥ shift equals y0 restricted to the first n − shift
    assert torch.allclose(y1[..., 3:, 2:, 1:], y0[..., :5, :6, :7], atol=1e-5)


@pytest.mark.parametrize("channels,two_sided", [(1, False), (2, False), (2, True)])
def test_adjoint_and_symmetrised_self_adjoint(channels, two_sided):
    img_size = (channels, 6, 9, 5)
    H = _random_op(img_size, two_sided)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, *img_size, generator=g)
    y = torch.randn(2, *img_size, generator=g)
    lhs, rhs = (H(x) * y).sum(), (x * H.adjoint(y)).sum()
    assert abs(lhs - rhs) / (H(x).norm() * y.norm()) < 1e-6
    Hs = DiagCirculant(H.fourier_filter, H.spatial_mask, img_size, two_sided, symmetrize=True)
    lhs, rhs = (Hs(x) * y).sum(), (x * Hs(y)).sum()
    assert abs(lhs - rhs) / (Hs(x).norm() * y.norm()) < 1e-6
    # and the symmetrised restriction is self-adjoint too
    R = Hs.restrict((1, 2, 0), (4, 5, 5))
    xp, yp = x[..., 1:5, 2:7, 0:5], y[..., 1:5, 2:7, 0:5]
    assert abs((R(xp) * yp).sum() - (xp * R(yp)).sum()) / (R(xp).norm() * yp.norm()) < 1e-6


def test_identity_and_shape_errors():
    img_size = (1, 5, 4, 3)
    N = padded_grid(img_size[1:])
    lam = torch.ones(_filter_shape(N, 1), dtype=torch.complex64)
    H = DiagCirculant(lam, torch.ones(5, 4, 3), img_size)
    x = torch.randn(2, *img_size)
    assert torch.allclose(H(x), x, atol=1e-6)
    with pytest.raises(ValueError, match="spatial_mask"):
        DiagCirculant(lam, torch.ones(5, 4, 4), img_size)
    with pytest.raises(ValueError, match="fourier_filter"):
        DiagCirculant(lam[:-1], torch.ones(5, 4, 3), img_size)
    with pytest.raises(ValueError, match="does not fit"):
        H.restrict((3, 0, 0), (3, 4, 3))
    with pytest.raises(ValueError, match="expected x"):
        H(torch.randn(1, 1, 5, 4, 4))


# ---------------------------------------------------------------------------------------------
# fitting


@pytest.mark.parametrize("channels,two_sided", [(1, False), (2, True)])
def test_fit_recovers_exact_diag_times_convolution(channels, two_sided):
    img_size = (channels, 12, 10, 14)
    physics = _exact_operator(img_size, two_sided)
    lam, m, hist = fit_normal_operator(
        physics, img_size, n_steps=600, batch=1, lr=1e-2, seed=0, progress=False
    )
    assert hist["heldout_rel_error"][-1] < 0.01, hist["heldout_rel_error"]
    assert hist["heldout_rel_error"][-1] < hist["heldout_rel_error"][0]
    assert hist["sqnorm"] == pytest.approx(3.7 * _sqnorm_ref(physics, img_size), rel=1e-3)
    # the scaled H reproduces AᵀA on a fresh (non-Gaussian) image
    W = DiagCirculantWrapper(
        physics,
        img_size,
        scaling=hist["sqnorm"],
        fourier_filter=lam,
        spatial_mask=m,
        two_sided=two_sided,
    )
    zz = torch.linspace(0, 1, img_size[-1])
    x = torch.ones(1, *img_size) * zz
    assert relative_error(physics.A_adjoint_A(x), W.A_adjoint_A(x)) < 0.02


def test_fit_complex_mask_recovers_two_sided_phase():
    """Two-sided H with a complex m (a phase map): the complex-mask fit recovers it to < 2 %,
    a real m cannot."""
    img_size = (2, 10, 8, 12)
    physics = _exact_operator(img_size, two_sided=True)
    zz = torch.stack(
        torch.meshgrid(*[torch.linspace(-1, 1, n) for n in img_size[1:]], indexing="ij")
    )
    phase = torch.exp(1j * 0.7 * torch.cos(2 * zz[0]) * torch.sin(2 * zz[2]))  # not linear
    physics.H.spatial_mask = physics.H.spatial_mask * phase.to(torch.complex64)
    kw = dict(n_steps=800, lr=1e-2, heldout=2, progress=False)
    _, m, hist = fit_normal_operator(physics, img_size, complex_mask=True, **kw)
    assert m.is_complex() and hist["heldout_rel_error"][-1] < 0.02, hist["heldout_rel_error"]
    _, _, hist_real = fit_normal_operator(physics, img_size, **kw)
    assert hist_real["heldout_rel_error"][-1] > 2 * hist["heldout_rel_error"][-1]
    with pytest.raises(ValueError, match="complex_mask"):
        fit_normal_operator(_exact_operator((1, 6, 6, 6)), (1, 6, 6, 6), complex_mask=True)


def _sqnorm_ref(physics, img_size):
    """‖H‖² of the test operator (its own power method)."""
    x = torch.randn(1, *img_size, generator=torch.Generator().manual_seed(9))
    for _ in range(300):
        x = physics.H(x)
        x = x / x.norm()
    return float((x * physics.H(x)).sum())


#: (fit settings, step after which the run crashes, step of its last checkpoint). The plateau fit
#: (patience 2, 20 %) detects its plateau at step 12 and stops at 18: the crash falls in its lr
#: tail, so the resumed run must restore where the tail began and ends.
RESUME_CASES = {
    "cosine": (dict(n_steps=12), 10, 9),
    "plateau": (
        dict(
            n_steps=60,
            lr_schedule="plateau",
            plateau_patience=2,
            plateau_min_improvement=0.2,
            plateau_decay=0.5,
        ),
        16,
        15,
    ),
}


@pytest.mark.parametrize("schedule", list(RESUME_CASES))
def test_fit_is_deterministic_and_resume_equals_uninterrupted(tmp_path, schedule):
    img_size = (1, 8, 7, 6)
    physics = _exact_operator(img_size)
    extra, crash_after, saved = RESUME_CASES[schedule]
    kw = dict(batch=2, lr=1e-2, seed=5, heldout=4, progress=False, **extra)
    kw["eval_every"] = 4 if schedule == "cosine" else 3
    lam_a, m_a, h_a = fit_normal_operator(physics, img_size, **kw)
    lam_b, m_b, h_b = fit_normal_operator(physics, img_size, **kw)
    assert torch.equal(lam_a, lam_b) and torch.equal(m_a, m_b)
    if schedule == "plateau":
        assert h_a["stop_reason"] == "plateau" and h_a["decay_start"] < saved
        assert h_a["stop_step"] == h_a["step"][-1] < kw["n_steps"]
    else:
        assert h_a["stop_reason"] == "max_steps" and h_a["stop_step"] == kw["n_steps"]
    assert h_a["final_heldout_rel_error"] == h_a["heldout_rel_error"][-1]
    ckpt = tmp_path / "fit.ckpt"
    # a run that crashes after step `crash_after` (checkpoints every 3 steps), then is resumed
    calls = {"n": 0}
    orig = physics.A_adjoint_A

    def crashing(x, **k):
        calls["n"] += 1
        if calls["n"] > 1 + 4 + crash_after:  # impulse response + 4 held-out probes + steps
            raise KeyboardInterrupt
        return orig(x, **k)

    physics.A_adjoint_A = crashing
    with pytest.raises(KeyboardInterrupt):
        fit_normal_operator(
            physics, img_size, checkpoint=ckpt, checkpoint_every=3, sqnorm=h_a["sqnorm"], **kw
        )
    physics.A_adjoint_A = orig
    assert ckpt.exists()
    saved_step = torch.load(ckpt, weights_only=False)["step"]
    assert saved_step == saved
    lam_c, m_c, h_c = fit_normal_operator(
        physics, img_size, checkpoint=ckpt, checkpoint_every=3, sqnorm=h_a["sqnorm"], **kw
    )
    assert torch.equal(lam_a, lam_c) and torch.equal(m_a, m_c)
    assert h_a["step"] == h_c["step"]
    assert h_a["heldout_rel_error"] == pytest.approx(h_c["heldout_rel_error"], rel=1e-6)
    for key in ("stop_reason", "stop_step", "decay_start"):
        assert h_a[key] == h_c[key], key
    # a checkpoint written for other settings or another operator is discarded and the fit
    # restarts from step 0: tests/test_fit_resume.py


def test_fit_returns_the_best_held_out_step_not_the_last(tmp_path):
    """A constant lr too large for the end of the fit: the held-out error is lowest at step 8
    of 12. The fit returns the step-8 parameters (bit-equal to a fit stopped there), records
    the step, and a run resumed from a checkpoint written after it returns the same."""
    img_size = (1, 8, 7, 6)
    physics = _exact_operator(img_size)
    kw = dict(lr=5e-2, lr_schedule="constant", eval_every=1, seed=5, heldout=4, progress=False)
    lam, m, hist = fit_normal_operator(physics, img_size, n_steps=12, **kw)
    errors = hist["heldout_rel_error"]
    assert hist["best_step"] == 8 == errors.index(min(errors))
    assert hist["best_heldout_rel_error"] == min(errors) < errors[-1]
    assert hist["final_heldout_rel_error"] == errors[-1] and hist["stop_step"] == 12
    lam_8, m_8, _ = fit_normal_operator(physics, img_size, n_steps=8, **kw)
    assert torch.equal(lam, lam_8) and torch.equal(m, m_8)
    ckpt, kw = tmp_path / "fit.ckpt", {**kw, "sqnorm": hist["sqnorm"]}  # no power method calls
    orig, calls = physics.A_adjoint_A, {"n": 0}

    def crashing(x, **k):
        calls["n"] += 1
        if calls["n"] > 1 + 4 + 10:  # impulse response + 4 held-out probes + 10 steps
            raise KeyboardInterrupt
        return orig(x, **k)

    physics.A_adjoint_A = crashing
    with pytest.raises(KeyboardInterrupt):
        fit_normal_operator(physics, img_size, n_steps=12, checkpoint=ckpt, checkpoint_every=5, **kw)
    physics.A_adjoint_A = orig
    assert torch.load(ckpt, weights_only=False)["step"] == 10
    lam_r, m_r, hist_r = fit_normal_operator(
        physics, img_size, n_steps=12, checkpoint=ckpt, checkpoint_every=5, **kw
    )
    assert torch.equal(lam, lam_r) and torch.equal(m, m_r) and hist_r["best_step"] == 8
    # a fit whose last step is its best (the usual plateau tail) returns the last step
    _, _, monotone = fit_normal_operator(physics, img_size, n_steps=6, **{**kw, "lr": 3e-2})
    assert monotone["best_step"] == 6 and monotone["best_heldout_rel_error"] == min(
        monotone["heldout_rel_error"]
    )


def test_plateau_fit_stops_early_or_at_the_maximum_and_reports_the_floor():
    """The plateau schedule stops before the maximum on an exact operator with a coarse
    threshold, runs its tail to the maximum when no plateau comes (reason max_steps), and
    records the floor and the gap to it, or that none was computed."""
    img_size = (1, 8, 7, 6)
    physics = _exact_operator(img_size)
    kw = dict(batch=2, seed=5, heldout=4, eval_every=3, progress=False, lr_schedule="plateau")
    _, _, early = fit_normal_operator(
        physics, img_size, n_steps=300, plateau_patience=2, plateau_min_improvement=0.2,
        plateau_decay=0.5, floor=0.0, **kw,
    )  # fmt: skip
    assert early["stop_reason"] == "plateau" and early["stop_step"] < 300
    assert early["stop_step"] == early["decay_start"] + math.ceil(0.5 * early["decay_start"])
    assert early["floor"] == 0.0 and early["floor_gap"] == early["best_heldout_rel_error"]
    _, _, capped = fit_normal_operator(physics, img_size, n_steps=20, **kw)
    assert capped["stop_reason"] == "max_steps" and capped["stop_step"] == 20
    assert capped["decay_start"] == 16  # floor(20 / 1.25): the tail still ends at the maximum
    assert capped["floor"] is None and capped["floor_gap"] is None
    assert "not computed" in capped["floor_note"]
    with pytest.raises(ValueError, match="lr schedule"):
        fit_normal_operator(physics, img_size, n_steps=2, lr_schedule="step")


# ---------------------------------------------------------------------------------------------
# wrapper, files, hashes


def test_wrapper_keeps_a_exact_and_call_time_parameters():
    img_size = (1, 6, 5, 7)
    physics = _exact_operator(img_size)
    H = _random_op(img_size)
    W = DiagCirculantWrapper(physics, img_size, scaling=2.5)
    x = torch.randn(1, *img_size)
    assert torch.equal(W.A(x), physics.A(x))
    assert torch.equal(W.A_adjoint(x), physics.A_adjoint(x))
    with pytest.raises(RuntimeError, match="no parameters"):
        W.A_adjoint_A(x)
    out = W.A_adjoint_A(x, fourier_filter=H.fourier_filter, spatial_mask=H.spatial_mask)
    assert torch.allclose(out, 2.5 * H(x), atol=1e-5)
    R = W.operator().restrict((1, 0, 2), (3, 5, 4))  # the H installed at the call
    xp = x[..., 1:4, 0:5, 2:6]
    assert relative_error(_dense_patch(H, xp, (1, 0, 2)), R(xp)) < 1e-5


def test_save_load_roundtrip_and_hash_mismatch(tmp_path):
    img_size = (1, 6, 5, 7)
    phys_a = _exact_operator(img_size, seed=3)
    phys_b = _exact_operator(img_size, seed=4)
    assert operator_hash(phys_a) == operator_hash(_exact_operator(img_size, seed=3))
    assert operator_hash(phys_a) != operator_hash(phys_b)
    H = _random_op(img_size)
    path = tmp_path / "fit.pt"
    save_normal(
        path,
        H.fourier_filter,
        H.spatial_mask,
        img_size,
        scaling=4.0,
        history={"step": [0], "heldout_rel_error": [0.5], "train_rel_error": [float("nan")]},
        operator_hash=operator_hash(phys_a),
    )
    fit = load_normal(path, expected_operator_hash=operator_hash(phys_a))
    assert torch.equal(fit.fourier_filter, H.fourier_filter) and fit.scaling == 4.0
    with pytest.raises(ValueError, match="fitted for operator"):
        load_normal(path, expected_operator_hash=operator_hash(phys_b))
    with pytest.raises(ValueError, match="fitted for operator"):
        DiagCirculantWrapper.from_file(phys_b, path)
    W = DiagCirculantWrapper.from_file(phys_a, path)
    x = torch.randn(1, *img_size)
    assert torch.allclose(W.A_adjoint_A(x), 4.0 * H(x), atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_normal(tmp_path / "missing.pt")


def test_normal_fit_round_trip_and_cached_operator(tmp_path):
    """save_normal → load_normal gives a NormalFit with the same tensors; operator() is built once
    per image size and equals a DiagCirculant built by hand; to() moves λ and m."""
    img_size = (1, 6, 5, 4)
    H = _random_op(img_size)
    path = tmp_path / "fit.pt"
    save_normal(
        path, H.fourier_filter, H.spatial_mask, img_size, scaling=3.0, meta={"setting": "v30"}
    )
    fit = load_normal(path)
    assert isinstance(fit, NormalFit) and fit.setting == "v30" and fit.scaling == 3.0
    assert torch.equal(fit.fourier_filter, H.fourier_filter)
    assert torch.equal(fit.spatial_mask, H.spatial_mask)
    op = fit.operator()
    assert fit.operator(img_size) is op  # cached
    x = torch.randn(2, *img_size)
    assert torch.allclose(op(x), H(x), atol=1e-6)
    moved = fit.to("cpu")
    assert moved.operator() is not op and torch.allclose(moved.operator()(x), H(x), atol=1e-6)


def test_load_normal_names_the_missing_key(tmp_path):
    img_size = (1, 6, 5, 4)
    H = _random_op(img_size)
    path = tmp_path / "fit.pt"
    save_normal(path, H.fourier_filter, H.spatial_mask, img_size, scaling=1.0)
    blob = torch.load(path, weights_only=False)
    del blob["spatial_mask"]
    torch.save(blob, path)
    with pytest.raises(ValueError, match=r"fit\.pt: normal-operator file has no 'spatial_mask'"):
        load_normal(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable normal-operator file"):
        load_normal(path)


def _cli_input(monkeypatch, img_size, x=None):
    """`unroll3d fit-normal` reads this exact operator (and x) whatever --input names."""
    physics = _exact_operator(img_size)

    class Sample:
        pass

    sample = Sample()
    sample.x = torch.zeros(1, *img_size) if x is None else x
    sample.physics, sample.meta = physics, {"volume": "toy"}
    monkeypatch.setattr(
        fit_normal_cli, "_load_physics", lambda path, setting, device: (physics, sample)
    )
    return physics


def test_cli_and_figure(tmp_path, monkeypatch):
    img_size = (1, 8, 6, 7)
    x = torch.zeros(1, *img_size)
    x[..., 2:6, 2:5, 2:5] = 1.0
    physics = _cli_input(monkeypatch, img_size, x)
    out = tmp_path / "normal" / "v30.pt"
    rc = fit_normal_cli.main(
        [
            "--input",
            "unused.pt",
            "--setting",
            "v30",
            "--out",
            str(out),
            "--steps",
            "20",
            "--heldout",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--figure",
            str(tmp_path / "fig.png"),
        ]
    )
    assert rc == 0
    fit = load_normal(out, expected_operator_hash=operator_hash(physics, img_size))
    assert fit.history["step"][-1] == 20
    assert out.with_suffix(".csv").read_text().startswith("step,heldout_rel_error")
    assert not out.with_suffix(".ckpt").exists()
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.pdf").exists()


def test_cli_plateau_and_floor(tmp_path, monkeypatch, capsys):
    """`--lr-schedule plateau --floor-rows N`: the history and the log line give the stopping
    reason and step, the final held-out error, the floor and the gap to it."""
    img_size = (1, 6, 5, 4)
    _cli_input(monkeypatch, img_size)
    out = tmp_path / "v30.pt"
    args = ["--input", "unused.pt", "--setting", "v30", "--out", str(out), "--steps", "40"]
    args += ["--heldout", "2", "--device", "cpu", "--no-progress", "--lr-schedule", "plateau"]
    args += ["--eval-every", "5", "--floor-rows", "40"]
    assert fit_normal_cli.main(args) == 0
    hist = load_normal(out).history
    assert hist["stop_reason"] in ("plateau", "max_steps") and hist["stop_step"] <= 40
    assert hist["floor"] is not None and 0.0 <= hist["floor"] < 1.0
    assert hist["floor_gap"] == pytest.approx(hist["final_heldout_rel_error"] - hist["floor"])
    assert "40 exact rows" in hist["floor_note"]
    log = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"floor {hist['floor']:.4f}, gap" in log and "stopped: " in log
    assert fit_normal_cli.main(args[:-2] + ["--out", str(tmp_path / "b.pt")]) == 0
    assert "not computed" in load_normal(tmp_path / "b.pt").history["floor_note"]


# ---------------------------------------------------------------------------------------------
# toy cone-beam CT


TOY_STEPS = 120


@pytest.fixture(scope="module")
def toy_conebeam_fit():
    """32³, 30 views, circular cone beam (fan half-angle ≈ 7°, no truncation), fitted for
    TOY_STEPS Adam steps from the impulse-response initialisation."""
    physics_mod = pytest.importorskip("unroll3d.physics")
    if not hasattr(physics_mod, "ConeBeam") or not hasattr(physics_mod.ConeBeam, "circular"):
        pytest.skip("unroll3d.physics.ConeBeam.circular is not available yet")
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 32
        img_size = (1, n, n, n)
        physics = physics_mod.ConeBeam.circular(
            30,
            img_size[1:],
            source_origin=4.0 * n,
            origin_detector=2.0 * n,
            det_shape=(40, 2 * n),
            det_spacing=1.5,
            backend="rtk",
        )
        lam, m, hist = fit_normal_operator(
            physics,
            img_size,
            n_steps=TOY_STEPS,
            batch=1,
            lr=1e-2,
            seed=0,
            heldout=4,
            progress=False,
        )
        W = DiagCirculantWrapper(
            physics, img_size, scaling=hist["sqnorm"], fourier_filter=lam, spatial_mask=m
        )
        x = _phantom(img_size)
        phantom_err = relative_error(physics.A_adjoint_A(x), W.A_adjoint_A(x))
    finally:
        torch.set_num_threads(n_threads)
    print(
        f"toy cone-beam 32³/30 views, {TOY_STEPS} steps: held-out "
        f"{hist['heldout_rel_error'][0]:.3f} -> {hist['heldout_rel_error'][-1]:.3f}, "
        f"phantom {phantom_err:.3f}"
    )
    return hist, phantom_err


@pytest.mark.slow
def test_toy_conebeam_phantom_error(toy_conebeam_fit):
    """The fitted H reproduces AᵀA on a phantom to ≤ 20 % (the project's original target)."""
    hist, phantom_err = toy_conebeam_fit
    assert hist["heldout_rel_error"][-1] < hist["heldout_rel_error"][0]
    assert phantom_err <= 0.20


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured: one diagonal-circulant factor cannot reach the project's ≤ 20 % target on "
    "white Gaussian probes for a 30-view cone beam: 0.38 after 120 steps; the best H from exact "
    "rows (error_floor) is 0.350 for this geometry and ≥ 0.20 for every geometry tried (module "
    "docstring); the bound is kept, not loosened",
)
def test_toy_conebeam_heldout_error(toy_conebeam_fit):
    """≤ 20 % relative error on held-out Gaussian probes (the project's original target)."""
    hist, _ = toy_conebeam_fit
    assert hist["heldout_rel_error"][-1] <= 0.20


def test_fit_on_toy_multicoil_mri():
    """Two-sided H on a toy 3D multi-coil MRI (deepinv MultiCoilMRI, 4 coils, ky-kz mask
    R ≈ 3): ≤ 20 % held-out relative error (measured ≈ 0.06 after 200 steps)."""
    from deepinv.physics import MultiCoilMRI

    D, H, W, nc = 16, 16, 12, 4
    g = torch.Generator().manual_seed(0)
    zz = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (D, H, W)], indexing="ij"))
    maps = []
    for c in range(nc):
        ang = torch.tensor(2 * math.pi * c / nc)
        mag = torch.exp(-((zz[1] - torch.cos(ang)) ** 2 + (zz[2] - torch.sin(ang)) ** 2) / 1.5)
        maps.append(mag * torch.exp(1j * (0.5 * zz[0] * c + 0.3 * zz[1])))
    maps = torch.stack(maps)
    maps = (maps / (maps.abs() ** 2).sum(0).sqrt()).to(torch.complex64)
    mask = (torch.rand(1, H, W, generator=g) < 0.3).float()
    mask[:, H // 2 - 2 : H // 2 + 2, W // 2 - 2 : W // 2 + 2] = 1
    img_size = (2, D, H, W)
    physics = MultiCoilMRI(
        mask=mask.expand(D, H, W), coil_maps=maps, img_size=img_size, three_d=True
    )
    lam, m, hist = fit_normal_operator(
        physics, img_size, n_steps=200, lr=1e-2, heldout=2, progress=False
    )
    assert hist["two_sided"] and lam.shape == padded_grid((D, H, W))
    assert hist["heldout_rel_error"][-1] <= 0.20, hist["heldout_rel_error"]


def _phantom(img_size):
    spatial = img_size[1:]
    zz = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in spatial], indexing="ij"))
    r2 = (zz**2).sum(0)
    x = (r2 < 0.6).float() * 0.8
    x += ((zz[0] - 0.2) ** 2 + (zz[1] + 0.3) ** 2 + (zz[2] - 0.1) ** 2 < 0.05).float() * 0.5
    x -= ((zz[0] + 0.3) ** 2 + (zz[1] - 0.2) ** 2 + zz[2] ** 2 < 0.03).float() * 0.4
    return x[None, None]


def test_cli_circular_grid_is_the_image_grid_and_crops_exactly(tmp_path, monkeypatch):
    """`--grid circular` fits λ on the N grid (the paper's F), 8× smaller than
    the padded one in 3D, and its patch restriction still equals the crop of the full H."""
    img_size = (1, 8, 6, 7)
    _cli_input(monkeypatch, img_size)
    sizes = {}
    for grid in ("padded", "circular"):
        out = tmp_path / grid / "v30.pt"
        argv = [
            "--input",
            "unused.pt",
            "--setting",
            "v30",
            "--out",
            str(out),
            "--steps",
            "5",
            "--heldout",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--grid",
            grid,
        ]
        assert fit_normal_cli.main(argv) == 0
        fit = load_normal(out)
        sizes[grid] = fit.fourier_filter.numel()
        if grid == "circular":
            assert tuple(fit.grid) == img_size[1:]
            H = fit.operator(img_size)
            x = torch.randn(1, *img_size, generator=torch.Generator().manual_seed(0))
            start, size = (1, 2, 1), (4, 3, 5)
            sl = (..., *(slice(s, s + n) for s, n in zip(start, size, strict=True)))
            xp = torch.zeros_like(x)
            xp[sl] = x[sl]
            restricted = H.restrict(start, size)(x[sl])
            assert torch.allclose(restricted, H(xp)[sl], atol=1e-5)
    assert sizes["padded"] >= 6 * sizes["circular"]


def test_fit_normal_verb_defaults_are_the_schemas():
    """`unroll3d fit-normal` states no default of its own: each option of a `normal` key takes
    the schema's default (one place for each default)."""
    from unroll3d.cli.fit_normal import build_parser
    from unroll3d.config import section_defaults

    d = section_defaults("normal")
    args = build_parser().parse_args(["--input", "x.pt", "--setting", "v30", "--out", "h.pt"])
    for key in ("steps", "lr", "lr_schedule", "eval_every", "floor_rows", "batch", "heldout"):
        assert getattr(args, key) == d[key], key
    assert (args.grid, args.checkpoint_every) == (d["grid"], d["checkpoint_every"])
    plateau = d["plateau"]
    assert (args.plateau_patience, args.plateau_min_improvement, args.plateau_decay) == (
        plateau["patience"],
        plateau["min_improvement"],
        plateau["decay"],
    )


def test_fit_normal_reads_its_settings_from_the_config_json_flags_override():
    """The rules pass the fit's settings as one --config-json (unroll3d.config.fit_normal_config);
    an option given beside it overrides its key; without either, each is the schema's default."""
    import json

    from unroll3d.config import fit_normal_config, section_defaults

    base = ["--input", "x.pt", "--setting", "v30", "--out", "h.pt"]
    cfg = fit_normal_config({"seed": 7, "normal": {"steps": 30, "lr": 1, "plateau": {"decay": 0}}})
    assert set(cfg["normal"]) == {"steps", "lr", "lr_schedule", "plateau", "eval_every",
                                  "floor_rows", "batch", "heldout", "checkpoint_every", "grid"}  # fmt: skip
    assert cfg["normal"]["plateau"]["patience"] == section_defaults("normal")["plateau"]["patience"]
    args = fit_normal_cli.parse_args([*base, "--config-json", json.dumps(cfg)])
    assert (args.seed, args.steps, args.plateau_decay) == (7, 30, 0.0)
    assert args.lr == 1.0 and isinstance(args.lr, float)  # typed as the option types it
    assert args.heldout == section_defaults("normal")["heldout"]
    args = fit_normal_cli.parse_args([*base, "--config-json", json.dumps(cfg), "--steps", "5"])
    assert (args.steps, args.seed) == (5, 7)
    defaults = fit_normal_cli.parse_args(base)
    assert vars(defaults) == vars(fit_normal_cli.build_parser().parse_args(base))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"normal": {"lr": -1}}', "config key normal.lr"),
        ('{"normal": {"plateau": {"patience": 0}}}', "config key normal.plateau.patience"),
        ('{"normal": {"stepz": 3}}', "'stepz' was unexpected"),
        ("{not json", "--config-json is not valid JSON"),
    ],
)
def test_fit_normal_refuses_a_bad_config_json_in_one_line(text, message):
    argv = ["--input", "x.pt", "--setting", "v30", "--out", "h.pt", "--config-json", text]
    with pytest.raises(SystemExit) as err:
        fit_normal_cli.parse_args(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_fit_from_the_config_json_equals_the_fit_from_the_same_flags(tmp_path, monkeypatch):
    """The rule's --config-json and the standalone flags are one set of settings: the same fit,
    bit for bit."""
    import json

    from unroll3d.config import fit_normal_config

    img_size = (1, 6, 5, 4)
    _cli_input(monkeypatch, img_size)
    base = ["--input", "unused.pt", "--setting", "v30", "--device", "cpu", "--no-progress"]
    normal = {"steps": 12, "lr": 0.02, "lr_schedule": "cosine", "eval_every": 4, "heldout": 2,
              "batch": 2, "grid": "circular", "plateau": {"patience": 2}}  # fmt: skip
    cfg = json.dumps(fit_normal_config({"seed": 3, "normal": normal}))
    assert fit_normal_cli.main([*base, "--out", str(tmp_path / "a.pt"), "--config-json", cfg]) == 0
    flags = ["--steps", "12", "--lr", "0.02", "--lr-schedule", "cosine", "--eval-every", "4",
             "--heldout", "2", "--batch", "2", "--grid", "circular", "--plateau-patience", "2",
             "--seed", "3"]  # fmt: skip
    assert fit_normal_cli.main([*base, "--out", str(tmp_path / "b.pt"), *flags]) == 0
    a, b = load_normal(tmp_path / "a.pt"), load_normal(tmp_path / "b.pt")
    assert torch.equal(a.fourier_filter, b.fourier_filter)
    assert torch.equal(a.spatial_mask, b.spatial_mask)
    other = ["--out", str(tmp_path / "c.pt"), "--config-json", cfg, "--seed", "4"]
    assert fit_normal_cli.main([*base, *other]) == 0  # the override reaches the fit
    assert not torch.equal(a.fourier_filter, load_normal(tmp_path / "c.pt").fourier_filter)
