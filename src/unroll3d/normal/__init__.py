"""Diagonal-circulant approximation H = diag(m) F⁻¹ diag(λ) F of a normal operator AᵀA (paper
§4.5–4.6): the operator and its exact patch restriction (:mod:`.operator`), the physics wrapper
(:mod:`.wrapper`), the data-free fit (:mod:`.fit`) and its error floor (:mod:`.floor`), the MRI
H built from a mask (:mod:`.mask`), files (:mod:`.io`) and the figure (:mod:`.plot`). The ``unroll3d fit-normal`` verb is
:mod:`unroll3d.cli.fit_normal`.
"""

from unroll3d.normal.fit import fit_normal_operator, impulse_filter
from unroll3d.normal.identity import operator_hash
from unroll3d.normal.io import (
    FORMAT_VERSION,
    NormalFileError,
    NormalFit,
    NormalFitMismatch,
    check_fit_matches,
    check_operator_hash,
    load_normal,
    save_normal,
    write_history_csv,
)
from unroll3d.normal.mask import mask_normal
from unroll3d.normal.operator import (
    DiagCirculant,
    RestrictedDiagCirculant,
    operator_sqnorm,
    padded_grid,
    relative_error,
)
from unroll3d.normal.plot import plot_normal
from unroll3d.normal.wrapper import DiagCirculantWrapper

__all__ = [
    "FORMAT_VERSION",
    "DiagCirculant",
    "DiagCirculantWrapper",
    "NormalFit",
    "NormalFileError",
    "NormalFitMismatch",
    "check_fit_matches",
    "check_operator_hash",
    "RestrictedDiagCirculant",
    "impulse_filter",
    "fit_normal_operator",
    "load_normal",
    "mask_normal",
    "operator_hash",
    "operator_sqnorm",
    "padded_grid",
    "plot_normal",
    "relative_error",
    "save_normal",
    "write_history_csv",
]
