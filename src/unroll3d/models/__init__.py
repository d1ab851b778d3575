"""Reconstruction models, one module per kind of method, all following the ``(y, physics)``
contract of :class:`deepinv.models.Reconstructor`:

- :mod:`~unroll3d.models.drunet`: the prior networks (3D DRUNet, 2D DRUNet slice by slice) and
  their patch-wise application;
- :mod:`~unroll3d.models.unrolled`: unrolled PGD and DRUNet post-processing (learned);
- :mod:`~unroll3d.models.classical`: FDK / zero-filled RSS, the adjoint, TV;
- :mod:`~unroll3d.models.pnp`: PnP-αPGD with a learned 3D DRUNet denoiser;
- :mod:`~unroll3d.models.dpir`: DPIR with a pretrained 2D denoiser, slice by slice;
- :mod:`~unroll3d.models.build`: the builder of each variant kind and :func:`build_variant`.
"""

from unroll3d.models.build import (
    BUILDERS,
    TASK_CHANNELS,
    BuildContext,
    build_variant,
    count_parameters,
    resolve_model_config,
)
from unroll3d.models.classical import Adjoint, Analytical, TVReconstructor, ZeroFilledRSS
from unroll3d.models.dpir import DPIRSlices
from unroll3d.models.drunet import DRUNet3D, DRUNetSlices, apply_tiled
from unroll3d.models.pnp import PnPAlphaPGD
from unroll3d.models.unrolled import PostProcess, UnrolledPGD
from unroll3d.variants import VARIANTS, VariantSpec, variant_spec

__all__ = [
    "DRUNet3D",
    "DRUNetSlices",
    "UnrolledPGD",
    "PostProcess",
    "Analytical",
    "ZeroFilledRSS",
    "Adjoint",
    "TVReconstructor",
    "PnPAlphaPGD",
    "DPIRSlices",
    "VariantSpec",
    "VARIANTS",
    "variant_spec",
    "build_variant",
    "BUILDERS",
    "BuildContext",
    "TASK_CHANNELS",
    "resolve_model_config",
    "apply_tiled",
    "count_parameters",
]
