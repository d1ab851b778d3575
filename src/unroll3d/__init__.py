"""unroll3d: efficient unrolled networks for large-scale 3D inverse problems.

The public API is re-exported here and imported lazily (PEP 562), so ``import unroll3d`` stays
cheap and a name pulls in torch/deepinv only when it is first used::

    from unroll3d import PartitionedReconstructor, DiagCirculantWrapper, ConeBeam
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "PartitionedReconstructor": "unroll3d.partition",
    "PartitionedPhysics": "unroll3d.partition",
    "DiagCirculant": "unroll3d.normal",
    "DiagCirculantWrapper": "unroll3d.normal",
    "NormalFit": "unroll3d.normal",
    "fit_normal_operator": "unroll3d.normal",
    "load_normal": "unroll3d.normal",
    "save_normal": "unroll3d.normal",
    "ConeBeam": "unroll3d.physics",
    "MultiCoilMRI3D": "unroll3d.physics",
    "fdk": "unroll3d.physics",
    "sqnorm": "unroll3d.physics",
    "build_variant": "unroll3d.models",
    "UnrolledPGD": "unroll3d.models",
    "VARIANTS": "unroll3d.variants",
    "VariantSpec": "unroll3d.variants",
    "variant_spec": "unroll3d.variants",
    "compute_metrics": "unroll3d.metrics",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from unroll3d.metrics import compute_metrics
    from unroll3d.models import UnrolledPGD, build_variant
    from unroll3d.normal import (
        DiagCirculant,
        DiagCirculantWrapper,
        NormalFit,
        fit_normal_operator,
        load_normal,
        save_normal,
    )
    from unroll3d.partition import PartitionedPhysics, PartitionedReconstructor
    from unroll3d.physics import ConeBeam, MultiCoilMRI3D, fdk, sqnorm
    from unroll3d.variants import VARIANTS, VariantSpec, variant_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unroll3d' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
