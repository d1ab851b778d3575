r"""
Train on patches, reconstruct a volume larger than the network could take whole
===============================================================================

An unrolled network puts the operator inside the network: K times a data step
:math:`x - \eta A^\top(Ax - y)` and a learned 3D denoiser. Backpropagating through a 3D CNN
applied to the whole volume K times is what runs out of memory. With
:class:`unroll3d.PartitionedReconstructor` the network only ever sees patches:

* training: :meth:`~unroll3d.PartitionedReconstructor.training_pair` draws a patch, builds the
  exact patch problem with the ground truth as context, and returns (estimate, target) for the
  loss, so the autograd graph is patch-sized;
* inference: overlapping windows (stride = half the patch), each reconstructed with the current
  estimate as context and blended; a first pass takes its context from the initial estimate x0,
  a second one (the refinement of the paper's Algorithm 1) from the first pass's result. (The
  pipeline's own first pass, :func:`unroll3d.engine.reconstruct.reconstruct`, runs the data steps on
  the whole volume and only the network patch by patch.)

This example trains a small :class:`unroll3d.UnrolledPGD` (K = 3, a tiny 3D DRUNet) on 24³
patches of 32³ volumes for a 3D deconvolution-inpainting problem built from deepinv parts, then
reconstructs a 48³ volume, 8 times the patch, and measures

1. that sliding-window inference is exact plumbing: a base that returns its initial patch gives
   the initial volume back;
2. the reconstruction's PSNR against the initial estimate;
3. the peak memory of one training step's autograd graph on a patch and on the whole volume
   (the bytes of the tensors autograd saves for the backward pass): this is what grows with the
   volume and what partitioning caps.

Without gradients the network's working memory is one window's activations; the global
operator still needs a few volume-sized buffers (y, the context, one ``A`` application), as the
paper's data step does. Runs on the CPU in under a minute.
"""

import math

import torch
from deepinv.physics import Blur, Inpainting

from unroll3d import PartitionedReconstructor, UnrolledPGD
from unroll3d.physics import sqnorm

torch.manual_seed(0)


def blobs(n, seed):
    """A volume of a few smooth ellipsoidal blobs in [0, 1] (a stand-in for real data)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n)] * 3, indexing="ij")
    vol = torch.zeros(n, n, n)
    for _ in range(6):
        c = torch.rand(3, generator=g) * 1.4 - 0.7
        r = 0.15 + 0.3 * torch.rand(3, generator=g)
        inside = sum(((a - ci) / ri) ** 2 for a, ci, ri in zip(axes, c, r, strict=True)) < 1
        vol = vol + inside.float() * (0.2 + 0.8 * torch.rand(1, generator=g))
    smooth = torch.nn.functional.avg_pool3d(vol[None, None], 3, stride=1, padding=1)
    return smooth.clamp(0, 1)


def problem(n, seed):
    """Blur (3³ kernel) then a mask keeping 60 % of the voxels, plus 1 % noise."""
    g = torch.Generator().manual_seed(1000 + seed)
    kernel = torch.ones(1, 1, 3, 3, 3) / 27
    mask = (torch.rand(1, n, n, n, generator=g) < 0.6).float()
    physics = Inpainting(img_size=(1, n, n, n), mask=mask) * Blur(kernel, padding="constant")
    x = blobs(n, seed)
    y = physics.A(x) + 0.01 * torch.randn(x.shape, generator=g)
    x0 = physics.A_adjoint(y)  # a cheap initial estimate, passed explicitly below
    return x, y, physics, x0


def psnr(estimate, truth):
    return float(10 * torch.log10(truth.max() ** 2 / torch.mean((estimate - truth) ** 2)))


# %%
# The model and the partitioner
# -----------------------------
# ``UnrolledPGD`` normalises its step sizes by ‖A‖² (``lipschitz``). The partitioner is built
# for the training volume size; a second one wraps the same model for the large volume.

n_train, n_test, patch = 32, 48, 24
train_set = [problem(n_train, seed) for seed in range(4)]
lipschitz = sqnorm(train_set[0][2], img_size=(1, n_train, n_train, n_train), max_iter=500)
model = UnrolledPGD(K=3, channels=1, nc=(8, 16, 16, 16), nb=1, lipschitz=lipschitz, residual=True)
train_partitioner = PartitionedReconstructor(model, (1, n_train, n_train, n_train), patch)

# %%
# 1. Sliding windows are exact plumbing
# -------------------------------------
# On the large volume: a base that returns the crop of its initial volume must blend back to
# that volume exactly.

x_test, y_test, physics_test, x0_test = problem(n_test, seed=99)
identity = PartitionedReconstructor(
    lambda y, physics, **kw: physics.initial_reconstruction(y), (1, n_test, n_test, n_test), patch
)
identity_error = float(
    (identity(y_test, physics_test, x0=x0_test) - x0_test).norm() / x0_test.norm()
)
print(f"identity through {len(identity.starts)} windows: relative error {identity_error:.2e}")

# %%
# 2. Train on patches
# -------------------
# 80 Adam steps, one random 24³ patch per step, ground truth as context.

optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
losses = []
for step in range(80):
    x, y, physics, x0 = train_set[step % len(train_set)]
    estimate, target = train_partitioner.training_pair(y, physics, x, generator=generator, x0=x0)
    loss = torch.mean((estimate - target) ** 2)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    losses.append(loss.item())
print(
    f"training loss: first 10 steps {sum(losses[:10]) / 10:.5f}, last 10 {sum(losses[-10:]) / 10:.5f}"
)

# %%
# 3. Reconstruct the large volume
# -------------------------------
# A first patch-wise pass with ``x0`` as context, then one refinement pass with that estimate as
# context; 2 × 27 windows of 24³ on the 48³ volume.

model.eval()
test_partitioner = PartitionedReconstructor(model, (1, n_test, n_test, n_test), patch)
with torch.no_grad():
    reconstruction = test_partitioner(y_test, physics_test, x0=x0_test)
psnr_x0, psnr_rec = psnr(x0_test, x_test), psnr(reconstruction, x_test)
print(f"48³ volume: PSNR of x0 {psnr_x0:.2f} dB, partitioned reconstruction {psnr_rec:.2f} dB")

# %%
# 4. Peak training memory: the autograd graph on a patch and on the whole volume
# -------------------------------------------------------------------------
# Count the bytes of every tensor autograd saves for the backward pass during one forward
# pass. The global operators inside the patch problem save nothing (their backward is the
# adjoint), so the patch graph is the network's graph on the patch alone.

model.train()


def saved_bytes(run):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total


x, y, physics, x0 = train_set[0]
patch_graph = saved_bytes(lambda: train_partitioner.training_pair(y, physics, x, x0=x0))
whole_graph = saved_bytes(lambda: model(y_test, physics_test, x_init=x0_test))
print(
    f"autograd graph of one training step: 24³ patch {patch_graph / 1e6:.1f} MB, "
    f"whole 48³ volume {whole_graph / 1e6:.1f} MB ({whole_graph / patch_graph:.0f}x, "
    f"volume ratio {math.prod([n_test] * 3) / patch**3:.0f}x)"
)
