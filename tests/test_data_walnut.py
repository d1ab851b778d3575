"""Walnut-CBCT data: toy zip -> local HTTP download (pooch) -> preprocess -> load_sample.

Also the pairing / reorientation rules (an asymmetric marker lands where the geometry says),
checksums, the frozen registry and the errors on bad input. Tiny sizes (16³, 48 views).
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unroll3d.cli import data as data_cli
from unroll3d.data import DataError, load_sample, toy, walnut
from unroll3d.data import download as dl
from unroll3d.data.fdk_check import fdk_check
from unroll3d.data.splits import prior_work_split

SIZE, DET, NFULL, VOX = 16, (20, 16), 48, 3.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def marker_zip(tmp_path_factory):
    d = tmp_path_factory.mktemp("marker")
    info = toy.write_walnut_zip(
        d / "Walnut7.zip",
        7,
        SIZE,
        DET,
        NFULL,
        voxel_mm=VOX,
        noise=False,
        phantom="marker",
        fdk=False,
    )
    return d / "Walnut7.zip", info


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    reg = toy.write_cbct_toy(d, [2], SIZE, DET, NFULL, voxel_mm=VOX, seed=1)
    return d, reg


def test_view_indices_equispaced():
    for p, step in [(30, 40), (50, 24), (100, 12)]:
        np.testing.assert_array_equal(walnut.view_indices(1200, p), np.arange(0, 1200, step))
    assert walnut.view_indices(120, 30).tolist() == list(range(0, 120, 4))
    with pytest.raises(DataError):
        walnut.view_indices(10, 11)


def test_default_split_is_prior_work_split():
    s = prior_work_split()
    assert [len(s[k]) for k in ("train", "val", "test")] == [30, 4, 8]
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(1, 43))
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert cfg["cbct"]["splits"] == s


def test_reorientation_inverse_and_shape():
    img = np.arange(6 * 4).reshape(6, 4)  # (rows, cols)
    stored = walnut.unorient(img)
    assert stored.shape == (4, 6)  # the scanner stores (cols, rows)
    np.testing.assert_array_equal(walnut.reorient(stored), img)
    # flip along the first stored axis then transpose
    np.testing.assert_array_equal(walnut.reorient(stored), np.flipud(stored).T)


def test_marker_lands_where_geometry_says(marker_zip, tmp_path):
    path, info = marker_zip
    meta = walnut.preprocess_walnut(path, tmp_path / "w.pt", voxel_size_mm=VOX)
    assert meta["det_shape"] == list(DET) and meta["n_full"] == NFULL
    d = torch.load(tmp_path / "w.pt", weights_only=True)
    y, vec = d["y"].numpy(), d["vectors"].numpy()
    assert y.shape == (NFULL, *DET) and vec.shape == (NFULL, 12)
    centre_mm = info["ellipsoids"][-1][0]  # the marker (x, y, z) in mm
    pred = walnut.project_point(vec, np.asarray(centre_mm) / VOX, DET)
    found = np.array([np.unravel_index(np.argmax(v), v.shape) for v in y])
    assert np.abs(found - pred).max() < 0.75
    # the wrong pairings would not agree: forward order, the pre-2020 off-by-one, a row flip
    assert np.abs(found[::-1] - pred).max() > 2
    assert np.abs(np.roll(found, 6, axis=0) - pred).max() > 1.0
    flipped = np.array([np.unravel_index(np.argmax(v[::-1]), v.shape) for v in y])
    assert np.abs(flipped - pred).max() > 2
    # and the ground truth volume holds the marker at the same place (x, y, z) -> (z, y, x)
    gt = d["x"].numpy()
    k, j, i = np.unravel_index(np.argmax(gt), gt.shape)
    pos = (np.array([i, j, k]) - (SIZE - 1) / 2) * VOX
    assert np.linalg.norm(pos - centre_mm) <= 1.5 * VOX


def test_round_trip_http_download_preprocess_load(toy_dir, tmp_path):
    src, reg = toy_dir
    entries = dl.read_registry(reg)
    entry = entries["Walnut2.zip"]
    assert entry.hash.startswith("sha256:")
    with dl.serve_directory(src) as base:
        assert base.startswith("http://127.0.0.1:")
        got = dl.download(entry, tmp_path / "raw", base_url=base, retries=0)
    assert dl.verify(got, entry.hash)[0]
    meta = walnut.preprocess_walnut(
        got, tmp_path / "walnut2.pt", voxel_size_mm=VOX, intensity_scale=14.0
    )
    assert meta["volume"] == "walnut2"
    assert meta["input_sha256"]["Walnut2.zip"] == entry.hash.split(":")[1]
    assert meta["gt_slices"].endswith(".tif)")  # walnut 2 uses the one-f extension
    s = load_sample(tmp_path / "walnut2.pt", "v12")
    assert s.x.shape == (1, 1, SIZE, SIZE, SIZE)
    assert s.y.shape == (1, 1, 12, *DET)
    assert s.meta["view_indices"] == list(range(0, NFULL, 4))
    assert 0.5 < float(s.x.max()) < 1.5  # c = 14 maps the phantom to about [0, 1]
    # y ~= A x: exact line integrals vs the Joseph projector of the voxelised phantom
    rel = float((s.physics.A(s.x) - s.y).norm() / s.y.norm())
    assert rel < 0.25, rel
    full = load_sample(tmp_path / "walnut2.pt", f"v{NFULL}")
    torch.testing.assert_close(full.y[:, :, ::4], s.y)
    with pytest.raises(DataError, match="task"):
        load_sample(tmp_path / "walnut2.pt", "R5")


def test_fdk_check_against_shipped(toy_dir):
    src, _ = toy_dir
    res = fdk_check(src / "Walnut2.zip", orbit=2, voxel_size_mm=VOX)
    # the toy's fdk_pos2 is our FDK of the noise-free data: only noise/quantisation differ
    assert res["rel_diff_fdk_vs_shipped"] < 0.1, res
    assert res["n_views"] == NFULL


def test_store_only_the_settings_views(toy_dir, tmp_path):
    src, _ = toy_dir
    meta = walnut.preprocess_walnut(
        src / "Walnut2.zip", tmp_path / "w.pt", voxel_size_mm=VOX, settings=[12, 16]
    )
    d = torch.load(tmp_path / "w.pt", weights_only=True)
    expect = sorted(set(range(0, NFULL, 4)) | set(range(0, NFULL, 3)))
    assert d["view_ids"].tolist() == expect and d["y"].shape[0] == len(expect)
    assert meta["n_full"] == NFULL
    walnut.preprocess_walnut(src / "Walnut2.zip", tmp_path / "all.pt", voxel_size_mm=VOX)
    for setting in ("v12", "v16"):
        part, full = (
            load_sample(tmp_path / "w.pt", setting),
            load_sample(tmp_path / "all.pt", setting),
        )
        torch.testing.assert_close(part.y, full.y)
        torch.testing.assert_close(part.physics.vectors, full.physics.vectors)
    with pytest.raises(DataError, match="v24"):
        load_sample(tmp_path / "w.pt", "v24")


def test_checksum_mismatch_deletes_and_redownloads(toy_dir, tmp_path, caplog):
    src, reg = toy_dir
    entry = dl.read_registry(reg)["Walnut2.zip"]
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "Walnut2.zip").write_bytes(b"corrupt partial download")
    with dl.serve_directory(src) as base, caplog.at_level(logging.WARNING, logger="unroll3d.data"):
        got = dl.download(entry, dest, base_url=base, retries=0)
    assert "checksum mismatch" in caplog.text and "Walnut2.zip" in caplog.text
    assert entry.hash in caplog.text
    assert dl.verify(got, entry.hash)[0]
    # a wrong pinned hash: error names the file and both hashes; nothing is left behind
    bad = dl.RegistryEntry("Walnut2.zip", "Walnut2.zip", "sha256:" + "0" * 64)
    with dl.serve_directory(src) as base, pytest.raises(DataError) as err:
        dl.download(bad, tmp_path / "raw2", base_url=base, retries=0)
    msg = str(err.value)
    assert "Walnut2.zip" in msg and "0" * 64 in msg and entry.hash.split(":")[1] in msg
    assert not (tmp_path / "raw2" / "Walnut2.zip").exists()


def test_unreachable_host_gives_manual_hint(tmp_path):
    entry = dl.RegistryEntry("x.zip", "http://127.0.0.1:9/x.zip", None)
    with pytest.raises(DataError, match="place it by hand"):
        dl.download(entry, tmp_path, retries=0, timeout=2, manual_hint="place it by hand")


def test_package_registry_pins_only_known_hashes():
    reg = dl.read_registry(dl.package_registry("cbct"))
    assert len(reg) == 42
    assert reg["Walnut1.zip"].hash == "md5:0ecd525f245e3029788538a44f5491e3"
    assert all(reg[f"Walnut{n}.zip"].hash is None for n in range(2, 43))
    assert reg["Walnut9.zip"].url == "doi:10.5281/zenodo.2686970/Walnut9.zip"
    mri = dl.read_registry(dl.package_registry("mri"))
    assert mri["train_val_12_channel.zip"].hash == "md5:670deede8e64c76375ebab4ecdf1232e"


def test_freeze_registry_with_fake_zenodo(tmp_path):
    reg = tmp_path / "reg.csv"
    dl.write_registry(
        reg,
        {
            "Walnut1.zip": dl.RegistryEntry(
                "Walnut1.zip", "doi:10.1/z.1/Walnut1.zip", "md5:" + "a" * 32
            ),
            "Walnut2.zip": dl.RegistryEntry("Walnut2.zip", "doi:10.1/z.1/Walnut2.zip", None),
            "Walnut9.zip": dl.RegistryEntry("Walnut9.zip", "doi:10.1/z.9/Walnut9.zip", None),
        },
        header="test registry",
    )
    calls = []

    def fake(doi):
        calls.append(doi)
        if doi == "10.1/z.9":
            raise ConnectionError("no network")
        return {"Walnut1.zip": "md5:" + "b" * 32, "Walnut2.zip": "md5:" + "c" * 32}

    report = dl.freeze_registry(reg, fetch=fake)
    assert sorted(calls) == ["10.1/z.1", "10.1/z.9"]  # one query per DOI
    assert report["filled"] == ["Walnut2.zip"]
    assert report["still_unknown"] == ["Walnut9.zip"]
    assert report["conflict"] and "Walnut1.zip" in report["conflict"][0]
    out = dl.read_registry(reg)
    assert out["Walnut1.zip"].hash == "md5:" + "a" * 32  # never overwritten
    assert out["Walnut2.zip"].hash == "md5:" + "c" * 32
    assert out["Walnut9.zip"].hash is None  # never invented
    assert reg.read_text().startswith("# test registry")


def _rewrite(src: Path, dst: Path, drop=(), replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if any(n.endswith(d) for d in drop):
                continue
            data = zin.read(n)
            if replace and n.endswith(replace[0]):
                data = replace[1]
            zout.writestr(n, data)
    return dst


def _tiff(a):
    import tifffile

    b = io.BytesIO()
    tifffile.imwrite(b, a)
    return b.getvalue()


@pytest.mark.parametrize(
    "case, match",
    [
        ("truncated", "not a readable zip"),
        ("no_dark", "di000000.tif"),
        ("no_scan", "scan_000010.tif"),
        ("tiff_shape", r"scan_000005\.tif.*shape"),
        ("geom_columns", "12"),
        ("geom_nan", r"scan_geom_corrected.geom: non-finite entry at row 2, column 4"),
        ("extra_scan", r"1 projection\(s\) beyond the last row"),
        ("nan_scan", r"scan_000004\.tif' has 1 non-finite value"),
        ("flat_below_dark", r"flat fields .* are not above the dark field"),
        ("no_gt", "full_AGD_50"),
        ("gt_gap", r"full_AGD_50_\*.*missing slice\(s\) \[3\]"),
    ],
)
def test_bad_input_clear_error_nothing_written(marker_zip, tmp_path, case, match):
    good, _ = marker_zip
    bad = tmp_path / "Walnut7.zip"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "no_dark":
        _rewrite(good, bad, drop=["di000000.tif"])
    elif case == "no_scan":
        _rewrite(good, bad, drop=["scan_000010.tif"])
    elif case == "tiff_shape":
        _rewrite(good, bad, replace=("scan_000005.tif", _tiff(np.zeros((5, 7), np.uint16))))
    elif case == "geom_columns":
        _rewrite(
            good,
            bad,
            replace=("scan_geom_corrected.geom", b"1 2 3 4 5 6 7 8 9 10 11\n" * (NFULL + 1)),
        )
    elif case == "geom_nan":
        rows = ["1 2 3 4 5 6 7 8 9 10 11 12"] * (NFULL + 1)
        rows[2] = "1 2 3 4 nan 6 7 8 9 10 11 12"
        _rewrite(good, bad, replace=("scan_geom_corrected.geom", "\n".join(rows).encode()))
    elif case == "extra_scan":
        _rewrite(good, bad)
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "a") as zout:
            name = next(n for n in zin.namelist() if n.endswith("scan_000001.tif"))
            zout.writestr(name.replace("scan_000001", f"scan_{NFULL + 1:06}"), zin.read(name))
    elif case == "nan_scan":
        with zipfile.ZipFile(good) as zin:
            name = next(n for n in zin.namelist() if n.endswith("scan_000004.tif"))
            import tifffile

            arr = tifffile.imread(io.BytesIO(zin.read(name))).astype(np.float32)
        arr[0, 0] = np.nan
        _rewrite(good, bad, replace=("scan_000004.tif", _tiff(arr)))
    elif case == "flat_below_dark":
        with zipfile.ZipFile(good) as zin:
            dark = next(n for n in zin.namelist() if n.endswith("di000000.tif"))
            dark_bytes = zin.read(dark)
        tmp = _rewrite(good, tmp_path / "tmp.zip", replace=("io000000.tif", dark_bytes))
        _rewrite(tmp, bad, replace=("io000001.tif", dark_bytes))
    elif case == "gt_gap":
        _rewrite(good, bad, drop=["full_AGD_50_000003.tiff"])
    elif case == "no_gt":
        _rewrite(good, bad, drop=[f"full_AGD_50_{k:06}.tiff" for k in range(SIZE)])
    out = tmp_path / "out" / "walnut7.pt"
    with pytest.raises(DataError, match=match) as err:
        walnut.preprocess_walnut(bad, out, voxel_size_mm=VOX)
    assert "Walnut7.zip" in str(err.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_cli_toy_download_preprocess(tmp_path, capsys):
    from unroll3d.cli import toy as toy_mod

    assert toy_mod.main(["cbct", "--out", str(tmp_path / "toy"), "--walnuts", "3", "--size", "12",
                         "--det-shape", "14", "12", "--n-full", "24", "--voxel-mm", "4"]) == 0  # fmt: skip
    reg = tmp_path / "toy" / "registry.csv"
    argv = ["download", "--task", "cbct", "--file", "Walnut3.zip", "--dest", str(tmp_path / "raw"),
            "--registry", str(reg), "--serve", str(tmp_path / "toy"), "--retries", "0"]  # fmt: skip
    assert data_cli.main(argv) == 0
    argv = ["preprocess", "cbct", "--zip", str(tmp_path / "raw" / "Walnut3.zip"),
            "--out", str(tmp_path / "walnut3.pt"), "--voxel-mm", "4"]  # fmt: skip
    assert data_cli.main(argv) == 0
    assert load_sample(tmp_path / "walnut3.pt", "v6").y.shape == (1, 1, 6, 14, 12)
    # errors come back as exit status 1 with the message, not a traceback
    assert (
        data_cli.main(["download", "--task", "cbct", "--file", "Nope.zip", "--dest", str(tmp_path)])
        == 1
    )
    assert "Nope.zip" in capsys.readouterr().err


def test_interrupted_download_resumes(toy_dir, tmp_path, caplog):
    src, reg = toy_dir
    entry = dl.read_registry(reg)["Walnut2.zip"]
    data = (src / "Walnut2.zip").read_bytes()
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / ".Walnut2.zip.part").write_bytes(data[: len(data) // 3])  # an interrupted transfer
    with dl.serve_directory(src) as base, caplog.at_level(logging.INFO, logger="unroll3d.data"):
        got = dl.download(entry, dest, base_url=base, retries=0)
    assert f"resuming at byte {len(data) // 3}" in caplog.text
    assert got.read_bytes() == data and not (dest / ".Walnut2.zip.part").exists()
    # a corrupt part file: the first attempt fails the checksum, the retry starts from scratch
    (dest / "Walnut2.zip").unlink()
    (dest / ".Walnut2.zip.part").write_bytes(b"garbage" * 10)
    with dl.serve_directory(src) as base:
        got = dl.download(entry, dest, base_url=base, retries=1)
    assert got.read_bytes() == data


def test_a_missing_projection_is_found_even_when_its_view_is_not_read(marker_zip, tmp_path):
    """Storing only the settings' views must not hide an incomplete orbit: every geometry row
    needs its projection (the counts of the two files must agree)."""
    good, _ = marker_zip
    bad = _rewrite(good, tmp_path / "Walnut7.zip", drop=["scan_000003.tif"])
    out = tmp_path / "out" / "walnut7.pt"
    with pytest.raises(DataError, match=r"Walnut7.zip: the geometry has .* rows .*scan_000003.tif"):
        walnut.preprocess_walnut(bad, out, voxel_size_mm=VOX, settings=[2])
    assert not out.exists()

