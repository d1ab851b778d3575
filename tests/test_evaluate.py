"""Metrics against hand-computed values; evaluation of every variant gives a valid JSON."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest
import torch
from toys import OOMModel, loader, make_job, toy_config, toy_H

import unroll3d.cli.evaluate as evaluate_cli
import unroll3d.engine.evaluate as ev
import unroll3d.engine.reconstruct as reconstruct
import unroll3d.engine.samples as samples
import unroll3d.engine.train as tr
from unroll3d.metrics import (
    _crop,
    _ssim_nd,
    compute_metrics,
    convention_for,
    psnr,
    ssim3d,
    ssim_slices,
)
from unroll3d.variants import variant_spec

torch.set_num_threads(1)


def test_psnr_hand_computed():
    gt = torch.zeros(1, 1, 4, 4, 4)
    assert psnr(gt + 0.1, gt, 1.0) == pytest.approx(20.0)
    assert psnr(gt + 0.1, gt, 2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    x = gt.clone()
    x[..., 0, 0, 0] = 1.0  # MSE = 1/64
    assert psnr(x, gt, 1.0) == pytest.approx(10 * math.log10(64))
    assert psnr(gt, gt, 1.0) == math.inf


def test_ssim_constant_volumes_hand_computed():
    a, b, L = 0.3, 0.5, 1.0
    c1 = (0.01 * L) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are 0: contrast term = 1
    x = torch.full((12, 12, 12), a, dtype=torch.float64)
    y = torch.full((12, 12, 12), b, dtype=torch.float64)
    assert ssim3d(x, y, L) == pytest.approx(expected, rel=1e-9)
    assert ssim_slices(x, y, L) == pytest.approx(expected, rel=1e-9)
    z = torch.rand(12, 12, 12)
    assert ssim3d(z, z, L) == pytest.approx(1.0)


def test_ssim_matches_brute_force():
    """Gaussian-weighted local statistics computed voxel by voxel with numpy."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 7, 5, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(6, 7, 5, generator=g, dtype=torch.float64)).clamp(0, 1)
    win, sigma, L = 3, 1.5, 1.0
    got, used = _ssim_nd(x[None, None], y[None, None], L, win, sigma)
    assert used == 3
    r = np.arange(win) - 1
    w1 = np.exp(-(r**2) / (2 * sigma**2))
    w1 /= w1.sum()
    w = w1[:, None, None] * w1[None, :, None] * w1[None, None, :]
    xn, yn = x.numpy(), y.numpy()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(6 - 2):
        for j in range(7 - 2):
            for k in range(5 - 2):
                px, py = xn[i : i + 3, j : j + 3, k : k + 3], yn[i : i + 3, j : j + 3, k : k + 3]
                mx, my = (w * px).sum(), (w * py).sum()
                vx = (w * px * px).sum() - mx**2
                vy = (w * py * py).sum() - my**2
                cxy = (w * px * py).sum() - mx * my
                vals.append(
                    (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
                )
    assert got == pytest.approx(float(np.mean(vals)), rel=1e-10)


def test_conventions():
    big = torch.zeros(1).expand(501, 501, 501)
    assert tuple(_crop(big, (0.2, 0.8)).shape) == (300, 300, 300)  # 100:400, prior work
    cbct = convention_for("cbct", {"cbct_data_range": 2.0})
    gt = torch.rand(1, 1, 10, 10, 10)
    x = gt.clone()
    x[..., 5, 5, 5] = -1.0  # clipped at 0 before the metric
    m = compute_metrics(x, gt, cbct)
    assert m["data_range"] == 2.0 and m["metric_shape"] == [6, 6, 6]
    mri = convention_for("mri")
    gt2 = torch.zeros(1, 2, 8, 8, 8)
    gt2[:, 0] = 3.0
    gt2[:, 1] = 4.0  # magnitude 5
    rot = torch.stack([gt2[:, 1], -gt2[:, 0]], dim=1)  # same magnitude, other phase
    m = compute_metrics(rot, gt2, mri)
    assert m["data_range"] == pytest.approx(5.0) and m["psnr"] == math.inf
    with pytest.raises(ValueError, match="differ"):
        compute_metrics(gt, gt2, mri)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every variant trained for 2 steps on the toy problem."""
    tmp = tmp_path_factory.mktemp("models")
    cfg = toy_config(steps=2)
    H = toy_H(loader("toy0"))
    out = {}
    for v in ["fdk", "tv", "postproc", "unrolled", "unrolled-H", "partition", "partition-H"]:
        job = make_job(tmp, v, cfg, name=v, H=H, val_paths=["toy1"])
        tr.train(job)
        out[v] = job
    return cfg, H, out


@pytest.mark.parametrize(
    "variant", ["fdk", "tv", "postproc", "unrolled", "unrolled-H", "partition", "partition-H"]
)
def test_evaluate_each_variant(trained, variant, tmp_path, monkeypatch):
    cfg, H, jobs = trained
    monkeypatch.setattr(ev, "load_H", lambda path, device: H)
    job = jobs[variant]
    res = ev.evaluate_volume(
        "cbct",
        "v30",
        variant,
        cfg,
        job.out,
        loader("toy3"),
        "toy3",
        torch.device("cpu"),
        normal_path="h.pt",
        train_stats_path=str(job.stats_path),
        slices_path=tmp_path / "s.npz",
    )
    ev.validate_result(res)
    assert res["status"] == "ok" and 5 < res["psnr"] < 60 and 0 < res["ssim"] <= 1
    assert res["inference_time_s"] > 0 and res["train_stats"]["status"] == "ok"
    learned = variant not in ("fdk", "tv")
    assert (res["train_step"] is not None) == learned
    if learned:
        assert res["train_step"]["step_time_s"] > 0
    if variant == "fdk":
        assert res["psnr"] == pytest.approx(res["psnr_x0"])
    assert ("normal_fit" in res) == variant.endswith("-H")  # which H it used, when it used one
    if variant.endswith("-H"):
        assert res["normal_fit"]["file"] == "h.pt"
    with np.load(tmp_path / "s.npz") as z:
        assert z["rec_axial"].shape == (16, 16) and z["gt_vertical"].shape == (16, 16)
    json.dumps(res, allow_nan=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_metrics_are_a_failed_result_in_valid_json(
    trained, value, tmp_path, monkeypatch
):
    """A NaN (diverged) or infinite (exact match) PSNR becomes status "failed" with a message,
    never NaN/Infinity in the JSON."""
    cfg, H, jobs = trained
    real = ev.compute_metrics
    monkeypatch.setattr(ev, "compute_metrics", lambda *a, **k: {**real(*a, **k), "psnr": value})
    res = ev.evaluate_volume(
        "cbct", "v30", "fdk", cfg, jobs["fdk"].out, loader("toy3"), "toy3", torch.device("cpu")
    )
    ev.validate_result(res)
    assert res["status"] == "failed" and res["psnr"] is None and res["psnr_x0"] is None
    assert "non-finite metrics psnr = " in res["message"] and res["ssim"] > 0
    json.dumps(res, allow_nan=False)


def test_oom_model_and_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "build_variant", lambda *a, **k: OOMModel())
    job = make_job(tmp_path, "unrolled", toy_config())
    tr.train(job)
    monkeypatch.undo()
    res = ev.evaluate_volume(
        "cbct",
        "v30",
        "unrolled",
        toy_config(),
        job.out,
        loader("toy0"),
        "toy0",
        torch.device("cpu"),
        train_stats_path=str(job.stats_path),
        slices_path=tmp_path / "s.npz",
    )
    assert res["status"] == "oom" and res["psnr"] is None
    assert res["message"].startswith("OOM at volume 16³")
    bad = dict(res, psnr="high")
    with pytest.raises(jsonschema.ValidationError):
        ev.validate_result(bad)
    with pytest.raises(jsonschema.ValidationError):
        ev.validate_result(dict(res, extra_key=1))


def test_evaluate_cli(trained, tmp_path, monkeypatch):
    cfg, H, jobs = trained
    monkeypatch.setattr(samples, "load_sample", lambda path, setting, device=None: loader(path))
    out = tmp_path / "r.json"
    rc = evaluate_cli.main(
        [
            "--task",
            "cbct",
            "--setting",
            "v30",
            "--variant",
            "partition",
            "--config-json",
            json.dumps(cfg),
            "--model",
            str(jobs["partition"].out),
            "--sample",
            "toy3",
            "--volume",
            "toy3",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    ev.validate_result(json.loads(out.read_text()))


def test_refine_switches():
    assert reconstruct.refine_enabled("cbct", {"evaluate": {"refine": True}})
    assert not reconstruct.refine_enabled("mri", {"evaluate": {"refine": True}})
    assert reconstruct.refine_enabled("mri", {"evaluate": {"refine": True, "mri_refine": True}})
    # mri_refine H (the default): only the variants that use H refine, with H
    ph, p = variant_spec("partition-H"), variant_spec("partition")
    assert reconstruct.refine_enabled("mri", {"evaluate": {"refine": True}}, ph)
    assert not reconstruct.refine_enabled("mri", {"evaluate": {"refine": True}}, p)
    assert not reconstruct.refine_enabled(
        "mri", {"evaluate": {"refine": True, "mri_refine": False}}, ph
    )
    assert reconstruct.refine_record("mri", {"evaluate": {"refine": True}}, ph) == "H refinement"
    assert reconstruct.refine_record("mri", {"evaluate": {"refine": True}}, p) == "first pass only"
    assert (
        reconstruct.refine_record("cbct", {"evaluate": {"refine": True}}, p) == "exact refinement"
    )
    assert not reconstruct.refine_enabled("cbct", {"evaluate": {"refine": False}})


def test_a_new_variant_is_a_registry_entry_and_a_builder(tmp_path, monkeypatch):
    """Registering a variant (unroll3d.variants) and its kind's builder (models.BUILDERS) is all
    it takes to train and evaluate it; an iterative method without weights gets ‖A‖² from the
    training run, and the eval schema accepts the new name."""
    from deepinv.models import Reconstructor

    from unroll3d import models, variants

    class Landweber(Reconstructor):
        def __init__(self, lipschitz):
            super().__init__()
            self.lipschitz = lipschitz

        def forward(self, y, physics, x_init=None, **kw):
            x, aty = x_init, physics.A_adjoint(y)
            for _ in range(20):
                x = x - (physics.A_adjoint_A(x) - aty) / self.lipschitz
            return x

    spec = variants.VariantSpec("landweber", "landweber", False, False, False, gpu=False)
    monkeypatch.setitem(variants.VARIANTS, "landweber", spec)
    monkeypatch.setitem(models.BUILDERS, "landweber", lambda c: Landweber(c.lipschitz))
    cfg = toy_config()
    job = make_job(tmp_path, "landweber", cfg, name="lw")
    stats = tr.train(job)
    assert stats["status"] == "ok" and stats["lipschitz"] == pytest.approx(
        loader("toy0").meta["op_norm_sq"]
    )
    res = ev.evaluate_volume(
        "cbct", "v30", "landweber", cfg, job.out, loader("toy3"), "toy3", torch.device("cpu")
    )
    ev.validate_result(res)
    assert res["status"] == "ok" and res["psnr"] > res["psnr_x0"]


def test_truncated_model_or_h_file_is_one_line_naming_it(trained, tmp_path, capsys):
    """The verbs print the project's errors as one line naming the file (exit 1), not a
    traceback: a truncated model file, a truncated H file."""
    from unroll3d.cli import main as cli_main

    cfg, H, jobs = trained
    model = tmp_path / "m.pt"
    model.write_bytes(jobs["partition"].out.read_bytes()[:200])
    args = ["evaluate", "--task", "cbct", "--setting", "v30", "--config-json", json.dumps(cfg),
            "--sample", "toy3", "--out", str(tmp_path / "r.json"), "--device", "cpu"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samples, "load_sample", lambda path, setting, device=None: loader(path))
        assert cli_main([*args, "--variant", "partition", "--model", str(model)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"unroll3d evaluate: error: {model} is not a readable model")
        h = tmp_path / "h.pt"
        h.write_bytes(b"\x00" * 64)
        rc = cli_main([*args, "--variant", "partition-H", "--model", str(jobs["partition-H"].out),
                       "--normal", str(h)])  # fmt: skip
        assert rc == 1
        assert f"{h} is not a readable normal-operator file" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_per_sample_fit_for_another_operator_is_refused(trained, tmp_path, capsys):
    """A fit of the test volume (normal.per_sample) whose operator hash is not the volume's
    operator's stops the evaluation with one line naming both hashes; the volume's own fit
    evaluates."""
    from unroll3d.cli import main as cli_main
    from unroll3d.normal import operator_hash, save_normal

    cfg, H, jobs = trained
    own = operator_hash(loader("toy3").physics, (1, 16, 16, 16))
    other = operator_hash(loader("toy0").physics, (1, 16, 16, 16))
    assert own != other
    args = ["evaluate", "--task", "cbct", "--setting", "v30", "--config-json", json.dumps(cfg),
            "--sample", "toy3", "--volume", "toy3", "--device", "cpu", "--variant",
            "partition-H", "--model", str(jobs["partition-H"].out)]  # fmt: skip
    fits = {}
    for name, op_hash in (("stale", other), ("own", own)):
        fits[name] = tmp_path / f"{name}.pt"
        save_normal(fits[name], H.fourier_filter, H.spatial_mask, H.img_size, H.scaling,
                    operator_hash=op_hash, grid=H.grid,
                    meta={"volume_meta": {"volume": "toy3", "op_norm_sq": 1.0}})  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samples, "load_sample", lambda path, setting, device=None: loader(path))
        out = tmp_path / "r.json"
        assert cli_main([*args, "--normal", str(fits["stale"]), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (
            f"unroll3d evaluate: error: {fits['stale']} was fitted for operator {other}, but the "
            f"operator in use hashes to {own} (different geometry, mask or coil maps); refit H "
            "for this operator or pass expected_operator_hash=None to skip the check"
        )
        assert not out.exists()
        assert cli_main([*args, "--normal", str(fits["own"]), "--out", str(out)]) == 0
        assert json.loads(out.read_text())["status"] == "ok"
