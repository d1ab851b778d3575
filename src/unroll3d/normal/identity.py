"""Operator identity: :func:`operator_hash`, the short hash a fitted H records of the operator
it was fitted for (checked by :func:`~unroll3d.normal.check_operator_hash` when H is loaded, and
part of a fit checkpoint's fingerprint).

What it covers (``docs/choices.md``, "What the operator hash covers"): the class name, every
buffer (cached norms, noise models and sensors excluded), a few geometry attributes; and, for an
operator that no tensor describes (a ``LinearPhysics(A=..., A_adjoint=...)`` of functions), its
response to a seeded probe. The digests of operators with buffers are the ones stored since the
first fitted H files; ``tests/test_normal_hash.py`` pins them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from deepinv.utils import TensorList
from torch import nn

from unroll3d.normal.operator import physics_device

__all__ = ["WrapsPhysics", "operator_hash"]

_HASH_ATTRS = (
    "vectors",
    "geometry_vectors",
    "mask",
    "coil_maps",
    "det_shape",
    "voxel_size",
    "det_spacing",
    "img_size",
)
_HASH_SKIP = ("norm", "noise_model", "sensor")
#: buffers hashed but describing no operator: deepinv's device marker, on every physics
_HASH_NOT_DESCRIPTIVE = ("_device_holder",)
_PROBE_SEED = 1234


class WrapsPhysics:
    """Marker of a physics that wraps another one, ``self.physics``, without changing ``A``
    (:class:`~unroll3d.normal.DiagCirculantWrapper`): :func:`operator_hash` hashes the wrapped
    operator, so a fitted H is checked against the operator it approximates."""

    physics: nn.Module


def _hash_value(h: Any, name: str, value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_complex():
            t = torch.view_as_real(t.to(torch.complex64))
        elif t.is_floating_point():
            t = t.to(torch.float32)
        h.update(f"{name}:{tuple(value.shape)}:{t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
        return True
    if isinstance(value, np.ndarray):
        return _hash_value(h, name, torch.from_numpy(np.ascontiguousarray(value)))
    if isinstance(value, (int, float, str, tuple, list)) and not isinstance(value, bool):
        h.update(f"{name}={value!r}".encode())
        return False
    return False


def _hash_response(h: Any, name: str, response: Any) -> None:
    """A response to the probe, to 4 significant digits: its peak, and every entry relative to
    the peak on 10⁴ levels (robust to float noise between devices and thread counts)."""
    parts = list(response.x) if isinstance(response, TensorList) else [response]
    for i, part in enumerate(parts):
        t = part.detach().cpu()
        if t.is_complex():
            t = torch.view_as_real(t)
        t = t.double()
        peak = float(t.abs().max()) if t.numel() else 0.0
        h.update(f"{name}{i}:{tuple(t.shape)}:{peak:.3e}".encode())
        h.update(torch.round(t / (peak + 1e-30) * 1e4).to(torch.int64).numpy().tobytes())


def _hash_probe(h: Any, physics: nn.Module, img_size: Sequence[int]) -> None:
    """Hash ``A x`` and ``Aᵀ A x`` for a seeded Gaussian ``x`` of shape ``(1, *img_size)``.

    Rounding to 4 digits is only as stable as the last bits below it: a sum or an FFT split over
    CPU threads rounds differently, and in float32 a few of 10⁵ entries then cross a rounding
    boundary. So the probe runs on one CPU thread, and in float64 (float noise some 10⁹ times
    below the 4th digit) unless the operator refuses it (then float32: the same digest on one
    machine whatever its thread count; across devices, only an exact operator is sure to)."""
    shape = (1, *(int(n) for n in img_size))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(_PROBE_SEED))
    device = physics_device(physics)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            y, z = _respond(physics, x.double().to(device))
        except Exception:  # noqa: BLE001 - an operator that takes float32 only: probe in float32
            y, z = _respond(physics, x.to(device))
    except Exception as err:  # noqa: BLE001 - any failure of a user's operator: one clear line
        raise ValueError(
            f"cannot hash {type(physics).__name__} by its response to a {shape} probe "
            f"(is img_size right?): {type(err).__name__}: {err}"
        ) from err
    finally:
        torch.set_num_threads(threads)
    h.update(f"probe{shape}".encode())
    _hash_response(h, "A", y)
    if z is not None:
        _hash_response(h, "AtA", z)


def _respond(physics: nn.Module, x: torch.Tensor) -> tuple[Any, Any]:
    """``(A x, Aᵀ A x)`` (``Aᵀ A x`` None for an operator without an adjoint)."""
    with torch.no_grad():
        y = physics.A(x)
        adjoint = getattr(physics, "A_adjoint", None)
        return y, (None if adjoint is None else adjoint(y))


def operator_hash(physics: nn.Module, img_size: Sequence[int] | None = None) -> str:
    """A short hash of an operator's description: its class, its buffers (geometry vectors,
    sampling mask, coil maps, ...; cached norms and noise models excluded) and the attributes
    ``vectors``, ``mask``, ``coil_maps``, ``det_shape``, ``voxel_size``, ``img_size`` when present.

    Two operators with the same geometry hash equally whatever their backend (astra / RTK). An
    operator described by no tensor (deepinv's ``_device_holder`` does not count), e.g. a
    ``LinearPhysics`` built from functions, is hashed by its response to a fixed seeded probe:
    ``A x`` and ``Aᵀ A x``, to 4 significant digits (on one CPU thread, in float64 when the
    operator takes it). That needs ``img_size`` ``(C, D, H, W)``
    (or the physics' own ``img_size``). A :class:`WrapsPhysics` hashes as the physics it wraps.
    """
    while isinstance(physics, WrapsPhysics):
        physics = physics.physics
    h = hashlib.sha256()
    h.update(type(physics).__name__.encode())
    found = False
    seen: set[str] = set()
    for name, buf in sorted(physics.named_buffers(), key=lambda kv: kv[0]):
        if any(s in name.lower() for s in _HASH_SKIP):
            continue
        short = name.split(".")[-1]
        seen.add(short)
        described = _hash_value(h, name, buf)
        found |= described and short not in _HASH_NOT_DESCRIPTIVE
    for attr in _HASH_ATTRS:
        if attr in seen or not hasattr(physics, attr):
            continue
        try:
            value = getattr(physics, attr)
        except Exception:  # noqa: BLE001 - a property that cannot be evaluated is skipped
            continue
        found |= _hash_value(h, attr, value)
    if not found:
        if img_size is None:
            img_size = getattr(physics, "img_size", None)
        if img_size is None:
            raise ValueError(
                f"cannot hash {type(physics).__name__}: no buffer or geometry attribute describes "
                "it, only its response to a probe; pass img_size"
            )
        _hash_probe(h, physics, img_size)
    return h.hexdigest()[:16]
