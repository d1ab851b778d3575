"""unroll3d: efficient unrolled networks for large-scale 3D inverse problems."""

__version__ = "0.1.0"
