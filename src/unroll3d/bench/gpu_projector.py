"""The GPU check's ``projector`` section: cone-beam adjointness and forward/back/FDK time at the
Walnut geometry, and this backend's agreement with RTK (in-process or a reference file).
"""

from __future__ import annotations

import time
from pathlib import Path

from unroll3d.bench.gpu_geometry import ball_phantom, walnut_physics
from unroll3d.bench.gpu_recorder import free, peak_gb, sync, timed


def rtk_reference(n: int, views: int):
    """x, y, A x and Aᵀ y of the Walnut-like geometry at ``n``³ with RTK (CPU, needs ITK)."""
    import torch

    physics = walnut_physics(n, views, "rtk", "cpu")
    x = ball_phantom(n, "cpu")
    y = torch.rand((1, *physics.meas_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ax = physics.A(x)
        return dict(
            n=n, views=views, x=x, y=y, Ax=ax, ATy=physics.A_adjoint(y), ATAx=physics.A_adjoint(ax)
        )


def write_reference(path: Path, n: int, views: int) -> None:
    """Save the RTK reference of the agreement check (run where ITK is installed)."""
    from unroll3d.utils import atomic_torch_save

    atomic_torch_save(rtk_reference(n, views), path)
    print(f"wrote RTK reference {n}³, {views} views, to {path}")


def section_projector(rec, device, backend, prof, reference: Path | None) -> None:
    import torch

    for n in prof["projector_sizes"]:
        if rec.left() < 20:
            rec.add("projector", f"{n}³", "all", "", status="skipped", note="time budget")
            continue
        case = f"{n}³, {prof['views']} views"
        physics = walnut_physics(n, prof["views"], backend, device)
        case += f", detector {physics.det_shape[0]}×{physics.det_shape[1]}"
        g = torch.Generator().manual_seed(0)
        x = torch.rand((1, 1, n, n, n), generator=g).to(device)
        y = torch.rand((1, *physics.meas_shape), generator=g).to(device)
        with torch.no_grad():
            free(device)
            t_a, ax = timed(physics.A, x, prof["repeats"], device)
            t_at, aty = timed(physics.A_adjoint, y, prof["repeats"], device)
            lhs, rhs = (
                float((ax.double() * y.double()).sum()),
                float((x.double() * aty.double()).sum()),
            )
            rec.add(
                "projector",
                case,
                "adjointness: relative gap of ⟨Ax,y⟩ and ⟨x,Aᵀy⟩",
                abs(lhs - rhs) / abs(lhs),
            )
            rec.add("projector", case, "A time", t_a, "s")
            rec.add("projector", case, "Aᵀ time", t_at, "s")
            del ax, aty
            t0 = time.perf_counter()
            rec_fdk = physics.fdk(physics.A(x))
            sync(device)
            rec.add("projector", case, "A then FDK time", time.perf_counter() - t0, "s")
            del rec_fdk
            if device.type == "cuda":
                rec.add("projector", case, "peak memory (torch)", peak_gb(device), "GB")
        del physics, x, y
        free(device)
    agreement(rec, device, backend, prof, reference)


def agreement(rec, device, backend, prof, reference: Path | None, use_rtk: bool = True) -> None:
    """Relative difference of this backend's A x and Aᵀ y to RTK's on the same geometry (RTK
    in-process when ``use_rtk`` and ITK imports, else the ``reference`` file)."""
    import torch

    n, views = prof["agreement_size"], prof["views"]
    case = f"{backend} vs RTK, {n}³, {views} views"
    ref, how = None, ""
    try:
        if not use_rtk:
            raise ImportError("RTK not asked for")
        ref, how = rtk_reference(n, views), "RTK in-process"
    except ImportError as exc:  # no ITK on this machine: fall back to the file
        how = f"RTK not importable here ({exc})"
        if reference is not None and Path(reference).exists():
            ref, how = torch.load(reference, weights_only=True), f"reference file {reference}"
            if (ref.get("n"), ref.get("views")) != (n, views) or "ATAx" not in ref:
                rec.add(
                    "projector",
                    case,
                    "agreement",
                    "",
                    status="failed",
                    note=f"{reference} is for {ref.get('n')}³/{ref.get('views')} views or "
                    "predates the smooth-data check: rerun tools/device/prepare.sh",
                )
                return
    if ref is None:
        rec.add("projector", case, "agreement", "", status="not measured", note=how)
        return
    physics = walnut_physics(n, views, backend, device)
    with torch.no_grad():
        ax = physics.A(ref["x"].to(device)).cpu()
        atax = physics.A_adjoint(ref["Ax"].to(device)).cpu()
        aty = physics.A_adjoint(ref["y"].to(device)).cpu()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    # Bounds: both forward projectors integrate the same rays (0.18% apart on an H200); astra's
    # back projector is not the transpose of its own forward one (3.1% adjointness gap at the
    # Walnut geometry), so its agreement with RTK's exact transpose is bounded above that gap.
    for metric, value, tol in (
        ("‖A x − A_rtk x‖/‖A_rtk x‖ (phantom)", rel(ax, ref["Ax"]), 0.02),
        ("‖Aᵀy − Aᵀ_rtk y‖/‖Aᵀ_rtk y‖ (y = A_rtk x, smooth)", rel(atax, ref["ATAx"]), 0.05),
    ):
        rec.add(
            "projector",
            case,
            metric,
            value,
            status="ok" if value < tol else "failed",
            note=f"{how}; tolerance {tol}",
        )
    # white-noise y: astra's voxel-driven BP is not the exact adjoint of its ray-driven FP (the
    # adjointness rows above), and RTK's is; the gap shows at high frequencies. Recorded, no bound.
    rec.add(
        "projector",
        case,
        "‖Aᵀy − Aᵀ_rtk y‖/‖Aᵀ_rtk y‖ (y white noise)",
        rel(aty, ref["ATy"]),
        status="info",
        note=f"{how}; mismatched FP/BP pair, no bound",
    )
