"""Measurement operators: cone-beam CT (RTK on CPU, astra on CUDA), FDK, 3D multi-coil MRI."""

from .conebeam import ConeBeam, circular_vectors, cuda_astra_available, operator_norm
from .fdk import fdk
from .mri import (
    MultiCoilMRI3D,
    estimate_coil_maps,
    kspace_scale,
    partial_kz_mask,
    poisson_disc_mask,
    rss_normalize,
)

__all__ = [
    "ConeBeam",
    "MultiCoilMRI3D",
    "circular_vectors",
    "cuda_astra_available",
    "estimate_coil_maps",
    "fdk",
    "kspace_scale",
    "operator_norm",
    "partial_kz_mask",
    "poisson_disc_mask",
    "rss_normalize",
]
