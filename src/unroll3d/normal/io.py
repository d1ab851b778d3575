"""Fitted H on disk: :func:`save_normal` / :func:`load_normal` and the :class:`NormalFit` record."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from unroll3d.normal.operator import DiagCirculant, check_img_size, infer_grid
from unroll3d.utils import atomic_path, atomic_torch_save

__all__ = [
    "FORMAT_VERSION",
    "NormalFit",
    "NormalFileError",
    "NormalFitMismatch",
    "check_fit_matches",
    "check_operator_hash",
    "save_normal",
    "load_normal",
    "write_history_csv",
]

FORMAT_VERSION = 1
_REQUIRED = ("fourier_filter", "spatial_mask", "img_size", "grid", "two_sided", "scaling")


class NormalFileError(ValueError):
    """A normal-operator file that cannot be used (unreadable, another format, missing keys,
    fitted for another operator); the message names the file."""


@dataclass
class NormalFit:
    """One fitted H: λ (``fourier_filter``), m (``spatial_mask``), the image size and FFT grid it
    acts on, its form (``two_sided``), ``scaling`` = ‖A‖² (H approximates AᵀA/‖A‖²), the hash of
    the operator it was fitted to, and the fit's ``history`` and ``meta`` (setting, input, ...).

    :meth:`operator` builds the :class:`DiagCirculant` once per image size and keeps it, so a
    patch's cropped kernel is not recomputed at every training step.
    """

    fourier_filter: torch.Tensor
    spatial_mask: torch.Tensor
    img_size: tuple[int, ...]
    grid: tuple[int, ...] | None = None
    two_sided: bool = False
    scaling: float | None = None
    operator_hash: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # the file it was loaded from (named in errors)
    _operators: dict[tuple[int, ...], DiagCirculant] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def setting(self) -> str | None:
        """The setting (``v30``, ``R5``, ...) the fit was made for, when recorded."""
        return self.meta.get("setting")

    def fitted_on(self, volume_meta: dict | None) -> bool:
        """Whether the volume of ``volume_meta`` (a sample's ``meta``) is the one this fit was
        fitted on: the same recorded volume id, setting and mask (``mask_seed``, ``mask``). A fit
        that records no volume (``meta["volume_meta"]``) is fitted on none."""
        own = self.meta.get("volume_meta") or {}
        other = volume_meta or {}
        if own.get("volume") is None or own.get("volume") != other.get("volume"):
            return False
        return all(own.get(k) == other.get(k) for k in ("setting", "mask_seed", "mask"))

    def to(self, device: torch.device | str) -> NormalFit:
        """A copy with λ and m on ``device`` (the operator cache is not carried over)."""
        return replace(
            self,
            fourier_filter=self.fourier_filter.to(device),
            spatial_mask=self.spatial_mask.to(device),
        )

    def operator(self, img_size: Sequence[int] | None = None) -> DiagCirculant:
        """H as a module on ``img_size`` (default: the fit's own), built once and cached."""
        key = tuple(int(v) for v in (img_size or self.img_size))
        if key not in self._operators:
            self._operators[key] = DiagCirculant(
                self.fourier_filter,
                self.spatial_mask,
                key,
                two_sided=self.two_sided,
                grid=self.grid,
            )
        return self._operators[key]


def save_normal(
    path: str | Path,
    fourier_filter: torch.Tensor,
    spatial_mask: torch.Tensor,
    img_size: Sequence[int],
    scaling: float,
    history: dict[str, Any] | None = None,
    operator_hash: str | None = None,
    two_sided: bool = False,
    grid: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write one fit to ``path`` atomically (a ``torch.save`` dict).

    :param scaling: ‖A‖², the factor H must be multiplied by (``DiagCirculantWrapper(scaling=)``).
    :param operator_hash: :func:`operator_hash` of the operator the fit is for.
    """
    img_size = check_img_size(img_size)
    if grid is None:
        grid = infer_grid(fourier_filter.shape, img_size)
    DiagCirculant(fourier_filter, spatial_mask, img_size, two_sided, grid=grid)  # validates shapes
    atomic_torch_save(
        {
            "format": "unroll3d.normal",
            "version": FORMAT_VERSION,
            "fourier_filter": fourier_filter.detach().cpu(),
            "spatial_mask": spatial_mask.detach().cpu(),
            "img_size": list(img_size),
            "grid": [int(g) for g in grid],
            "two_sided": bool(two_sided),
            "scaling": float(scaling),
            "history": history or {},
            "operator_hash": operator_hash,
            "meta": meta or {},
        },
        path,
    )


def load_normal(
    path: str | Path,
    expected_operator_hash: str | None = None,
    map_location: str | torch.device = "cpu",
) -> NormalFit:
    """Read a fit written by :func:`save_normal`.

    :param expected_operator_hash: when given, the stored hash must equal it; otherwise a
        ``ValueError`` says the parameters were fitted for another operator.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fitted normal operator at {path}")
    try:
        fit = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise NormalFileError(f"{path} is not a readable normal-operator file: {err}") from err
    if not isinstance(fit, dict) or fit.get("format") != "unroll3d.normal":
        raise NormalFileError(f"{path} is not an unroll3d normal-operator file")
    missing = [k for k in _REQUIRED if k not in fit]
    if missing:
        raise NormalFileError(f"{path}: normal-operator file has no {', '.join(map(repr, missing))}")
    if fit.get("version") != FORMAT_VERSION:
        raise NormalFileError(
            f"{path} has format version {fit.get('version')}, expected {FORMAT_VERSION}"
        )
    if expected_operator_hash is not None:
        check_operator_hash(fit.get("operator_hash"), expected_operator_hash, path)
    return NormalFit(
        fourier_filter=fit["fourier_filter"],
        spatial_mask=fit["spatial_mask"],
        img_size=tuple(int(v) for v in fit["img_size"]),
        grid=tuple(int(v) for v in fit["grid"]),
        two_sided=bool(fit["two_sided"]),
        scaling=float(fit["scaling"]),
        operator_hash=fit.get("operator_hash"),
        history=dict(fit.get("history") or {}),
        meta=dict(fit.get("meta") or {}),
        source=str(path),
    )


def check_operator_hash(stored: str | None, expected: str, where: str | Path) -> None:
    """Refuse a fit whose stored operator hash (:func:`operator_hash` at fitting time) is not
    ``expected``, the hash of the operator it is used for: a one-line
    :class:`NormalFileError` naming ``where`` (the file) and both hashes."""
    if stored != expected:
        raise NormalFileError(
            f"{where} was fitted for operator {stored}, but the operator in use "
            f"hashes to {expected} (different geometry, mask or coil maps); "
            "refit H for this operator or pass expected_operator_hash=None to skip the check"
        )


class NormalFitMismatch(ValueError):
    """A fitted H used for a job it was not fitted for (another setting or image size)."""


def check_fit_matches(fit: NormalFit, setting: str | None, img_size, sample: str) -> None:
    """Raise :class:`NormalFitMismatch` naming the fit's file and ``sample`` when ``fit`` was
    fitted for another setting (``meta["setting"]``, e.g. an R5 fit on an R10 job) or for images
    of another shape. A fit recorded without a setting is checked on the shape only."""
    where = fit.source or "the fitted H"
    if setting is not None and fit.setting is not None and fit.setting != setting:
        raise NormalFitMismatch(
            f"{where} was fitted for setting {fit.setting}, but {sample} is used under {setting}; "
            f"use the fit of {setting} (results/normal/<task>/{setting}.pt)"
        )
    if tuple(int(v) for v in img_size) != tuple(fit.img_size):
        raise NormalFitMismatch(
            f"{where} was fitted for images of shape {tuple(fit.img_size)}, but {sample} has "
            f"shape {tuple(int(v) for v in img_size)} (another geometry); refit H for it"
        )


def write_history_csv(path: str | Path, history: dict[str, Any]) -> None:
    """The fitting curve as CSV: ``step, heldout_rel_error, train_rel_error``."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "heldout_rel_error", "train_rel_error"])
        for row in zip(
            history["step"], history["heldout_rel_error"], history["train_rel_error"], strict=True
        ):
            w.writerow(row)
