"""astra-toolbox backend for cone-beam CT (CUDA only).

Same geometry convention as :mod:`unroll3d.physics.rtk`: ASTRA ``cone_vec`` rows in the length
unit of the voxel size, volume ``(D, H, W) = (z, y, x)`` centred at the origin, so the vectors go
to astra unchanged and the volume window is ``±N h / 2`` per axis. astra stores projections as
``(rows, views, cols)``; we return ``(views, rows, cols)``.

Forward and back projection run on torch CUDA tensors without host copies (astra's ``GPULink``
and ``direct_FPBP3D``, as in deepinv's ``XrayTransform``); FDK (``FDK_CUDA``) goes through host
memory. astra's projector/back-projector pair is only approximately adjoint (about 1e-2).

astra is imported lazily; without CUDA the constructor raises a ``RuntimeError``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AstraConeBeamBackend"]


def _astra():
    if not torch.cuda.is_available():
        raise RuntimeError(
            "astra-toolbox's 3D cone-beam projectors need CUDA, and no CUDA device is available. "
            "Use backend='rtk' (CPU)."
        )
    try:
        import astra
        import astra.experimental  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "backend='astra' needs astra-toolbox (pip install unroll3d[gpu] or astra-toolbox)."
        ) from exc
    return astra


def _link(t: torch.Tensor):
    import astra

    if t.device.type != "cuda" or t.dtype != torch.float32 or not t.is_contiguous() or t.ndim != 3:
        raise ValueError("astra GPULink needs a contiguous 3D float32 CUDA tensor")
    z, y, x = t.shape
    return astra.pythonutils.GPULink(t.data_ptr(), x, y, z, x * 4)


class AstraConeBeamBackend:
    """astra ``cuda3d`` cone-beam projector for one geometry, on torch CUDA tensors.

    :param numpy.ndarray vectors: (n_views, 12) ASTRA ``cone_vec`` geometry.
    :param tuple vol_shape: ``(D, H, W)``.
    :param float voxel_size: voxel size in the unit of ``vectors``.
    :param tuple det_shape: ``(rows, cols)``.
    :param int views_per_chunk: at most this many views per astra call.
    :param device: CUDA device (default: the current one).
    """

    def __init__(
        self,
        vectors,
        vol_shape,
        voxel_size=1.0,
        det_shape=(1, 1),
        views_per_chunk=None,
        device=None,
    ):
        astra = _astra()
        self.vectors = np.asarray(vectors, dtype=np.float64)
        if self.vectors.ndim != 2 or self.vectors.shape[1] != 12:
            raise ValueError(f"vectors must have shape (n_views, 12); got {self.vectors.shape}")
        self.vol_shape = tuple(int(n) for n in vol_shape)
        self.voxel_size = float(voxel_size)
        self.det_shape = tuple(int(n) for n in det_shape)
        self.n_views = self.vectors.shape[0]
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        d, h, w = self.vol_shape
        hs = self.voxel_size
        self.vol_geom = astra.create_vol_geom(
            h, w, d, -w * hs / 2, w * hs / 2, -h * hs / 2, h * hs / 2, -d * hs / 2, d * hs / 2
        )
        chunk = self.n_views if views_per_chunk is None else max(1, int(views_per_chunk))
        self.chunks = [(i, min(i + chunk, self.n_views)) for i in range(0, self.n_views, chunk)]
        rows, cols = self.det_shape
        self.proj_geoms = [
            astra.create_proj_geom("cone_vec", rows, cols, self.vectors[a:b])
            for a, b in self.chunks
        ]
        self.full_proj_geom = astra.create_proj_geom("cone_vec", rows, cols, self.vectors)
        self.projectors = [
            astra.create_projector("cuda3d", pg, self.vol_geom) for pg in self.proj_geoms
        ]

    def __del__(self):  # pragma: no cover - needs astra
        try:
            import astra

            for pid in getattr(self, "projectors", []):
                astra.projector3d.delete(pid)
        except Exception:
            pass

    def _prep(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.device, torch.float32).contiguous()

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Forward projection ``(D, H, W)`` → ``(views, rows, cols)`` (CUDA tensors)."""
        import astra.experimental

        vol = self._prep(volume)
        rows, cols = self.det_shape
        out = torch.empty((self.n_views, rows, cols), device=self.device)
        for (a, b), pid in zip(self.chunks, self.projectors, strict=True):
            sino = torch.zeros((rows, b - a, cols), device=self.device)
            astra.experimental.direct_FPBP3D(pid, _link(vol), _link(sino), 1, "FP")
            out[a:b] = sino.permute(1, 0, 2)
        return out

    def backward(self, proj: torch.Tensor) -> torch.Tensor:
        """Back projection ``(views, rows, cols)`` → ``(D, H, W)`` (CUDA tensors)."""
        import astra.experimental

        proj = self._prep(proj)
        out = torch.zeros(self.vol_shape, device=self.device)
        for (a, b), pid in zip(self.chunks, self.projectors, strict=True):
            sino = proj[a:b].permute(1, 0, 2).contiguous()
            part = torch.zeros(self.vol_shape, device=self.device)
            astra.experimental.direct_FPBP3D(pid, _link(part), _link(sino), 1, "BP")
            out += part
        return out

    def fdk(self, proj: torch.Tensor, short_scan: bool = False) -> torch.Tensor:
        """astra ``FDK_CUDA`` (all views at once, through host memory)."""
        import astra

        sino = proj.detach().to("cpu", torch.float32).permute(1, 0, 2).contiguous().numpy()
        sino_id = astra.data3d.create("-sino", self.full_proj_geom, sino)
        rec_id = astra.data3d.create("-vol", self.vol_geom, 0.0)
        cfg = astra.astra_dict("FDK_CUDA")
        cfg["ProjectionDataId"] = sino_id
        cfg["ReconstructionDataId"] = rec_id
        cfg["option"] = {"ShortScan": bool(short_scan)}
        alg_id = astra.algorithm.create(cfg)
        try:
            astra.algorithm.run(alg_id)
            rec = astra.data3d.get(rec_id)
        finally:
            astra.algorithm.delete(alg_id)
            astra.data3d.delete([sino_id, rec_id])
        return torch.from_numpy(np.ascontiguousarray(rec, dtype=np.float32)).to(self.device)
