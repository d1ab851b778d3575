"""The prior networks: a 3D DRUNet, a 2D DRUNet applied slice by slice, and the patch-wise
(tiled) application of a denoiser to a whole volume."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DRUNet3D", "DRUNetSlices", "apply_slicewise", "apply_tiled", "Tiling", "inv_softplus"]


def inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


class DRUNet3D(nn.Module):
    """A 3D :class:`deepinv.models.DRUNet` with padding to a multiple of 8 and a noise-level map.

    deepinv's ``DRUNet.forward`` pads by replication to a multiple of 16 only for small inputs and
    refuses 3D inputs >= 64 that are not multiples of 8 in eval mode. This wrapper always pads
    (replicate) each spatial axis to a multiple of ``multiple`` (8 = three 2× down-samplings),
    appends the constant noise-level channel and calls ``forward_unet``, then crops back.

    :param int channels: image channels (1 for CBCT, 2 = real/imag for MRI).
    :param Sequence[int] nc: widths of the 4 scales.
    :param int nb: residual blocks per scale.
    :param int multiple: padding multiple.
    :param bool residual: return ``x + net(x)`` (a global skip, ours) instead of ``net(x)``;
        the network then starts close to the identity, which matters for short trainings.
    """

    def __init__(
        self,
        channels: int = 1,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 4,
        multiple: int = 8,
        residual: bool = False,
    ):
        super().__init__()
        from deepinv.models import DRUNet

        if len(nc) != 4:
            raise ValueError(f"DRUNet needs 4 widths (one per scale), got nc={list(nc)}")
        self.net = DRUNet(
            in_channels=channels,
            out_channels=channels,
            nc=tuple(int(c) for c in nc),
            nb=int(nb),
            pretrained=None,
            dim=3,
        )
        self.channels = channels
        self.multiple = multiple
        self.residual = bool(residual)
        self.channels_last = False  # set by use_channels_last

    def use_channels_last(self, on: bool = True) -> DRUNet3D:
        """Weights and activations in ``torch.channels_last_3d`` (``on``) or contiguous."""
        self.channels_last = bool(on)
        fmt = torch.channels_last_3d if on else torch.contiguous_format
        return self.to(memory_format=fmt)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Denoise ``x`` (B, C, D, H, W) at noise level ``sigma`` (scalar)."""
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"DRUNet3D expects (B, {self.channels}, D, H, W), got {tuple(x.shape)}"
            )
        spatial = x.shape[2:]
        pad = [(-s) % self.multiple for s in spatial]
        if any(pad):
            # F.pad takes the last axis first.
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(1, 1, 1, 1, 1)
        noise_map = sig.expand(x.shape[0], 1, *x.shape[2:])
        inp = torch.cat((x, noise_map), dim=1)
        if self.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last_3d)
        out = self.net.forward_unet(inp)
        if self.residual:
            out = out + x
        out = out[..., : spatial[0], : spatial[1], : spatial[2]]
        return out.contiguous() if self.channels_last else out


def apply_slicewise(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    multiple: int = 8,
    per_channel: bool = False,
) -> torch.Tensor:
    """Apply a 2D ``fn`` to every axial slice of ``x`` (B, C, D, H, W) in one batch: the slices
    (B·D, C, H, W), or with ``per_channel`` each channel as its own grey image (B·D·C, 1, H, W),
    replicate-padded in-plane to a multiple of ``multiple`` and cropped back in their order."""
    b, c, d, h, w = x.shape
    s = x.permute(0, 2, 1, 3, 4).reshape(-1, 1 if per_channel else c, h, w)
    pad = [(-n) % multiple for n in (h, w)]
    if any(pad):
        s = F.pad(s, (0, pad[1], 0, pad[0]), mode="replicate")
    out = fn(s)[..., :h, :w].reshape(b, d, c, h, w).permute(0, 2, 1, 3, 4)
    return out.contiguous()


class DRUNetSlices(nn.Module):
    """A 2D DRUNet applied to each axial slice of a volume (DRUNet[2D] post-processing):
    ``(B, C, D, H, W)`` → the D slices ``(B·D, C, H, W)`` in one batch, padded (replicate) to a
    multiple of 8 in-plane, with the noise-level channel; the slices go back in their order.

    :param int channels: image channels (1 CBCT, 2 = real/imag for MRI).
    :param Sequence[int] nc: widths of the 4 scales.
    :param int nb: residual blocks per scale.
    :param bool residual: return ``x + net(x)``.
    """

    def __init__(self, channels=1, nc=(64, 128, 256, 512), nb=4, multiple=8, residual=False):
        super().__init__()
        from deepinv.models import DRUNet

        if len(nc) != 4:
            raise ValueError(f"DRUNet needs 4 widths (one per scale), got nc={list(nc)}")
        self.net = DRUNet(
            channels, channels, nc=tuple(int(c) for c in nc), nb=int(nb), pretrained=None, dim=2
        )
        self.channels, self.multiple, self.residual = channels, multiple, bool(residual)
        self.channels_last = False  # set by use_channels_last

    def use_channels_last(self, on: bool = True) -> DRUNetSlices:
        """Weights and slice batches in ``torch.channels_last`` (``on``) or contiguous."""
        self.channels_last = bool(on)
        return self.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"DRUNetSlices expects (B, {self.channels}, D, H, W), got {tuple(x.shape)}"
            )

        def net(s):
            sig = torch.as_tensor(sigma, dtype=s.dtype, device=s.device).reshape(1, 1, 1, 1)
            inp = torch.cat((s, sig.expand(s.shape[0], 1, *s.shape[2:])), 1)
            if self.channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            out = self.net.forward_unet(inp)
            return out + s if self.residual else out

        return apply_slicewise(net, x, self.multiple)


def apply_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    patch_size: Sequence[int],
    stride: Sequence[int] | None = None,
) -> torch.Tensor:
    """Apply a shape-preserving ``fn`` patch by patch and average overlaps (count map).

    The patch grid is ``stride = patch // 2`` by default with the last patch snapped to the end
    of each axis; patches larger than the volume are clipped to it.

    :param Callable fn: maps (B, C, *p) to (B, C, *p).
    :param torch.Tensor x: (B, C, D, H, W).
    :param Sequence[int] patch_size: (pd, ph, pw).
    :param Sequence[int] stride: defaults to half the patch.
    """
    spatial = x.shape[2:]
    patch = [min(int(p), int(s)) for p, s in zip(patch_size, spatial, strict=True)]
    stride = [max(1, p // 2) for p in patch] if stride is None else [int(s) for s in stride]
    starts = []
    for n, p, s in zip(spatial, patch, stride, strict=True):
        st = list(range(0, n - p + 1, s))
        if st[-1] != n - p:
            st.append(n - p)
        starts.append(st)
    out = torch.zeros_like(x)
    count = torch.zeros((1, 1, *spatial), dtype=x.dtype, device=x.device)
    for z in starts[0]:
        for yy in starts[1]:
            for xx in starts[2]:
                sl = (
                    Ellipsis,
                    slice(z, z + patch[0]),
                    slice(yy, yy + patch[1]),
                    slice(xx, xx + patch[2]),
                )
                out[sl] += fn(x[sl])
                count[sl] += 1
    return out / count


class Tiling:
    """Mixin: optional patch-wise application of the denoiser (no-grad inference only)."""

    tiler: Callable | None = None

    def set_tiling(self, tiler: Callable | Sequence[int] | None, stride=None):
        """Apply the prior patch by patch when gradients are off; ``None`` disables.

        :param tiler: ``tiler(fn, x) -> x`` (e.g. ``PartitionedReconstructor.apply_patchwise``)
            or a patch size for :func:`apply_tiled`.
        """
        if tiler is None or callable(tiler):
            self.tiler = tiler
        else:
            patch = tuple(int(p) for p in tiler)
            self.tiler = lambda fn, x: apply_tiled(fn, x, patch, stride)
        return self

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The denoiser on ``x``; with ``self.bf16`` under bf16 autocast on ``x``'s device (the
        network only: what comes in and goes out is fp32)."""
        amp = bool(getattr(self, "bf16", False))

        def fn(v):
            with torch.autocast(v.device.type, dtype=torch.bfloat16, enabled=amp):
                out = self.denoiser(v, sigma)
            return out.float()

        if self.tiler is not None and not torch.is_grad_enabled():
            return self.tiler(fn, x)
        return fn(x)
