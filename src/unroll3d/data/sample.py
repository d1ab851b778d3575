"""One volume under one setting (:class:`Sample`) and the names of settings and mask seeds."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from unroll3d.data.download import DataError

__all__ = ["Sample", "parse_setting", "fixed_mask_seed", "check_sample_task", "check_same_shape"]


@dataclass
class Sample:
    """One test/training volume under one setting.

    :param torch.Tensor x: ground truth ``(1, C, D, H, W)`` (C = 1 for CBCT, 2 = real/imag for MRI).
    :param torch.Tensor y: measurements, CBCT ``(1, 1, P, rows, cols)``, MRI ``(1, 2, N, D, H, W)``.
    :param physics: the ``deepinv.physics.LinearPhysics`` with ``y ~= physics.A(x)``.
    :param dict meta: provenance (volume id, setting, scale, view indices or mask seed, ...).
    """

    x: Any
    y: Any
    physics: Any
    meta: dict = field(default_factory=dict)


def parse_setting(setting: str) -> tuple[str, float]:
    """``"v30"`` -> ``("cbct", 30)``; ``"R5"`` -> ``("mri", 5.0)``."""
    m = re.fullmatch(r"v(\d+)|R([0-9]+(?:\.[0-9]+)?)", setting)
    if not m:
        raise DataError(
            f"unknown setting {setting!r}: expected 'v<views>' (CBCT) or 'R<acceleration>' (MRI)"
        )
    if m.group(1) is not None:
        return "cbct", int(m.group(1))
    return "mri", float(m.group(2))


def fixed_mask_seed(volume: str, setting: str, base_seed: int = 0) -> int:
    """Seed of the fixed mask of ``volume`` under ``setting`` (stable across runs and machines)."""
    return (zlib.crc32(f"{volume}:{setting}".encode()) + int(base_seed)) % 2**31


def check_sample_task(sample: Sample, task: str) -> None:
    """Refuse a sample used for another task than the one it was preprocessed for (a CBCT volume
    given to an MRI evaluation), naming its file."""
    held = (sample.meta or {}).get("task")
    if held is not None and held != task:
        where = (sample.meta or {}).get("source", "the sample")
        raise DataError(f"{where} holds a {held} volume, but it is used for task {task}")


def check_same_shape(reference: dict, path: str, sample: Sample) -> None:
    """The volumes of one data set share their shape (MRI: all but kz, which is 170 or 180 in
    Calgary-Campinas). ``reference`` holds the first volume's ``path`` and ``shape`` (filled on
    the first call); a volume that differs (a raw zip missing a slice) is an error naming both."""
    shape = tuple(int(n) for n in sample.x.shape[-3:])
    if not reference:
        reference.update(path=str(path), shape=shape)
        return
    n = 2 if sample.x.shape[1] == 2 else 3  # real/imag images: MRI
    if shape[:n] != tuple(reference["shape"])[:n]:
        raise DataError(
            f"{path}: volume of {' × '.join(map(str, shape))}, but {reference['path']} of the "
            f"same data set is {' × '.join(map(str, reference['shape']))}; check its raw data "
            "and preprocess it again"
        )
