"""Calgary-Campinas 12-channel MRI: parse one HDF5 volume and preprocess it into one ``.pt`` file.

Raw layout: HDF5 key ``kspace``, shape ``(x, ky, kz, 2 N)`` float32, the
readout ``x`` already inverse-Fourier-transformed (hybrid data), real and imaginary parts of the
``N`` coils interleaved on the last axis, ky-kz k-space with DC in the middle, and the last
15 % of kz never acquired (zero-filled partial Fourier).

Preprocessing:

1. complex coils first: ``k[..., 0::2] + 1j k[..., 1::2]`` -> ``(N, x, ky, kz)``;
2. the partial-Fourier block ``kz >= ceil(pf * Nz)`` is zeroed (as DIRECT does) and the acquired
   ky-kz region is stored as ``pf_mask``;
3. the readout axis is rolled by ``nx // 2`` if the object sits at its ends (recorded as
   ``readout_roll``; the x position of the readout image is not documented);
   ky-kz -> image with the *raw* convention, either ``uncentred`` (an un-shifted inverse FFT gives
   the image, as DIRECT / the challenge code assume) or ``centred``; ``auto`` picks the one whose
   image has more energy in the central half of the field of view (recorded in ``meta``);
4. coil images -> k-space in deepinv's centred convention over all three axes
   (``fftshift(fftn(ifftshift(.), norm="ortho"))``), so that ``deepinv.physics.MultiCoilMRI(
   three_d=True)`` with a full mask and the true maps reproduces the data;
5. coil maps from the centred calibration disc of radius ``calib`` in ky-kz (all x), normalised
   by their root-sum-of-squares (:func:`unroll3d.physics.estimate_coil_maps`);
6. ground truth = the coil-combined complex image ``sum_c conj(S_c) I_c / sum_c |S_c|^2``; the
   challenge's reference, the root-sum-of-squares of the fully sampled (partial-Fourier) coil
   images, is stored next to it (``x_rss``, :func:`rss_reference`, ``evaluate.mri_ground_truth``).

Intensity normalisation happens at load time (it depends on the mask): ``x`` and ``y`` are divided
by the 99.5th percentile of ``|A^H y|`` (docs/paper-notes.md §10; no ground-truth leakage).

Licence: the Calgary-Campinas raw data are CC BY-ND 4.0 (Attribution-NoDerivatives). Our reading,
not legal advice: do not publish the preprocessed ``.pt`` files; every user downloads the zip and
preprocesses it locally (the pipeline does exactly that).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unroll3d.data.download import DataError, file_hash
from unroll3d.data.masks import draw_mask, select_banks

log = logging.getLogger("unroll3d.data")

FORMAT = "unroll3d-sample-v1"
RAW_ZIP = "train_val_12_channel.zip"
MANUAL_HINT = (
    f"The Calgary-Campinas host could not be reached or asked for credentials. Download "
    f"{RAW_ZIP} (58,138,458,254 bytes) by hand from the CC-359 pages (https://sites.google.com/"
    f"view/calgary-campinas-dataset or the CONP portal https://portal.conp.ca, dataset "
    f"'calgary-campinas'), accept its CC BY-ND 4.0 licence, and place it at "
    f"resources/mri/raw/{RAW_ZIP}; its md5 is still verified on the next run."
)

_AX = (-3, -2, -1)


def fft3c(img):
    """deepinv's centred orthonormal FFT over the last three axes (torch or numpy)."""
    return _centred_fft(img, inverse=False)


def ifft3c(k):
    """Inverse of :func:`fft3c`."""
    return _centred_fft(k, inverse=True)


def _centred_fft(a, inverse: bool, ax: tuple[int, ...] = _AX):
    """fftshift ∘ (i)fftn ∘ ifftshift over the axes ``ax``, orthonormal (torch or numpy)."""
    if isinstance(a, np.ndarray):
        f = np.fft.ifftn if inverse else np.fft.fftn
        return np.fft.fftshift(f(np.fft.ifftshift(a, axes=ax), axes=ax, norm="ortho"), axes=ax)
    import torch

    f = torch.fft.ifftn if inverse else torch.fft.fftn
    return torch.fft.fftshift(f(torch.fft.ifftshift(a, dim=ax), dim=ax, norm="ortho"), dim=ax)


def hybrid_to_image(k: np.ndarray, convention: str) -> np.ndarray:
    """Raw hybrid data ``(..., x, ky, kz)`` -> images ``(..., x, y, z)`` under the raw convention."""
    ax = (-2, -1)
    if convention == "uncentred":
        return np.fft.ifftn(np.fft.ifftshift(k, axes=ax), axes=ax, norm="ortho")
    if convention == "centred":
        return _centred_fft(k, inverse=True, ax=ax)
    raise DataError(
        f"unknown k-space convention {convention!r} (expected auto, centred, uncentred)"
    )


def central_energy(img: np.ndarray) -> float:
    """Fraction of ``sum |img|^2`` (over leading axes) inside the central half of the y-z plane."""
    e = np.sum(np.abs(img) ** 2, axis=tuple(range(img.ndim - 2)))
    ny, nz = e.shape
    c = e[ny // 4 : ny - ny // 4, nz // 4 : nz - nz // 4].sum()
    return float(c / max(e.sum(), 1e-30))


_CONVENTIONS = ("uncentred", "centred")


def choose_convention(k: np.ndarray, convention: str, source: str) -> tuple[str, dict[str, float]]:
    """The raw convention of hybrid data ``k`` (N, x, ky, kz): ``auto`` picks the one whose image
    keeps more energy in the central half of the field of view (:func:`central_energy` on the
    middle readout slices) and logs the decision with both scores; a named convention is checked
    the same way and one the data contradict (the other's score over twice its own: measured
    0.62 against 0.001 on the toy, so never near the line for a right one) is an error.
    Returns the convention and both scores."""
    if convention not in ("auto", *_CONVENTIONS):
        raise DataError(
            f"unknown k-space convention {convention!r} (expected auto, centred, uncentred)"
        )
    nx = k.shape[1]
    mid = k[:, max(nx // 2 - 2, 0) : nx // 2 + 2]
    scores = {c: central_energy(hybrid_to_image(mid, c)) for c in _CONVENTIONS}
    best = max(scores, key=scores.get)
    text = ", ".join(f"{c} {v:.3f}" for c, v in scores.items())
    if convention == "auto":
        log.info(
            "%s: k-space convention auto -> %s (energy in the central half of the field of "
            "view: %s)",
            source,
            best,
            text,
        )
        return best, scores
    if scores[best] > 2 * scores[convention]:
        raise DataError(
            f"{source}: mri.kspace_convention is {convention!r}, but the data look {best!r} "
            f"(energy in the central half of the field of view: {text}); set "
            f"mri.kspace_convention to {best!r} or check the file's axis order"
        )
    return convention, scores


def read_kspace(
    path: str | Path,
    source: str | None = None,
    expected_shape: str | tuple[int, int, int] | None = None,
    expected_coils: int | None = None,
) -> np.ndarray:
    """Read ``kspace`` of a Calgary-Campinas HDF5 file -> complex64 ``(N, x, ky, kz)``; its
    stored shape is checked against ``expected_shape`` (:func:`check_kspace_layout`)."""
    import h5py

    source = source or str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{source} is not a readable HDF5 file: {err}") from err
    with f:
        if "kspace" not in f:
            raise DataError(f"{source}: no dataset 'kspace' (keys: {sorted(f.keys())})")
        # the layout is checked before the (large) array is read
        check_kspace_layout(f["kspace"].shape, source, expected_shape, expected_coils)
        k = f["kspace"][()]
    if k.ndim != 4 or k.shape[-1] % 2:
        raise DataError(
            f"{source}: 'kspace' has shape {k.shape}; expected (x, ky, kz, 2*coils) with "
            f"interleaved real/imaginary parts"
        )
    if not np.issubdtype(k.dtype, np.floating):  # complex or integer data would be misread
        raise DataError(
            f"{source}: 'kspace' has dtype {k.dtype}; expected real floating point (float32 or "
            "float64) with real/imaginary parts interleaved along the last axis"
        )
    bad = int(np.count_nonzero(~np.isfinite(k)))
    if bad:
        raise DataError(f"{source}: 'kspace' has {bad} non-finite value(s) (NaN or inf)")
    if not np.any(k):
        raise DataError(f"{source}: 'kspace' is all zeros")
    kc = (k[..., 0::2] + 1j * k[..., 1::2]).astype(np.complex64)
    return np.ascontiguousarray(np.moveaxis(kc, -1, 0))


#: Calgary-Campinas 12-channel raw layout: ``kspace`` of shape (x, ky, kz, 2 N)
CC_LAYOUT = {"x": (256,), "ky": (218,), "kz": (170, 180), "channels": (24,)}


def check_kspace_layout(
    shape: tuple[int, ...],
    source: str,
    expected: str | tuple[int, int, int] | None = None,
    coils: int | None = None,
) -> None:
    """Refuse a raw ``kspace`` whose stored shape (x, ky, kz, 2·coils) is not the expected one:
    ``expected = "calgary-campinas"`` checks :data:`CC_LAYOUT` (256 × 218 × 170/180 × 24), a
    tuple ``(x, ky, kz)`` the config's image size (with ``coils`` when given). A file stored with
    swapped axes would otherwise be read as another image, with exit status 0."""
    shape = tuple(int(n) for n in shape)
    if expected is None:
        return
    if expected == "calgary-campinas":
        allowed = [CC_LAYOUT[k] for k in ("x", "ky", "kz", "channels")]
        want = "256 × 218 × 170|180 × 24 (x, ky, kz, 2·12 coils; Calgary-Campinas)"
    elif isinstance(expected, str) or len(tuple(expected)) != 3:
        raise DataError(f"expected layout {expected!r}: need 'calgary-campinas' or (x, ky, kz)")
    else:
        allowed = [(int(n),) for n in expected] + [(2 * int(coils),) if coils else None]
        want = " × ".join(str(int(n)) for n in expected) + (
            f" × {2 * int(coils)} (x, ky, kz, 2·{coils} coils; config)"
            if coils
            else " × 2·coils (x, ky, kz, 2·coils; config)"
        )
    if len(shape) != 4 or any(
        ok is not None and n not in ok for n, ok in zip(shape, allowed, strict=True)
    ):
        swapped = len(shape) == 4 and shape[0] in allowed[1] and shape[1] in allowed[0]
        raise DataError(
            f"{source}: 'kspace' is stored as {' × '.join(map(str, shape))}, expected {want}"
            + ("; x and ky look swapped" if swapped else "")
            + "; refusing to read it as another image"
        )


def _find_member(zf: zipfile.ZipFile, volume: str, zip_path: Path) -> str:
    pat = re.compile(rf"(?:.*/)?{re.escape(volume)}(?:\.7)?\.h5")
    hits = [n for n in zf.namelist() if pat.fullmatch(n)]
    if len(hits) != 1:
        raise DataError(
            f"{zip_path}: expected one member '<folder>/{volume}.7.h5', found {hits or 'none'}"
        )
    return hits[0]


def preprocess_mri(
    zip_path: str | Path,
    volume: str,
    out: str | Path,
    partial_fourier: float = 0.85,
    calib: int = 18,
    convention: str = "auto",
    challenge_masks: list[str | Path] | None = None,
    expected_shape: str | tuple[int, int, int] | None = None,
    expected_coils: int | None = None,
) -> dict:
    """Preprocess one volume of ``train_val_12_channel.zip`` into ``out`` (atomically).

    ``challenge_masks``: optional ``R<r>_<ny>x<nz>.npy`` files of the CC challenge
    (:mod:`unroll3d.data.masks`); for each R the bank of this volume's (ky, kz) size is stored in
    the sample and then used instead of the seeded generator (mask ``seed % n_masks``); an R
    without a bank of this size is an error.

    ``expected_shape`` (``"calgary-campinas"`` or the config's ``(x, ky, kz)``) and
    ``expected_coils``: the stored layout must match (:func:`check_kspace_layout`). With
    ``convention="auto"`` the choice is logged with its scores; a named convention that the data
    contradict (its image holds less of its energy in the centre of the field of view than the
    other's) is an error.
    """
    import torch

    from unroll3d.utils import atomic_torch_save

    zip_path, out = Path(zip_path), Path(out)
    if not zip_path.exists():
        raise DataError(f"{zip_path} does not exist")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{zip_path} is not a readable zip file (truncated download?): {err}"
        ) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    with zf, tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{volume}.") as tmpd:
        member = _find_member(zf, volume, zip_path)
        h5 = Path(tmpd) / "volume.h5"
        try:
            with zf.open(member) as src, open(h5, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(
                f"{zip_path}: cannot extract member {member!r} (corrupt zip?): {err}"
            ) from err
        k = read_kspace(h5, f"{zip_path}:{member}", expected_shape, expected_coils)
        member_sha = file_hash(h5, "sha256")
    n, nx, ny, nz = k.shape
    member_hashes_extra: dict[str, str] = {}
    kz_cut = math.ceil(partial_fourier * nz)
    acquired = np.abs(k).sum(axis=(0, 1, 2)) > 0
    if acquired[kz_cut:].any() or not acquired[:kz_cut].all():
        log.warning(
            "%s: the non-zero kz columns of the file (%s) are not the first ceil(%g * %d) = %d; "
            "zeroing kz >= %d anyway (check the partial-Fourier side on real data)",
            member,
            np.flatnonzero(acquired).tolist(),
            partial_fourier,
            nz,
            kz_cut,
            kz_cut,
        )
    k[..., kz_cut:] = 0
    pf_mask = np.zeros((ny, nz), dtype=np.float32)
    pf_mask[:, :kz_cut] = 1
    # readout axis: already image space; if the object sits at the ends of x (a readout FFT
    # without shift), roll it by nx // 2 (a relabelling of positions, harmless for the operator)
    e_x = np.sum(np.abs(k) ** 2, axis=(0, 2, 3))
    inner = slice(nx // 4, nx - nx // 4)
    x_roll = 0
    if e_x[inner].sum() < np.roll(e_x, nx // 2)[inner].sum():
        x_roll = nx // 2
        k = np.roll(k, x_roll, axis=1)
    convention, scores = choose_convention(k, convention, f"{zip_path.name}:{member}")
    images = hybrid_to_image(k, convention).astype(np.complex64)
    kspace = fft3c(torch.from_numpy(images))
    kspace = kspace * torch.from_numpy(pf_mask)  # exact zeros outside the acquired block
    del images
    from unroll3d.physics import estimate_coil_maps

    maps = estimate_coil_maps(kspace, calib)[0].to(torch.complex64)  # (N, x, y, z)
    coil_images = ifft3c(kspace)
    x = torch.sum(maps.conj() * coil_images, dim=0) / torch.clamp(
        torch.sum(maps.abs() ** 2, dim=0), min=1e-12
    )
    x_rss = torch.sqrt(torch.sum(coil_images.abs() ** 2, dim=0)).float()  # challenge reference
    del coil_images
    banks = select_banks(challenge_masks or [], ny, nz, volume)
    masks = {r: torch.from_numpy(arr) for r, (_, arr) in banks.items()}
    for mp, _ in banks.values():
        member_hashes_extra[mp.name] = file_hash(mp, "sha256")
    meta = {
        "format": FORMAT,
        "task": "mri",
        "volume": volume,
        "source_zip": zip_path.name,
        "member": member,
        "img_size": [nx, ny, nz],
        "n_coils": n,
        "axes": "x = (real/imag, x readout, y, z); y = (real/imag, coil, kx, ky, kz), deepinv centred FFT",
        "partial_fourier": partial_fourier,
        "kz_cut": kz_cut,
        "kz_acquired_in_file": int(acquired.sum()),
        "kspace_convention": convention,
        "readout_roll": x_roll,
        "convention_scores": scores,
        "calib": calib,
        "coil_maps": "unroll3d.physics.estimate_coil_maps: Hann-windowed calibration disc, RSS-normalised",
        "normalisation": "at load: divide by the 99.5th percentile of |A^H y|",
        "input_sha256": {member: member_sha, **member_hashes_extra},
        "mask_source": f"challenge (R {sorted(masks)})" if masks else "seeded",
    }
    atomic_torch_save(
        {
            "kspace": kspace.to(torch.complex64).contiguous(),
            "coil_maps": maps.contiguous(),
            "x": x.to(torch.complex64).contiguous(),
            "x_rss": x_rss.contiguous(),
            "pf_mask": torch.from_numpy(pf_mask),
            "challenge_masks": masks,
            "meta": meta,
        },
        out,
    )
    return meta


def sampling_mask(shape: tuple[int, int], acceleration: float, calib: int, seed: int):
    """Seeded ky-kz Poisson-disc mask (:func:`unroll3d.physics.poisson_disc_mask`), float32."""
    import torch

    from unroll3d.physics import poisson_disc_mask

    try:
        return torch.as_tensor(
            poisson_disc_mask(tuple(shape), acceleration, calib, seed), dtype=torch.float32
        )
    except ValueError as err:
        raise DataError(f"cannot draw an R={acceleration:g} mask on a {shape} grid: {err}") from err


def check_sample_arrays(data: dict, meta: dict) -> None:
    """The arrays of a preprocessed MRI file agree: k-space (N, x, ky, kz), coil maps of the
    same shape, ground truth (x, ky, kz) = ``meta["img_size"]``, ``pf_mask`` (ky, kz)."""
    where = meta.get("source", f"volume {meta.get('volume')}")
    k = tuple(data["kspace"].shape)
    if len(k) != 4:
        raise DataError(f"{where}: kspace has shape {k}; expected (coils, x, ky, kz)")
    shapes = {
        "coil_maps": (tuple(data["coil_maps"].shape), k),
        "x": (tuple(data["x"].shape), k[1:]),
        "pf_mask": (tuple(data["pf_mask"].shape), k[2:]),
        "meta img_size": (tuple(meta.get("img_size") or k[1:]), k[1:]),
    }
    bad = {name: got for name, (got, want) in shapes.items() if got != want}
    if bad:
        raise DataError(
            f"{where}: its arrays disagree with kspace {k}: "
            + ", ".join(f"{name} {got}" for name, got in bad.items())
            + "; delete it and preprocess it again"
        )


@dataclass(frozen=True)
class DrawnMask:
    """The (ky, kz) mask of one MRI draw, on the host (partial-Fourier block applied): what
    :func:`make_sample` needs besides the file's arrays, so that it can be drawn ahead."""

    mask: Any  # torch.Tensor (ky, kz), float32
    acceleration: float
    seed: int
    source: str  # "seeded" or "challenge R<r> #<index>"
    kind: str  # "seeded" or "challenge"
    effective: float  # ky·kz / number of samples
    volume: str | None  # the file it was drawn for (its partial-Fourier block is in the mask)


def draw_sample_mask(data: dict, meta: dict, acceleration: float, seed: int) -> DrawnMask:
    """The mask of ``seed`` for a preprocessed MRI file under ``R<acceleration>``: mask
    ``seed % n`` of the file's challenge masks for that R when it has them, else a seeded
    Poisson-disc draw (host only; reads neither k-space nor coil maps)."""
    check_sample_arrays(data, meta)
    ny, nz = data["kspace"].shape[-2:]
    calib = int(meta.get("calib", 18))
    challenge = data.get("challenge_masks") or {}
    key = f"{acceleration:g}"
    if key in challenge:
        index, mask = draw_mask(challenge[key], seed)
        mask2d = mask.float() * data["pf_mask"]
        source, kind = f"challenge R{key} #{index}", "challenge"
    elif challenge:
        raise DataError(
            f"volume {meta.get('volume')}: preprocessed with the challenge masks for R "
            f"{', '.join(sorted(challenge, key=float))}, not R{key}; preprocess it again with "
            f"this acceleration in mri.accelerations"
        )
    else:
        mask2d = sampling_mask((ny, nz), acceleration, calib, seed) * data["pf_mask"]
        source = kind = "seeded"
    # counted on the host, before the copy: the mask's only read (a sync on CUDA otherwise)
    effective = float(ny * nz / max(float(mask2d.sum()), 1.0))
    return DrawnMask(mask2d, acceleration, int(seed), source, kind, effective, _volume_of(meta))


def _volume_of(meta: dict) -> str | None:
    return meta.get("source") or meta.get("volume")


def make_sample(
    data: dict,
    meta: dict,
    setting: str,
    acceleration: float,
    seed: int,
    device,
    host_scale: bool = True,
    mask: DrawnMask | None = None,
):
    """Build the :class:`~unroll3d.data.Sample` of a preprocessed MRI file under ``R<acceleration>``
    with the mask of ``seed`` (drawn on the host by :func:`draw_sample_mask`, or ``mask`` when it
    was drawn ahead for that seed and R). Arrays of ``data`` already on ``device`` are
    used where they are: training keeps a volume's k-space and coil maps there and draws only
    a new mask (:class:`unroll3d.engine.samples.FreshMaskLoader`), with ``host_scale`` false:
    the k-space scale then stays a 0-dim tensor on the device, unread (``meta["scale"]``; the
    same numbers, without the host waiting for the quantile)."""
    import torch

    from unroll3d.data.sample import Sample

    kspace = data["kspace"]
    check_sample_arrays(data, meta)
    n, nx, ny, nz = kspace.shape
    from unroll3d.physics import MultiCoilMRI3D, kspace_scale

    if mask is None:
        mask = draw_sample_mask(data, meta, acceleration, seed)
    elif (mask.seed, mask.acceleration) != (int(seed), acceleration):
        raise ValueError(
            f"make_sample: the mask given was drawn for seed {mask.seed} at R{mask.acceleration:g}, "
            f"not seed {seed} at R{acceleration:g}"
        )
    elif mask.volume != _volume_of(meta) or tuple(mask.mask.shape) != (ny, nz):
        h, w = mask.mask.shape
        raise ValueError(
            f"make_sample: the mask given was drawn for {mask.volume} ({h}×{w}), not for "
            f"{_volume_of(meta)} ({ny}×{nz}): draw it from this file's arrays (draw_sample_mask)"
        )
    mask2d = mask.mask.to(device, non_blocking=True)  # one (ky, kz) plane, no wait for the queue
    maps = data["coil_maps"].to(device)[None]
    physics = MultiCoilMRI3D(mask2d, maps, (nx, ny, nz), device=device)
    yk = (kspace.to(device) * mask2d)[None]  # (1, N, x, y, z), mask broadcast along x
    y = torch.stack([yk.real, yk.imag], dim=1).float()  # (1, 2, N, x, y, z)
    xc = data["x"].to(device)
    x = torch.stack([xc.real, xc.imag])[None].float()  # (1, 2, x, y, z)
    try:
        scale = 1.0 / kspace_scale(y, physics, quantile=0.995, on_device=not host_scale)
    except ValueError as err:
        raise DataError(f"volume {meta.get('volume')}: {err}") from err
    meta = {
        **meta,
        "setting": setting,
        "acceleration": acceleration,
        "mask_seed": seed,
        "mask": mask.source,
        "mask_source": mask.kind,
        "effective_acceleration": mask.effective,
        "scale": scale,
    }
    return Sample(x=x * scale, y=y * scale, physics=physics, meta=meta)


def rss_reference(sample):
    """The challenge's reference for a loaded MRI sample: the RSS of the fully sampled coil images
    (stored by :func:`preprocess_mri`), scaled like ``sample.x``, as ``(1, 2, x, y, z)`` with a
    zero imaginary channel (so that its magnitude is the RSS)."""
    import torch

    path = sample.meta.get("source")
    if not path:
        raise DataError("rss_reference: the sample does not name its file (meta['source'])")
    data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if "x_rss" not in data:
        raise DataError(
            f"{path} has no RSS reference (preprocessed by an older version); delete it and "
            "preprocess the volume again"
        )
    rss = data["x_rss"].float()[None, None] * float(sample.meta["scale"])
    if rss.shape[-3:] != sample.x.shape[-3:]:
        raise DataError(
            f"{path}: x_rss has shape {tuple(rss.shape[-3:])}, x {tuple(sample.x.shape[-3:])}"
        )
    return torch.cat([rss, torch.zeros_like(rss)], dim=1)
