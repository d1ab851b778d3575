"""Calgary-Campinas MRI data: FFT convention, toy zip -> HTTP download -> preprocess -> load.

Tiny volumes (x, ky, kz) = (8, 12, 10) .. (16, 20, 18) with 4 coils.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unroll3d.data import DataError, fixed_mask_seed, load_sample, mri, toy
from unroll3d.data import download as dl

SHAPE = (16, 20, 18)
TRAIN, TEST = ["e00001s3_P00001", "e00002s3_P00002"], ["e00003s3_P00003"]


@pytest.fixture(scope="module")
def toy_zip(tmp_path_factory):
    d = tmp_path_factory.mktemp("mritoy")
    reg = toy.write_mri_toy(d, TRAIN, TEST, SHAPE, n_coils=4, seed=0)
    return d, reg


@pytest.mark.parametrize("convention", ["uncentred", "centred"])
def test_fft_convention_known_image_survives(convention):
    """hybrid raw data -> our k-space -> deepinv's 3D MultiCoilMRI adjoint gives the image back."""
    from deepinv.physics import MultiCoilMRI

    rng = np.random.default_rng(0)
    img = (rng.standard_normal((6, 8, 10)) + 1j * rng.standard_normal((6, 8, 10))).astype(
        np.complex64
    )
    raw = toy.image_to_hybrid(img[None], convention)  # what the scanner file holds (1 coil)
    k = mri.fft3c(torch.from_numpy(mri.hybrid_to_image(raw, convention).astype(np.complex64)))
    physics = MultiCoilMRI(
        mask=torch.ones(6, 8, 10), coil_maps=torch.ones(1, 1, 6, 8, 10, dtype=torch.complex64),
        img_size=(6, 8, 10), three_d=True,
    )  # fmt: skip
    k = k[None]  # (B=1, N=1, 6, 8, 10)
    y = torch.stack([k.real, k.imag], dim=1)  # (1, 2, N=1, 6, 8, 10)
    back = physics.A_adjoint(y)[0]
    torch.testing.assert_close(
        torch.complex(back[0], back[1]), torch.from_numpy(img), atol=1e-5, rtol=1e-5
    )
    x = torch.from_numpy(np.stack([img.real, img.imag]))[None]
    torch.testing.assert_close(physics.A(x), y, atol=1e-5, rtol=1e-5)  # forward agrees too
    # the readout axis is already image space in the raw file: it is never shifted
    assert np.allclose(np.abs(mri.hybrid_to_image(raw, convention)[0]), np.abs(img), atol=1e-5)


@pytest.mark.parametrize("convention, x_split", [("uncentred", False), ("centred", True)])
def test_auto_convention_detection(tmp_path, convention, x_split):
    img = toy.brain_phantom((8, 12, 10), seed=1)
    maps = toy.simulated_coil_maps((8, 12, 10), 2)
    if x_split:  # the object at the ends of the readout axis
        img, maps = np.roll(img, 4, axis=0), np.roll(maps, 4, axis=1)
    toy.write_calgary_h5(tmp_path / "v.7.h5", img, maps, noise=0, convention=convention)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.write(tmp_path / "v.7.h5", "train_val_12_channel/Train/v.7.h5")  # parent folder variant
    meta = mri.preprocess_mri(tmp_path / "z.zip", "v", tmp_path / "v.pt", calib=2)
    assert meta["kspace_convention"] == convention
    assert meta["readout_roll"] == (4 if x_split else 0)
    gt = torch.load(tmp_path / "v.pt", weights_only=True)["x"].abs().numpy()
    phantom = np.abs(np.roll(img, 4, axis=0) if x_split else img)
    assert np.corrcoef(gt.ravel(), phantom.ravel())[0, 1] > 0.9
    assert meta["member"] == "train_val_12_channel/Train/v.7.h5"


def test_round_trip_http_download_preprocess_load(toy_zip, tmp_path):
    src, reg = toy_zip
    entry = dl.read_registry(reg)["train_val_12_channel.zip"]
    with dl.serve_directory(src) as base:
        got = dl.download(entry, tmp_path / "raw", base_url=base, retries=0)
    with zipfile.ZipFile(got) as zf:
        assert sorted(zf.namelist()) == sorted(
            [f"Train/{v}.7.h5" for v in TRAIN] + [f"Val/{v}.7.h5" for v in TEST]
        )
    vol = TEST[0]
    meta = mri.preprocess_mri(got, vol, tmp_path / f"{vol}.pt", partial_fourier=0.85, calib=3)
    assert meta["kspace_convention"] == "uncentred" and meta["kz_cut"] == 16
    assert meta["kz_acquired_in_file"] == 16 and meta["n_coils"] == 4

    s = load_sample(tmp_path / f"{vol}.pt", "R5")
    assert s.x.shape == (1, 2, *SHAPE) and s.y.shape == (1, 2, 4, *SHAPE)
    assert s.meta["mask_seed"] == fixed_mask_seed(vol, "R5")
    assert 4.0 < s.meta["effective_acceleration"] < 6.5
    # the mask: fixed per volume, ky-kz only (same for every readout x), none beyond the PF cut
    mask = s.physics.mask.reshape(-1, *SHAPE)[0]
    assert torch.equal(mask, mask[:1].expand_as(mask))
    assert float(mask[..., 16:].abs().sum()) == 0
    s2 = load_sample(tmp_path / f"{vol}.pt", "R5")
    assert torch.equal(s2.y, s.y) and torch.equal(s2.x, s.x)
    s3 = load_sample(tmp_path / f"{vol}.pt", "R5", mask_seed=123)
    assert not torch.equal(s3.physics.mask, s.physics.mask)
    # normalisation: the 99.5th percentile of |A^H y| is 1 after scaling
    adj = s.physics.A_adjoint(s.y)
    assert abs(float(np.percentile(torch.linalg.vector_norm(adj, dim=1).numpy(), 99.5)) - 1) < 1e-4
    # y ~= A x: residual from noise, estimated maps (calibration block) and partial Fourier only
    rel = float((s.physics.A(s.x) - s.y).norm() / s.y.norm())
    assert rel < 0.3, rel
    # ground truth magnitude matches the phantom that the toy wrote (same place, no shift)
    d = torch.load(tmp_path / f"{vol}.pt", weights_only=True)
    phantom = np.abs(
        toy.brain_phantom(SHAPE, seed=int(np.random.default_rng([0, 0, 1]).integers(2**31)))
    )
    gt = d["x"].abs().numpy()
    corr = np.corrcoef(gt.ravel(), phantom.ravel())[0, 1]
    assert corr > 0.9, corr
    shifted = np.roll(phantom, (SHAPE[1] // 2, SHAPE[2] // 2), axis=(1, 2))
    assert np.corrcoef(gt.ravel(), shifted.ravel())[0, 1] < 0.5


def test_bad_inputs(toy_zip, tmp_path):
    src, _ = toy_zip
    good = src / "train_val_12_channel.zip"
    # truncated zip
    bad = tmp_path / "trunc.zip"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(DataError, match="trunc.zip"):
        mri.preprocess_mri(bad, TEST[0], tmp_path / "o" / "a.pt")
    # missing volume
    with pytest.raises(DataError, match="nosuch"):
        mri.preprocess_mri(good, "nosuch", tmp_path / "o" / "a.pt")
    # HDF5 without kspace, and kspace with an odd channel axis
    import h5py

    for name, key, shape in [("nok", "data", (4, 6, 6, 8)), ("odd", "kspace", (4, 6, 6, 7))]:
        with h5py.File(tmp_path / f"{name}.7.h5", "w") as f:
            f.create_dataset(key, data=np.zeros(shape, np.float32))
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as zf:
            zf.write(tmp_path / f"{name}.7.h5", f"Train/{name}.7.h5")
        with pytest.raises(DataError, match=rf"{name}\.7\.h5.*kspace"):
            mri.preprocess_mri(tmp_path / f"{name}.zip", name, tmp_path / "o" / f"{name}.pt")
    out = tmp_path / "o"
    assert not out.exists() or not any(p for p in out.iterdir())  # nothing half-written


def test_download_failure_explains_manual_placement(tmp_path):
    entry = dl.RegistryEntry(
        "train_val_12_channel.zip", "http://127.0.0.1:9/train_val_12_channel.zip", "md5:" + "0" * 32
    )
    with pytest.raises(DataError) as err:
        dl.download(entry, tmp_path, retries=0, timeout=2, manual_hint=mri.MANUAL_HINT)
    assert "resources/mri/raw/train_val_12_channel.zip" in str(err.value)
    assert "md5" in str(err.value) and "CC BY-ND" in str(err.value)
    # a hand-placed file with the wrong checksum is not accepted silently
    (tmp_path / "train_val_12_channel.zip").write_bytes(b"not the archive")
    with pytest.raises(DataError):
        dl.download(entry, tmp_path, retries=0, timeout=2, manual_hint=mri.MANUAL_HINT)
    assert not (tmp_path / "train_val_12_channel.zip").exists()


def test_sampling_mask_acceleration_and_calibration():
    m = mri.sampling_mask((40, 36), 5, 8, seed=3)
    assert m.shape == (40, 36)
    assert abs(m.numel() / float(m.sum()) - 5) < 0.3
    assert bool(m[16:24, 14:22].all())  # centred calibration block fully sampled
    assert torch.equal(m, mri.sampling_mask((40, 36), 5, 8, seed=3))
    assert not torch.equal(m, mri.sampling_mask((40, 36), 5, 8, seed=4))


def test_real_split_lists_in_config():
    import yaml

    cfg = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text()
    )
    s = cfg["mri"]["splits"]
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (36, 4, 16)
    assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.ones((4, 6, 5, 4), np.complex64), r"dtype complex64; expected real floating point"),
        (np.ones((4, 6, 5, 4), np.int16), r"dtype int16; expected real floating point"),
        (np.full((4, 6, 5, 4), np.nan, np.float32), r"480 non-finite value"),
        (np.zeros((4, 6, 5, 4), np.float32), r"all zeros"),
    ],
)
def test_kspace_of_the_wrong_kind_is_refused(tmp_path, data, message):
    """k-space stored as complex or integers (read as real/imag pairs, it would halve the coil
    count or misscale), non-finite or empty: a DataError naming the file and the member."""
    import h5py

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = data
    with pytest.raises(DataError, match=rf"bad.h5: 'kspace' .*{message}|{message}"):
        mri.read_kspace(path)
