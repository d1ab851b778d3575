"""unroll3d: efficient unrolled networks for large-scale 3D inverse problems.

The public API is re-exported here and imported lazily (PEP 562), so ``import unroll3d`` stays
cheap and a name pulls in torch/deepinv only when it is first used::

    from unroll3d import PartitionedReconstructor, DiagCirculantWrapper, ConeBeam
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "PnPAlphaPGD": "unroll3d.models",
    "DPIRSlices": "unroll3d.models",
    "INRReconstructor": "unroll3d.models.inr",
    "VARIANTS": "unroll3d.variants",
    "VariantSpec": "unroll3d.variants",
    "variant_spec": "unroll3d.variants",
    "compute_metrics": "unroll3d.metrics",
}

__all__ = ["__version__", *_EXPORTS]

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unroll3d' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
