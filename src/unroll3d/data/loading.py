"""Loading of a preprocessed sample under a setting: the one entry point of training and
evaluation into the data (:func:`load_sample`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unroll3d.data.download import DataError
from unroll3d.data.mri import make_sample
from unroll3d.data.sample import Sample, fixed_mask_seed, parse_setting
from unroll3d.data.walnut import view_indices
from unroll3d.physics import ConeBeam

__all__ = ["load_sample", "read_sample_file"]


def load_sample(
    path: str | Path,
    setting: str,
    device: Any = "cpu",
    *,
    mask_seed: int | None = None,
    mmap: bool = True,
) -> Sample:
    """Load a preprocessed volume ``results/data/{task}/{volume}.pt`` under a setting.

    * CBCT, setting ``"v<P>"``: ``P`` views ``floor(linspace(0, n_full, P, endpoint=False))`` of
      the stored orbit, ``physics = unroll3d.physics.ConeBeam(vectors[idx], (D, H, W),
      det_shape=(rows, cols))``.
    * MRI, setting ``"R<r>"``: a ky-kz Poisson-disc mask of acceleration ``r`` (seeded by the
      volume id and setting unless ``mask_seed`` is given, e.g. a fresh seed per training
      sample) times the acquired partial-Fourier region, ``physics =
      unroll3d.physics.MultiCoilMRI3D(mask, coil_maps, img_size)``; ``x`` and ``y`` are divided
      by the 99.5th percentile of ``|A^H y|`` (recorded as ``meta["scale"]``).

    :param str path: the ``.pt`` file written by ``unroll3d data preprocess``.
    :param str setting: ``"v30"``, ``"R5"``, ...
    :param device: torch device for x, y and the physics.
    :param int mask_seed: MRI only: override the fixed per-volume mask seed.
    :param bool mmap: memory-map the file (only the selected views are read for CBCT).
    """
    data, meta, task, value = read_sample_file(path, setting, mmap=mmap)
    if task == "cbct":
        return _cbct_sample(Path(path), data, meta, setting, value, device)
    seed = mask_seed if mask_seed is not None else fixed_mask_seed(meta["volume"], setting)
    return make_sample(data, meta, setting, value, seed, device)


def read_sample_file(
    path: str | Path, setting: str, mmap: bool = True
) -> tuple[dict, dict, str, float]:
    """``(arrays, meta, task, value)`` of a preprocessed file whose task is the setting's (the
    arrays memory-mapped unless ``mmap`` is false; ``meta["source"]`` names the file). MRI
    training keeps them to draw one fresh mask after another on the same k-space
    (:func:`unroll3d.data.mri.make_sample`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"preprocessed sample {path} does not exist (run `unroll3d data preprocess`)"
        )
    try:
        data = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as err:
        raise DataError(f"{path} is not a readable unroll3d sample file: {err}") from err
    meta = dict(data.get("meta", {}))
    meta["source"] = str(path)  # named in errors about this sample
    task, value = parse_setting(setting)
    if meta.get("task") != task:
        raise DataError(
            f"{path} holds task {meta.get('task')!r} but setting {setting!r} is for {task!r}"
        )
    return data, meta, task, value


def _cbct_sample(path, data: dict, meta: dict, setting: str, value, device) -> Sample:
    """The views of setting ``v<value>`` of a Walnut file's arrays, on ``device``."""
    n_full = int(meta.get("n_full", data["y"].shape[0]))
    idx = view_indices(n_full, int(value))
    stored = data["view_ids"].numpy() if "view_ids" in data else np.arange(n_full)
    pos = np.searchsorted(stored, idx)
    if np.any(pos >= len(stored)) or np.any(stored[np.minimum(pos, len(stored) - 1)] != idx):
        raise DataError(
            f"{path} stores {len(stored)} of {n_full} views, not all of the {len(idx)} that "
            f"setting {setting!r} needs; preprocess it again with this view count in the "
            f"settings (cbct.views) or with all views"
        )
    idx_t = torch.from_numpy(pos)
    y = data["y"].index_select(0, idx_t).to(device)[None, None]
    vectors = data["vectors"].index_select(0, idx_t)
    if data["x"].dim() != 3 or len(set(data["x"].shape)) != 1:  # Walnut grids are cubic
        raise DataError(
            f"{path}: the volume is {' × '.join(map(str, data['x'].shape))}; Walnut volumes "
            "are cubic (a ground-truth slice missing from the raw zip?); delete it and "
            "preprocess it again"
        )
    x = data["x"].to(device)[None, None]
    physics = ConeBeam(vectors, tuple(x.shape[-3:]), det_shape=tuple(y.shape[-2:])).to(device)
    meta.update(setting=setting, view_indices=idx.tolist(), n_views=len(idx), n_full=n_full)
    return Sample(x=x, y=y, physics=physics, meta=meta)
