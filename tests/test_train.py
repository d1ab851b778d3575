"""Training: loss decreases for every learned variant, resume is exact, NaN guard, OOM capture."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from toys import SHAPE, OOMModel, loader, make_job, toy_config, toy_H, toy_sample

import unroll3d.cli.train as train_cli
import unroll3d.engine.model_file as model_file
import unroll3d.engine.operators as operators
import unroll3d.engine.partitioning as partitioning
import unroll3d.engine.run_record as run_record
import unroll3d.engine.samples as engine_samples
import unroll3d.engine.train as tr
import unroll3d.engine.train_loop as loop
from unroll3d.engine.evaluate import validate_result
from unroll3d.physics import initial_reconstruction
from unroll3d.variants import variant_spec

torch.set_num_threads(1)


def fixed_loss(model, variant, H):
    """Loss on a fixed batch: the full volume, or three fixed patches with GT context."""
    spec = variant_spec(variant)
    s = loader("toy0")
    lip = s.meta["op_norm_sq"]
    phys = operators.physics_for(s, spec, H, lip)
    x0 = initial_reconstruction(s.physics, s.y)
    with torch.no_grad():
        if not spec.partition:
            return float(((model(s.y, phys, x_init=x0) - s.x) ** 2).mean())
        part = partitioning.make_partitioner(model, "cbct", toy_config(), s.x.shape[1:])
        losses = []
        for start in [(0, 0, 0), (4, 8, 2), (8, 4, 8)]:
            est, tgt = part.training_pair(
                s.y, phys, s.x, start=start, x0=x0, **operators.h_kwargs(spec, phys)
            )
            losses.append(float(((est - tgt) ** 2).mean()))
        return sum(losses) / len(losses)


@pytest.mark.parametrize(
    "variant", ["unrolled", "unrolled-H", "partition", "partition-H", "partition-Ha", "postproc"]
)
def test_training_lowers_loss(tmp_path, variant):
    spec = variant_spec(variant)
    H = toy_H(loader("toy0")) if spec.use_H else None
    cfg = toy_config()
    job = make_job(tmp_path, variant, cfg, H=H)
    torch.manual_seed(0)
    init = tr.build_variant(variant, "cbct", cfg, lipschitz=loader("toy0").meta["op_norm_sq"])
    before = fixed_loss(init, variant, H)
    stats = tr.train(job)
    assert stats["status"] == "ok" and stats["steps"] == 30
    growth = stats["peak_rss_growth_gb"]  # CPU memory of the steps (None off Linux)
    assert growth is None or 0 <= growth < stats["peak_rss_gb"]
    model, payload = model_file.load_trained(job.out, "cbct", cfg)
    after = fixed_loss(model, variant, H)
    assert after < 0.7 * before, (before, after)
    # logs
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].split(",") == run_record.CSV_FIELDS and len(rows) == 31
    js = json.loads((tmp_path / "m.json").read_text())
    assert js["step_time_mean_s"] > 0 and js["device"].startswith("CPU")
    validate_result(js, "train_stats")


def test_resume_gives_identical_weights(tmp_path):
    cfg = toy_config(steps=6, checkpoint_every=2, accumulate=2)
    a = make_job(tmp_path / "a", "partition", cfg)
    tr.train(a)
    b = make_job(tmp_path / "b", "partition", cfg)
    assert tr.train(b, stop_at=3) == {"stopped_at": 3}  # "killed" after step 3
    assert torch.load(b.ckpt_path, weights_only=False)["step"] == 2
    tr.train(b)  # resumes from step 2
    wa = torch.load(a.out, weights_only=False)["state_dict"]
    wb = torch.load(b.out, weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    rows = (tmp_path / "b" / "m.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_weights_do_not_depend_on_what_loading_drew(tmp_path):
    """The model's init is seeded right before it is built: a loader that draws from the global
    RNGs (as the toy loader does the first time it builds a volume) leaves the weights as they
    are. It made the resume test pass or fail with the tests run before it."""
    import random

    import numpy as np

    def drawing_loader(path):
        torch.rand(3), random.random(), np.random.rand()
        return loader(path)

    loader("toy0")  # built (and its draws made) before either run
    cfg = toy_config(steps=2)
    a = make_job(tmp_path / "a", "partition", cfg)
    tr.train(a)
    b = dataclasses.replace(make_job(tmp_path / "b", "partition", cfg), loader=drawing_loader)
    tr.train(b)
    wa = torch.load(a.out, weights_only=False)["state_dict"]
    wb = torch.load(b.out, weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class NaNAfter:
    """Physics double: exact until ``n`` calls of A_adjoint_A, then NaN."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def A_adjoint_A(self, x, **kw):
        self.calls += 1
        out = self.inner.A_adjoint_A(x)
        return out * float("nan") if self.calls > self.n else out


def test_nan_guard_keeps_last_checkpoint(tmp_path):
    s = toy_sample(SHAPE, seed=5)
    s.physics = NaNAfter(s.physics, n=8)  # K=2: steps 1-4 fine, step 5 NaN
    cfg = toy_config(steps=10, checkpoint_every=2)
    job = make_job(tmp_path, "unrolled", cfg)
    job.loader = lambda p: s
    with pytest.raises(tr.NonFiniteLoss, match="step 5") as err:
        tr.train(job)
    assert "last good checkpoint: step 4" in str(err.value)
    state = torch.load(job.ckpt_path, weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not job.out.exists()


def test_oom_is_a_result(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "build_variant", lambda *a, **k: OOMModel())
    job = make_job(tmp_path, "unrolled", toy_config())
    stats = tr.train(job)
    assert stats["status"] == "oom"
    assert stats["message"].startswith("OOM at volume 16³, peak")
    payload = torch.load(job.out, weights_only=False)
    assert payload["status"] == "oom" and payload["state_dict"] is None
    assert json.loads((tmp_path / "m.json").read_text())["status"] == "oom"


def test_non_learned_variants_write_model_files(tmp_path):
    cfg = toy_config()
    stats = tr.train(make_job(tmp_path, "tv", cfg, name="tv", val_paths=["toy1"]))
    assert stats["alpha"] in cfg["train"]["tv_grid"] and len(stats["tv_val_psnr"]) == 2
    model, payload = model_file.load_trained(tmp_path / "tv.pt", "cbct", cfg)
    assert float(model.alpha) == pytest.approx(stats["alpha"])
    tr.train(make_job(tmp_path, "fdk", cfg, name="fdk"))
    model, payload = model_file.load_trained(tmp_path / "fdk.pt", "cbct", cfg)
    assert payload["status"] == "ok" and (tmp_path / "fdk.csv").exists()


def test_cli_with_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(
        engine_samples, "load_sample", lambda path, setting, device=None: loader(path)
    )
    cfg = toy_config(steps=4, val_every=2)
    out = tmp_path / "cli.pt"
    rc = train_cli.main(
        [
            "--task",
            "cbct",
            "--setting",
            "v30",
            "--variant",
            "partition",
            "--config-json",
            json.dumps(cfg),
            "--train",
            "toy0",
            "toy1",
            "--val",
            "toy2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["status"] == "ok" and stats["val_psnr_last"] > 0


def test_patch_ranges_match_the_derived_loader():
    r = partitioning.patch_ranges((501, 501, 501), (8, 384, 384), (0.16, 0.1, 0.1))
    assert r == [(80, 421 - 8), (50, 451 - 384), (50, 451 - 384)]
    assert partitioning.patch_ranges((16, 16, 16), (8, 16, 16), (0.16, 0.1, 0.1)) == [
        (3, 5),
        None,
        None,
    ]
    assert partitioning.patch_ranges((16, 16, 16), (8, 8, 8), None) is None


def test_load_H_round_trip(tmp_path):
    from unroll3d.normal import save_normal

    s = loader("toy0")
    H = toy_H(s)
    path = tmp_path / "h.pt"
    save_normal(
        path,
        H.fourier_filter,
        H.spatial_mask,
        (1, *SHAPE),
        H.scaling,
        two_sided=H.two_sided,
        grid=H.grid,
    )
    loaded = operators.load_H(path)
    spec = variant_spec("unrolled-H")
    a = operators.physics_for(s, spec, H, 1.0)
    b = operators.physics_for(s, spec, loaded, 1.0)
    x = torch.randn_like(s.x)
    assert b.scaling == pytest.approx(H.scaling)
    assert torch.allclose(a.A_adjoint_A(x), b.A_adjoint_A(x), atol=1e-6)


class HugeAllocModel(OOMModel):
    """Model double that really asks CUDA for ~40 TB."""

    def forward(self, *a, **k):
        return torch.empty(10**13, device="cuda")


def _cuda_loader(path):
    s = toy_sample(SHAPE, seed=int(path[3:]))
    s.physics = s.physics.to("cuda")
    s.x, s.y = s.x.cuda(), s.y.cuda()
    return s


@pytest.mark.gpu
def test_real_cuda_oom_is_captured(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "build_variant", lambda *a, **k: HugeAllocModel().cuda())
    job = make_job(tmp_path, "unrolled", toy_config(), device=torch.device("cuda"))
    job.loader = _cuda_loader
    stats = tr.train(job)
    assert stats["status"] == "oom" and stats["message"].startswith("OOM at volume 16³")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["unrolled", "partition-H"])
def test_bf16_training_on_cuda(tmp_path, variant):
    s = _cuda_loader("toy0")
    H = toy_H(s) if variant.endswith("-H") else None
    job = make_job(
        tmp_path, variant, toy_config(steps=3, bf16=True), device=torch.device("cuda"), H=H
    )
    job.loader = _cuda_loader
    stats = tr.train(job)
    assert stats["status"] == "ok" and stats["bf16"] and stats["peak_memory_gb"] > 0


def test_cli_names_a_misspelt_config_key(tmp_path):
    """--config is validated against the schema; a misspelt key stops the verb with a one-line
    error naming it, before any work."""
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/smoke.yaml").read_text())
    cfg["train"]["lrr"] = cfg["train"].pop("lr")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["--task", "cbct", "--setting", "v30", "--variant", "fdk", "--config", str(path)]
    with pytest.raises(SystemExit, match=r"config key train: Additional properties .*'lrr'"):
        train_cli.main([*args, "--train", "toy0", "--out", str(tmp_path / "m.pt")])
    assert not (tmp_path / "m.pt").exists()


def test_a_fit_for_another_setting_or_shape_is_refused(tmp_path, monkeypatch, capsys):
    """H fitted for R5 (or v50) on an R10 (v30) job, or for another image size, stops the job with
    one line naming the fit's file and the sample, instead of training with the wrong operator."""
    import copy

    from unroll3d.normal import NormalFitMismatch, save_normal

    s = loader("toy0")
    H = toy_H(s)
    fit = tmp_path / "v50.pt"
    save_normal(fit, H.fourier_filter, H.spatial_mask, (1, *SHAPE), H.scaling,
                grid=H.grid, meta={"setting": "v50"})  # fmt: skip

    def load_under(path, setting, device=None):
        sample = copy.copy(loader(path))
        sample.meta = {**sample.meta, "setting": setting, "source": f"{path}.pt"}
        return sample

    monkeypatch.setattr(engine_samples, "load_sample", load_under)
    args = ["--task", "cbct", "--variant", "partition-H", "--config-json", json.dumps(toy_config())]
    out = tmp_path / "m.pt"
    rc = train_cli.main(
        [*args, "--setting", "v30", "--normal", str(fit), "--train", "toy0", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert f"{fit} was fitted for setting v50, but toy0.pt is used under v30" in err
    # the right setting trains
    rc = train_cli.main(
        [*args, "--setting", "v50", "--normal", str(fit), "--train", "toy0", "--out", str(out)]
    )
    assert rc == 0 and out.exists()
    # a fit for another image size is refused too, naming the shapes
    small = operators.load_H(fit)
    small.img_size = (1, 8, 8, 8)
    with pytest.raises(NormalFitMismatch, match=r"shape \(1, 8, 8, 8\), but toy0.pt has shape"):
        operators.physics_for(load_under("toy0", "v50"), variant_spec("unrolled-H"), small, 1.0)


def test_patch_larger_than_the_volume_is_refused_and_the_trained_patch_recorded(tmp_path):
    """No silent clamping: a patch that does not fit is an error, and a partitioned run records
    the patch, stride and grid it really used."""
    cfg = toy_config(steps=2)
    stats = tr.train(make_job(tmp_path, "partition", cfg))
    assert stats["patch_size"] == [8, 8, 8] and stats["stride"] == [4, 4, 4]
    assert stats["n_patches"] == 27  # 3 corners per axis of 16 with patch 8, stride 4
    validate_result(json.loads((tmp_path / "m.json").read_text()), "train_stats")
    cfg["cbct"]["patch_size"] = [8, 8, 32]
    # a hand-made job config skips the config's check: the partitioner's entry refuses it
    with pytest.raises(
        ValueError, match=r"^patch_size: patch \[8, 8, 32\] does not fit in .*16×16×16"
    ):
        tr.train(make_job(tmp_path, "partition", cfg, name="big"))


def test_only_a_checkpoint_of_the_same_inputs_is_resumed(tmp_path, capsys):
    """A checkpoint written with another H (or config, or input file) is discarded and the run
    starts from step 0, giving the weights of a fresh run; an unreadable one is discarded with a
    warning; a finished run leaves no checkpoint."""
    s = loader("toy0")
    H = toy_H(s)
    other = toy_H(s)
    other.fourier_filter = other.fourier_filter * 1.5
    cfg = toy_config(steps=6, checkpoint_every=2)
    stale = make_job(tmp_path / "stale", "partition-H", cfg, H=other)
    tr.train(stale, stop_at=4)  # killed at step 4 with the other H: a checkpoint at step 4
    fresh = make_job(tmp_path / "fresh", "partition-H", cfg, H=H)
    tr.train(fresh)
    assert not fresh.ckpt_path.exists()  # deleted on success
    job = make_job(tmp_path / "stale", "partition-H", cfg, H=H)  # same paths, H refitted
    assert job.ckpt_path.exists()
    capsys.readouterr()
    tr.train(job)
    err = capsys.readouterr().err
    assert "discarding checkpoint" in err and "resuming" not in err
    wa = torch.load(fresh.out, weights_only=False)["state_dict"]
    wb = torch.load(job.out, weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # from step 0, as the fresh run
    # a truncated checkpoint: a warning, and training from step 0
    tr.train(make_job(tmp_path / "cut", "partition-H", cfg, H=H), stop_at=2)
    cut = make_job(tmp_path / "cut", "partition-H", cfg, H=H)
    cut.ckpt_path.write_bytes(cut.ckpt_path.read_bytes()[:100])
    capsys.readouterr()
    stats = tr.train(cut)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "unreadable checkpoint" in ln]
    assert stats["steps"] == 6 and len(lines) == 1 and str(cut.ckpt_path) in lines[0]


def test_a_nan_validation_volume_names_the_volume_and_the_step(tmp_path, capsys):
    import copy

    bad = copy.copy(loader("toy1"))
    bad.x = bad.x * float("nan")
    job = make_job(tmp_path, "unrolled", toy_config(steps=4, val_every=2), val_paths=["toy9"])
    job.loader = lambda p: bad if p == "toy9" else loader(p)
    with pytest.raises(tr.ValidationFailed, match=r"step 2: validation volume toy1: "):
        tr.train(job)


def _mri_sample(seed, device):
    from unroll3d.data.sample import Sample
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask

    g = torch.Generator().manual_seed(seed)
    maps = torch.randn((4, 8, 12, 10), dtype=torch.complex64, generator=g)
    phys = MultiCoilMRI3D(poisson_disc_mask((12, 10), 2, calib=2, seed=seed), maps, (8, 12, 10))
    x = torch.randn((1, 2, 8, 12, 10), generator=g)
    phys, x = phys.to(device), x.to(device)
    return Sample(x, phys.A(x), phys, {"op_norm_sq": 1.0, "setting": "R2"})


@pytest.mark.gpu
def test_parked_samples_keep_their_coil_maps_on_the_host(monkeypatch):
    """With device_cache 0 only the drawn sample's volumes and operator are on
    the GPU; a parked sample's coil maps wait in host memory, and a drawn one computes as before."""
    monkeypatch.setattr(
        engine_samples, "HEAVY_PHYSICS_BYTES", 0
    )  # the toy coil maps count as heavy
    samples = {f"s{i}": _mri_sample(i, "cuda") for i in range(3)}
    ref = {k: s.physics.A_adjoint(s.y).cpu() for k, s in samples.items()}
    cache = engine_samples.SampleCache(
        list(samples), samples.__getitem__, variant_spec("unrolled"), None, on_device=0
    )  # a whole-volume variant: x0 goes over too (a partitioned one copies only its patch)
    one = None
    for i in (0, 1, 2, 0):
        prep = cache.get(i)
        assert prep.sample.physics.coil_maps.is_cuda and prep.x0.is_cuda
        got = prep.physics.A_adjoint(prep.sample.y).cpu()
        assert torch.allclose(got, ref[f"s{i}"], atol=1e-5)
        parked = [cache._cache[j] for j in cache._cache if j != i]
        assert all(not p.sample.physics.coil_maps.is_cuda for p in parked)
        one = one or cache.device_bytes()
        assert cache.device_bytes() == one  # one sample's worth, however many are cached


def test_only_heavy_operators_move_with_a_parked_sample(monkeypatch):
    """Coil maps move with a parked sample; cone-beam geometry (a few hundred bytes) stays."""
    from unroll3d.physics import ConeBeam

    cb = ConeBeam.circular(4, (1, 8, 8, 8), 30.0, 10.0, det_shape=(8, 8), backend="rtk")
    mri = _mri_sample(0, "cpu").physics  # 4 coils × 960 voxels × 8 B ≈ 31 kB of coil maps
    assert not engine_samples._heavy(cb) and not engine_samples._heavy(
        mri
    )  # both far below the 64 MB default
    monkeypatch.setattr(engine_samples, "HEAVY_PHYSICS_BYTES", 10_000)
    assert engine_samples._heavy(mri) and not engine_samples._heavy(cb)


@pytest.mark.parametrize("fresh", [True, False])
def test_mri_training_draws_a_fresh_seeded_mask_each_time(tmp_path, mri_volume, fresh, monkeypatch):
    """With train.fresh_masks each MRI training draw has a new mask (its seed
    from the step's generator, so a rerun draws the same ones); without, the volume's fixed one."""
    from unroll3d.data import load_sample

    seeds = []

    def spy(path, setting, device="cpu", **kw):
        s = load_sample(path, setting, device=device, **kw)
        seeds.append(s.meta["mask_seed"])
        return s

    monkeypatch.setattr(engine_samples, "load_sample", spy)
    real_make = engine_samples.make_sample

    def spy_draw(data, meta, setting, value, seed, device, **kw):  # a draw on the kept k-space
        seeds.append(seed)
        return real_make(data, meta, setting, value, seed, device, **kw)

    monkeypatch.setattr(engine_samples, "make_sample", spy_draw)
    cfg = toy_config(steps=3)
    cfg["train"]["fresh_masks"] = fresh
    cfg["mri"] = {"K": 1, "patch_size": [4, 8, 8], "stride": None}

    def run(name):
        seeds.clear()
        job = tr.TrainJob(
            task="mri",
            setting="R2",
            variant="partition",
            config=cfg,
            train_paths=[mri_volume],
            val_paths=[],
            out=tmp_path / f"{name}.pt",
            progress=False,
        )
        stats = tr.train(job)
        assert stats["status"] == "ok"
        return stats, list(seeds)

    stats, first = run("a")
    _, again = run("b")
    assert first == again  # deterministic
    if fresh:
        assert stats["masks"] == "fresh per draw"
        assert len(set(first[1:])) == 3  # the cached first load, then one new mask per draw
    else:
        assert stats["masks"] == "fixed per volume" and len(set(first)) == 1


class _Scaled(torch.nn.Module):
    """c·A of a toy operator (‖cA‖² = c²‖A‖²): a second 'setting' with another norm."""

    def __init__(self, physics, c):
        super().__init__()
        self.inner, self.c = physics, c

    def A(self, x, **kw):
        return self.c * self.inner.A(x)

    def A_adjoint(self, y, **kw):
        return self.c * self.inner.A_adjoint(y)

    def A_adjoint_A(self, x, **kw):
        return self.A_adjoint(self.A(x))

    def A_dagger(self, y, **kw):
        return self.inner.A_dagger(y) / self.c


def _two_settings(monkeypatch):
    """Loaders of two settings of the same toy volumes: v30 as is, v50 with A scaled by 2."""
    import copy

    def load(setting):
        def fn(path):
            s = copy.copy(loader(path))
            if setting == "v50":
                s.physics = _Scaled(s.physics, 2.0)
                s.y = 2.0 * s.y
                s.meta = {**s.meta, "op_norm_sq": 4.0 * s.meta["op_norm_sq"]}
            return s

        return fn

    monkeypatch.setattr(tr, "default_loader", lambda setting, device: load(setting))


def test_one_model_for_several_settings_normalises_each_draw_by_its_own_norm(tmp_path, monkeypatch):
    """train.share_across_settings: each micro-step draws a setting, and the step sizes use that
    setting's ‖A‖²; the model file keeps ‖A‖² per setting, evaluation under a setting uses its
    own, and a setting the model never saw is an error naming the file."""
    from unroll3d.engine.model_file import ModelFileError, load_trained

    _two_settings(monkeypatch)
    seen = []
    real = loop.use_lipschitz
    monkeypatch.setattr(loop, "use_lipschitz", lambda m, L: (seen.append(L), real(m, L)))
    cfg = toy_config(steps=12)
    job = tr.TrainJob(
        task="cbct", setting="all", variant="partition", config=cfg,
        train_paths=["toy0", "toy1"], val_paths=["toy2"], out=tmp_path / "m.pt",
        progress=False, settings=["v30", "v50"],
    )  # fmt: skip
    stats = tr.train(job)
    L30 = loader("toy0").meta["op_norm_sq"]
    assert stats["settings"] == ["v30", "v50"]
    assert stats["lipschitz_by_setting"] == pytest.approx({"v30": L30, "v50": 4 * L30})
    assert sorted({round(v / L30, 6) for v in seen}) == [1.0, 4.0]  # both settings drawn
    model, payload = load_trained(job.out, "cbct", cfg, setting="v50")
    assert float(model.lipschitz) == pytest.approx(4 * L30) == payload["lipschitz"]
    eta30 = load_trained(job.out, "cbct", cfg, setting="v30")[0].step_sizes
    assert torch.allclose(model.step_sizes * 4, eta30)
    with pytest.raises(ModelFileError, match="trained on settings \\['v30', 'v50'\\], not on v100"):
        load_trained(job.out, "cbct", cfg, setting="v100")


def test_a_shared_h_variant_gets_the_fit_of_each_setting(tmp_path):
    """With several settings, each H file is matched to its setting by the setting it records;
    a missing one is an error naming it."""
    H = toy_H(loader("toy0"))
    fits = {}
    for s in ("v30", "v50"):
        fits[s] = dataclasses.replace(H, meta={"setting": s})
    job = tr.TrainJob(
        task="cbct", setting="all", variant="partition-H", config=toy_config(),
        train_paths=["toy0"], val_paths=[], out=tmp_path / "m.pt", settings=["v30", "v50"],
        H=fits, loader=loader, progress=False,
    )  # fmt: skip
    assert job.normal_fits() == fits
    assert tr.train(job)["status"] == "ok"  # both settings' caches hold their own H
    job.H = {"v30": fits["v30"]}
    with pytest.raises(ValueError, match=r"no fitted H for setting\(s\) \['v50'\]"):
        job.normal_fits()


def test_the_reference_volume_of_a_fit_for_another_operator_is_refused(tmp_path):
    """A setting's fit records the volume it was fitted on: trained on that volume, its operator
    must hash as the fit's (else one line naming both hashes); on the setting's other volumes
    the fit is used as it is (another walnut, another MRI mask), with no operator to compare."""
    from unroll3d.normal import NormalFileError, operator_hash, save_normal

    H = toy_H(loader("toy0"))
    own = operator_hash(loader("toy0").physics, (1, *SHAPE))
    other = operator_hash(loader("toy1").physics, (1, *SHAPE))
    assert own != other
    cfg = toy_config(steps=1)
    fits = {}
    for name, op_hash in (("stale", other), ("own", own)):
        fits[name] = tmp_path / f"{name}.pt"
        save_normal(fits[name], H.fourier_filter, H.spatial_mask, (1, *SHAPE), H.scaling,
                    operator_hash=op_hash, grid=H.grid,
                    meta={"volume_meta": {"volume": "toy0"}})  # fmt: skip
    stale = make_job(tmp_path, "partition-H", cfg, name="a", normal_path=str(fits["stale"]))
    msg = f"{fits['stale']} was fitted for operator {other}, but the operator in use hashes to {own}"
    with pytest.raises(NormalFileError, match=msg):
        tr.train(stale)
    assert not stale.out.exists()
    own_job = make_job(tmp_path, "partition-H", cfg, name="b", normal_path=str(fits["own"]))
    assert tr.train(own_job)["status"] == "ok"
    elsewhere = make_job(tmp_path, "partition-H", cfg, name="c", normal_path=str(fits["stale"]))
    elsewhere.train_paths = ["toy1"]  # not the fit's volume: the setting's fit, used as it is
    assert tr.train(elsewhere)["status"] == "ok"
