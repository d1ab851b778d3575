"""Measurement operators: cone-beam CT (RTK on CPU, astra on CUDA), FDK, 3D multi-coil MRI, the
models' initial reconstruction (:func:`initial_reconstruction`), and the power-method norms
‖A‖ / ‖A‖² shared by all of them."""

from .conebeam import ConeBeam, circular_vectors, cuda_astra_available
from .fdk import fdk
from .initial import initial_reconstruction
from .mri import (
    MultiCoilMRI3D,
    estimate_coil_maps,
    kspace_scale,
    partial_kz_mask,
    poisson_disc_mask,
    rss_normalize,
)
from .norm import operator_norm, sqnorm

__all__ = [
    "ConeBeam",
    "MultiCoilMRI3D",
    "circular_vectors",
    "cuda_astra_available",
    "estimate_coil_maps",
    "fdk",
    "initial_reconstruction",
    "kspace_scale",
    "operator_norm",
    "partial_kz_mask",
    "poisson_disc_mask",
    "rss_normalize",
    "sqnorm",
]
