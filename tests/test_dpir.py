"""DPIR[RAM]: runs only with a weights file whose SHA-256 matches the config; otherwise the
training job records "weights not available" and the evaluation, tables and figures say so."""

from __future__ import annotations

import hashlib

import pytest
import torch
import toys

from unroll3d.engine import evaluate as ev
from unroll3d.engine import train as tr
from unroll3d.models.dpir import SliceDenoiser, checked_weights

torch.set_num_threads(1)


def _drunet_weights(tmp_path):
    """A deepinv DRUNet (grey) state dict saved like the published drunet_gray.pth, and its
    SHA-256 (random weights: the mechanism is what is tested, not the published network)."""
    from deepinv.models import DRUNet

    torch.manual_seed(0)
    path = tmp_path / "drunet_gray.pth"
    torch.save(DRUNet(in_channels=1, out_channels=1, pretrained=None).state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_without_weights_dpir_is_reported_unavailable_never_substituted(tmp_path):
    cfg = toys.toy_config(dpir_weights=str(tmp_path / "absent.pth"), dpir_sha256="0" * 64)
    job = toys.make_job(tmp_path, "dpir", cfg)
    stats = tr.train(job)
    assert stats["status"] == "unavailable" and "weights not available" in stats["message"]
    assert "does not exist" in stats["message"]
    res = ev.evaluate_volume(
        "cbct", "v30", "dpir", cfg, job.out, toys.loader("toy3"), "toy3", torch.device("cpu"),
        slices_path=tmp_path / "s.npz",
    )  # fmt: skip
    assert res["status"] == "unavailable" and res["psnr"] is None
    ev.validate_result(res)  # the schema knows the status


def test_wrong_checksum_is_an_error_naming_the_file(tmp_path):
    path, _ = _drunet_weights(tmp_path)
    cfg = toys.toy_config(dpir_weights=str(path), dpir_sha256="a" * 64, dpir_denoiser="drunet")
    with pytest.raises(ValueError, match="drunet_gray.pth: SHA-256 .* does not match"):
        tr.train(toys.make_job(tmp_path, "dpir", cfg))
    with pytest.raises(ValueError, match="dpir_sha256 is not set"):
        checked_weights(str(path), None)


def test_with_checked_weights_dpir_runs_deepinv_dpir_on_the_volume(tmp_path):
    path, sha = _drunet_weights(tmp_path)
    cfg = toys.toy_config(
        dpir_weights=str(path), dpir_sha256=f"sha256:{sha}", dpir_denoiser="drunet"
    )
    job = toys.make_job(tmp_path, "dpir", cfg)
    stats = tr.train(job)
    assert stats["status"] == "ok" and stats["lipschitz"] > 0
    res = ev.evaluate_volume(
        "cbct", "v30", "dpir", cfg, job.out, toys.loader("toy3"), "toy3", torch.device("cpu")
    )
    assert res["status"] == "ok" and res["psnr"] is not None and res["inference_time_s"] > 0


def test_slice_denoiser_keeps_slice_order_and_channels():
    """Each (slice, channel) goes through the 2D network alone, at its own place: a network
    that adds each image's own mean shows that no slice or channel is mixed with another; sizes
    that are not multiples of 8 are padded for the network and cropped back."""

    class AddOwnMean(torch.nn.Module):
        def forward(self, x, sigma):
            assert x.shape[1] == 1 and x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
            return x + x.mean(dim=(1, 2, 3), keepdim=True) + sigma

    x = torch.randn(1, 2, 5, 8, 16)
    out = SliceDenoiser(AddOwnMean(), "drunet", batch=3)(x, 0.5)
    assert torch.allclose(out, x + x.mean(dim=(3, 4), keepdim=True) + 0.5, atol=1e-6)

    class Identity(torch.nn.Module):
        def forward(self, x, sigma):
            assert x.shape[-2:] == (16, 16)
            return x

    y = torch.randn(1, 1, 3, 10, 12)
    assert torch.equal(SliceDenoiser(Identity(), "drunet")(y, 0.1), y)


def test_ram_weights_load_from_the_checked_file_and_denoise_slices(tmp_path):
    """The default denoiser, deepinv's RAM, is built from the weights file (random weights
    saved here in its format: the published file cannot be downloaded) and runs slice by slice
    as DPIR's prior, keeping the volume's shape (one grey image per slice and channel)."""
    from deepinv.models import RAM

    from unroll3d.models.dpir import load_denoiser2d

    torch.manual_seed(0)
    path = tmp_path / "ram.pth.tar"
    torch.save(RAM(pretrained=False).state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    net = load_denoiser2d("ram", checked_weights(str(path), sha))
    x = torch.rand(1, 2, 3, 8, 12)
    with torch.no_grad():
        out = SliceDenoiser(net, "ram")(x, 0.05)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown DPIR denoiser"):
        load_denoiser2d("bm3d", str(path))
    # as deepinv loads its published file: extra tensors are ignored, a missing one is an error
    state = torch.load(path, weights_only=True)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "unused.weight": torch.zeros(2)}, extra)
    assert torch.equal(load_denoiser2d("ram", str(extra)).fact_realign, net.fact_realign)
    first = next(iter(state))
    torch.save({k: v for k, v in state.items() if k != first}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=rf"short.pth: not RAM weights.*1 of its tensors.*{first}"):
        load_denoiser2d("ram", str(tmp_path / "short.pth"))
