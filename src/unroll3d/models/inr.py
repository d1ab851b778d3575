"""INR[3D], the per-volume baseline of Table 1: an instant-NGP-style implicit neural representation.

A multi-resolution hash-grid encoding (Müller et al. 2022) written in plain torch (tiny-cuda-nn is
CUDA-only), a small ReLU MLP, and :func:`fit_inr`, which fits both to the measurements of one
volume through the forward operator, loss ‖A f_θ − y‖² / ‖y‖², with no training data.
:class:`INRReconstructor` wraps the fit in the project's ``(y, physics, x_init)`` contract.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from deepinv.models import Reconstructor
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "PRIMES",
    "HashGridEncoding",
    "HashGridINR",
    "INRReconstructor",
    "fit_inr",
    "hash_index",
    "voxel_coords",
]

#: instant-NGP's spatial-hash primes, one per axis
PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF
#: the 8 corners of a cell, offsets (8, 3) in {0, 1}³
_CORNERS = tuple(itertools.product((0, 1), repeat=3))


def hash_index(corners: torch.Tensor, table_size: int) -> torch.Tensor:
    """instant-NGP's spatial hash of integer grid vertices ``(..., 3)``: the XOR over axes of
    coordinate × prime in uint32 arithmetic (wraparound), modulo ``table_size``; int64 out."""
    corners = corners.long()
    h = torch.zeros(corners.shape[:-1], dtype=torch.int64, device=corners.device)
    for axis, prime in enumerate(PRIMES):
        h = h ^ ((corners[..., axis] * prime) & _U32)
    return h % table_size


def voxel_coords(flat_index: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel centres ``(i + 0.5) / n`` per axis, in [0, 1]³, of C-order flat indices into
    ``shape`` = (D, H, W): ``(N, 3)`` float32, axes in (D, H, W) order."""
    out, rest = [], flat_index.long()
    for n in reversed(tuple(shape)):
        out.append((rest % n).float().add_(0.5).div_(n))
        rest = rest // n
    return torch.stack(out[::-1], dim=-1)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding of coordinates in [0, 1]³ (instant-NGP).

    Level l has resolution N_l = ⌊N_min b^l⌋ (times ``aspect`` per axis, for anisotropic volumes),
    b = exp((ln N_max − ln N_min)/(L − 1)). A point's feature at a level is the trilinear
    interpolation of the table entries at the 8 corners of its cell; a level whose dense grid
    (N_l + 1)³ fits in T = 2^log2_table_size entries indexes it densely (no collisions), a finer
    one through :func:`hash_index`. Output: the L levels' features concatenated, (N, L·F).

    Rows are gathered with ``embedding``, whose CPU backward sums each row's gradient in index
    order whatever the thread count; ``table[rows]``'s backward (``index_put_`` accumulate) adds
    with float atomics on more than one thread, so fits differed run to run (same forward).

    :param aspect: per-axis factor on the resolutions (e.g. n_axis / max(n)), default isotropic.
    :param generator: seeds the table's uniform ±``init_scale`` initialisation.
    """

    def __init__(
        self,
        levels: int = 16,
        features: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        finest_resolution: int = 512,
        aspect: Sequence[float] = (1.0, 1.0, 1.0),
        init_scale: float = 1e-4,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if levels < 1 or features < 1 or base_resolution < 1:
            raise ValueError("levels, features and base_resolution must be positive")
        if finest_resolution < base_resolution or len(aspect) != 3:
            raise ValueError("need finest_resolution >= base_resolution and 3 aspect factors")
        self.levels, self.features = int(levels), int(features)
        self.table_size = 2 ** int(log2_table_size)
        self.growth = (
            math.exp((math.log(finest_resolution) - math.log(base_resolution)) / (levels - 1))
            if levels > 1
            else 1.0
        )
        self.resolutions: list[tuple[int, int, int]] = []
        self.dense: list[bool] = []
        self.offsets = [0]  # start of each level's rows in the table
        for level in range(self.levels):
            n = base_resolution * self.growth**level
            res = tuple(max(1, math.floor(n * a + 1e-6)) for a in aspect)
            size = math.prod(r + 1 for r in res)
            self.resolutions.append(res)
            self.dense.append(size <= self.table_size)
            self.offsets.append(self.offsets[-1] + min(size, self.table_size))
        table = torch.empty(self.offsets[-1], self.features)
        self.table = nn.Parameter(table.uniform_(-init_scale, init_scale, generator=generator))
        self.register_buffer("corners", torch.tensor(_CORNERS), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def index(self, level: int, vertices: torch.Tensor) -> torch.Tensor:
        """Row of integer grid vertices ``(..., 3)`` within ``level``'s part of the table, in
        [0, T): dense (x + (r_x+1)(y + (r_y+1) z)) where the grid fits, else hashed."""
        vertices = vertices.long()
        if self.dense[level]:
            rx, ry, _ = self.resolutions[level]
            return vertices[..., 0] + (rx + 1) * (vertices[..., 1] + (ry + 1) * vertices[..., 2])
        return hash_index(vertices, self.table_size)

    def cell(self, level: int, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 8 corner vertices ``(N, 8, 3)`` of each point's cell at ``level`` and their
        trilinear weights ``(N, 8)``; coordinates are clamped to [0, 1]."""
        res = torch.tensor(self.resolutions[level], dtype=coords.dtype, device=coords.device)
        pos = coords.clamp(0.0, 1.0) * res
        base = torch.minimum(pos.floor(), res - 1)  # the upper face belongs to the last cell
        frac = (pos - base)[:, None, :]
        w = torch.where(self.corners.bool(), frac, 1.0 - frac).prod(-1)
        return base.long()[:, None, :] + self.corners, w

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode ``coords`` (N, 3) in [0, 1]³ -> (N, levels · features)."""
        if coords.ndim != 2 or coords.shape[-1] != 3:
            raise ValueError(f"coords must be (N, 3); got {tuple(coords.shape)}")
        coords = coords.to(self.table.dtype)
        out = []
        for level in range(self.levels):
            vertices, w = self.cell(level, coords)
            rows = self.index(level, vertices) + self.offsets[level]
            out.append((w[..., None] * nn.functional.embedding(rows, self.table)).sum(1))
        return torch.cat(out, dim=-1)


class HashGridINR(nn.Module):
    """f_θ: [0, 1]³ -> R^C, a :class:`HashGridEncoding` then a ReLU MLP (``layers`` hidden layers
    of ``hidden`` units, linear output scaled by ``out_scale``).

    :param encoding: keyword arguments of :class:`HashGridEncoding`.
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 64,
        layers: int = 2,
        out_scale: float = 1.0,
        **encoding: Any,
    ):
        super().__init__()
        self.channels = int(channels)
        self.encoding = HashGridEncoding(**encoding)
        dims = [self.encoding.out_dim] + [int(hidden)] * int(layers)
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*mods, nn.Linear(dims[-1], self.channels))
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """(N, 3) coordinates -> (N, C) values."""
        return self.out_scale * self.mlp(self.encoding(coords))

    def render(
        self, shape: Sequence[int], chunk: int = 2**18, checkpoint: bool | None = None
    ) -> torch.Tensor:
        """The volume ``(1, C, D, H, W)`` at the voxel centres, ``chunk`` voxels at a time.

        Gradients flow through it. With gradients on and more than one chunk, each chunk is
        checkpointed (``checkpoint=None``: automatic), so a chunk's encoding temporaries are
        recomputed in the backward pass instead of being kept: memory ~ the output + one chunk.
        """
        shape = tuple(int(n) for n in shape)
        n = math.prod(shape)
        dev = self.encoding.table.device
        if checkpoint is None:
            checkpoint = torch.is_grad_enabled() and n > chunk
        parts = []
        for start in range(0, n, chunk):
            coords = voxel_coords(torch.arange(start, min(start + chunk, n), device=dev), shape)
            parts.append(
                _checkpoint(self, coords, use_reentrant=False) if checkpoint else self(coords)
            )
        return torch.cat(parts).T.reshape(1, self.channels, *shape)


def _sqnorm(t: Any) -> torch.Tensor:
    """‖t‖² of a (real or complex) tensor, or of a deepinv TensorList / sequence of tensors."""
    if isinstance(t, torch.Tensor):
        return (t.abs() ** 2).sum() if t.is_complex() else (t * t).sum()
    return sum(_sqnorm(u) for u in getattr(t, "x", t))


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean absolute forward difference, summed over the 3 spatial axes."""
    return sum((x.diff(dim=d).abs().mean() for d in (2, 3, 4)), torch.zeros((), device=x.device))


def _check(loss: torch.Tensor, step: int, phase: str) -> None:
    if not torch.isfinite(loss):
        raise ValueError(
            f"fit_inr: non-finite loss {float(loss.detach())} at step {step} ({phase}); "
            "check y, the physics and the learning rate"
        )


def _adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with instant-NGP's β = (0.9, 0.99) and ε = 1e-15."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)


def fit_inr(
    y: Any,
    physics: Any,
    shape: Sequence[int],
    channels: int,
    steps: int,
    lr: float = 1e-2,
    seed: int = 0,
    x_init: torch.Tensor | None = None,
    init_steps: int = 100,
    batch_voxels: int | None = None,
    tv_weight: float = 0.0,
    *,
    hidden: int = 64,
    layers: int = 2,
    lr_min_ratio: float = 0.1,
    chunk: int = 2**18,
    **encoding: Any,
) -> tuple[torch.Tensor, list[float]]:
    """Fit a :class:`HashGridINR` to measurements ``y`` of one volume: min_θ ‖A f_θ − y‖²/‖y‖²
    (+ ``tv_weight`` · TV(f_θ / s)), Adam (β 0.9/0.99, ε 1e-15) with cosine decay from ``lr`` to
    ``lr_min_ratio · lr`` over ``steps``; A = ``physics.A`` on the (1, C, D, H, W) float32 image.

    Warm start: with ``x_init``, first ``init_steps`` Adam steps fit f_θ to x_init (on
    ``batch_voxels`` random voxels per step if given, else the whole volume), and the output scale
    s is max|x_init| (else 1). The resolutions follow ``shape``'s aspect ratio unless ``aspect`` is
    given; other ``encoding`` keywords go to :class:`HashGridEncoding`. Seeded without touching the
    global RNG state; gradients are enabled even under ``torch.no_grad()``.

    :return: the fitted volume (1, C, D, H, W), detached, and the ``steps`` data-fit losses (each
        step's objective before its update).
    :raises ValueError: on a non-finite loss, naming the step.
    """
    shape = tuple(int(n) for n in shape)
    device = y.device if isinstance(y, torch.Tensor) else getattr(x_init, "device", "cpu")
    scale = 1.0
    if x_init is not None:
        x_init = x_init.detach().to(device=device, dtype=torch.float32)
        if tuple(x_init.shape) != (1, channels, *shape):
            raise ValueError(f"x_init must be {(1, channels, *shape)}; got {tuple(x_init.shape)}")
        scale = float(x_init.abs().max()) or 1.0
    encoding.setdefault("aspect", tuple(n / max(shape) for n in shape))
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the MLP's init; the global CPU RNG is restored
        torch.random.default_generator.manual_seed(seed)
        model = HashGridINR(channels, hidden, layers, scale, generator=g, **encoding)
    model = model.to(device)
    with torch.enable_grad():
        if x_init is not None and init_steps > 0:
            _warm_start(model, x_init, shape, init_steps, lr, batch_voxels, chunk, g)
        opt = _adam(model, lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda k: (
                lr_min_ratio
                + (1 - lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * k / max(steps, 1)))
            ),
        )
        ynorm = _sqnorm(y).detach()
        ynorm = ynorm if float(ynorm) != 0.0 else torch.ones_like(ynorm)  # NaN stays NaN
        history: list[float] = []
        for step in range(steps):
            x = model.render(shape, chunk)
            loss = _sqnorm(physics.A(x) - y) / ynorm
            if tv_weight:
                loss = loss + tv_weight * _tv(x / scale)
            _check(loss, step, "data fit")
            history.append(float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return model.render(shape, chunk), history


def _warm_start(model, x_init, shape, steps, lr, batch_voxels, chunk, g) -> None:
    """``steps`` Adam steps of ‖f_θ − x_init‖² / ‖x_init‖² (whole volume or random voxels)."""
    opt = _adam(model, lr)
    n = math.prod(shape)
    flat = x_init.reshape(model.channels, n).T  # (n, C)
    denom = (flat * flat).mean().clamp_min(1e-30)
    for step in range(steps):
        if batch_voxels and batch_voxels < n:
            idx = torch.randint(n, (int(batch_voxels),), generator=g).to(x_init.device)
            err = model(voxel_coords(idx, shape)) - flat[idx]
        else:
            err = model.render(shape, chunk).reshape(model.channels, n).T - flat
        loss = (err * err).mean() / denom
        _check(loss, step, "warm start on x_init")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class INRReconstructor(Reconstructor):
    """INR[3D] of Table 1 as a reconstructor: :func:`fit_inr` per call, no stored weights.

    ``forward(y, physics, x_init=None)`` fits a fresh INR to ``y`` (warm-started from ``x_init``
    when given, whose shape sets the volume's; else the shape of ``physics.A_adjoint(y)``) and
    returns the volume. It fits under ``torch.no_grad()`` too. ``self.history`` keeps the last
    fit's losses. Keywords not named here go to :class:`HashGridEncoding`.
    """

    def __init__(
        self,
        steps: int = 300,
        lr: float = 1e-2,
        init_steps: int = 100,
        tv_weight: float = 0.0,
        seed: int = 0,
        hidden: int = 64,
        layers: int = 2,
        batch_voxels: int | None = None,
        chunk: int = 2**18,
        **encoding: Any,
    ):
        super().__init__()
        self.config = dict(
            steps=int(steps),
            lr=float(lr),
            init_steps=int(init_steps),
            tv_weight=float(tv_weight),
            seed=int(seed),
            hidden=int(hidden),
            layers=int(layers),
            batch_voxels=batch_voxels,
            chunk=int(chunk),
            **encoding,
        )
        self.history: list[float] = []

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        if x_init is None:
            with torch.no_grad():
                ref = physics.A_adjoint(y)
            channels, shape = ref.shape[1], tuple(ref.shape[2:])
        else:
            channels, shape = x_init.shape[1], tuple(x_init.shape[2:])
        with torch.enable_grad():
            vol, self.history = fit_inr(y, physics, shape, channels, x_init=x_init, **self.config)
        return vol
