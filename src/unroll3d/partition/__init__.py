"""Domain partitioning (paper §4.3-4.4); the code lives in :mod:`unroll3d.partition.reconstructor`."""

from unroll3d.partition.reconstructor import (
    PartitionedPhysics,
    PartitionedReconstructor,
    blend_normaliser,
    blend_window,
    crop_patch,
    embed_patch,
    patch_grid,
    sample_patch_start,
)

__all__ = [
    "patch_grid",
    "blend_window",
    "blend_normaliser",
    "crop_patch",
    "embed_patch",
    "sample_patch_start",
    "PartitionedPhysics",
    "PartitionedReconstructor",
]
