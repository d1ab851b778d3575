"""Any deepinv ``LinearPhysics`` with its normal operator AᵀA replaced by the fitted H
(``A``, ``Aᵀ`` and ``A†`` stay exact), in the style of deepinv's small physics wrappers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from unroll3d.normal.identity import WrapsPhysics, operator_hash
from unroll3d.normal.io import NormalFit, check_operator_hash, load_normal
from unroll3d.normal.operator import DiagCirculant, check_img_size
from unroll3d.physics import initial_reconstruction

__all__ = ["DiagCirculantWrapper"]


class DiagCirculantWrapper(LinearPhysics, WrapsPhysics):
    r"""Any :class:`deepinv.physics.LinearPhysics` with its normal operator replaced by H.

    ``A``, ``A_adjoint``, ``A_dagger`` and ``initial_reconstruction`` are the wrapped physics'
    (exact); ``A_adjoint_A`` is
    ``scaling · H x``. H was fitted to :math:`A^\top A / \|A\|^2`, so pass
    ``scaling = ‖A‖²`` (the ``scaling`` stored by :func:`save_normal`) for an unnormalised A.
    The parameters can be given here or at call time
    (``A_adjoint_A(x, fourier_filter=..., spatial_mask=...)``), as on the project page;
    :meth:`from_fit` wraps with a :class:`NormalFit`'s own H (no second copy of it).

    This is how H reaches a :class:`~unroll3d.partition.PartitionedReconstructor`: given this
    physics, its patch data steps use ``scaling · S H Sᵀ`` (:meth:`DiagCirculant.restrict`).

    :param physics: the global operator.
    :param img_size: ``(C, D, H, W)``.
    :param float scaling: factor multiplying H.
    :param device: where the parameters live.
    :param fourier_filter: λ (see :class:`DiagCirculant`), optional.
    :param spatial_mask: m, optional.
    :param bool two_sided: the two-sided (MRI) form.
    :param bool symmetrize: use ½(H + H*).
    """

    def __init__(
        self,
        physics: LinearPhysics,
        img_size: Sequence[int],
        scaling: float = 1.0,
        device: torch.device | str | None = None,
        fourier_filter: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
        two_sided: bool = False,
        symmetrize: bool = False,
        grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__(img_size=tuple(img_size), device=device or "cpu")
        self.physics = physics
        self.img_size = check_img_size(img_size)
        self.scaling = float(scaling)
        self.two_sided = bool(two_sided)
        self.symmetrize = bool(symmetrize)
        self._grid = None if grid is None else tuple(grid)
        self.normal_op: DiagCirculant | None = None
        if (fourier_filter is None) != (spatial_mask is None):
            raise ValueError("give both fourier_filter and spatial_mask, or neither")
        if fourier_filter is not None:
            self.set_parameters(fourier_filter, spatial_mask, device=device)

    @classmethod
    def from_fit(
        cls,
        physics: LinearPhysics,
        fit: NormalFit,
        scaling: float | None = None,
        img_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> DiagCirculantWrapper:
        """Wrap ``physics`` with the H of ``fit``: the fit's own :meth:`NormalFit.operator`
        (built once per image size and shared), scaled by ``scaling`` (default: the fit's
        ‖A‖²)."""
        if scaling is None:
            if fit.scaling is None:
                raise ValueError(
                    f"{fit.source or 'the fit'} records no scaling (‖A‖²): pass scaling="
                )
            scaling = fit.scaling
        img_size = fit.img_size if img_size is None else img_size
        wrapped = cls(
            physics,
            img_size,
            scaling=scaling,
            device=device,
            two_sided=fit.two_sided,
            grid=fit.grid,
        )
        wrapped.normal_op = fit.operator(wrapped.img_size)
        return wrapped

    @classmethod
    def from_file(
        cls,
        physics: LinearPhysics,
        path: str | Path,
        check_hash: bool = True,
        device: torch.device | str | None = None,
    ) -> DiagCirculantWrapper:
        """Wrap ``physics`` with the fit stored at ``path``, refused unless ``physics`` hashes as
        the operator it was fitted for (``check_hash``; a physics described by no tensor is
        hashed by its response at the fit's image size)."""
        fit = load_normal(path)
        if check_hash:
            check_operator_hash(fit.operator_hash, operator_hash(physics, fit.img_size), path)
        if device is not None:
            fit = fit.to(device)
        return cls.from_fit(physics, fit, device=device)

    def set_parameters(
        self,
        fourier_filter: torch.Tensor,
        spatial_mask: torch.Tensor,
        device: torch.device | str | None = None,
    ) -> None:
        """Install λ and m (moved to ``device`` when given)."""
        if device is not None:
            fourier_filter = fourier_filter.to(device)
            spatial_mask = spatial_mask.to(device)
        self.normal_op = DiagCirculant(
            fourier_filter,
            spatial_mask,
            self.img_size,
            two_sided=self.two_sided,
            symmetrize=self.symmetrize,
            grid=self._grid,
        )

    def operator(
        self,
        fourier_filter: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> DiagCirculant:
        """H (unscaled): the one held, or one with λ and m given at call time (then held)."""
        if fourier_filter is not None or spatial_mask is not None:
            if fourier_filter is None or spatial_mask is None:
                raise ValueError("give both fourier_filter and spatial_mask, or neither")
            op = self.normal_op
            if (
                op is None
                or op.fourier_filter is not fourier_filter
                or op.spatial_mask is not spatial_mask
            ):
                self.set_parameters(fourier_filter, spatial_mask)
        if self.normal_op is None:
            raise RuntimeError(
                "DiagCirculantWrapper has no parameters: pass fourier_filter and spatial_mask "
                "to the constructor or to the call"
            )
        return self.normal_op

    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("fourier_filter", None)
        kwargs.pop("spatial_mask", None)
        return self.physics.A(x, **kwargs)

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("fourier_filter", None)
        kwargs.pop("spatial_mask", None)
        return self.physics.A_adjoint(y, **kwargs)

    def A_dagger(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("fourier_filter", None)
        kwargs.pop("spatial_mask", None)
        return self.physics.A_dagger(y, **kwargs)

    def initial_reconstruction(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The wrapped physics' first estimate (FDK, zero-filled), see
        :func:`unroll3d.physics.initial_reconstruction`."""
        return initial_reconstruction(self.physics, y, **kwargs)

    # the wrapped physics' exact readout-slab operators (a partitioned patch's Ã, Ãᵀ and exact
    # S AᵀA Sᵀ use them when it has them: 3D MRI)
    @property
    def readout_slabs(self) -> bool:
        return bool(getattr(self.physics, "readout_slabs", False))

    def readout_mask(self) -> torch.Tensor | None:
        return self.physics.readout_mask()

    def A_slab(self, x_slab: torch.Tensor, first: int) -> torch.Tensor:
        return self.physics.A_slab(x_slab, first)

    def A_adjoint_slab(self, y: torch.Tensor, first: int, length: int) -> torch.Tensor:
        return self.physics.A_adjoint_slab(y, first, length)

    def normal_slab(self, x_slab: torch.Tensor, first: int) -> torch.Tensor | None:
        """The exact AᵀA on readout slices (not H)."""
        return self.physics.normal_slab(x_slab, first)

    def A_adjoint_A(
        self,
        x: torch.Tensor,
        fourier_filter: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """scaling · H x."""
        return self.scaling * self.operator(fourier_filter, spatial_mask)(x)
