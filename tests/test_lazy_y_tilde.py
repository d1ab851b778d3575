"""ỹ = y − A S⊥ᵀ S⊥ x_context is formed on first use for every physics: a post-processing patch
(first iterate S x0) then runs no global forward, and every number equals the eager path's (ỹ
formed when the patch problem is built) bit for bit. Cone-beam CT (RTK, CPU) at 16³."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import unroll3d.partition.reconstructor as reconstructor_module
from unroll3d.engine.partitioning import estimate_pair
from unroll3d.models import PostProcess, UnrolledPGD
from unroll3d.partition import PartitionedPhysics, PartitionedReconstructor
from unroll3d.physics import ConeBeam
from unroll3d.variants import variant_spec

pytestmark = pytest.mark.usefixtures("one_thread")

N, PATCH = 16, (8, 8, 8)
SIZE = (1, N, N, N)


class EagerPartitionedPhysics(PartitionedPhysics):
    """The old path: ỹ formed by one global forward when the patch problem is built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.y_tilde  # noqa: B018


@pytest.fixture
def cbct(gen):
    """A 16³ cone-beam problem (10 views, RTK) with a counter of global forward calls."""
    physics = ConeBeam.circular(10, (N, N, N), 40.0, 20.0, backend="rtk")
    x = torch.rand(1, *SIZE, generator=gen)
    y = physics.A(x) + 0.01 * torch.randn(physics.A(x).shape, generator=gen)
    x0 = physics.A_adjoint(y) / 50.0
    calls = []
    real = physics.A
    physics.A = lambda t, **kw: calls.append(1) or real(t, **kw)
    return SimpleNamespace(physics=physics, x=x, y=y, x0=x0, calls=calls)


def _model(variant):
    torch.manual_seed(0)
    if variant == "partition":
        return UnrolledPGD(K=2, channels=1, nc=(4, 4, 4, 4), nb=1, lipschitz=50.0)
    return PostProcess(channels=1, nc=(4, 4, 4, 4), nb=1)


def _both_paths(monkeypatch, fn):
    """``fn()`` with the eager patch problem, then with the lazy one: [(result, forwards)]."""
    out = []
    for cls in (EagerPartitionedPhysics, PartitionedPhysics):
        monkeypatch.setattr(reconstructor_module, "PartitionedPhysics", cls)
        out.append(fn())
    return out


@pytest.mark.parametrize(("variant", "forwards"), [("postproc", (1, 0)), ("partition", (4, 4))])
def test_training_pair_forms_y_tilde_only_when_read(cbct, monkeypatch, variant, forwards):
    """The engine's training pair: post-processing runs no global forward any more (was one per
    step), the unrolled network the same 1 + 2 + 1 (ỹ for Ãᵀỹ, one per exact data step, one in
    the backward of the second); estimate, target and gradients bit-identical."""
    model = _model(variant)
    rec = PartitionedReconstructor(model, SIZE, PATCH)

    def step():
        cbct.calls.clear()
        model.zero_grad()
        sample = SimpleNamespace(x=cbct.x, y=cbct.y)
        est, target = estimate_pair(
            model, variant_spec(variant), sample, cbct.physics, cbct.x0,
            torch.Generator().manual_seed(3), rec,
        )  # fmt: skip
        (est - target).square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return (est.detach(), target, grads), len(cbct.calls)

    (old, old_calls), (new, new_calls) = _both_paths(monkeypatch, step)
    assert (old_calls, new_calls) == forwards
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
    assert len(old[2]) == len(new[2]) > 0
    assert all(torch.equal(a, b) for a, b in zip(old[2], new[2], strict=True))


@pytest.mark.parametrize(("variant", "forwards"), [("postproc", (27, 0)), ("partition", (81, 81))])
def test_patchwise_inference_forms_y_tilde_only_when_read(cbct, monkeypatch, variant, forwards):
    """A refinement pass over the 27 patches of the grid: post-processing runs no global forward
    (was one per patch), the unrolled network 3 per patch as before; bit-identical output."""
    model = _model(variant)
    rec = PartitionedReconstructor(model, SIZE, PATCH)

    def run():
        cbct.calls.clear()
        est = rec(cbct.y, cbct.physics, x0=cbct.x0, x_init=cbct.x0, n_refine=1)
        return est, len(cbct.calls)

    (old, old_calls), (new, new_calls) = _both_paths(monkeypatch, run)
    assert (old_calls, new_calls) == forwards
    assert torch.equal(old, new)


@pytest.mark.parametrize("residual", [False, True])
def test_y_tilde_read_late_is_the_eager_tensor(cbct, residual):
    """Read on first use, ỹ is the eager path's tensor bit for bit (batched corners too, and
    from the residual y − A x), and so are Ãᵀỹ and the least-squares first iterate."""
    starts = [(0, 4, 8), (8, 8, 0)]
    y = cbct.y - cbct.physics.A(cbct.x) if residual else cbct.y
    args = (cbct.physics, SIZE, starts, PATCH, y, cbct.x)
    eager = EagerPartitionedPhysics(*args, y_is_residual=residual)
    cbct.calls.clear()
    lazy = PartitionedPhysics(*args, y_is_residual=residual)
    assert cbct.calls == [] and lazy._buffers["y_tilde"] is None  # nothing formed yet
    assert torch.equal(lazy.A_adjoint(None), eager.A_adjoint(eager.y_tilde))
    assert len(cbct.calls) == 1  # ỹ formed once, on that first use
    assert torch.equal(lazy.y_tilde, eager.y_tilde)
    assert len(cbct.calls) == 1
    assert not lazy.y_tilde.requires_grad
    with_init = PartitionedPhysics(*args, x_init=cbct.x0)
    assert torch.equal(with_init.initial_reconstruction(None), with_init.crop(cbct.x0))
    assert with_init._buffers["y_tilde"] is None  # the crop of x_init needs no ỹ


def test_state_dict_clone_and_load_keep_y_tilde(cbct, gen):
    """``state_dict()`` carries the eager ỹ; another patch problem (other context, ỹ never
    formed) loading it reconstructs the same, bit for bit; ``clone()`` keeps its own ỹ."""
    args = (cbct.physics, SIZE, (4, 0, 8), PATCH, cbct.y)
    eager = EagerPartitionedPhysics(*args, cbct.x, x_init=cbct.x0)
    lazy = PartitionedPhysics(*args, cbct.x, x_init=cbct.x0)
    state = lazy.state_dict()
    assert torch.equal(state["y_tilde"], eager.y_tilde)
    other = PartitionedPhysics(*args, torch.rand(1, *SIZE, generator=gen), x_init=cbct.x0)
    other.load_state_dict(state)
    assert torch.equal(other.y_tilde, eager.y_tilde)
    model = _model("partition")
    with torch.no_grad():
        assert torch.equal(model(None, other), model(eager.y_tilde, eager))
    twin = PartitionedPhysics(*args, cbct.x).clone()
    assert torch.equal(twin.y_tilde, eager.y_tilde)
    assert twin.y_tilde.data_ptr() != lazy.y_tilde.data_ptr()
