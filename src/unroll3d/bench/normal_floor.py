"""How well can one diagonal-circulant H = diag(m) F⁻¹ diag(λ) F approximate a cone-beam AᵀA?

For a sweep of small circular cone-beam geometries (voxel units, RTK Joseph projectors) this
writes, per geometry:

* ``floor``: the best one-sided H found from exact rows of AᵀA (``unroll3d.normal.floor.error_floor``:
  alternating closed forms for the kernel and the mask), i.e. the relative error
  ‖AᵀA − H‖_F / ‖AᵀA‖_F that the model itself allows, measured on held-out rows;
* ``floor_no_mask``: the same with m = 1 (a convex problem: the Toeplitz projection);
* ``sum_K``: an upper bound on the error of the best sum of K such terms,
  Σ_k diag(m_k) F⁻¹ diag(λ_k) F (which keeps the exact patch crop): how many terms a richer model
  would need;
* ``fit``: the held-out Gaussian-probe error reached by ``fit_normal_operator`` (Adam, the
  pipeline's fit) after ``--steps`` steps, and that H's error on a piecewise-constant phantom.

Geometries (n = volume size; pitch = detector pixel at the rotation axis, in voxels):

* ``toy``: source at 4n, detector at 2n behind the axis, pitch 1 (the unit test's operator);
* ``toy-fine-detector``: the same with pitch 0.5;
* ``walnut-like``: the Walnut-CBCT proportions (source at 66 mm and detector at 199 mm for a
  50.1 mm volume, magnification 3.015, pitch 0.5), detector wide enough not to truncate;
* ``near-parallel``: source at 100n, pitch 1.

The detector is sized so that the whole cube projects onto it at every angle. Output: a CSV (one
row per geometry) and a Markdown table beside it.

Example::

    unroll3d bench normal_floor --size 32 --views 30 --steps 300 --out floor.csv
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from unroll3d.utils import atomic_write_csv, atomic_write_text, device_name

if TYPE_CHECKING:
    import torch

# name -> (source-axis distance / n, axis-detector distance / n, detector pitch at the axis)
GEOMETRIES = {
    "toy": (4.0, 2.0, 1.0),
    "toy-fine-detector": (4.0, 2.0, 0.5),
    "walnut-like": (66.0 / 50.1, (199.0 - 66.0) / 50.1, 0.5),
    "near-parallel": (100.0, 2.0, 1.0),
}


def detector_shape(n: int, source_origin: float, origin_detector: float, spacing: float):
    """(rows, columns) so that every corner of the n³ cube projects inside the detector at any
    angle of a circular orbit (plus a one-pixel margin)."""
    import numpy as np

    half = n / 2.0
    corners = np.array(
        [[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)]
    )
    sdd = source_origin + origin_detector
    u_max = v_max = 0.0
    for theta in np.linspace(0.0, 2 * np.pi, 720, endpoint=False):
        c, s = np.cos(theta), np.sin(theta)
        along = corners[:, 0] * s - corners[:, 1] * c  # towards the source
        across = corners[:, 0] * c + corners[:, 1] * s
        mag = sdd / (source_origin - along)
        u_max = max(u_max, float(np.abs(across * mag).max()))
        v_max = max(v_max, float(np.abs(corners[:, 2] * mag).max()))
    return 2 * math.ceil(v_max / spacing) + 2, 2 * math.ceil(u_max / spacing) + 2


def phantom(n: int) -> torch.Tensor:
    """A ball holding a brighter and a darker sphere, shape (1, 1, n, n, n)."""
    import torch

    zz = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n)] * 3, indexing="ij"))
    x = ((zz**2).sum(0) < 0.6).float() * 0.8
    x += ((zz[0] - 0.2) ** 2 + (zz[1] + 0.3) ** 2 + (zz[2] - 0.1) ** 2 < 0.05).float() * 0.5
    x -= ((zz[0] + 0.3) ** 2 + (zz[1] - 0.2) ** 2 + zz[2] ** 2 < 0.03).float() * 0.4
    return x[None, None]


def bench_one(
    name: str,
    n: int,
    views: int,
    steps: int,
    rows: int,
    heldout_rows: int,
    seed: int,
    terms: Sequence[int] = (),
):
    from unroll3d.normal import DiagCirculantWrapper, fit_normal_operator, relative_error
    from unroll3d.normal.floor import error_floor
    from unroll3d.physics import ConeBeam

    so_n, od_n, pitch = GEOMETRIES[name]
    so, od = so_n * n, od_n * n
    spacing = pitch * (so + od) / so
    det = detector_shape(n, so, od, spacing)
    img_size = (1, n, n, n)
    physics = ConeBeam.circular(
        views,
        img_size[1:],
        source_origin=so,
        origin_detector=od,
        det_shape=det,
        det_spacing=spacing,
        backend="rtk",
    )
    t0 = time.perf_counter()
    floor = error_floor(
        physics, img_size, n_rows=rows, n_heldout=heldout_rows, seed=seed, terms=terms
    )
    floor_plain = error_floor(
        physics,
        img_size,
        n_rows=rows,
        n_heldout=heldout_rows,
        seed=seed,
        fit_mask=False,
        iterations=1,
    )
    t_floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    lam, m, hist = fit_normal_operator(
        physics, img_size, n_steps=steps, batch=1, lr=1e-2, seed=seed, heldout=8, progress=False
    )
    t_fit = time.perf_counter() - t0
    wrapped = DiagCirculantWrapper(
        physics, img_size, scaling=hist["sqnorm"], fourier_filter=lam, spatial_mask=m
    )
    x = phantom(n)
    phantom_err = relative_error(physics.A_adjoint_A(x), wrapped.A_adjoint_A(x))
    half_angle = math.degrees(math.atan(n / math.sqrt(2) / (so - n / math.sqrt(2))))
    return {
        "device": device_name("cpu"),
        "geometry": name,
        "size": n,
        "views": views,
        "source_axis": round(so, 3),
        "axis_detector": round(od, 3),
        "pitch_at_axis": pitch,
        "detector": f"{det[0]}x{det[1]}",
        "max_fan_half_angle_deg": round(half_angle, 2),
        "floor_heldout": floor["heldout_rel_error"],
        "floor_train": floor["train_rel_error"],
        "floor_no_mask_heldout": floor_plain["heldout_rel_error"],
        **{f"sum_{k}_heldout": v for k, v in floor["sum_of_terms_heldout_rel_error"].items()},
        "rows": rows,
        "heldout_rows": heldout_rows,
        "fit_steps": steps,
        "fit_heldout_initial": hist["heldout_rel_error"][0],
        "fit_heldout": hist["best_heldout_rel_error"],  # of the returned (best) step
        "fit_phantom": phantom_err,
        "seconds_floor": t_floor,
        "seconds_fit": t_fit,
    }


def markdown(rows: list[dict]) -> str:
    sums = [k for k in rows[0] if k.startswith("sum_")]
    head = (
        "| Geometry | n | Views | Pitch (voxel) | Max fan ½-angle | Floor, H | Floor, m = 1 "
        + "".join(f"| Sum of {k.split('_')[1]} terms ≤ " for k in sums)
        + "| Fit (probes) | Fit (phantom) |\n"
        + "|---" * (9 + len(sums))
        + "|\n"
    )
    body = "".join(
        f"| {r['geometry']} | {r['size']} | {r['views']} | {r['pitch_at_axis']} "
        f"| {r['max_fan_half_angle_deg']}° | {r['floor_heldout']:.3f} "
        f"| {r['floor_no_mask_heldout']:.3f} "
        + "".join(f"| {r[k]:.3f} " for k in sums)
        + f"| {r['fit_heldout']:.3f} ({r['fit_steps']} steps) | {r['fit_phantom']:.3f} |\n"
        for r in rows
    )
    devices = sorted({r["device"] for r in rows})
    notes = (
        "\nRelative errors ‖AᵀAx − Hx‖/‖AᵀAx‖. *Floor*: the best one-sided H for the operator, "
        "from exact rows of AᵀA (`unroll3d.normal.floor.error_floor`), i.e. the error on white Gaussian "
        "probes that no fit of this form can go much below. *Sum of K terms*: an upper bound for "
        "Σ_k diag(m_k) F⁻¹ diag(λ_k) F (the one-term optimum plus K − 1 SVD terms of its "
        "residual). *Fit*: `fit_normal_operator` on "
        "held-out Gaussian probes and on a phantom. RTK Joseph projectors, circular orbit, "
        f"detector sized not to truncate. Device: {', '.join(devices)}.\n"
    )
    return "# Error floor of the diagonal-circulant H on cone-beam AᵀA\n\n" + head + body + notes


def run_normal_floor(
    out: str | Path,
    *,
    size: int,
    views: Sequence[int],
    geometries: Sequence[str],
    steps: int,
    rows: int,
    heldout_rows: int,
    terms: Sequence[int],
    seed: int,
    threads: int | None = None,
) -> list[dict]:
    """Every (views, geometry): floor and fit; CSV at ``out`` and a .md table beside it;
    returns the rows."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    table = []
    for n_views in views:
        for name in geometries:
            r = bench_one(name, size, n_views, steps, rows, heldout_rows, seed, terms)
            table.append(r)
            print(
                f"{name} n={r['size']} views={n_views}: floor {r['floor_heldout']:.3f} "
                f"(m = 1: {r['floor_no_mask_heldout']:.3f}), fit {r['fit_heldout']:.3f} after "
                f"{r['fit_steps']} steps, phantom {r['fit_phantom']:.3f}",
                flush=True,
            )
    out = Path(out)
    atomic_write_csv(out, table)
    atomic_write_text(out.with_suffix(".md"), markdown(table))
    return table
