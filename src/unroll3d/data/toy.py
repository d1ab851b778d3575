"""Toy data in the real raw formats (the verb ``unroll3d toy``: :mod:`unroll3d.cli.toy`).

* CBCT: miniature ``Walnut<N>.zip`` files with the real folder layout: uint16 TIFF projections
  (stored transposed and flipped, as the scanner writes them), a dark field and two flats, a
  ``scan_geom_corrected.geom`` with a tilted-axis cone geometry in mm (one row more than views,
  the last repeating the first angle), the reversed file pairing (row ``i`` <->
  ``scan_{n_full - i}``), ``full_AGD_50_*`` ground-truth slices (``.tif`` for some walnuts, as in
  the real collection) and ``fdk_pos<orbit>_*`` slices made with our FDK. Projections are exact
  line integrals through an ellipsoid phantom (a walnut-like shell and kernel, plus an
  asymmetric marker), so they do not depend on any projector.
* MRI: a miniature ``train_val_12_channel.zip`` with ``Train/`` and ``Val/`` folders of
  ``<id>.7.h5`` files holding ``kspace`` (x, ky, kz, 2 N) float32: hybrid (readout in image
  space), interleaved real/imag coils, ky-kz in the DC-centred layout where an un-shifted inverse
  FFT gives the image (the layout that DIRECT and the challenge code assume), and the last 15 %
  of kz zero (partial Fourier), from a seeded brain-like phantom with simulated coil maps.

Each writer also writes ``registry.csv`` (sha256 of every file) next to the files, so that the
download rule can fetch them through pooch from a local HTTP server exactly as real data.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np

from unroll3d.data.download import RegistryEntry, file_hash, write_registry
from unroll3d.data.walnut import unorient
from unroll3d.utils import atomic_path

# ----------------------------------------------------------------------------------------------
# Ellipsoid phantoms: exact line integrals and voxelisation
# ----------------------------------------------------------------------------------------------


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx


def walnut_phantom(
    radius: float, seed: int, marker: bool = True, only_marker: bool = False
) -> list[tuple]:
    """Ellipsoids ``(centre xyz, semi-axes, rotation, density)`` of a walnut-like phantom.

    ``radius`` in mm; densities in 1/mm (about 0.02–0.07, like the real reference). The marker is a
    small dense ball at (+0.45, -0.3, +0.35) * radius: not symmetric under any axis flip or swap.
    """
    rng = np.random.default_rng(seed)
    r = radius
    jit = lambda s: 1.0 + s * (rng.random(3) - 0.5)  # noqa: E731
    eye = np.eye(3)
    rot = _rotation(tuple(rng.uniform(-0.4, 0.4, 3)))
    out = []
    if not only_marker:
        shell = r * np.array([0.80, 0.70, 0.90]) * jit(0.1)
        out += [
            ((0, 0, 0), shell, rot, 0.045),
            ((0, 0, 0), shell * 0.86, rot, -0.040),  # hollow inside the shell
            (
                rot @ (np.array([-0.22, 0, 0]) * r),
                r * np.array([0.22, 0.45, 0.60]) * jit(0.2),
                rot,
                0.030,
            ),
            (
                rot @ (np.array([0.22, 0, 0]) * r),
                r * np.array([0.22, 0.45, 0.60]) * jit(0.2),
                rot,
                0.030,
            ),
        ]
    if marker or only_marker:
        out.append((np.array([0.45, -0.30, 0.35]) * r, np.full(3, 0.09 * r), eye, 0.07))
    return out


def line_integrals(src: np.ndarray, pts: np.ndarray, ellipsoids: list[tuple]) -> np.ndarray:
    """Exact integrals of the phantom along the rays from ``src`` (3,) to ``pts`` (..., 3), mm."""
    d = pts - src
    length = np.linalg.norm(d, axis=-1, keepdims=True)
    d = d / length
    total = np.zeros(pts.shape[:-1])
    for centre, axes, rot, rho in ellipsoids:
        # unit-sphere coordinates q = diag(1/axes) R^T (p - c)
        m = np.diag(1.0 / np.asarray(axes, float)) @ rot.T
        s0 = m @ (src - np.asarray(centre, float))
        dd = d @ m.T
        a = np.sum(dd * dd, axis=-1)
        b = 2 * (dd @ s0)
        c = s0 @ s0 - 1
        disc = b * b - 4 * a * c
        chord = np.where(disc > 0, np.sqrt(np.maximum(disc, 0)) / a, 0.0)
        total += rho * chord
    return total


def voxelise(
    ellipsoids: list[tuple], shape: tuple[int, int, int], voxel_mm: float, sub: int = 2
) -> np.ndarray:
    """Average density per voxel ((D, H, W) = (z, y, x), centred grid), ``sub``^3 samples each."""
    d, h, w = shape
    out = np.zeros(shape, dtype=np.float64)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    zc = (np.arange(d) - (d - 1) / 2) * voxel_mm
    yc = (np.arange(h) - (h - 1) / 2) * voxel_mm
    xc = (np.arange(w) - (w - 1) / 2) * voxel_mm
    for oz in offs:
        for oy in offs:
            for ox in offs:
                z, y, x = np.meshgrid(
                    zc + oz * voxel_mm, yc + oy * voxel_mm, xc + ox * voxel_mm, indexing="ij"
                )
                p = np.stack([x, y, z], axis=-1)
                for centre, axes, rot, rho in ellipsoids:
                    q = (p - np.asarray(centre, float)) @ rot / np.asarray(axes, float)
                    out += rho * (np.sum(q * q, axis=-1) <= 1)
    return (out / sub**3).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# CBCT toy
# ----------------------------------------------------------------------------------------------


def toy_geometry(
    n_full: int,
    det_shape: tuple[int, int],
    size: int,
    voxel_mm: float,
    tilt_deg: float = 0.5,
    shift_px: float = 0.3,
) -> np.ndarray:
    """``(n_full + 1, 12)`` cone_vec vectors in mm of a circular orbit with a tilted axis.

    Proportions follow the real scanner (source-axis 66 mm, source-detector 199 mm for a
    50 mm field of view). The last row repeats the first angle. ``u`` and ``v`` stay orthogonal.
    """
    rows, cols = det_shape
    half = size * voxel_mm / 2
    sod = 66.0 / 25.05 * half
    sdd = 199.0 / 66.0 * sod
    mag = sdd / sod
    pix = (
        mag * 1.1 * size * voxel_mm / cols
    )  # the detector sees the whole field across (no truncation)
    t = math.radians(tilt_deg)
    tilt = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    vec = np.zeros((n_full + 1, 12))
    for i in range(n_full + 1):
        th = 2 * math.pi * (i % n_full) / n_full
        s = np.array([math.sin(th) * sod, -math.cos(th) * sod, 0.0])
        u = np.array([math.cos(th), math.sin(th), 0.0]) * pix
        v = np.array([0.0, 0.0, -1.0]) * pix  # rows run downwards, as on a real detector
        d = np.array([-math.sin(th), math.cos(th), 0.0]) * (sdd - sod) + shift_px * u
        vec[i] = np.concatenate([tilt @ s, tilt @ d, tilt @ u, tilt @ v])
    return vec


def simulate_projections(
    vectors: np.ndarray, det_shape: tuple[int, int], ellipsoids: list[tuple], sub: int = 2
) -> np.ndarray:
    """Line integrals (n_views, rows, cols), averaged over ``sub`` x ``sub`` rays per pixel.

    Pixel (r, c) is centred at ``d + (c - (cols - 1) / 2) u + (r - (rows - 1) / 2) v`` (ASTRA).
    """
    rows, cols = det_shape
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    out = np.zeros((len(vectors), rows, cols))
    for i, g in enumerate(vectors):
        s, d, u, v = g[0:3], g[3:6], g[6:9], g[9:12]
        for orow in offs:
            for ocol in offs:
                rr = np.arange(rows) - (rows - 1) / 2 + orow
                cc = np.arange(cols) - (cols - 1) / 2 + ocol
                pts = d + cc[None, :, None] * u + rr[:, None, None] * v
                out[i] += line_integrals(s, pts, ellipsoids)
    return out / sub**2


def _tiff_bytes(a: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a)
    return buf.getvalue()


def write_walnut_zip(
    path: str | Path,
    number: int,
    size: int = 24,
    det_shape: tuple[int, int] = (30, 24),
    n_full: int = 120,
    orbit: int = 2,
    voxel_mm: float = 2.0,
    seed: int = 0,
    tilt_deg: float = 0.5,
    noise: bool = True,
    phantom: str = "walnut",
    fdk: bool = True,
) -> dict:
    """Write one toy ``Walnut<number>.zip`` atomically; return a description (for tests)."""
    rng = np.random.default_rng([seed, number])
    radius = 0.45 * size * voxel_mm
    ell = walnut_phantom(radius, seed=seed * 1000 + number, only_marker=(phantom == "marker"))
    vec = toy_geometry(n_full, det_shape, size, voxel_mm, tilt_deg=tilt_deg)
    lines = simulate_projections(vec, det_shape, ell)  # row i of the geometry
    rows, cols = det_shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    dark = 100.0 + 5.0 * xx
    flat0 = dark + 12000.0 * (1.0 - 0.15 * (xx**2 + yy**2))
    flat1 = dark + (flat0 - dark) * 1.006
    flat = 0.5 * (flat0 + flat1)

    def counts(img):
        if noise:
            img = rng.poisson(np.maximum(img, 0)).astype(np.float64)
        return np.clip(np.round(img), 0, 2**14 - 1).astype(np.uint16)

    root = f"Walnut{number}"
    pdir = f"{root}/Projections/tubeV{orbit}"
    gt = voxelise(ell, (size, size, size), voxel_mm)
    ext = ".tif" if number % 3 == 2 else ".tiff"  # the real collection mixes both
    members: dict[str, bytes] = {}
    members[f"{pdir}/di000000.tif"] = _tiff_bytes(unorient(counts(dark)))
    members[f"{pdir}/io000000.tif"] = _tiff_bytes(unorient(counts(flat0)))
    members[f"{pdir}/io000001.tif"] = _tiff_bytes(unorient(counts(flat1)))
    for i in range(n_full + 1):  # official pairing: geometry row i <-> scan_{n_full - i}
        raw = dark + (flat - dark) * np.exp(-lines[i])
        members[f"{pdir}/scan_{n_full - i:06}.tif"] = _tiff_bytes(unorient(counts(raw)))
    fmt = lambda a: "\n".join(" ".join(f"{t:.9g}" for t in r) for r in a) + "\n"  # noqa: E731
    members[f"{pdir}/scan_geom_corrected.geom"] = fmt(vec).encode()
    orig = vec.copy()
    orig[:, [2, 5]] += 0.4 * voxel_mm  # the scanner's uncorrected record, shifted in z
    members[f"{pdir}/scan_geom_original.geom"] = fmt(orig).encode()
    members[f"{pdir}/scan_settings.txt"] = b"toy scanner settings (not read)\n"
    for k in range(size):
        members[f"{root}/Reconstructions/full_AGD_50_{k:06}{ext}"] = _tiff_bytes(gt[k])
    if fdk:
        rec = toy_fdk(lines[:n_full], vec[:n_full], (size, size, size), voxel_mm, det_shape)
        if rec is not None:
            for k in range(size):
                members[f"{root}/Reconstructions/fdk_pos{orbit}_{k:06}.tiff"] = _tiff_bytes(rec[k])
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    return {
        "vectors_mm": vec,
        "gt": gt,
        "ellipsoids": ell,
        "voxel_mm": voxel_mm,
        "det_shape": det_shape,
    }


def toy_fdk(lines, vectors_mm, img_size, voxel_mm, det_shape):
    """FDK (1/mm) of ideal line integrals with our cone-beam physics, or ``None`` if unavailable."""
    try:
        import torch

        from unroll3d.physics import ConeBeam, fdk
    except ImportError:
        return None
    vec = torch.from_numpy(np.asarray(vectors_mm) / voxel_mm)
    physics = ConeBeam(vec, tuple(img_size), det_shape=tuple(det_shape))
    y = torch.from_numpy(np.asarray(lines, dtype=np.float32) / voxel_mm)[None, None]
    rec = fdk(y, physics)
    return rec[0, 0].detach().cpu().numpy().astype(np.float32)


def write_cbct_toy(
    out_dir: str | Path,
    numbers: list[int],
    size: int = 24,
    det_shape: tuple[int, int] = (30, 24),
    n_full: int = 120,
    orbit: int = 2,
    voxel_mm: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write toy walnut zips and their ``registry.csv`` (sha256) into ``out_dir``."""
    out_dir = Path(out_dir)
    entries = {}
    for n in numbers:
        p = out_dir / f"Walnut{n}.zip"
        write_walnut_zip(p, n, size, det_shape, n_full, orbit, voxel_mm, seed)
        entries[p.name] = RegistryEntry(p.name, p.name, f"sha256:{file_hash(p)}", "toy")
    reg = out_dir / "registry.csv"
    write_registry(reg, entries, header="toy Walnut zips written by `unroll3d toy cbct`")
    return reg


# ----------------------------------------------------------------------------------------------
# MRI toy
# ----------------------------------------------------------------------------------------------


def brain_phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Complex brain-like volume (x, y, z): skull ring, brain, ventricles, an asymmetric lesion."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    j = 1 + 0.08 * (rng.random(3) - 0.5)

    def ell(cx, cy, cz, ax, ay, az):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1

    head = ell(0, 0, 0, 0.85 * j[0], 0.75 * j[1], 0.80 * j[2])
    brain = ell(0, 0, 0, 0.75 * j[0], 0.65 * j[1], 0.70 * j[2])
    img = 1.0 * head - 0.6 * brain + 0.6 * brain * (1 + 0.2 * np.cos(3 * x + 2 * y))
    img -= 0.5 * (ell(-0.15, 0, 0, 0.12, 0.3, 0.25) | ell(0.15, 0, 0, 0.12, 0.3, 0.25))
    img += 0.5 * ell(0.35, -0.25, 0.3, 0.12, 0.12, 0.12)  # marker
    phase = np.exp(1j * (0.4 * x + 0.3 * y - 0.2 * z + rng.uniform(-0.3, 0.3)))
    return (img * phase).astype(np.complex64)


def simulated_coil_maps(shape: tuple[int, int, int], n_coils: int) -> np.ndarray:
    """Smooth complex sensitivities (N, x, y, z) of coils placed on a ring in the y-z plane."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    maps = []
    for k in range(n_coils):
        a = 2 * math.pi * k / n_coils
        cy, cz = 1.4 * math.cos(a), 1.4 * math.sin(a)
        mag = np.exp(-((y - cy) ** 2 + (z - cz) ** 2 + 0.3 * x**2) / 1.6)
        maps.append(mag * np.exp(1j * (a + 0.5 * (y * math.cos(a) + z * math.sin(a)))))
    return np.stack(maps).astype(np.complex64)


def image_to_hybrid(coil_images: np.ndarray, convention: str = "uncentred") -> np.ndarray:
    """Coil images (N, x, y, z) -> raw hybrid k-space (N, x, ky, kz), DC in the middle of ky-kz.

    ``uncentred``: an un-shifted inverse FFT of the raw data gives the image (the layout DIRECT
    and the challenge code assume); ``centred``: the raw data follow the centred convention.
    """
    ax = (-2, -1)
    if convention == "uncentred":
        return np.fft.fftshift(np.fft.fftn(coil_images, axes=ax, norm="ortho"), axes=ax)
    if convention == "centred":
        return np.fft.fftshift(
            np.fft.fftn(np.fft.ifftshift(coil_images, axes=ax), axes=ax, norm="ortho"), axes=ax
        )
    raise ValueError(f"unknown convention {convention!r}")


def write_calgary_h5(
    path, volume_image, coil_maps, partial_fourier=0.85, noise=1e-3, seed=0, convention="uncentred"
):
    """Write one toy HDF5 file with key ``kspace`` (x, ky, kz, 2N) float32, atomically."""
    import h5py

    rng = np.random.default_rng(seed)
    coils = coil_maps * volume_image[None]
    k = image_to_hybrid(coils, convention)
    if noise:
        scale = noise * np.abs(k).max()
        k = k + scale * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    nz = k.shape[-1]
    k[..., math.ceil(partial_fourier * nz) :] = 0
    k = np.moveaxis(k, 0, -1)  # (x, ky, kz, N)
    inter = np.empty(k.shape[:-1] + (2 * k.shape[-1],), dtype=np.float32)
    inter[..., 0::2] = k.real
    inter[..., 1::2] = k.imag
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=inter)
    return inter


def write_mri_toy(
    out_dir: str | Path,
    train_ids: list[str],
    val_ids: list[str],
    shape: tuple[int, int, int] = (16, 20, 18),
    n_coils: int = 4,
    seed: int = 0,
    partial_fourier: float = 0.85,
    convention: str = "uncentred",
) -> Path:
    """Write a toy ``train_val_12_channel.zip`` (``Train/``, ``Val/`` of ``<id>.7.h5``) + registry."""
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = simulated_coil_maps(tuple(shape), n_coils)
    zpath = out_dir / "train_val_12_channel.zip"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmpd, atomic_path(zpath) as tmpzip:
        with zipfile.ZipFile(tmpzip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for folder, ids in (("Train", train_ids), ("Val", val_ids)):
                for i, vid in enumerate(ids):
                    vseed = [seed, i, 0 if folder == "Train" else 1]
                    img = brain_phantom(
                        tuple(shape), seed=int(np.random.default_rng(vseed).integers(2**31))
                    )
                    h5 = Path(tmpd) / f"{vid}.7.h5"
                    write_calgary_h5(h5, img, maps, partial_fourier, seed=i, convention=convention)
                    zf.write(h5, f"{folder}/{vid}.7.h5")
    reg = out_dir / "registry.csv"
    entry = RegistryEntry(zpath.name, zpath.name, f"sha256:{file_hash(zpath)}", "toy")
    write_registry(
        reg, {zpath.name: entry}, header="toy Calgary-Campinas zip written by `unroll3d toy mri`"
    )
    return reg
