r"""
Fit the diagonal-circulant H for your own operator
==================================================

The partitioned data step needs the normal operator :math:`A^\top A` on a patch. The library
can replace it by a fitted approximation

.. math::

    H = \mathrm{diag}(m)\, F^{-1} \mathrm{diag}(\lambda)\, F \approx A^\top A / \|A\|^2,

learned without any data: Adam on Gaussian probes :math:`x`, minimising
:math:`\|A^\top A x - H x\|^2` (see ``docs/paper-notes.md`` §4.5). On a patch, H is then an FFT
convolution on a grid of twice the patch size, exactly equal to :math:`S H S^\top` (§4.6).

This example fits H for a 3D operator built from deepinv parts, a blur followed by a random
voxel mask (30 % of the voxels missing, as in a deconvolution-inpainting problem). Its
:math:`A^\top A = B^\top M B` is not of the form above, so no H can be exact. The example

1. fits H with the plateau schedule (constant step size, stop when the held-out error stops
   improving) and prints the held-out error curve;
2. computes the error floor, the best any H of this form can do, from exact rows of
   :math:`A^\top A` (:func:`unroll3d.normal.floor.error_floor`), and shows that the fit
   reaches it;
3. wraps the operator in :class:`unroll3d.DiagCirculantWrapper` and measures its error on fresh
   held-out probes;
4. saves the fit and loads it back, checked against the operator it was fitted for;
5. checks that the patch restriction is exact;
6. as a control, builds H for the blur alone with circular boundaries, which H represents
   exactly.

Runs on the CPU in about half a minute.
"""

import tempfile
from pathlib import Path

import torch
from deepinv.physics import Blur, Inpainting

from unroll3d import DiagCirculantWrapper, fit_normal_operator, save_normal
from unroll3d.normal import NormalFileError, operator_hash, relative_error
from unroll3d.normal.floor import error_floor

torch.manual_seed(0)

# %%
# The operator
# ------------
# A 5 × 5 × 5 random positive kernel with zero boundaries, then a mask keeping 70 % of the
# voxels. Any deepinv ``LinearPhysics`` works the same way; the fit only calls ``A_adjoint_A``.

n = 16
img_size = (1, n, n, n)
g = torch.Generator().manual_seed(0)
kernel = torch.rand(1, 1, 5, 5, 5, generator=g)
kernel = kernel / kernel.sum()
blur = Blur(filter=kernel, padding="constant")
mask = (torch.rand(1, n, n, n, generator=g) < 0.7).float()
physics = Inpainting(img_size=img_size, mask=mask) * blur  # A = M B

# %%
# 1. Fit H
# --------
# ``lr_schedule="plateau"`` keeps the learning rate constant until the held-out error (on 8
# probes never used for training) stops improving, then decays it and stops. ``history``
# holds the curve; ``history["sqnorm"]`` is ‖A‖², the scaling H must be multiplied by.

lam, m, history = fit_normal_operator(
    physics,
    img_size,
    n_steps=1500,
    batch=2,
    lr=1e-2,
    heldout=8,
    lr_schedule="plateau",
    eval_every=50,
    seed=0,
    progress=False,
)
curve = history["heldout_rel_error"]
for step, err in list(zip(history["step"], curve, strict=True))[:: max(1, len(curve) // 8)]:
    print(f"  step {step:5d}: held-out relative error {err:.4f}")
fit_error = history["final_heldout_rel_error"]
print(
    f"fit stopped at step {history['stop_step']} ({history['stop_reason']}); "
    f"held-out relative error {fit_error:.4f}"
)

# %%
# 2. The floor
# ------------
# The best one-sided H for this operator, built from 1024 exact rows of AᵀA and measured on
# 256 other rows. The fit cannot go much below it: what remains is model error, not
# optimisation error.

floor = error_floor(physics, img_size, n_rows=1024, n_heldout=256)["heldout_rel_error"]
print(f"error floor of H for this operator: {floor:.4f} (fit − floor = {fit_error - floor:+.4f})")

# %%
# 3. Use H through the wrapper
# ----------------------------
# ``DiagCirculantWrapper`` keeps ``A`` and ``A_adjoint`` exact and answers ``A_adjoint_A``
# with ``scaling · H``. Its error on 16 fresh probes (another seed) matches the fit's.

wrapped = DiagCirculantWrapper(
    physics,
    img_size,
    scaling=history["sqnorm"],
    fourier_filter=lam,
    spatial_mask=m,
    grid=history["grid"],
)
probes = torch.randn(16, *img_size, generator=torch.Generator().manual_seed(123))
with torch.no_grad():
    wrapper_error = relative_error(physics.A_adjoint_A(probes), wrapped.A_adjoint_A(probes))
print(f"wrapper on 16 fresh probes: relative error {wrapper_error:.4f}")

# %%
# 4. Save the fit, load it back
# -----------------------------
# A fit file keeps λ, m, the grid, ‖A‖² and a hash of the operator it was fitted for;
# ``DiagCirculantWrapper.from_file`` refuses an operator with another hash (here: the same blur
# with the complementary mask) instead of silently using a wrong H.

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "H.pt"
    save_normal(
        path,
        lam,
        m,
        img_size,
        scaling=history["sqnorm"],
        history=history,
        operator_hash=operator_hash(physics, img_size),
        grid=history["grid"],
    )
    loaded = DiagCirculantWrapper.from_file(physics, path)
    with torch.no_grad():
        reload_error = relative_error(wrapped.A_adjoint_A(probes), loaded.A_adjoint_A(probes))
    other = Inpainting(img_size=img_size, mask=1 - mask) * blur
    try:
        DiagCirculantWrapper.from_file(other, path)
        refused = "no"
    except NormalFileError as err:
        refused = type(err).__name__
print(f"saved and reloaded H vs the original: relative error {reload_error:.2e}")
print(f"fit loaded for another operator: refused ({refused})")

# %%
# 5. The patch restriction is exact
# ---------------------------------
# ``restrict(start, patch)`` evaluates ``S H Sᵀ`` on a grid of twice the patch size instead of
# the whole volume, with no error.

H = wrapped.normal_op
start, patch = (3, 5, 2), (6, 6, 6)
u = torch.randn(1, 1, *patch)
full = torch.zeros(1, *img_size)
full[..., 3:9, 5:11, 2:8] = u
with torch.no_grad():
    restrict_error = relative_error(H(full)[..., 3:9, 5:11, 2:8], H.restrict(start, patch)(u))
print(f"restricted H vs S H Sᵀ on a 6³ patch: relative error {restrict_error:.2e}")

# %%
# 6. Control: an operator H represents exactly
# --------------------------------------------
# The blur alone with circular boundaries: AᵀA is a circular convolution, so on the circular
# grid (``grid=(n, n, n)``) the fit's starting point, λ from the impulse response and m = 1,
# is already exact (``n_steps=0``). Running Adam from this exact start would first move away
# from it (its first steps have the size of the learning rate whatever the gradient), so for
# an operator known to be a convolution keep ``n_steps=0`` or a small ``lr``.

circular = Blur(filter=kernel, padding="circular")
_, _, exact_history = fit_normal_operator(
    circular, img_size, n_steps=0, heldout=8, grid=(n, n, n), progress=False
)
exact_error = exact_history["final_heldout_rel_error"]
print(f"circular blur (exactly representable): held-out relative error {exact_error:.2e}")
