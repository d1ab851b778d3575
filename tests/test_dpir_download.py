"""DPIR's weights fetched by the pipeline (train.dpir_weights: download).

The published files live on huggingface.co, which the tests cannot reach: a file is served from a
local folder under the registry's name and downloaded through the same pooch path and CLI as the
workflow's download_dpir_weights rule. The training job checks only the weights file (it loads no
network), so any bytes do; tests/test_dpir.py runs DPIR itself from a checked file.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import toys

from unroll3d.cli.data import main as data_main
from unroll3d.data import DataError
from unroll3d.data import download as dl
from unroll3d.data import weights as w
from unroll3d.engine import train as tr
from unroll3d.models.dpir import checked_weights

torch.set_num_threads(1)


def test_registry_holds_the_urls_deepinv_downloads_from():
    import deepinv.models.drunet
    import deepinv.models.ram
    from deepinv.models.utils import get_weights_url

    reg = dl.read_registry(dl.package_registry("weights"))
    assert set(reg) == set(w.WEIGHTS_FILES.values())
    drunet = w.WEIGHTS_FILES["drunet"]
    assert reg[drunet].url == get_weights_url(model_name="drunet", file_name=drunet)
    assert f'name = "{drunet}"' in inspect.getsource(deepinv.models.drunet)  # its grey file
    assert f'"{reg["ram.pth.tar"].url}"' in inspect.getsource(deepinv.models.ram)
    assert all(e.hash is None for e in reg.values())  # none published: unpinned, never invented
    assert w.weights_file("download", "drunet", "res/w") == f"res/w/{drunet}"
    assert w.weights_file("my/ram.pth", "ram") == "my/ram.pth" and w.weights_file(None) is None


def _serve_and_download(src, dest, name, content):
    (src / name).write_bytes(content)
    reg = src / "weights.csv"
    dl.write_registry(reg, {name: dl.RegistryEntry(name, name, None)})
    return data_main(
        ["download", "--task", "weights", "--file", name, "--dest", str(dest),
         "--registry", str(reg), "--serve", str(src), "--retries", "0"]
    )  # fmt: skip


def test_download_records_the_unpinned_hash_and_dpir_checks_it(tmp_path, monkeypatch, caplog):
    src, dest = tmp_path / "served", tmp_path / w.WEIGHTS_DIR
    src.mkdir()
    name = w.WEIGHTS_FILES["drunet"]
    content = b"published weights, version 1"
    assert _serve_and_download(src, dest, name, content) == 0
    assert (dest / name).read_bytes() == content
    sha = dl.file_hash(dest / name)
    record = dl.hash_record_path(dest / name).read_text()
    assert record.startswith(f"sha256:{sha} unpinned")
    assert dl.read_hash_record(dest / name) == (sha, False)

    # the training job (run where the workflow runs: resources/ under the working directory)
    monkeypatch.chdir(tmp_path)
    cfg = toys.toy_config(dpir_weights="download", dpir_denoiser="drunet")
    stats = tr.train(toys.make_job(tmp_path, "dpir", cfg))
    assert stats["status"] == "ok" and stats["weights_sha256"] == sha
    assert stats["weights_checked_against"] == "unpinned: recorded at the first download"
    assert stats["weights"] == f"{w.WEIGHTS_DIR}/{name}"
    # an explicit dpir_sha256 overrides the record
    with pytest.raises(ValueError, match=r"does not match 0{64} \(train.dpir_sha256\)"):
        checked_weights("download", "0" * 64, "drunet")

    # the file changes upstream: a new download is refused against the record
    (dest / name).unlink()
    assert _serve_and_download(src, dest, name, b"other weights") == 1
    assert not (dest / name).exists()
    # a local file changed after the download: DPIR refuses it
    (dest / name).write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"does not match .* \(unpinned: recorded at the first"):
        checked_weights("download", None, "drunet")


def test_pinned_entry_is_recorded_as_pinned_and_missing_file_is_unavailable(tmp_path):
    src, dest = tmp_path / "served", tmp_path / "w"
    src.mkdir()
    (src / "ram.pth.tar").write_bytes(b"ram weights")
    entry = dl.RegistryEntry(
        "ram.pth.tar", "ram.pth.tar", f"sha256:{dl.file_hash(src / 'ram.pth.tar')}"
    )
    with dl.serve_directory(src) as base:
        path = dl.download_recorded(entry, dest, base_url=base, retries=0)
    assert dl.read_hash_record(path) == (dl.file_hash(path), True)
    assert checked_weights(str(path), None) == str(path)
    # a hand-placed file without dpir_sha256 and without a record is refused (offline path)
    (tmp_path / "own.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="dpir_sha256 is not set"):
        checked_weights(str(tmp_path / "own.pth"), None)
    # download configured but not (yet) downloaded: "weights not available", nothing else used
    assert checked_weights("download", None, "ram") is None
    # a broken record is one clear error
    dl.hash_record_path(path).write_text("md5:abc\n")
    with pytest.raises(DataError, match="not a checksum record"):
        dl.read_hash_record(path)


def test_unreachable_host_names_the_manual_placement(tmp_path, capsys):
    reg = tmp_path / "weights.csv"
    name = "ram.pth.tar"
    dl.write_registry(reg, {name: dl.RegistryEntry(name, "http://127.0.0.1:9/ram.pth.tar", None)})
    rc = data_main(
        ["download", "--task", "weights", "--file", name, "--dest", str(tmp_path / "w"),
         "--registry", str(reg), "--retries", "0"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and f"place it at {tmp_path / 'w'}/{name}" in err and "dpir_sha256" in err
