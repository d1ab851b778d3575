"""FDK reconstruction behind one function for both cone-beam backends.

RTK's ``FDKConeBeamReconstructionFilter`` on the CPU and astra's ``FDK_CUDA`` on the GPU. Both
return attenuation in the inverse length unit of the geometry, so a uniform object of value
``μ`` reconstructs to ``μ``; the operator's scale ``s`` (see
:meth:`unroll3d.physics.ConeBeam.normalize_`) is divided out, so ``fdk(s·A x) ≈ x``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fdk"]


def fdk(y: torch.Tensor, physics, hann_cut: float = 0.0, **kwargs) -> torch.Tensor:
    """FDK reconstruction of cone-beam measurements.

    :param torch.Tensor y: ``(B, 1, n_views, rows, cols)`` measurements of ``physics``.
    :param unroll3d.physics.ConeBeam physics: the operator that produced ``y``.
    :param float hann_cut: Hann window cut frequency in (0, 1] (rtk only); 0 for a pure ramp.
    :return: ``(B, 1, D, H, W)`` volume, on ``y``'s device and dtype. No gradient flows
        through FDK.
    """
    meas_shape = tuple(physics.meas_shape)
    if y.ndim != 5 or tuple(y.shape[1:]) != meas_shape:
        raise ValueError(
            f"fdk expects y of shape (B, {', '.join(map(str, meas_shape))}); got {tuple(y.shape)}"
        )
    impl = physics._get_backend()
    scale = float(physics.scale)
    with torch.no_grad():
        if physics.backend == "astra":
            out = torch.stack([impl.fdk(y[b, 0].float()) for b in range(y.shape[0])])[:, None]
            return (out / scale).to(device=y.device, dtype=y.dtype)
        arr = y.detach().to("cpu", torch.float32).numpy()
        out = np.stack([impl.fdk(arr[b, 0], hann_cut=hann_cut) for b in range(arr.shape[0])])
        out = out[:, None] / scale
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(
            device=y.device, dtype=y.dtype
        )
