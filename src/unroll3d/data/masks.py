"""The Calgary-Campinas challenge's ky-kz sampling masks (``mri.mask_source: challenge``).

The challenge (rmsouza01/MC-MRI-Rec, ``Data/poisson_sampling/R<r>_218x<nz>.npy``) publishes 100
Poisson-disc masks per acceleration R (5 and 10) for each ky × kz grid of the 12-channel data
(218 × 170, 174, 180): boolean arrays ``(100, 218, nz)`` in the raw k-space layout (DC at
``(ny // 2, nz // 2)``), nothing sampled beyond the partial-Fourier cut ``ceil(0.85 nz)``, fully
sampled inside a centred disc of radius about 17, R counted over the acquired 85 % of kz. Our
stored k-space has the same index layout (the FFT conventions differ only by a phase), so a mask
applies index for index. A volume uses the file of its own (ky, kz) size, as the challenge does;
training draws mask ``seed % 100`` (a fresh seed per draw), a test volume its fixed seed's mask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from unroll3d.data.download import DataError, RegistryEntry, package_registry, read_registry

__all__ = [
    "MASK_FILE",
    "read_challenge_masks",
    "challenge_mask_files",
    "select_banks",
    "draw_mask",
    "MASK_SOURCES",
]

#: ``mri.mask_source`` values, as evaluations record them and the tables name them.
MASK_SOURCES = {
    "challenge": "the CC challenge's Poisson-disc masks (a fixed one of its bank per test volume)",
    "seeded": "our variable-density generator (seed from the volume id), not the challenge's",
}

#: File names of the challenge's mask banks: ``R<r>_<ny>x<nz>.npy``.
MASK_FILE = re.compile(r"R(\d+)_(\d+)x(\d+)\.npy")


def read_challenge_masks(path: str | Path) -> tuple[float, np.ndarray]:
    """Read a challenge mask file ``R<r>_<ny>x<nz>.npy`` -> ``(r, masks (n, ny, nz) uint8)``."""
    path = Path(path)
    m = MASK_FILE.fullmatch(path.name)
    if not m:
        raise DataError(f"{path}: not a challenge mask file name (expected R<r>_<ny>x<nz>.npy)")
    try:
        masks = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{path}: cannot read the mask array: {err}") from err
    shape = (int(m.group(2)), int(m.group(3)))
    if masks.ndim != 3 or masks.shape[1:] != shape or masks.shape[0] < 1:
        raise DataError(
            f"{path}: masks have shape {masks.shape}; expected (n, {shape[0]}, {shape[1]})"
        )
    if not (masks.dtype == bool or np.issubdtype(masks.dtype, np.number)):
        raise DataError(f"{path}: masks have dtype {masks.dtype}; expected bool or numbers")
    if not np.all(masks.reshape(masks.shape[0], -1).any(axis=1)):
        raise DataError(f"{path}: a mask samples nothing")
    return float(m.group(1)), (masks != 0).astype(np.uint8)


def _mask_entries(registry: str | Path | None) -> dict[str, RegistryEntry]:
    entries = read_registry(registry or package_registry("mri"))
    return {name: e for name, e in entries.items() if MASK_FILE.fullmatch(name)}


def challenge_mask_files(
    accelerations: Iterable[float], registry: str | Path | None = None
) -> list[str]:
    """Registry file names of every grid size's mask bank for each of ``accelerations``.

    :raises ValueError: an acceleration the challenge publishes no masks for (names the ones
        it has).
    """
    by_r: dict[str, list[str]] = {}
    for name in _mask_entries(registry):
        by_r.setdefault(MASK_FILE.fullmatch(name).group(1), []).append(name)
    out = []
    for r in accelerations:
        key = f"{float(r):g}"
        if key not in by_r:
            known = ", ".join(sorted(by_r, key=float)) or "none"
            raise ValueError(
                f"mri.mask_source challenge: the challenge publishes masks for R = {known}, not "
                f"R = {key}; use mri.mask_source: seeded for this acceleration"
            )
        out.extend(sorted(by_r[key]))
    return out


def select_banks(
    files: Iterable[str | Path], ny: int, nz: int, volume: str
) -> dict[str, tuple[Path, np.ndarray]]:
    """``{"5": (file, masks (n, ny, nz))}``: for every R among ``files``, the bank of this
    volume's grid.

    :raises DataError: an R whose files include none of size ``ny × nz`` (names the sizes).
    """
    sizes: dict[str, list[str]] = {}
    banks: dict[str, tuple[Path, np.ndarray]] = {}
    for f in files:
        r, arr = read_challenge_masks(f)
        key = f"{r:g}"
        sizes.setdefault(key, []).append(f"{arr.shape[1]}×{arr.shape[2]}")
        if arr.shape[1:] == (ny, nz):
            banks[key] = (Path(f), arr)
    missing = sorted(set(sizes) - set(banks), key=float)
    if missing:
        r = missing[0]
        raise DataError(
            f"volume {volume}: its ky×kz grid is {ny}×{nz}, but the challenge masks given for "
            f"R{r} are {', '.join(sorted(sizes[r]))}; give the mask file R{r}_{ny}x{nz}.npy "
            "or use mri.mask_source: seeded"
        )
    return banks


def draw_mask(bank, seed: int) -> tuple[int, object]:
    """``(index, mask)``: mask number ``seed % n`` of a bank ``(n, ny, nz)``."""
    index = int(seed) % int(bank.shape[0])
    return index, bank[index]
