"""The error floor of H: the best one-sided H of the paper's form for a given operator, from
exact rows of AᵀA (:func:`error_floor`), the floor any fit of H can reach on white probes
(``unroll3d fit-normal`` reports a fit's gap to it)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from unroll3d.normal.operator import check_img_size

__all__ = ["error_floor"]


def error_floor(
    physics: LinearPhysics,
    img_size: Sequence[int],
    n_rows: int = 1536,
    n_heldout: int = 256,
    fit_mask: bool = True,
    iterations: int = 2,
    batch: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    terms: Sequence[int] = (),
) -> dict[str, Any]:
    r"""Best one-sided H = diag(m) C for ``physics``, found from exact rows of AᵀA, not probes.

    ``E_x ‖AᵀAx − Hx‖²`` over white x is ``‖AᵀA − H‖_F²``, a sum over rows. Row i of H is
    :math:`m_i h[i - j]` (linear convolution, every offset free), so the least-squares optimum
    alternates two closed forms: :math:`h[\delta] = \sum_i m_i M_{i,i-\delta} / \sum_i m_i^2`
    over the sampled voxels i, and :math:`m_i = \langle M_i, h[i-\cdot]\rangle / \|h[i-\cdot]\|^2`.
    The rows :math:`M_i = A^\top A e_i` of ``n_rows`` seeded random voxels give h; the error is
    then measured on ``n_heldout`` other rows with their own optimal :math:`m_i`. No fitted H
    of this form can do much better than ``heldout_rel_error`` (it is an estimate of the floor of
    the relative error on held-out Gaussian probes that :func:`fit_normal_operator` reports), so it
    separates what the model cannot represent from what the optimiser has not yet found.

    Real images only (``img_size = (1, D, H, W)``). Cost: ``n_rows + n_heldout`` applications of
    AᵀA and that many volumes in float32 memory (235 MB at 32³ with the defaults).

    ``terms`` (e.g. ``(2, 8, 64)``) also bounds richer models that keep the exact patch crop, sums
    :math:`\sum_{k\le K} \mathrm{diag}(m_k) F^{-1}\mathrm{diag}(\lambda_k) F`: the one-term
    optimum plus K − 1 terms from the SVD of its residual rows (an upper bound on the best K-term
    error; memory: one more float32 array of (rows, (2D−1)(2H−1)(2W−1)), 1.8 GB at 32³).

    :return: ``heldout_rel_error``, ``train_rel_error`` (on the rows h was built from),
        ``sum_of_terms_heldout_rel_error`` ({K: bound}), ``n_rows``, ``n_heldout``, ``fit_mask``,
        ``seconds``.
    """
    img_size = check_img_size(img_size)
    if img_size[0] != 1:
        raise ValueError(f"error_floor handles real images (1, D, H, W), got {img_size}")
    spatial = img_size[1:]
    n_vox = math.prod(spatial)
    if n_rows < 1 or n_heldout < 1 or n_rows + n_heldout > n_vox:
        raise ValueError(f"need 1 ≤ n_rows, n_heldout and n_rows + n_heldout ≤ {n_vox} voxels")
    terms = sorted({int(t) for t in terms})
    if any(not 1 <= k <= n_rows + 1 for k in terms):
        raise ValueError(f"terms must lie in [1, n_rows + 1 = {n_rows + 1}], got {terms}")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n_vox, generator=g)[: n_rows + n_heldout]
    rows = []
    with torch.no_grad():
        for b in range(0, len(idx), batch):
            chunk = idx[b : b + batch]
            e = torch.zeros(len(chunk), n_vox)
            e[torch.arange(len(chunk)), chunk] = 1.0
            out = physics.A_adjoint_A(e.view(-1, *img_size).to(device))
            rows.append(out.reshape(len(chunk), n_vox).float().cpu())
    M = torch.cat(rows)
    M = M / M.norm(dim=1).mean().clamp_min(1e-30)

    offset_grid = tuple(2 * n - 1 for n in spatial)
    voxel = torch.stack(torch.unravel_index(torch.arange(n_vox), spatial), 1)
    centre = torch.tensor([n - 1 for n in spatial])
    strides = torch.tensor([offset_grid[1] * offset_grid[2], offset_grid[2], 1])
    row_voxel = torch.stack(torch.unravel_index(idx, spatial), 1)

    def offsets(r: int) -> torch.Tensor:  # linear index of i − j for every voxel j
        return ((row_voxel[r] - voxel + centre) * strides).sum(1)

    m = torch.ones(len(idx), dtype=torch.float64)
    kernel = torch.zeros(math.prod(offset_grid), dtype=torch.float64)
    errors = {}
    for _ in range(max(1, int(iterations))):
        acc = torch.zeros_like(kernel)
        weight = torch.zeros_like(kernel)
        for r in range(n_rows):
            d = offsets(r)
            acc.index_add_(0, d, m[r] * M[r].double())
            weight.index_add_(0, d, torch.full((n_vox,), float(m[r] ** 2), dtype=torch.float64))
        kernel = acc / weight.clamp_min(1e-30)
        num = {"train": 0.0, "heldout": 0.0}
        den = {"train": 0.0, "heldout": 0.0}
        for r in range(len(idx)):
            h_row = kernel[offsets(r)]
            row = M[r].double()
            if fit_mask:
                m[r] = (row @ h_row) / (h_row @ h_row).clamp_min(1e-30)
            part = "train" if r < n_rows else "heldout"
            num[part] += float(((row - m[r] * h_row) ** 2).sum())
            den[part] += float((row**2).sum())
        errors = {k: math.sqrt(num[k] / max(den[k], 1e-30)) for k in num}
    sums = {}
    if terms:
        # K-term sums Σ_k diag(m_k) C_k: this one-term H plus K − 1 terms from the SVD of its
        # residual rows, laid on the offset grid (zero where an offset leaves the volume). The
        # result is an achievable K-term H, so its held-out error bounds the best one from above.
        resid = torch.zeros(len(idx), math.prod(offset_grid), dtype=torch.float32)
        for r in range(len(idx)):
            d = offsets(r)
            resid[r, d] = (M[r].double() - m[r] * kernel[d]).float()
        train, held = resid[:n_rows], resid[n_rows:]
        eigval, eigvec = torch.linalg.eigh((train @ train.T).double())
        order = torch.argsort(eigval, descending=True)
        eigval, eigvec = eigval[order].clamp_min(1e-30), eigvec[:, order]
        held_sq = float((held * held).sum(dtype=torch.float64))
        for k in terms:
            basis = (train.T @ eigvec[:, : k - 1].float()) / eigval[: k - 1].sqrt().float()
            kept = float(((held @ basis) ** 2).sum(dtype=torch.float64))
            sums[k] = math.sqrt(max(held_sq - kept, 0.0) / max(den["heldout"], 1e-30))
    return {
        "heldout_rel_error": errors["heldout"],
        "sum_of_terms_heldout_rel_error": sums,
        "train_rel_error": errors["train"],
        "n_rows": int(n_rows),
        "n_heldout": int(n_heldout),
        "fit_mask": bool(fit_mask),
        "seconds": time.perf_counter() - t0,
    }
