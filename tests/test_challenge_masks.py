"""The CC challenge's masks (mri.mask_source: challenge) and the RSS ground truth.

The real mask files live on GitHub (rmsouza01/MC-MRI-Rec), which the tests cannot reach: they
build banks of the same format (bool ``(n, ny, nz)``, ``R<r>_<ny>x<nz>.npy``) for the toy
volumes and download them through the same pooch path from a folder served on 127.0.0.1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unroll3d.cli.data import main as data_main
from unroll3d.data import DataError, fixed_mask_seed, load_sample, masks, mri, toy
from unroll3d.data import download as dl

SHAPE = (16, 20, 18)  # (x, ky, kz) of the toy volumes
VOLS = ["e00001s3_P00001", "e00002s3_P00002"]
PF_CUT = math.ceil(0.85 * SHAPE[2])  # 16


def challenge_like_bank(n: int, ny: int, nz: int, r: float, radius: float, seed: int):
    """Masks in the challenge's format: a centred fully sampled disc, uniform random samples
    elsewhere inside the acquired kz < ceil(0.85 nz), R counted over the acquired region."""
    rng = np.random.default_rng(seed)
    cut = math.ceil(0.85 * nz)
    yy, zz = np.mgrid[:ny, :nz]
    disc = np.hypot(yy - ny // 2, zz - nz // 2) <= radius
    bank = rng.random((n, ny, nz)) < (1.0 / r)
    bank |= disc
    bank[..., cut:] = False
    return bank


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A toy zip, mask banks of two grid sizes, a registry of them with their sha256."""
    src = tmp_path_factory.mktemp("served")
    toy.write_mri_toy(src, VOLS, [], SHAPE, n_coils=4, seed=0)
    banks = {
        "R5_20x18.npy": challenge_like_bank(7, 20, 18, 5, 2.5, 0),
        "R5_20x22.npy": challenge_like_bank(7, 20, 22, 5, 2.5, 1),  # another grid size
    }
    entries = {}
    for name, bank in banks.items():
        np.save(src / name, bank)
        entries[name] = dl.RegistryEntry(name, name, f"sha256:{dl.file_hash(src / name)}")
    dl.write_registry(src / "masks.csv", entries)
    return src, banks


def test_package_registry_pins_the_challenge_masks():
    reg = dl.read_registry(dl.package_registry("mri"))
    names = masks.challenge_mask_files([5, 10])
    assert sorted(names) == sorted(f"R{r}_218x{nz}.npy" for r in (5, 10) for nz in (170, 174, 180))
    for n in names:
        assert reg[n].url.startswith("https://raw.githubusercontent.com/rmsouza01/MC-MRI-Rec/")
        assert reg[n].url.endswith(f"/Data/poisson_sampling/{n}")
        assert (
            dl.split_hash(reg[n].hash)[0] == "sha256" and len(dl.split_hash(reg[n].hash)[1]) == 64
        )
    # the md5 that NKI-AI/direct pins, kept in the note, for R5 at 218x170
    assert "6599715103cf3d71d6e87d09f865e7da" in reg["R5_218x170.npy"].note
    with pytest.raises(ValueError, match=r"R = 5, 10, not R = 4"):
        masks.challenge_mask_files([5, 4])


def test_download_preprocess_and_draw_from_the_bank(served, tmp_path, capsys):
    src, banks = served
    raw = tmp_path / "raw"
    for name in banks:  # through the CLI, as the workflow's download_mri_mask rule calls it
        rc = data_main(
            ["download", "--task", "mri", "--file", name, "--dest", str(raw),
             "--registry", str(src / "masks.csv"), "--serve", str(src), "--retries", "0"]
        )  # fmt: skip
        assert rc == 0 and (raw / name).read_bytes() == (src / name).read_bytes()
    vol = VOLS[0]
    meta = mri.preprocess_mri(
        src / "train_val_12_channel.zip",
        vol,
        tmp_path / "v.pt",
        calib=3,
        challenge_masks=[raw / n for n in banks],
    )
    # the bank of this volume's 20x18 grid is used, the 20x22 one is not
    assert meta["mask_source"] == "challenge (R ['5'])"
    assert "R5_20x18.npy" in meta["input_sha256"] and "R5_20x22.npy" not in meta["input_sha256"]
    bank = torch.from_numpy(banks["R5_20x18.npy"].astype(np.float32))
    data = torch.load(tmp_path / "v.pt", weights_only=True)

    def check(sample, index):
        assert sample.meta["mask"] == f"challenge R5 #{index}"
        mask = sample.physics.mask.reshape(-1, *SHAPE)[0]
        torch.testing.assert_close(mask, bank[index].expand(SHAPE[0], -1, -1), rtol=0, atol=0)
        # y is the stored k-space on the mask's samples and exactly 0 elsewhere
        yk = torch.complex(sample.y[0, 0], sample.y[0, 1]) / sample.meta["scale"]
        torch.testing.assert_close(yk, data["kspace"] * bank[index], rtol=1e-5, atol=1e-6)
        r_acquired = SHAPE[1] * PF_CUT / float(bank[index].sum())
        assert sample.meta["effective_acceleration"] == pytest.approx(r_acquired * 18 / PF_CUT)

    # a test volume: its fixed seed's mask; training draws: mask seed % 7
    check(load_sample(tmp_path / "v.pt", "R5"), fixed_mask_seed(vol, "R5") % 7)
    drawn = set()
    for seed in range(9, 30):
        s = load_sample(tmp_path / "v.pt", "R5", mask_seed=seed)
        check(s, seed % 7)
        drawn.add(s.meta["mask"])
    assert len(drawn) == 7  # every mask of the bank is drawn
    # an acceleration the sample has no bank for is an error, not a silent seeded mask
    with pytest.raises(DataError, match=r"challenge masks for R 5, not R10"):
        load_sample(tmp_path / "v.pt", "R10")


def test_index_layout_matches_the_raw_files(served, tmp_path):
    """The challenge masks index the raw file's ky-kz grid; our stored k-space must keep that
    layout (DC at (ny // 2, nz // 2) in both) so that a mask applies index for index."""
    import zipfile

    import h5py

    src, _ = served
    vol = VOLS[1]
    mri.preprocess_mri(src / "train_val_12_channel.zip", vol, tmp_path / "v.pt", calib=3)
    stored = torch.load(tmp_path / "v.pt", weights_only=True)["kspace"]
    with zipfile.ZipFile(src / "train_val_12_channel.zip") as zf:
        zf.extract(f"Train/{vol}.7.h5", tmp_path)
    with h5py.File(tmp_path / "Train" / f"{vol}.7.h5") as f:
        raw = f["kspace"][()]
    raw_e = (raw[..., 0::2] ** 2 + raw[..., 1::2] ** 2).sum(axis=(0, 3))  # (ky, kz)
    ours_e = (stored.abs() ** 2).sum(dim=(0, 1)).numpy()
    assert np.unravel_index(raw_e.argmax(), raw_e.shape) == (SHAPE[1] // 2, SHAPE[2] // 2)
    assert np.unravel_index(ours_e.argmax(), ours_e.shape) == (SHAPE[1] // 2, SHAPE[2] // 2)
    # same energy per ky-kz point (the conventions differ by a phase only)
    np.testing.assert_allclose(ours_e / ours_e.sum(), raw_e / raw_e.sum(), rtol=1e-4, atol=1e-9)


def test_a_volume_of_another_grid_size_is_a_clear_error(served, tmp_path):
    src, banks = served
    np.save(tmp_path / "R5_20x22.npy", banks["R5_20x22.npy"])
    with pytest.raises(DataError, match=r"grid is 20×18.*R5 are 20×22.*R5_20x18\.npy.*seeded"):
        mri.preprocess_mri(
            src / "train_val_12_channel.zip",
            VOLS[0],
            tmp_path / "out" / "v.pt",
            calib=3,
            challenge_masks=[tmp_path / "R5_20x22.npy"],
        )
    assert not (tmp_path / "out" / "v.pt").exists()


@pytest.mark.parametrize(
    "name, array, message",
    [
        ("masks.npy", np.ones((2, 4, 4), bool), "not a challenge mask file name"),
        ("R5_4x4.npy", np.ones((4, 4), bool), r"expected \(n, 4, 4\)"),
        ("R5_4x4.npy", np.ones((2, 4, 5), bool), r"expected \(n, 4, 4\)"),
        ("R5_4x4.npy", np.zeros((2, 4, 4), bool), "samples nothing"),
    ],
)
def test_bad_mask_files(tmp_path, name, array, message):
    np.save(tmp_path / name, array)
    with pytest.raises(DataError, match=message):
        masks.read_challenge_masks(tmp_path / name)


def test_tampered_mask_download_is_refused(served, tmp_path):
    src, _ = served
    entry = dl.read_registry(src / "masks.csv")["R5_20x18.npy"]
    bad = dl.RegistryEntry(entry.file, entry.url, "sha256:" + "0" * 64)
    with dl.serve_directory(src) as base, pytest.raises(DataError, match="checksum mismatch"):
        dl.download(bad, tmp_path, base_url=base, retries=0)
    assert not (tmp_path / "R5_20x18.npy").exists()


def test_rss_reference(served, tmp_path):
    """x_rss = sqrt(sum_c |I_c|^2) of the fully sampled coil images, scaled like x; with
    RSS-normalised maps |x| <= RSS everywhere (Cauchy-Schwarz) and close to it on the object."""
    src, _ = served
    mri.preprocess_mri(src / "train_val_12_channel.zip", VOLS[0], tmp_path / "v.pt", calib=3)
    data = torch.load(tmp_path / "v.pt", weights_only=True)
    coil_images = mri.ifft3c(data["kspace"])
    torch.testing.assert_close(data["x_rss"], coil_images.abs().pow(2).sum(0).sqrt())
    s = load_sample(tmp_path / "v.pt", "R5")
    ref = mri.rss_reference(s)
    assert ref.shape == s.x.shape and float(ref[:, 1].abs().max()) == 0
    torch.testing.assert_close(ref[0, 0], data["x_rss"] * s.meta["scale"])
    mag = s.x.pow(2).sum(1).sqrt()[0]
    assert float((mag - ref[0, 0]).max()) <= 1e-5 * float(ref.max())
    on_object = ref[0, 0] > 0.2 * ref.max()
    assert float((mag[on_object] / ref[0, 0][on_object]).mean()) > 0.9
    # a file preprocessed before x_rss existed: one clear line
    del data["x_rss"]
    torch.save(data, tmp_path / "old.pt")
    old = load_sample(tmp_path / "old.pt", "R5")
    with pytest.raises(DataError, match="no RSS reference.*preprocess the volume again"):
        mri.rss_reference(old)


def test_evaluation_against_the_rss_reference_says_so(served, tmp_path):
    """evaluate.mri_ground_truth rss scores the magnitude against the RSS reference, and the
    result's metric convention (what the tables' footnote prints) names the reference."""
    import toys

    from unroll3d.engine import evaluate as ev
    from unroll3d.engine import train as tr
    from unroll3d.metrics import compute_metrics, convention_for

    src, _ = served
    path = tmp_path / "v.pt"
    mri.preprocess_mri(src / "train_val_12_channel.zip", VOLS[0], path, calib=3)
    sample = load_sample(path, "R5")
    job = tr.TrainJob(
        task="mri", setting="R5", variant="fdk", config=toys.toy_config(), train_paths=[str(path)],
        val_paths=[], out=tmp_path / "fdk.pt", loader=lambda p: load_sample(p, "R5"),
        progress=False,
    )  # fmt: skip
    tr.train(job)
    results = {}
    for truth in ("coil-combined", "rss"):
        cfg = toys.toy_config()
        cfg["evaluate"]["mri_ground_truth"] = truth
        results[truth] = ev.evaluate_volume(
            "mri", "R5", "fdk", cfg, job.out, sample, VOLS[0], torch.device("cpu")
        )
    rss, combined = results["rss"], results["coil-combined"]
    assert "RSS of the fully sampled coil images" in rss["metric_convention"]
    assert "ground truth = the coil-combined image" in combined["metric_convention"]
    x0 = sample.physics.rss_zero_filled(sample.y)
    x0 = torch.cat([x0, torch.zeros_like(x0)], dim=1)
    conv = convention_for("mri", {"mri_ground_truth": "rss"})
    assert rss["psnr"] == pytest.approx(
        compute_metrics(x0, mri.rss_reference(sample), conv)["psnr"]
    )
    assert combined["psnr"] == pytest.approx(compute_metrics(x0, sample.x, conv)["psnr"])
    assert rss["psnr"] != pytest.approx(combined["psnr"])
    with pytest.raises(ValueError, match="mri_ground_truth must be one of"):
        convention_for("mri", {"mri_ground_truth": "magnitude"})


def test_the_evaluation_records_the_mask_source(served, tmp_path):
    """An MRI evaluation says which masks it ran on (mri.mask_source): the challenge's bank, with
    the mask's index, or our seeded generator; both are valid under the evaluate schema."""
    import toys

    from unroll3d.engine import evaluate as ev
    from unroll3d.engine import train as tr

    src, banks = served
    np.save(tmp_path / "R5_20x18.npy", banks["R5_20x18.npy"])
    zipped, vol = src / "train_val_12_channel.zip", VOLS[0]
    mri.preprocess_mri(zipped, vol, tmp_path / "seeded.pt", calib=3)
    bank = [tmp_path / "R5_20x18.npy"]
    mri.preprocess_mri(zipped, vol, tmp_path / "challenge.pt", calib=3, challenge_masks=bank)
    job = tr.TrainJob(
        task="mri", setting="R5", variant="fdk", config=toys.toy_config(),
        train_paths=[str(tmp_path / "seeded.pt")], val_paths=[], out=tmp_path / "fdk.pt",
        loader=lambda p: load_sample(p, "R5"), progress=False,
    )  # fmt: skip
    tr.train(job)
    index = fixed_mask_seed(vol, "R5") % 7
    for kind, mask in (("seeded", "seeded"), ("challenge", f"challenge R5 #{index}")):
        sample = load_sample(tmp_path / f"{kind}.pt", "R5")
        res = ev.evaluate_volume(
            "mri", "R5", "fdk", toys.toy_config(), job.out, sample, vol, torch.device("cpu")
        )
        ev.validate_result(res)
        assert (res["mask_source"], res["mask"]) == (kind, mask)


@pytest.mark.slow
def test_paper_dag_downloads_the_masks_and_dpir_weights(tmp_path):
    """config/config.yaml plans the six mask downloads, gives every MRI preprocessing job all of
    them, and makes DPIR's training jobs wait for the downloaded weights and their record."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    res = subprocess.run(
        [str(bindir / "snakemake"), "--snakefile", str(root / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(root / "config/config.yaml"), "-n", "-p"],
        capture_output=True, text=True, cwd=root,
        env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    names = masks.challenge_mask_files([5, 10])
    for name in names:
        assert f"unroll3d data download --task mri --file {name}" in out
    pre = [ln for ln in out.splitlines() if "unroll3d data preprocess mri" in ln]
    assert pre and all(
        "--challenge-masks " + " ".join(f"resources/mri/raw/{n}" for n in names) in ln for ln in pre
    )
    assert out.count("unroll3d data download --task weights --file ram.pth.tar") == 1
    dpir_jobs = [b for b in out.split("\n\n") if "--variant dpir " in b and "rule train:" in b]
    assert len(dpir_jobs) == 5  # one per setting (v30 v50 v100 R5 R10)
    assert all("resources/weights/ram.pth.tar.sha256" in b for b in dpir_jobs)
