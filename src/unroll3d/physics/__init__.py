"""Measurement operators: cone-beam CT (RTK on CPU, astra on CUDA), FDK, 3D multi-coil MRI."""

from .conebeam import ConeBeam, circular_vectors, cuda_astra_available, operator_norm
from .fdk import fdk

__all__ = ["ConeBeam", "circular_vectors", "cuda_astra_available", "fdk", "operator_norm"]
