"""Cone-beam CT as a :class:`deepinv.physics.LinearPhysics` with ASTRA ``cone_vec`` geometry.

One geometry convention for both backends (see :mod:`unroll3d.physics.rtk` for the exact
definition): ``vectors`` is an ``(n_views, 12)`` array of ASTRA ``cone_vec`` rows (source,
detector centre, detector ``u`` step along a row, ``v`` step along a column), in the length unit
of ``voxel_size`` (``voxel_size=1``: voxel units; Walnut ``.geom`` files in mm go with
``voxel_size=0.1``), with the volume centred at the origin. Volumes are ``(B, 1, D, H, W)`` =
``(z, y, x)``; measurements are ``(B, 1, n_views, rows, cols)``. Line integrals are in the same
length unit, so a ray crossing a unit-valued cube of side ``L`` gives ``L``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from .norm import operator_norm

__all__ = ["ConeBeam", "circular_vectors", "cuda_astra_available", "operator_norm"]


def circular_vectors(
    n_views: int,
    source_origin: float,
    origin_detector: float,
    det_spacing=1.0,
    angles=None,
) -> np.ndarray:
    """ASTRA ``cone_vec`` rows of a circular orbit about the z axis (ASTRA's ``cone`` geometry).

    View ``θ``: source ``(sin θ, -cos θ, 0)·SO``, detector centre ``(-sin θ, cos θ, 0)·OD``,
    ``u = (cos θ, sin θ, 0)·du``, ``v = (0, 0, dv)`` (ASTRA's own ``cone`` → ``cone_vec``
    conversion).

    :param int n_views: number of views.
    :param float source_origin: source to rotation axis distance (SO).
    :param float origin_detector: rotation axis to detector distance (OD).
    :param det_spacing: detector pixel size, a float or ``(dv, du)`` = (row step, column step).
    :param angles: angles in radians; default ``n_views`` equispaced over ``[0, 2π)``.
    :return: ``(n_views, 12)`` float64 array.
    """
    if angles is None:
        angles = np.linspace(0.0, 2 * np.pi, int(n_views), endpoint=False)
    angles = np.asarray(angles, dtype=np.float64).reshape(-1)
    if len(angles) != int(n_views):
        raise ValueError(f"got {len(angles)} angles for n_views={n_views}")
    if np.ndim(det_spacing) == 0:
        dv = du = float(det_spacing)
    else:
        dv, du = (float(t) for t in det_spacing)
    c, s = np.cos(angles), np.sin(angles)
    z = np.zeros_like(angles)
    return np.stack(
        [
            s * source_origin,
            -c * source_origin,
            z,
            -s * origin_detector,
            c * origin_detector,
            z,
            c * du,
            s * du,
            z,
            z,
            z,
            z + dv,
        ],
        axis=1,
    )


def cuda_astra_available() -> bool:
    """True when CUDA is available and astra-toolbox imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import astra  # noqa: F401
    except ImportError:
        return False
    return True


def _default_det_shape(vectors: np.ndarray, vol_shape, voxel_size: float) -> tuple[int, int]:
    """Smallest centred detector on which every volume corner lands, in every view."""
    d_, h_, w_ = vol_shape
    # (N + 1) / 2: linear interpolation reaches half a voxel beyond the volume's faces
    half = (np.array([w_, h_, d_], dtype=np.float64) + 1) * voxel_size / 2
    corners = np.array(
        [
            [sx * half[0], sy * half[1], sz * half[2]]
            for sx in (-1, 1)
            for sy in (-1, 1)
            for sz in (-1, 1)
        ]
    )
    max_c = max_r = 0.0
    for row in vectors:
        s, d, u, v = row[0:3], row[3:6], row[6:9], row[9:12]
        n = np.cross(u, v)
        for p in corners:
            t = np.dot(d - s, n) / np.dot(p - s, n)
            q = s + t * (p - s) - d
            cu, cv = np.linalg.lstsq(np.stack([u, v], 1), q, rcond=None)[0]
            max_c, max_r = max(max_c, abs(cu)), max(max_r, abs(cv))
    return 2 * math.ceil(max_r) + 1, 2 * math.ceil(max_c) + 1


def _vmap_by_loop(fn, in_dims, t, op):
    """vmap rule of a projector: apply ``fn`` to each slice along the vmapped dimension."""
    bdim = in_dims[0]
    if bdim is None:  # only a non-tensor argument is batched: nothing to map over
        return fn(t, op), None
    return torch.stack([fn(s, op) for s in t.unbind(bdim)]), 0


def _linear_function(name: str, raw: str, doc: str) -> type[torch.autograd.Function]:
    """An autograd Function computing ``op.<raw>(t)`` with no graph. Linear: its jvp is itself,
    its vmap a loop over the batch, its backward the Function named by its ``adjoint``
    attribute (set once both exist), so every derivative is the exact adjoint."""

    def forward(t, op):
        return getattr(op, raw)(t)

    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    def backward(ctx, grad):
        return cls.adjoint.apply(grad, ctx.op), None

    def jvp(ctx, tangent, _):
        return cls.apply(tangent, ctx.op)

    def vmap(info, in_dims, t, op):
        return _vmap_by_loop(cls.apply, in_dims, t, op)

    rules = {"forward": forward, "setup_context": setup_context, "backward": backward}
    rules.update(jvp=jvp, vmap=vmap)
    body = {k: staticmethod(f) for k, f in rules.items()}
    cls = type(name, (torch.autograd.Function,), {"__doc__": doc, **body})
    return cls


_Project = _linear_function(
    "_Project", "_forward_raw", "``A x`` (raw projector); its derivative is :class:`_BackProject`."
)
_BackProject = _linear_function(
    "_BackProject", "_adjoint_raw", "``Aᵀ y`` (raw back projector); its derivative is ``A``."
)
_Project.adjoint, _BackProject.adjoint = _BackProject, _Project


class ConeBeam(LinearPhysics):
    r"""3D cone-beam CT :math:`y = s\,Ax` with per-view ASTRA ``cone_vec`` geometry.

    :math:`A` is the Joseph projector (rtk backend, CPU) or astra's ray-driven projector (astra
    backend, CUDA); :math:`s` is a scale (1 unless :meth:`normalize_` was called) stored as a
    buffer together with the geometry vectors. ``A`` and ``A_adjoint`` are differentiable
    (autograd's gradient of one is the other, also under ``torch.func`` transforms).
    ``A_dagger`` is deepinv's least-squares pseudo-inverse (``solver=``, ``max_iter=``, ``tol=``);
    :meth:`fdk` is the analytical reconstruction, the pipeline's initial estimate.

    :param vectors: ``(n_views, 12)`` ASTRA ``cone_vec`` geometry, in the unit of ``voxel_size``.
    :param tuple img_size: ``(1, D, H, W)`` or ``(D, H, W)``.
    :param float voxel_size: voxel size (length unit of ``vectors`` and of line integrals).
    :param tuple det_shape: ``(rows, cols)``; ``None`` picks the smallest centred detector that
        sees the whole volume.
    :param str backend: ``"rtk"`` (CPU), ``"astra"`` (CUDA only) or ``"auto"`` (astra when CUDA
        and astra are available, else rtk).
    :param int views_per_chunk: project at most this many views at a time (memory).
    :param int num_threads: threads for RTK (``None``: ITK's default).

    :Example:

    >>> import torch
    >>> from unroll3d.physics import ConeBeam
    >>> physics = ConeBeam.circular(8, (8, 8, 8), 30.0, 10.0, det_shape=(12, 12), backend="rtk")
    >>> physics.A(torch.ones(1, 1, 8, 8, 8)).shape
    torch.Size([1, 1, 8, 12, 12])
    """

    def __init__(
        self,
        vectors,
        img_size,
        voxel_size: float = 1.0,
        det_shape=None,
        backend: str = "auto",
        views_per_chunk: int | None = None,
        num_threads: int | None = None,
        device="cpu",
        **kwargs,
    ):
        img_size = tuple(int(n) for n in img_size)
        if len(img_size) == 3:
            img_size = (1, *img_size)
        if len(img_size) != 4 or img_size[0] != 1:
            raise ValueError(f"img_size must be (1, D, H, W) or (D, H, W); got {img_size}")
        super().__init__(img_size=img_size, **kwargs)
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().to("cpu", torch.float64).numpy()
        vec = torch.as_tensor(np.asarray(vectors, dtype=np.float64))
        if vec.ndim != 2 or vec.shape[1] != 12:
            raise ValueError(f"vectors must have shape (n_views, 12); got {tuple(vec.shape)}")
        if voxel_size <= 0:
            raise ValueError(f"voxel_size must be positive; got {voxel_size}")
        self.voxel_size = float(voxel_size)
        if det_shape is None:
            det_shape = _default_det_shape(vec.numpy(), img_size[1:], self.voxel_size)
        self.det_shape = tuple(int(n) for n in det_shape)
        if len(self.det_shape) != 2 or min(self.det_shape) < 1:
            raise ValueError(f"det_shape must be (rows, cols) of positive ints; got {det_shape}")
        self.register_buffer("vectors", vec)
        self.register_buffer("scale", torch.tensor(1.0, dtype=torch.float64))
        self.backend = self._resolve_backend(backend)
        self.views_per_chunk = views_per_chunk
        self.num_threads = num_threads
        self._backend_cache = None
        self.to(device)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def circular(
        cls,
        n_views: int,
        img_size,
        source_origin: float,
        origin_detector: float,
        det_shape=None,
        det_spacing=1.0,
        voxel_size: float = 1.0,
        angles=None,
        backend: str = "auto",
        **kwargs,
    ) -> ConeBeam:
        """Circular orbit about the z axis; distances and ``det_spacing`` in voxel-size units.

        See :func:`circular_vectors` for the geometry.
        """
        vectors = circular_vectors(n_views, source_origin, origin_detector, det_spacing, angles)
        return cls(vectors, img_size, voxel_size, det_shape, backend=backend, **kwargs)

    @staticmethod
    def _resolve_backend(backend: str) -> str:
        if backend not in ("auto", "rtk", "astra"):
            raise ValueError(f"backend must be 'auto', 'rtk' or 'astra'; got {backend!r}")
        if backend == "auto":
            return "astra" if cuda_astra_available() else "rtk"
        if backend == "astra" and not torch.cuda.is_available():
            raise RuntimeError(
                "backend='astra' needs CUDA: astra-toolbox's 3D cone-beam projectors only run on "
                "a GPU. Use backend='rtk' (CPU) or backend='auto'."
            )
        return backend

    @property
    def n_views(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def meas_shape(self) -> tuple[int, int, int, int]:
        """``(1, n_views, rows, cols)``, the measurement shape without the batch dimension."""
        return (1, self.n_views, *self.det_shape)

    def _backend_key(self):
        return (self.backend, self.vectors.detach().cpu().numpy().tobytes(), self.voxel_size)

    def _get_backend(self):
        key = self._backend_key()
        if self._backend_cache is None or self._backend_cache[0] != key:
            vecs = self.vectors.detach().cpu().numpy()
            if self.backend == "rtk":
                from .rtk import RTKConeBeamBackend

                impl = RTKConeBeamBackend(
                    vecs,
                    self.img_size[1:],
                    self.voxel_size,
                    self.det_shape,
                    views_per_chunk=self.views_per_chunk,
                    num_threads=self.num_threads,
                )
            else:
                from .astra import AstraConeBeamBackend

                impl = AstraConeBeamBackend(
                    vecs,
                    self.img_size[1:],
                    self.voxel_size,
                    self.det_shape,
                    views_per_chunk=self.views_per_chunk,
                )
            self._backend_cache = (key, impl)
        return self._backend_cache[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_backend_cache"] = None
        return state

    # ---- raw (non-autograd) operators --------------------------------------------------
    def _check(self, t: torch.Tensor, shape, name: str):
        if t.ndim != 5 or tuple(t.shape[1:]) != tuple(shape):
            raise ValueError(
                f"ConeBeam.{name} expects a (B, {', '.join(map(str, shape))}) tensor; "
                f"got {tuple(t.shape)}"
            )

    def _run_backend(self, t: torch.Tensor, fn_name: str, out_shape) -> torch.Tensor:
        impl = self._get_backend()
        fn = getattr(impl, fn_name)
        scale = float(self.scale)
        if self.backend == "astra":
            out = torch.stack([fn(t[b, 0].float()) for b in range(t.shape[0])])[:, None]
            return (out * scale).to(device=t.device, dtype=t.dtype)
        arr = t.detach().to("cpu", torch.float32).numpy()
        out = np.stack([fn(arr[b, 0]) for b in range(arr.shape[0])])[:, None]
        if scale != 1.0:
            out *= scale
        return torch.from_numpy(out).to(device=t.device, dtype=t.dtype)

    def _forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.img_size, "A")
        return self._run_backend(x, "forward", self.meas_shape)

    def _adjoint_raw(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.meas_shape, "A_adjoint")
        return self._run_backend(y, "backward", self.img_size)

    # ---- LinearPhysics interface -------------------------------------------------------
    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Forward projection, ``(B, 1, D, H, W)`` → ``(B, 1, n_views, rows, cols)``."""
        return _Project.apply(x, self)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Back projection (exact adjoint of :meth:`A` on rtk)."""
        return _BackProject.apply(y, self)

    def fdk(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """FDK reconstruction (no gradient), see :func:`unroll3d.physics.fdk`."""
        from .fdk import fdk

        return fdk(y, self, **kwargs)

    def initial_reconstruction(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The models' first estimate: :meth:`fdk` (``A_dagger`` is the least-squares one)."""
        return self.fdk(y, **kwargs)

    def operator_norm(self, **kwargs) -> float:
        """Spectral norm ‖sA‖ (power method), see :func:`operator_norm`."""
        return operator_norm(self, **kwargs)

    def normalize_(self, norm: float | None = None, **kwargs) -> float:
        """Rescale in place so that ‖A‖ = 1; return the norm before rescaling.

        :param float norm: the current norm ‖A‖ if already known (skips the power method).
        """
        if norm is None:
            norm = operator_norm(self, **kwargs)
        if not norm > 0:
            raise ValueError(f"cannot normalise an operator of norm {norm}")
        self.scale.mul_(1.0 / float(norm))
        return float(norm)
