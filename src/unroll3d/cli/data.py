"""``unroll3d data <action>``: download, freeze-registry, preprocess, fdk-check, splits."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from unroll3d.cli.common import device_arg
from unroll3d.data.download import (
    DataError,
    download,
    download_recorded,
    freeze_registry,
    package_registry,
    read_registry,
    serve_directory,
)
from unroll3d.data.fdk_check import FDK_MAX_REL_DIFF, fdk_check
from unroll3d.data.splits import prior_work_split


def _download(a) -> int:
    from unroll3d.data.mri import MANUAL_HINT, RAW_ZIP

    registry = read_registry(a.registry or package_registry(a.task))
    if a.file not in registry:
        raise DataError(
            f"{a.file!r} is not listed in registry {a.registry or package_registry(a.task)}"
        )
    entry = registry[a.file]
    hint = (
        MANUAL_HINT
        if a.task == "mri" and a.file == RAW_ZIP
        else f"Download {entry.url} by hand and place it at {a.dest}/{a.file} (its SHA-256 is "
        "recorded on the next run), or set train.dpir_weights to a weights file and "
        "train.dpir_sha256 to its SHA-256."
        if a.task == "weights"
        else (
            f"Download {a.file} by hand from https://doi.org/{entry.url[4:].rsplit('/', 1)[0]} and place it "
            f"in {a.dest}/; its checksum is verified on the next run."
            if entry.url.startswith("doi:")
            else None
        )
    )
    fetch = download_recorded if a.task == "weights" else download
    if a.serve:
        with serve_directory(a.serve) as base:
            path = fetch(entry, a.dest, base_url=base, retries=a.retries, manual_hint=hint)
    else:
        path = fetch(
            entry,
            a.dest,
            base_url=a.base_url,
            retries=a.retries,
            manual_hint=hint,
            verify_tls=not a.insecure,
        )
    print(f"{path} ({entry.hash or 'checksum not pinned in the registry'})")
    return 0


def _freeze(a) -> int:
    path = a.registry or package_registry(a.task)
    report = freeze_registry(path, out=a.out)
    print(json.dumps(report, indent=2))
    if report["still_unknown"]:
        print(f"{len(report['still_unknown'])} file(s) still without a checksum", file=sys.stderr)
    return 1 if report["conflict"] else 0


def _expected_shape(words: list[str] | None, task: str):
    """``--expect-shape``: three sizes, or the data set's known layout by name."""
    if not words:
        return None
    known = {"cbct": "walnut", "mri": "calgary-campinas"}[task]
    if words == [known]:
        if task == "cbct":
            from unroll3d.data.walnut import WALNUT_VOLUME

            return WALNUT_VOLUME
        return known
    try:
        sizes = tuple(int(w) for w in words)
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise DataError(
            f"--expect-shape {' '.join(words)}: expected three positive sizes or {known!r}"
        )
    return sizes


def _preprocess(a) -> int:
    if a.task == "cbct":
        from unroll3d.data.walnut import preprocess_walnut

        meta = preprocess_walnut(
            a.zip,
            a.out,
            a.volume,
            a.orbit,
            a.voxel_mm,
            a.scale,
            a.log_clip,
            a.views or None,
            expected_shape=_expected_shape(a.expect_shape, "cbct"),
        )
    else:
        from unroll3d.data.mri import preprocess_mri

        if not a.volume:
            raise DataError(
                "preprocess mri needs --volume (the HDF5 file stem, e.g. e14089s3_P53248)"
            )
        meta = preprocess_mri(
            a.zip,
            a.volume,
            a.out,
            a.partial_fourier,
            a.calib,
            a.convention,
            a.challenge_masks,
            expected_shape=_expected_shape(a.expect_shape, "mri"),
            expected_coils=a.expect_coils,
        )
    print(json.dumps({k: v for k, v in meta.items() if k != "input_sha256"}, default=str))
    return 0


def _fdk_check(a) -> int:
    from unroll3d.utils import atomic_write_json

    if a.device in ("auto", "cuda"):
        from unroll3d.devices import job_device

        with job_device(a.device) as device:
            res = fdk_check(a.zip, a.orbit, a.voxel_mm, a.log_clip, device)
    else:
        res = fdk_check(a.zip, a.orbit, a.voxel_mm, a.log_clip, a.device)
    diff = res["rel_diff_fdk_vs_shipped"]
    res.update(max_rel_diff=a.max_rel_diff, passed=bool(diff <= a.max_rel_diff))
    if a.out:
        atomic_write_json(a.out, res)
    print(json.dumps(res, indent=2))
    if not res["passed"]:
        print(
            f"unroll3d data fdk-check: {a.zip}: our FDK differs from the shipped fdk_pos{a.orbit} "
            f"by {diff:.3f} (relative), over the limit {a.max_rel_diff:g}: geometry in other "
            f"units than --voxel-mm {a.voxel_mm:g} (mm), another orbit or a wrong pairing?",
            file=sys.stderr,
        )
        return 1
    return 0


def _splits(a) -> int:
    print(json.dumps(prior_work_split(a.n, tuple(a.counts), a.seed)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unroll3d data", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="action", required=True)

    d = sub.add_parser("download", help="download one raw file (checksummed, retried)")
    d.add_argument(
        "--task",
        choices=["cbct", "mri", "weights"],
        required=True,
        help="which package registry (weights: DPIR's pretrained denoisers)",
    )
    d.add_argument("--file", required=True, help="file name as listed in the registry")
    d.add_argument("--dest", required=True, type=Path, help="raw-data folder")
    d.add_argument("--registry", type=Path, help="registry CSV (default: the package's)")
    d.add_argument(
        "--serve", type=Path, help="serve this folder on 127.0.0.1 and download from it (toy)"
    )
    d.add_argument("--base-url", help="base URL for registry entries with a relative url")
    d.add_argument("--retries", type=int, default=3)
    d.add_argument(
        "--insecure", action="store_true", help="skip TLS verification (checksum still verified)"
    )
    d.set_defaults(func=_download)

    f = sub.add_parser(
        "freeze-registry", help="fill missing checksums from the Zenodo API (network)"
    )
    f.add_argument("--task", choices=["cbct", "mri"], default="cbct")
    f.add_argument("--registry", type=Path)
    f.add_argument("--out", type=Path, help="write here instead of updating the registry in place")
    f.set_defaults(func=_freeze)

    pp = sub.add_parser("preprocess", help="one raw volume -> one .pt sample file")
    pp.add_argument("task", choices=["cbct", "mri"])
    pp.add_argument("--zip", required=True, type=Path)
    pp.add_argument("--out", required=True, type=Path)
    pp.add_argument("--volume", help="volume id (walnutN; the MRI file stem)")
    pp.add_argument("--orbit", type=int, default=2)
    pp.add_argument("--voxel-mm", type=float, default=0.1)
    pp.add_argument("--scale", type=float, default=14.0, help="x = scale * mu[1/mm]")
    pp.add_argument("--log-clip", type=float, default=1e-6)
    pp.add_argument(
        "--views",
        type=int,
        nargs="*",
        default=[],
        help="CBCT: store only the views of these settings (default all)",
    )
    pp.add_argument("--partial-fourier", type=float, default=0.85)
    pp.add_argument("--calib", type=int, default=18, help="calibration disc radius in ky-kz (MRI)")
    pp.add_argument("--convention", choices=["auto", "centred", "uncentred"], default="auto")
    pp.add_argument(
        "--challenge-masks",
        nargs="*",
        default=[],
        type=Path,
        help="R<r>_<ny>x<nz>.npy mask banks (MRI)",
    )
    pp.add_argument(
        "--expect-shape",
        nargs="+",
        metavar="N",
        help="refuse raw data of another layout: the volume's D H W (CBCT; MRI: x ky kz), or "
        "the data set's known layout by name (walnut: 501³; calgary-campinas: "
        "256 × 218 × 170/180 × 24)",
    )
    pp.add_argument("--expect-coils", type=int, help="MRI: the coil count the raw data must have")
    pp.set_defaults(func=_preprocess)

    c = sub.add_parser("fdk-check", help="our FDK vs the shipped fdk_pos* reconstruction")
    c.add_argument("--zip", required=True, type=Path)
    c.add_argument("--orbit", type=int, default=2)
    c.add_argument("--voxel-mm", type=float, default=0.1)
    c.add_argument("--log-clip", type=float, default=1e-6)
    c.add_argument(
        "--device",
        type=device_arg,
        default="auto",
        help="auto (a free GPU via unroll3d.devices, else CPU), cpu, cuda",
    )
    c.add_argument("--out", type=Path, help="JSON report")
    c.add_argument(
        "--max-rel-diff",
        type=float,
        default=FDK_MAX_REL_DIFF,
        help="fail (exit 1) when our FDK differs from the shipped one by more than this "
        f"(relative L2; default {FDK_MAX_REL_DIFF}: right geometry 0.036 on the toy, unit "
        "errors ≥ 0.91)",
    )
    c.set_defaults(func=_fdk_check)

    s = sub.add_parser("splits", help="print the prior work's Walnut split")
    s.add_argument("--n", type=int, default=42)
    s.add_argument("--counts", type=int, nargs=3, default=(30, 4, 8))
    s.add_argument("--seed", type=int, default=42)
    s.set_defaults(func=_splits)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(a.func(a) or 0)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
