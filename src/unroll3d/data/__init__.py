"""Data: downloads, preprocessing and loading of Walnut-CBCT and Calgary-Campinas MRI samples.

The one interface the rest of the project uses is :func:`load_sample`::

    from unroll3d.data import load_sample
    s = load_sample("results/data/cbct/walnut3.pt", "v30")
    x0 = initial_reconstruction(s.physics, s.y)  # from unroll3d.physics; FDK or zero-filled

A preprocessed file holds the full measurement (all views of the orbit; fully sampled k-space)
and the ground truth; the sparse-view subset or the undersampling mask of a ``setting`` is
chosen at load time, so one file serves every setting.
"""

from __future__ import annotations

from typing import Any

from unroll3d.data.download import DataError
from unroll3d.data.sample import Sample, fixed_mask_seed, parse_setting

__all__ = ["DataError", "Sample", "load_sample", "parse_setting", "fixed_mask_seed"]


def __getattr__(name: str) -> Any:
    # load_sample pulls in torch and the physics: imported on first use, so the download and
    # toy verbs (which import this package) start fast.
    if name == "load_sample":
        from unroll3d.data.loading import load_sample

        return load_sample
    raise AttributeError(f"module 'unroll3d.data' has no attribute {name!r}")
