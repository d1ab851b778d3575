"""Walnut-CBCT: parse one ``Walnut<N>.zip`` and preprocess it into one ``.pt`` sample file.

The rules follow the official reference code (cicwi/WalnutReconstructionCodes, after the
November 2020 fixes):

* geometry: ``Projections/tubeV<orbit>/scan_geom_corrected.geom``, ``n_rows`` x 12 ASTRA
  ``cone_vec`` vectors in mm; the last row repeats the first angle and is dropped;
* pairing: geometry row ``i`` goes with projection file ``scan_{n_rows - 1 - i:06}.tif``
  (1201 rows: row 0 <-> ``scan_001200.tif``; ``scan_000000.tif`` is never used);
* reorientation of every image (dark, flats, projections): ``np.flipud(stored).T``, turning the
  stored (cols, rows) array into (rows = detector v, cols = detector u);
* ``-log((P - D) / (mean(F0, F1) - D))`` with the ratio clipped below at ``log_clip``;
* ground truth: ``Reconstructions/full_AGD_50_*.tif*`` slices, slice ``i`` = ``vol[i]`` (z).

Units: the stored vectors are divided by the voxel size (voxel units, volume centred at the
origin), ground truth ``x = c * mu`` with ``mu`` in 1/mm and ``c = intensity_scale``, and
``y = (c / voxel_mm) * (-log ratio)``, so that ``y ~= A x`` for the cone-beam operator built
from the voxel-unit vectors. Members are read straight from the zip; nothing is extracted to disk.

Licence: the Walnut collection (Der Sarkissian et al., Sci Data 6, 215, 2019) is CC BY 4.0; cite
the paper and the Zenodo records when publishing results.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from pathlib import Path

import numpy as np

from unroll3d.data.download import DataError, file_hash

log = logging.getLogger("unroll3d.data")

FORMAT = "unroll3d-sample-v1"


def walnut_number(volume: str) -> int:
    """``"walnut12"`` -> 12."""
    m = re.fullmatch(r"walnut(\d+)", volume)
    if not m:
        raise DataError(f"not a walnut volume id: {volume!r} (expected e.g. 'walnut12')")
    return int(m.group(1))


def zip_name(number: int) -> str:
    return f"Walnut{number}.zip"


def view_indices(n_full: int, n_views: int) -> np.ndarray:
    """Equispaced views: ``floor(linspace(0, n_full, n_views, endpoint=False))`` (docs/paper-notes.md §10)."""
    if not 1 <= n_views <= n_full:
        raise DataError(f"cannot take {n_views} views out of a full orbit of {n_full}")
    return np.floor(np.linspace(0, n_full, n_views, endpoint=False) + 1e-9).astype(np.int64)


def reorient(stored: np.ndarray) -> np.ndarray:
    """Stored TIFF (cols, rows) -> (rows = v, cols = u): flip along the first axis, transpose."""
    return np.flipud(stored).T


def unorient(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`reorient` (used by the toy writer)."""
    return np.flipud(image.T)


def parse_geom(text: str | bytes, source: str) -> np.ndarray:
    """Parse a ``.geom`` file: whitespace-separated rows of 12 floats.

    :raises DataError: naming ``source`` if a row does not have 12 columns.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    rows = [
        ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not rows:
        raise DataError(f"{source}: empty geometry file")
    for i, r in enumerate(rows):
        if len(r) != 12:
            raise DataError(
                f"{source}: row {i} has {len(r)} columns; expected 12 (ASTRA cone_vec: source, "
                f"detector centre, u, v)"
            )
    try:
        geom = np.array(rows, dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{source}: non-numeric entry ({err})") from err
    bad = np.argwhere(~np.isfinite(geom))
    if len(bad):
        raise DataError(f"{source}: non-finite entry at row {bad[0][0]}, column {bad[0][1]}")
    return geom


def project_point(vectors: np.ndarray, point: np.ndarray, det_shape: tuple[int, int]) -> np.ndarray:
    """Detector (row, col) where the ray from each view's source through ``point`` lands.

    ASTRA ``cone_vec``: pixel (r, c) has centre ``d + (c - cols/2 + 0.5) u + (r - rows/2 + 0.5) v``.
    ``point`` is (x, y, z) in the same units as ``vectors``. Returns (n_views, 2) fractional indices.
    """
    rows, cols = det_shape
    s, d, u, v = vectors[:, 0:3], vectors[:, 3:6], vectors[:, 6:9], vectors[:, 9:12]
    out = np.empty((len(vectors), 2))
    for i in range(len(vectors)):
        # s + t (p - s) = d + a u + b v  ->  [p - s, -u, -v] [t, a, b]^T = d - s
        m = np.stack([point - s[i], -u[i], -v[i]], axis=1)
        t, a, b = np.linalg.solve(m, d[i] - s[i])
        out[i] = (b + rows / 2 - 0.5, a + cols / 2 - 0.5)
    return out


class WalnutZip:
    """Read access to the members of one ``Walnut<N>.zip`` that preprocessing needs."""

    def __init__(self, path: str | Path, orbit: int = 2):
        self.path = Path(path)
        self.orbit = orbit
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist")
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(
                f"{self.path} is not a readable zip file (truncated download?): {err}"
            ) from err
        names = self.zf.namelist()
        proj = re.compile(rf"(?:(.*)/)?Projections/tubeV{orbit}/")
        roots = {m.group(1) or "" for n in names if (m := proj.match(n))}
        if len(roots) != 1:
            raise DataError(
                f"{self.path}: expected one folder '<Walnut>/Projections/tubeV{orbit}/', found "
                f"{sorted(roots) or 'none'}"
            )
        root = roots.pop()
        self.root = root + "/" if root else ""
        self.proj_dir = f"{self.root}Projections/tubeV{orbit}/"
        self.names = set(names)
        self.scans: dict[int, str] = {}
        for n in names:
            if n.startswith(self.proj_dir) and (
                m := re.fullmatch(r"scan_(\d{6})\.tif", n[len(self.proj_dir) :])
            ):
                self.scans[int(m.group(1))] = n
        rec = f"{self.root}Reconstructions/"
        self.gt = self._slices(names, rec, r"full_AGD_50_(\d+)\.tiff?")
        self.fdk = self._slices(names, rec, rf"fdk_pos{orbit}_(?:.*_)?(\d+)\.tiff?")

    @staticmethod
    def _slices(names: list[str], prefix: str, pattern: str) -> list[str]:
        found = []
        for n in names:
            if n.startswith(prefix) and (m := re.fullmatch(pattern, n[len(prefix) :])):
                found.append((int(m.group(1)), n))
        return [n for _, n in sorted(found)]

    def member(self, name: str) -> str:
        full = self.proj_dir + name
        if full not in self.names:
            raise DataError(f"{self.path}: missing member {full!r}")
        return full

    def read(self, member: str) -> bytes:
        try:
            return self.zf.read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(
                f"{self.path}: cannot read member {member!r} (corrupt zip?): {err}"
            ) from err

    def tiff(self, member: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        import tifffile

        logging.getLogger("tifffile").setLevel(logging.ERROR)  # the Walnut TIFFs carry a bad tag
        try:
            a = tifffile.imread(io.BytesIO(self.read(member)))
        except DataError:
            raise
        except Exception as err:
            raise DataError(
                f"{self.path}: member {member!r} is not a readable TIFF: {err}"
            ) from err
        if shape is not None and a.shape != tuple(shape):
            raise DataError(
                f"{self.path}: member {member!r} has shape {a.shape}; expected {tuple(shape)}"
            )
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise DataError(f"{self.path}: member {member!r} has dtype {a.dtype}; expected real")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            n = int(np.count_nonzero(~np.isfinite(a)))
            raise DataError(f"{self.path}: member {member!r} has {n} non-finite value(s)")
        return a

    def geometry(self) -> np.ndarray:
        m = self.member("scan_geom_corrected.geom")
        return parse_geom(self.read(m), f"{self.path}:{m}")

    def close(self) -> None:
        self.zf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_volume(wz: WalnutZip, members: list[str], what: str) -> np.ndarray:
    """Stack TIFF slices (z) into a float32 (D, H, W) array, checking every slice shape."""
    if not members:
        raise DataError(f"{wz.path}: no {what} slices found under {wz.root}Reconstructions/")
    idx = [int(re.search(r"(\d+)\.tiff?$", m).group(1)) for m in members]
    missing = sorted(set(range(len(idx))) - set(idx))
    if idx != list(range(len(idx))):
        raise DataError(
            f"{wz.path}: {what} slices are not numbered 0..{len(idx) - 1}; missing slice(s) "
            f"{missing[:5] or sorted(set(idx) - set(range(len(idx))))[:5]}"
        )
    first = wz.tiff(members[0])
    if first.ndim != 2:
        raise DataError(
            f"{wz.path}: member {members[0]!r} has shape {first.shape}; expected a 2D slice"
        )
    vol = np.empty((len(members), *first.shape), dtype=np.float32)
    vol[0] = first
    for i, m in enumerate(members[1:], start=1):
        vol[i] = wz.tiff(m, shape=first.shape)
    return vol


#: the Walnut collection's reference grid: 501 slices of 501 × 501 voxels
WALNUT_VOLUME = (501, 501, 501)


def check_volume_shape(
    shape: tuple[int, ...], source: str | Path, expected: tuple[int, ...] | None = None
) -> None:
    """Refuse a ground truth whose (D, H, W) is not what the data set holds: Walnut volumes are
    cubic (:data:`WALNUT_VOLUME`; the toy's ``size``³), and ``expected`` (the config's volume
    shape) when given. A zip missing its last slices would otherwise become a shorter volume."""
    shape = tuple(int(n) for n in shape)
    if expected is not None and shape != tuple(int(n) for n in expected):
        raise DataError(
            f"{source}: the ground truth full_AGD_50_* is {_dims(shape)} (slices × rows × cols), "
            f"but this data set's volumes are {_dims(expected)} (config); slices missing or "
            "another data set?"
        )
    if len(set(shape)) != 1:
        raise DataError(
            f"{source}: the ground truth full_AGD_50_* is {_dims(shape)} (slices × rows × cols); "
            f"Walnut volumes are cubic ({_dims(WALNUT_VOLUME)}): slice(s) missing at the end?"
        )


def _dims(shape) -> str:
    return " × ".join(str(int(n)) for n in shape)


def read_projections(
    wz: WalnutZip, log_clip: float = 1e-6, views: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Flat/dark-corrected ``-log`` projections of the orbit and the paired geometry (mm).

    :param list views: geometry rows (view ids in ``0 .. n_full - 1``) to read; ``None``: all.
    :return: ``(proj (n_views, rows, cols) float32, vectors (n_views, 12) mm, info)``; ``info``
        holds ``n_full`` and ``view_ids``.
    """
    geom = wz.geometry()
    n_rows = geom.shape[0]
    if n_rows < 2:
        raise DataError(
            f"{wz.path}: geometry has {n_rows} rows; expected n_full + 1 (last = first angle)"
        )
    n_full = n_rows - 1
    missing = sorted(set(range(n_rows)) - set(wz.scans))
    extra = sorted(set(wz.scans) - set(range(n_rows)))
    if missing or extra:  # one projection per geometry row, all of them, whichever views are read
        names = [f"{wz.proj_dir}scan_{k:06}.tif" for k in missing[:5]]
        raise DataError(
            f"{wz.path}: the geometry has {n_rows} rows but the projections do not match them: "
            + (f"missing member(s) {', '.join(names)}{' ...' if len(missing) > 5 else ''}"
               if missing else "")
            + ("; " if missing and extra else "")
            + (f"{len(extra)} projection(s) beyond the last row (scan_{extra[0]:06}.tif ...)"
               if extra else "")
        )  # fmt: skip
    dark_stored = wz.tiff(wz.member("di000000.tif"))
    if dark_stored.ndim != 2:
        raise DataError(f"{wz.path}: dark field has shape {dark_stored.shape}; expected 2D")
    stored_shape = dark_stored.shape
    dark = reorient(dark_stored).astype(np.float32)
    flats = [
        reorient(wz.tiff(wz.member(f"io00000{k}.tif"), stored_shape)).astype(np.float32)
        for k in (0, 1)
    ]
    flat = 0.5 * (flats[0] + flats[1])
    denom = flat - dark
    if np.all(denom <= 0):  # flats at or below the dark field everywhere: swapped or empty files
        raise DataError(
            f"{wz.path}: the flat fields (io000000/io000001.tif) are not above the dark field "
            "(di000000.tif) at any detector pixel; are the files swapped or empty?"
        )
    if np.any(denom <= 0):
        log.warning("%s: %d detector pixels have flat <= dark", wz.path, int(np.sum(denom <= 0)))
    denom = np.where(denom > 0, denom, np.float32(1.0))
    rows, cols = dark.shape
    ids = list(range(n_full)) if views is None else sorted(set(int(v) for v in views))
    if ids and not 0 <= ids[0] <= ids[-1] < n_full:
        raise DataError(f"{wz.path}: view ids must lie in 0..{n_full - 1}; got {ids[0]}..{ids[-1]}")
    proj = np.empty((len(ids), rows, cols), dtype=np.float32)
    n_clipped = 0
    for j, i in enumerate(ids):
        k = n_full - i  # official pairing: row i <-> scan_{n_full - i}
        if k not in wz.scans:
            raise DataError(
                f"{wz.path}: missing member {wz.proj_dir}scan_{k:06}.tif (paired with geometry row {i})"
            )
        p = reorient(wz.tiff(wz.scans[k], stored_shape)).astype(np.float32)
        ratio = (p - dark) / denom
        n_clipped += int(np.sum(ratio < log_clip))
        proj[j] = -np.log(np.maximum(ratio, np.float32(log_clip)))
    info = {
        "n_full": n_full,
        "view_ids": ids,
        "det_shape": [rows, cols],
        "stored_shape": list(stored_shape),
        "pairing": "row i <-> scan_{n_full - i:06}.tif",
        "reorientation": "np.flipud(stored).T",
        "log_clip": log_clip,
        "n_clipped": n_clipped,
        "flat_drift": float(np.mean(flats[1] - dark) / max(np.mean(flats[0] - dark), 1e-12)),
    }
    return proj, geom[ids], info


def preprocess_walnut(
    zip_path: str | Path,
    out: str | Path,
    volume: str | None = None,
    orbit: int = 2,
    voxel_size_mm: float = 0.1,
    intensity_scale: float = 14.0,
    log_clip: float = 1e-6,
    settings: list[int] | None = None,
    expected_shape: tuple[int, int, int] | None = None,
) -> dict:
    """Preprocess one walnut zip into one ``.pt`` file (written atomically); return its metadata.

    File content: ``x`` (D, H, W) float32 = ``c * mu``; ``y`` (n_views, rows, cols) float32;
    ``vectors`` (n_views, 12) float64 in voxel units; ``view_ids`` (n_views,) int64, the geometry
    rows stored; ``meta`` dict (``n_full`` = views of the whole orbit).

    :param list settings: view counts P whose equispaced subsets must be loadable (e.g.
        ``[30, 50, 100]``): only the union of their views is read and stored (120 of 1200 for
        the paper's settings, 0.4 GB instead of 3.6 GB per walnut). ``None``: the whole orbit.
    :param expected_shape: the (D, H, W) the config expects (:func:`check_volume_shape`; a
        non-cubic ground truth is refused in any case).
    """
    import torch

    from unroll3d.utils import atomic_torch_save

    zip_path = Path(zip_path)
    with WalnutZip(zip_path, orbit) as wz:
        if volume is None:
            m = re.fullmatch(r"Walnut(\d+)/?", wz.root)
            volume = f"walnut{m.group(1)}" if m else zip_path.stem.lower()
        views = None
        if settings:
            n_full = wz.geometry().shape[0] - 1
            views = sorted({int(i) for p in settings for i in view_indices(n_full, int(p))})
        proj, vec_mm, info = read_projections(wz, log_clip, views)
        gt = read_volume(wz, wz.gt, "full_AGD_50_*")
        check_volume_shape(gt.shape, zip_path, expected_shape)
        gt_members = [Path(m).name for m in (wz.gt[0], wz.gt[-1])]
    c = float(intensity_scale)
    x = torch.from_numpy(gt).mul_(c)
    y = torch.from_numpy(proj).mul_(c / voxel_size_mm)
    vectors = torch.from_numpy(vec_mm / voxel_size_mm)
    meta = {
        "format": FORMAT,
        "task": "cbct",
        "volume": volume,
        "source_zip": zip_path.name,
        "orbit": orbit,
        "voxel_size_mm": voxel_size_mm,
        "img_size": list(gt.shape),
        "intensity_scale": c,
        "units": "x = c * mu[1/mm]; y = (c / voxel_mm) * -log(I/I0); vectors in voxel units",
        "gt_slices": f"{len(wz.gt)} slices ({gt_members[0]} .. {gt_members[1]})",
        "input_sha256": {zip_path.name: file_hash(zip_path, "sha256")},
        **info,
    }
    view_ids = torch.tensor(info["view_ids"], dtype=torch.int64)
    meta["view_ids"] = "all" if settings is None else f"union of settings {sorted(settings)}"
    atomic_torch_save({"x": x, "y": y, "vectors": vectors, "view_ids": view_ids, "meta": meta}, out)
    return meta


def read_fdk_reference(zip_path: str | Path, orbit: int = 2) -> np.ndarray:
    """The dataset's own FDK reconstruction of ``orbit`` (``fdk_pos<orbit>_*`` slices), 1/mm."""
    with WalnutZip(zip_path, orbit) as wz:
        return read_volume(wz, wz.fdk, f"fdk_pos{orbit}_*")
