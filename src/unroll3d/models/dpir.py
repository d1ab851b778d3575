r"""DPIR with a pretrained 2D denoiser applied slice by slice (the DPIR[RAM] baseline).

deepinv's :class:`~deepinv.optim.DPIR` (half-quadratic splitting, 8 iterations, a decreasing
denoiser noise level) runs on the normalised operator :math:`A/\|A\|` with its
:class:`~deepinv.optim.PnP` prior: a pretrained 2D denoiser (RAM, deepinv's "Reconstruct Anything
Model", or a DRUNet) on every axial slice. Nothing is trained here: the weights file is given in
the config (a hand-placed file with its SHA-256, or ``download``: the workflow fetches deepinv's
published file, see ``unroll3d/data/weights_registry.csv``) and checked against its SHA-256 by
the training job (``unroll3d train``), which records "weights not available" instead of
substituting other weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import nn

from unroll3d.data.download import file_hash
from unroll3d.data.weights import DENOISERS, expected_sha256, weights_file
from unroll3d.models.drunet import apply_slicewise
from unroll3d.physics import initial_reconstruction

log = logging.getLogger("unroll3d.models")

__all__ = [
    "DENOISERS",
    "SliceDenoiser",
    "DPIRSlices",
    "load_denoiser2d",
    "checked_weights",
    "expected_sha256",
    "weights_file",
]


def checked_weights(path: str | None, sha256: str | None, denoiser: str = "ram") -> str | None:
    """The weights file if it is given and present, ``None`` if not (DPIR is then "weights not
    available"); a file whose SHA-256 differs from the expected one (:func:`expected_sha256`), or
    without one, is an error: other weights are never used silently. ``path`` may be
    ``download`` (:func:`weights_file`)."""
    path = weights_file(path, denoiser)
    if not path or not Path(path).is_file():
        return None
    want, how = expected_sha256(path, sha256)
    got = file_hash(path, "sha256")
    if got != want:
        raise ValueError(
            f"{path}: SHA-256 {got} does not match {want} ({how}); refusing to run DPIR with "
            "other weights"
        )
    return str(path)


def load_denoiser2d(kind: str, weights: str, device="cpu") -> nn.Module:
    """The pretrained 2D denoiser ``kind`` with its weights read from the file ``weights``."""
    from deepinv.models import RAM, DRUNet

    if kind == "ram":  # as deepinv loads its published file (strict=False), but every tensor
        # of the network must come from the file: missing ones are an error, extras are ignored
        net = RAM(pretrained=False, device=device)
        state = torch.load(weights, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{weights}: not a state dict (got {type(state).__name__})")
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(
                f"{weights}: not RAM weights for deepinv's RAM: {len(missing)} of its tensors are "
                f"missing (e.g. {', '.join(missing[:3])})"
            )
        if unexpected:
            log.info("%s: %d tensors RAM does not use, ignored", weights, len(unexpected))
        return net.eval()
    if kind == "drunet":
        return DRUNet(in_channels=1, out_channels=1, pretrained=str(weights), device=device).eval()
    raise ValueError(f"unknown DPIR denoiser {kind!r}; known: {list(DENOISERS)}")


class SliceDenoiser(nn.Module):
    """A 2D denoiser ``net(x2d, sigma)`` applied to every axial slice of (B, C, D, H, W), each
    channel as a grey image (MRI real / imaginary parts), ``batch`` slices at a time; H and W are
    replicate-padded to a multiple of 8 and cropped back."""

    def __init__(self, net: nn.Module, kind: str = "drunet", batch: int = 16, multiple: int = 8):
        super().__init__()
        self.net = net
        self.kind = kind
        self.batch = int(batch)
        self.multiple = int(multiple)

    def _one_batch(self, s: torch.Tensor, sigma) -> torch.Tensor:
        if self.kind == "ram":
            return self.net(s, sigma=sigma)
        return self.net(s, sigma)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        def net(s):
            return torch.cat([self._one_batch(t, sigma) for t in s.split(self.batch)])

        return apply_slicewise(net, x, self.multiple, per_channel=True)


class DPIRSlices(Reconstructor):
    r"""DPIR on the normalised operator with a slice-wise pretrained denoiser.

    :param nn.Module denoiser: a :class:`SliceDenoiser`.
    :param float noise_level: DPIR's measurement noise level (in units of :math:`y/\|A\|`), which
        sets its last denoiser noise level and its step sizes.
    :param float lipschitz: :math:`\|A\|^2`.
    """

    def __init__(self, denoiser: nn.Module, noise_level: float = 0.01, lipschitz: float = 1.0):
        super().__init__()
        self.denoiser = denoiser
        self.noise_level = float(noise_level)
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        from deepinv.optim import DPIR

        s = math.sqrt(float(self.lipschitz))
        normalised = LinearPhysics(
            A=lambda v: physics.A(v) / s, A_adjoint=lambda v: physics.A_adjoint(v) / s
        )
        x0 = (initial_reconstruction(physics, y) if x_init is None else x_init).float()
        algo = DPIR(sigma=self.noise_level, denoiser=self.denoiser, device=x0.device)
        with torch.no_grad():
            return algo(y / s, normalised, init=x0)
