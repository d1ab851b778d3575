"""Artifacts are checked against their use, raw data against the data
set's layout, and a check that measures a failure fails.

* a model file evaluated as another variant or task is an error naming both;
* a sample preprocessed for another task is refused by the evaluation;
* a Walnut zip missing its last ground-truth slice is refused at preprocessing (Walnut volumes
  are cubic; the config's size), a stale 23 × 24 × 24 file at loading, and a volume of another
  shape than the rest of its data set at training;
* an MRI HDF5 stored with swapped axes is refused against the config's and the
  Calgary-Campinas layout; the automatic k-space convention is a logged decision; a named one
  that the data contradict is an error;
* ``fdk-check`` exits 1 when the geometry is in other units (relative difference ~0.9).
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import loader, make_job, toy_config

import unroll3d.engine.evaluate as ev
import unroll3d.engine.train as tr
from unroll3d.cli import data as data_cli
from unroll3d.data import DataError, load_sample, toy, walnut
from unroll3d.data import mri as mri_data
from unroll3d.engine.model_file import ModelFileError

SIZE, DET, NFULL, VOX = 16, (20, 16), 48, 3.0
MRI_SHAPE, COILS = (16, 20, 18), 4


def _rewrite(src: Path, dst: Path, drop=(), edit=None) -> Path:
    """Copy a zip, dropping members ending with ``drop`` and passing the geometry through
    ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if any(n.endswith(d) for d in drop):
                continue
            data = zin.read(n)
            if edit and n.endswith("scan_geom_corrected.geom"):
                data = edit(data)
            zout.writestr(n, data)
    return dst


@pytest.fixture(scope="module")
def walnut_zip(tmp_path_factory):
    d = tmp_path_factory.mktemp("walnut")
    toy.write_cbct_toy(d, [2], SIZE, DET, NFULL, voxel_mm=VOX, seed=1)
    return d / "Walnut2.zip"


# ---- item 2: model files against the variant and task they are used as ----


@pytest.fixture(scope="module")
def fdk_model(tmp_path_factory):
    job = make_job(tmp_path_factory.mktemp("models"), "fdk", toy_config(steps=2), name="fdk")
    tr.train(job)
    return job.out


def test_a_model_file_evaluated_as_another_variant_or_task_is_refused(fdk_model):
    cfg = toy_config(steps=2)
    ok = ev.evaluate_volume(
        "cbct", "v30", "fdk", cfg, fdk_model, loader("toy3"), "toy3", torch.device("cpu")
    )
    assert ok["status"] == "ok"
    with pytest.raises(ModelFileError, match=r"fdk model of task cbct.*used as the tv model"):
        ev.evaluate_volume(
            "cbct", "v30", "tv", cfg, fdk_model, loader("toy3"), "toy3", torch.device("cpu")
        )
    with pytest.raises(ModelFileError, match=r"of task cbct, but it is used as .* task mri"):
        ev.evaluate_volume(
            "mri", "R5", "fdk", cfg, fdk_model, loader("toy3"), "toy3", torch.device("cpu")
        )


def test_train_stats_of_another_variant_are_refused(fdk_model, tmp_path):
    import json

    stats = json.loads(fdk_model.with_suffix(".json").read_text())
    ok = ev.evaluate_volume(
        "cbct", "v30", "fdk", toy_config(), fdk_model, loader("toy3"), "toy3", torch.device("cpu"),
        train_stats_path=str(fdk_model.with_suffix(".json")),
    )  # fmt: skip
    assert ok["train_stats"]["status"] == "ok"
    other = tmp_path / "tv.json"
    other.write_text(json.dumps({**stats, "variant": "tv"}))
    with pytest.raises(ModelFileError, match=r"tv.json holds the train stats of tv on task cbct"):
        ev.evaluate_volume(
            "cbct", "v30", "fdk", toy_config(), fdk_model, loader("toy3"), "toy3",
            torch.device("cpu"), train_stats_path=str(other),
        )  # fmt: skip


def test_a_sample_of_another_task_is_refused(fdk_model):
    sample = loader("toy4")
    sample.meta.update(task="mri", source="results/data/mri/toy4.pt")
    try:
        with pytest.raises(DataError, match=r"toy4.pt holds a mri volume.*task cbct"):
            ev.evaluate_volume(
                "cbct", "v30", "fdk", toy_config(), fdk_model, sample, "toy4", torch.device("cpu")
            )
    finally:
        sample.meta.pop("task")


# ---- item 2: a sample's shape against the data set and the config ----


def test_a_walnut_missing_its_last_slice_is_refused(walnut_zip, tmp_path):
    bad = _rewrite(walnut_zip, tmp_path / "Walnut2.zip", drop=[f"full_AGD_50_{SIZE - 1:06}.tif"])
    out = tmp_path / "out" / "walnut2.pt"
    with pytest.raises(DataError, match=r"Walnut2.zip: .* is 15 × 16 × 16 .*cubic"):
        walnut.preprocess_walnut(bad, out, voxel_size_mm=VOX)
    with pytest.raises(DataError, match=r"is 15 × 16 × 16 .* volumes are 16 × 16 × 16 \(config\)"):
        walnut.preprocess_walnut(bad, out, voxel_size_mm=VOX, expected_shape=(SIZE,) * 3)
    assert not out.exists()
    with pytest.raises(DataError, match=r"are 12 × 12 × 12 \(config\)"):  # another size
        walnut.preprocess_walnut(walnut_zip, out, voxel_size_mm=VOX, expected_shape=(12,) * 3)


def test_a_stale_short_volume_is_refused_at_loading(walnut_zip, tmp_path):
    good = tmp_path / "walnut2.pt"
    walnut.preprocess_walnut(walnut_zip, good, voxel_size_mm=VOX, expected_shape=(SIZE,) * 3)
    assert load_sample(good, "v12").x.shape[-3:] == (SIZE,) * 3
    data = torch.load(good, weights_only=True)
    data["x"] = data["x"][:-1].clone()  # as written before the preprocessing check
    torch.save(data, tmp_path / "short.pt")
    with pytest.raises(DataError, match=r"short.pt: the volume is 15 × 16 × 16.*cubic"):
        load_sample(tmp_path / "short.pt", "v12")


def test_a_training_volume_of_another_shape_than_its_data_set_is_refused(tmp_path):
    """Training and validation volumes are one data set: a 15 × 16 × 16 validation volume beside
    16³ training volumes stops the training, naming both files."""
    from toys import toy_sample

    samples = {"a.pt": toy_sample((16, 16, 16), seed=0), "b.pt": toy_sample((15, 16, 16), seed=1)}
    job = tr.TrainJob(
        task="cbct",
        setting="v30",
        variant="unrolled",
        config=toy_config(steps=2, val_every=1),
        train_paths=["a.pt"],
        val_paths=["b.pt"],
        out=tmp_path / "m.pt",
        loader=samples.__getitem__,
        progress=False,
    )
    match = r"b.pt: volume of 15 × 16 × 16, but a.pt of the same data set is 16 × 16 × 16"
    with pytest.raises(DataError, match=match):
        tr.train(job)


def test_a_test_volume_of_another_shape_than_the_training_volumes_is_refused(tmp_path):
    """The test volume belongs to the data set the model was trained on (its train stats record
    the training volumes' shape): a 15 × 16 × 16 one is refused, not evaluated."""
    from toys import toy_sample

    job = make_job(tmp_path, "unrolled", toy_config(steps=1), name="unrolled")
    tr.train(job)
    short = toy_sample((15, 16, 16), seed=3)
    short.meta["source"] = "results/data/cbct/walnut5.pt"
    with pytest.raises(DataError, match=r"walnut5.pt: volume of 15 × 16 × 16, but the model was "
                       r"trained on volumes of 16 × 16 × 16"):  # fmt: skip
        ev.evaluate_volume(
            "cbct", "v30", "unrolled", toy_config(steps=1), job.out, short, "walnut5",
            torch.device("cpu"), train_stats_path=str(job.stats_path),
        )  # fmt: skip


# ---- item 3: raw MRI layout and the k-space convention ----


def _mri_zip(tmp_path: Path, swap: bool, convention: str = "uncentred") -> Path:
    """A one-volume toy zip ``Train/e1.7.h5``, stored as (x, ky, kz, 2N) or with x and ky
    swapped."""
    import h5py

    maps = toy.simulated_coil_maps(MRI_SHAPE, COILS)
    img = toy.brain_phantom(MRI_SHAPE, seed=3)
    h5 = tmp_path / "e1.7.h5"
    raw = toy.write_calgary_h5(h5, img, maps, seed=0, convention=convention)
    if swap:
        with h5py.File(h5, "w") as f:
            f.create_dataset("kspace", data=np.ascontiguousarray(np.swapaxes(raw, 0, 1)))
    zpath = tmp_path / "train_val_12_channel.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(h5, "Train/e1.7.h5")
    return zpath


def test_swapped_mri_axes_are_refused_against_the_config_and_the_known_layout(tmp_path):
    bad = _mri_zip(tmp_path, swap=True)
    out = tmp_path / "e1.pt"
    with pytest.raises(DataError, match=r"stored as 20 × 16 × 18 × 8, expected 16 × 20 × 18 × 8.*"
                       r"swapped"):  # fmt: skip
        mri_data.preprocess_mri(bad, "e1", out, expected_shape=MRI_SHAPE, expected_coils=COILS)
    assert not out.exists()
    with pytest.raises(DataError, match=r"256 × 218 × 170\|180 × 24"):  # not the real data set
        mri_data.preprocess_mri(bad, "e1", out, expected_shape="calgary-campinas")
    cc = "calgary-campinas"
    for ok in [(256, 218, 170, 24), (256, 218, 180, 24)]:
        mri_data.check_kspace_layout(ok, "f.h5", cc)
    with pytest.raises(
        DataError, match=r"f.h5: 'kspace' is stored as 218 × 256 × 170 × 24.*swapped"
    ):
        mri_data.check_kspace_layout((218, 256, 170, 24), "f.h5", cc)
    with pytest.raises(DataError, match="stored as 256 × 218 × 174 × 24"):
        mri_data.check_kspace_layout((256, 218, 174, 24), "f.h5", cc)


def test_the_automatic_convention_is_logged_and_a_contradicted_one_is_an_error(tmp_path, caplog):
    good = _mri_zip(tmp_path, swap=False)
    with caplog.at_level(logging.INFO, logger="unroll3d.data"):
        meta = mri_data.preprocess_mri(good, "e1", tmp_path / "e1.pt", calib=3)
    assert meta["kspace_convention"] == "uncentred"
    assert any("k-space convention auto -> uncentred" in r.message for r in caplog.records)
    # a swapped file quietly flipped "auto" to centred; with the convention named it is refused
    (tmp_path / "s").mkdir()
    swapped = _mri_zip(tmp_path / "s", swap=True)
    with pytest.raises(DataError, match=r"kspace_convention is 'uncentred', but the data look "
                       r"'centred'"):  # fmt: skip
        mri_data.preprocess_mri(swapped, "e1", tmp_path / "x.pt", calib=3, convention="uncentred")
    with pytest.raises(DataError, match=r"is 'centred', but the data look 'uncentred'"):
        mri_data.preprocess_mri(good, "e1", tmp_path / "y.pt", calib=3, convention="centred")


# ---- item 3: fdk-check fails on the failure it measures ----


def test_fdk_check_fails_on_a_geometry_in_other_units(walnut_zip, tmp_path, capsys):
    def times_ten(text: bytes) -> bytes:
        g = np.loadtxt(io.BytesIO(text))
        return "\n".join(" ".join(f"{v:.9g}" for v in row) for row in 10 * g).encode()

    bad = _rewrite(walnut_zip, tmp_path / "Walnut2.zip", edit=times_ten)
    argv = ["fdk-check", "--zip", str(bad), "--voxel-mm", str(VOX), "--device", "cpu"]
    assert data_cli.main(argv + ["--out", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"Walnut2.zip: our FDK differs from the shipped fdk_pos2 by 0\.[89]\d\d", err)
    assert "over the limit 0.5" in err and len(err.strip().splitlines()) == 1
    good = ["fdk-check", "--zip", str(walnut_zip), "--voxel-mm", str(VOX), "--device", "cpu"]
    assert data_cli.main(good) == 0
