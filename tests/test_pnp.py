"""PnP-αPGD[3D]: the α-PGD iteration run by deepinv's optimiser, its denoiser training pairs,
and the choice of its parameters on the validation volumes."""

from __future__ import annotations

import pytest
import torch
from toys import ToyBlur, toy_sample

from unroll3d.models.pnp import AlphaPGDIteration, PnPAlphaPGD
from unroll3d.physics import initial_reconstruction, sqnorm

torch.set_num_threads(1)


def _piecewise_constant(shape=(12, 12, 12), regions=4, seed=0):
    """A phantom constant on ``regions`` slabs of random values, and its label map."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(shape[0]) * regions // shape[0]).view(-1, 1, 1).expand(shape)
    values = torch.rand(regions, generator=g) + 0.2
    return values[labels][None, None], labels


class RegionMean(torch.nn.Module):
    """A perfect denoiser for piecewise-constant images on known regions: the orthogonal
    projection onto them (the mean of each region), whatever σ."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels.flatten()
        self.n = int(labels.max()) + 1

    def forward(self, x, sigma):
        flat = x.reshape(-1)
        sums = torch.zeros(self.n).index_add_(0, self.labels, flat)
        counts = torch.bincount(self.labels, minlength=self.n).float()
        return (sums / counts)[self.labels].view_as(x)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_perfect_denoiser_iterations_converge_to_the_piecewise_constant_phantom(alpha):
    """With the projection onto the phantom's regions as denoiser, α-PGD on a masked blur
    (non-invertible: 40 % of the voxels unmeasured) converges to the phantom from A†y."""
    x, labels = _piecewise_constant()
    phys = ToyBlur(x.shape[2:], keep=0.6, seed=1)
    L = sqnorm(phys, img_size=tuple(x.shape[1:]), max_iter=300, rtol=1e-7)  # seeded
    y = phys.A(x)
    model = PnPAlphaPGD(1, (4, 8, 8, 8), 1, lipschitz=L, iters=300, alpha=alpha, stepsize=1.0)
    model.denoiser = RegionMean(labels)
    x0 = phys.A_adjoint(y) / L
    errors = []
    out, errors = model(y, phys, x_init=x0, iterate_metric=lambda v: float((v - x).norm()))
    assert len(errors) == 300
    assert errors[-1] < 1e-4 * float(x.norm()) < errors[0]
    assert torch.allclose(out, x, atol=1e-4)


def test_alpha_one_is_plain_pgd():
    """α = 1: one deepinv iteration is x ↦ D(x − γ Aᵀ(Ax − y)) with the dual equal to x."""
    s = toy_sample((8, 8, 8))
    torch.manual_seed(0)
    model = PnPAlphaPGD(1, (4, 8, 8, 8), 1, lipschitz=s.meta["op_norm_sq"], iters=1, sigma=0.05)
    model.eval()
    x0 = initial_reconstruction(s.physics, s.y)
    out = model(s.y, s.physics, x_init=x0)
    gamma = 1.0 / s.meta["op_norm_sq"]
    with torch.no_grad():
        ref = model.denoiser(x0 - gamma * s.physics.A_adjoint(s.physics.A(x0) - s.y), 0.05)
    assert torch.allclose(out, ref, atol=1e-6)


def test_relaxed_iteration_keeps_a_running_average():
    """α-PGD's second variable z is the α-average of the x iterates (checked on one step)."""
    it = AlphaPGDIteration()
    phys = ToyBlur((6, 6, 6))
    x = torch.rand(1, 1, 6, 6, 6)
    z = torch.rand(1, 1, 6, 6, 6)
    y = phys.A(torch.rand(1, 1, 6, 6, 6))

    class Identity:
        def prox(self, v, sigma, gamma=None):
            return v

    from deepinv.optim import L2

    params = {"alpha": 0.3, "stepsize": 0.5, "g_param": 0.1}
    out = it({"est": (x, z)}, L2(), Identity(), params, y, phys)
    q = 0.7 * z + 0.3 * x
    x1 = x - 0.5 * phys.A_adjoint(phys.A(q) - y)
    assert torch.allclose(out["est"][0], x1, atol=1e-6)
    assert torch.allclose(out["est"][1], 0.7 * z + 0.3 * x1, atol=1e-6)


def test_denoising_pairs_are_seeded_and_noise_levels_vary():
    """A training pair is (D_σ(x + σn), x); the same generator seed gives the same pair, and σ
    differs from one draw to the next within (0, sigma_max]."""
    model = PnPAlphaPGD(1, (4, 8, 8, 8), 1, sigma_max=0.2)
    x = torch.rand(1, 1, 8, 8, 8)
    seen = []
    model._denoise = lambda v, s: (seen.append(float(s)), v)[1]  # noisy input, unchanged
    a, target = model.denoising_pair(x, torch.Generator().manual_seed(3))
    b, _ = model.denoising_pair(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(target, x)
    noise_std = float((a - x).std())
    assert noise_std == pytest.approx(seen[0], rel=0.15)
    for i in range(20):
        model.denoising_pair(x, torch.Generator().manual_seed(10 + i))
    assert all(0 < s <= 0.2 for s in seen) and len({round(s, 6) for s in seen[1:]}) == 21


def test_unknown_parameter_is_an_error():
    with pytest.raises(ValueError, match="unknown PnP parameters"):
        PnPAlphaPGD(1, (4, 8, 8, 8), 1, beta=2.0)


def test_trained_pnp_picks_its_parameters_on_validation_and_evaluation_uses_them(tmp_path):
    """``unroll3d train`` of ``pnp``: the denoiser trains on noisy patches (loss falls), the grid
    runs on the validation volume and the best (iters, α, τ, σ) is stored with the weights; the
    evaluation rebuilds the model with those parameters and beats x0."""
    import toys

    from unroll3d.engine import evaluate as ev
    from unroll3d.engine import train as tr
    from unroll3d.engine.model_file import load_trained

    grid = {"iters": [2, 6], "alpha": [0.5, 1.0], "stepsize": [1.9], "sigma": [0.03]}
    cfg = toys.toy_config(steps=150, pnp_sigma_max=0.1, pnp_grid=grid)
    job = toys.make_job(tmp_path, "pnp", cfg, val_paths=["toy1"])
    stats = tr.train(job)
    assert stats["status"] == "ok" and stats["loss_last"] < stats["loss_first"]
    # the validation PSNR while training is the denoiser's on noisy (σ = 0.05) volumes: above
    # the noisy input's 20·log10(1/0.05) ≈ 26 dB once it denoises at all
    assert stats["val_psnr_last"] > 26.0
    scores = stats["pnp_grid_scores"]["v30"]
    assert len(scores) == 4  # 2 alphas × 2 iteration counts
    best = max(scores, key=lambda r: r["psnr"])
    assert stats["algo_params"] == {"v30": {k: best[k] for k in ("iters", "alpha", "stepsize", "sigma")}}
    model, _ = load_trained(job.out, "cbct", cfg)
    assert model.params == stats["algo_params"]["v30"]
    res = ev.evaluate_volume(
        "cbct", "v30", "pnp", cfg, job.out, toys.loader("toy3"), "toy3", torch.device("cpu")
    )
    assert res["status"] == "ok" and res["psnr"] > res["psnr_x0"]
    assert res["train_step"]["status"] == "ok"
