"""Tables and figures of ``unroll3d report`` from small metric files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import unroll3d.cli.report as report_cli
from unroll3d import paper_numbers as pn
from unroll3d import report
from unroll3d.engine.evaluate import validate_result
from unroll3d.report.illustration import _lam_center_slice

VARIANTS = ["fdk", "postproc", "unrolled", "partition", "partition-H"]
CONFIG = {
    "name": "unit",
    "tasks": ["cbct", "mri"],
    "variants": VARIANTS,
    "cbct": {"views": [30, 50]},
    "mri": {"accelerations": [5]},
    "benchmarks": {"enabled": True},
}
VOLUMES = ["vol_a", "vol_b"]


def write_evals(
    results: Path, config: dict = CONFIG, skip: tuple = (), slices: bool = True
) -> None:
    """Tiny evaluation JSONs in the evaluate schema: PSNR = base + volume offset; `unrolled`
    OOMs on CBCT."""
    base = {"fdk": 18.0, "postproc": 29.0, "unrolled": 36.0, "partition": 31.0, "partition-H": 31.5}
    for task in config["tasks"]:
        for s in report.task_settings(config, task):
            for i, v in enumerate(config["variants"]):
                for k, vol in enumerate(VOLUMES):
                    path = results / "eval" / task / s / v / f"{vol}.json"
                    if (task, s, v, vol) in skip:
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    learned = v != "fdk"
                    rec = {
                        "schema_version": 1,
                        "task": task,
                        "setting": s,
                        "variant": v,
                        "volume": vol,
                        "status": "ok",
                        "message": None,
                        "shape": [16, 16, 16],
                        "device": "CPU: test",
                        "config_name": config["name"],
                        "metric_convention": f"{task} test convention",
                        "psnr": base[v] + k * 1.0,  # mean over the two volumes = base + 0.5
                        "ssim": 0.5 + 0.1 * i,
                        "ssim_slices": 0.5,
                        "psnr_x0": 18.0,
                        "data_range": 1.5,
                        "inference_time_s": 0.5,
                        "inference_peak_memory_gb": None,
                        "train_step": None,
                        "train_accumulate": 4 if v.startswith("partition") else 1,
                        "train_stats": None,
                        "n_params": 10 if learned else 0,
                    }
                    if task == "mri":  # the masks the evaluation used (mri.mask_source)
                        rec.update(mask_source="seeded", mask="seeded")
                    if learned:
                        rec["train_step"] = {
                            "status": "ok",
                            "message": None,
                            "step_time_s": 1.0 + 0.1 * i,
                            "peak_memory_gb": 10.0 + i,
                            "steps": 2,
                        }
                    if task == "cbct" and v == "unrolled":
                        rec.update(
                            status="oom",
                            message="OOM at volume 16³, peak 93.10 GB",
                            psnr=None,
                            ssim=None,
                            ssim_slices=None,
                            psnr_x0=None,
                            data_range=None,
                            inference_time_s=None,
                            train_step=None,
                        )
                    if slices:  # the .npz beside the JSON, as `unroll3d evaluate --slices` writes
                        npz = path.with_suffix(".npz")
                        if rec["status"] == "ok":
                            _slices(npz, 10 * i + k, 0.02 * (5 - i))
                        else:
                            np.savez(npz, meta=np.array(json.dumps({"status": "oom"})))
                    path.write_text(json.dumps(rec))


def _slices(path: Path, seed: int, noise: float) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    gt = ((yy - 12) ** 2 + (xx - 12) ** 2 < 80).astype(float) + 0.5 * (xx > 15)
    gt_v = np.roll(gt, 3, axis=0)
    rec = gt + noise * rng.standard_normal(gt.shape)
    rec_v = gt_v + noise * rng.standard_normal(gt.shape)
    meta = json.dumps({"data_range": 1.5})
    np.savez(
        path, rec_axial=rec, rec_vertical=rec_v, gt_axial=gt, gt_vertical=gt_v, meta=np.array(meta)
    )
    return path


def write_bench(results: Path) -> None:
    b = results / "benchmarks"
    b.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (16, 24, 32):
        rows.append(
            {
                "n": n,
                "step": "data",
                "time_s": 1e-3 * n,
                "peak_memory_gb": 1e-5 * n**3,
                "status": "ok",
                "device": "CPU: test",
            }
        )
        rows.append(
            {
                "n": n,
                "step": "network",
                "time_s": 1e-2 * n,
                "peak_memory_gb": 1e-4 * n**3,
                "status": "ok",
                "device": "CPU: test",
            }
        )
    rows[-1].update(status="oom", time_s=None, peak_memory_gb=None)
    pd.DataFrame(rows).to_csv(b / "bench_steps.csv", index=False)
    rows = [  # the columns `unroll3d bench partition` writes (GB)
        {
            "size": n,
            "mode": m,
            "op": "blur",
            "patch": 8,
            "device": "CPU: test",
            "peak_memory_gb": 0.3 + (0.05 if m == "partitioned" else 1e-4 * n**3),
            "base_memory_gb": 0.3,
            "step_memory_gb": 0.05 if m == "partitioned" else 1e-4 * n**3,
            "time_s": 0.1,
        }
        for n in (16, 24, 32)
        for m in ("partitioned", "full")
    ]
    pd.DataFrame(rows).to_csv(b / "bench_partition.csv", index=False)


def write_normal_npz(results: Path, task: str, setting: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((12, 12))
    d = results / "figures" / "data"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(
        d / f"normal_{task}_{setting}.npz",
        x=x,
        AtAx=x + 0.1,
        Hx=x + 0.12,
        lam=rng.random((12, 12)),
        mask=np.ones((12, 12)),
        history=np.geomspace(1.0, 1e-2, 50),
        history_step=np.arange(0, 500, 10),
        history_train=np.geomspace(1.1, 2e-2, 50),
        rel_err_x=np.asarray(0.04),
        heldout_rel_err=np.asarray(0.05),
    )


# ------------------------------------------------------------------------------ paper numbers


def test_paper_numbers_consistency():
    """docs/paper-notes.md §6.5: the mean of 'ours' per task equals the matching ablation row."""
    cbct = [pn.paper_value("cbct", "partition-H", "psnr", s).value for s in ("v30", "v50", "v100")]
    assert np.mean(cbct) == pytest.approx(
        pn.paper_value("cbct", "partition-H", "psnr", "mean").value, abs=0.01
    )
    mri = [pn.paper_value("mri", "unrolled", "psnr", s).value for s in ("R5", "R10")]
    assert np.mean(mri) == pytest.approx(
        pn.paper_value("mri", "unrolled", "psnr", "mean").value, abs=0.01
    )
    # training costs are setting-independent; a main table wins over the ablation
    step = pn.paper_value("cbct", "partition-H", "train_step_s", "v30")
    assert (step.value, step.accumulate, step.source) == (1.20, 4, "table1")
    assert (
        pn.paper_value("cbct", "partition-H", "train_step_s", "mean", source="ablation").value
        == 1.21
    )
    assert pn.paper_value("cbct", "unrolled", "train_mem_gb", "v30").display() == "OOM"
    assert pn.paper_value("cbct", "partition", "psnr", "v30") is None
    assert all(p.label == "summary" for p in pn.PAPER_NUMBERS)


# ------------------------------------------------------------------------------ reading


def test_read_eval_aliases_and_oom(tmp_path):
    p = tmp_path / "eval" / "mri" / "R5" / "partition" / "v1.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"metrics": {"psnr_db": 33.0, "ssim": 0.9}, "device_name": "GPU X"}))
    r = report.read_eval(p)
    assert (r.task, r.setting, r.variant, r.volume) == ("mri", "R5", "partition", "v1")
    assert (r.psnr, r.ssim, r.device) == (33.0, 0.9, "GPU X")
    p.write_text(json.dumps({"status": "oom", "message": "OOM at volume 501³, peak 79.2 GB"}))
    r = report.read_eval(p)
    assert r.status == "oom" and r.oom_needed_gb == pytest.approx(79.2)
    p.write_text(json.dumps({"status": "ok"}))
    with pytest.raises(report.ReportError, match="psnr"):
        report.read_eval(p)
    p.write_text(json.dumps({"status": "crashed", "psnr": 1}))
    with pytest.raises(report.ReportError, match="status"):
        report.read_eval(p)


def test_test_files_follow_the_evaluate_schema(tmp_path):
    """The fake evaluation files used here are valid under evaluate's own JSON schema."""
    from importlib import resources

    import jsonschema

    schema = json.loads(
        resources.files("unroll3d").joinpath("schemas/eval.schema.json").read_text()
    )
    write_evals(tmp_path, slices=False)
    files = sorted((tmp_path / "eval").rglob("*.json"))
    assert files
    for f in files:
        jsonschema.validate(json.loads(f.read_text()), schema)


def test_training_oom_with_inference_ok(tmp_path):
    """A learned model that evaluates but whose timed training step ran out of memory."""
    p = tmp_path / "eval" / "cbct" / "v30" / "unrolled-H" / "v1.json"
    p.parent.mkdir(parents=True)
    step = {
        "status": "oom",
        "message": "OOM at volume 501³, peak 80.1 GB",
        "step_time_s": None,
        "peak_memory_gb": 80.1,
        "steps": 0,
    }
    p.write_text(json.dumps({"psnr": 30.0, "train_step": step, "train_accumulate": 1}))
    r = report.read_eval(p)
    assert r.status == "ok" and r.train_status == "oom" and r.oom_needed_gb == pytest.approx(80.1)
    assert report.aggregate([r], "psnr").status == "ok"
    agg = report.aggregate([r], "train_peak_mem_gb")
    cell = report.make_cell(agg, "cbct", "unrolled-H", "train_peak_mem_gb", "all")
    assert agg.status == "oom" and cell.text.startswith("OOM (needs ≥80.1 GB)")


def test_the_mri_table_names_its_mask_source(tmp_path):
    """Table 2 says where the test masks came from (mri.mask_source, as the evaluations recorded
    it), per setting when the settings differ; older files without the key say so."""
    cfg = {**CONFIG, "tasks": ["mri"], "mri": {"accelerations": [5, 10]}}
    write_evals(tmp_path, cfg, slices=False)

    def note():
        report.write_tables(report.collect_evals(tmp_path, cfg), cfg, tmp_path / "t", commit="x")
        text = (tmp_path / "t" / "table2_mri.md").read_text()
        return [ln for ln in text.splitlines() if "mri.mask_source" in ln]

    assert len(note()) == 1 and note()[0].endswith(
        "MC-MRI: ky-kz sampling masks (mri.mask_source): seeded = our variable-density "
        "generator (seed from the volume id), not the challenge's."
    )
    for f in (tmp_path / "eval" / "mri" / "R10").rglob("*.json"):
        rec = json.loads(f.read_text())
        f.write_text(json.dumps({**rec, "mask_source": "challenge", "mask": "challenge R10 #3"}))
    (line,) = note()
    assert "challenge = the CC challenge's Poisson-disc masks" in line
    assert line.endswith("(R10: challenge; R5: seeded).")
    old = tmp_path / "eval" / "mri" / "R5" / "postproc" / "vol_a.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if "mask" not in k}))
    assert "(R10: challenge; R5: not recorded, seeded)" in note()[0]


def test_missing_eval_file_is_an_error(tmp_path):
    write_evals(tmp_path, skip=(("cbct", "v50", "partition", "vol_b"),), slices=False)
    with pytest.raises(report.ReportError, match=r"cbct/v50/partition/vol_b\.json"):
        report.collect_evals(tmp_path, CONFIG)
    # a whole cell missing names its folder
    cfg = {**CONFIG, "variants": VARIANTS + ["tv"]}
    with pytest.raises(report.ReportError, match=r"eval/cbct/v30/tv"):
        report.collect_evals(tmp_path, cfg, allow_missing=False)
    cells = report.collect_evals(tmp_path, cfg, allow_missing=True)
    assert ("cbct", "v30", "tv") not in cells


def test_test_split_in_config_selects_volumes(tmp_path):
    """With config splits, exactly the test volumes are requested (walnut<N> for CBCT)."""
    write_evals(tmp_path, slices=False)
    cfg = {**CONFIG, "mri": {**CONFIG["mri"], "splits": {"test": ["vol_a"]}}}
    cells = report.collect_evals(tmp_path, {**cfg, "tasks": ["mri"]})
    assert [r.volume for r in cells[("mri", "R5", "fdk")]] == ["vol_a"]  # vol_b on disk, ignored
    cfg["cbct"] = {**CONFIG["cbct"], "splits": {"test": [7]}}
    with pytest.raises(report.ReportError, match=r"eval/cbct/v30/fdk/walnut7\.json"):
        report.collect_evals(tmp_path, cfg)


# ------------------------------------------------------------------------------ tables


def test_tables_values_paper_columns_and_oom(tmp_path):
    write_evals(tmp_path, slices=False)
    cells = report.collect_evals(tmp_path, CONFIG)
    paths = report.write_tables(
        cells, CONFIG, tmp_path / "tables", "config/unit.yaml", commit="abc123"
    )
    assert {p.name for p in paths} == {
        f"{t}.{e}" for t in report.TABLES for e in ("csv", "md", "tex")
    }

    df = pd.read_csv(tmp_path / "tables" / "table1_cbct.csv")
    row = df[(df.variant == "partition-H") & (df.setting == "v30") & (df.metric == "psnr")].iloc[0]
    assert row.ours == pytest.approx(32.0)  # 31.5 + mean of the volume offsets 0, 1
    assert row.paper == pytest.approx(31.17)
    assert row.delta == pytest.approx(32.0 - 31.17)
    assert row.n_volumes == 2
    # every row with both numbers has diff = ours − paper
    both = df.dropna(subset=["ours", "paper"])
    np.testing.assert_allclose(both["delta"], both["ours"] - both["paper"], atol=1e-9)
    oom = df[(df.variant == "unrolled") & (df.metric == "psnr")]
    assert set(oom.ours_status) == {"oom"} and oom.ours.isna().all()

    md = (tmp_path / "tables" / "table1_cbct.md").read_text()
    assert "OOM (needs ≥93.1 GB) / OOM" in md
    assert "32.00 / 31.17 (+0.83)" in md
    assert "1.40×4 / 1.20×4 (+0.20)" in md  # partition-H s/step, with accumulation
    for needle in (
        "16×16×16",
        "2 test volumes",
        "CPU: test",
        "config/unit.yaml",
        "abc123",
    ):
        assert needle in md, needle
    # column count consistent in every Markdown row
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count(" | ") for line in table_lines if "---" not in line}) == 1

    md2 = (tmp_path / "tables" / "table2_mri.md").read_text()
    assert "PSNR (dB) R5" in md2 and "37.74" in md2  # paper's standard unrolled on MRI
    abl = pd.read_csv(tmp_path / "tables" / "table_ablation.csv")
    r = abl[(abl.task == "cbct") & (abl.variant == "partition-H") & (abl.metric == "psnr")].iloc[0]
    assert r.ours == pytest.approx(32.0) and r.paper == pytest.approx(34.15)
    r = abl[
        (abl.task == "mri") & (abl.variant == "partition") & (abl.metric == "train_step_s")
    ].iloc[0]
    assert r.paper == pytest.approx(1.10)

    tex = (tmp_path / "tables" / "table1_cbct.tex").read_text()
    assert r"\toprule" in tex and r"\ding{55}" in tex and r"$\times$4" in tex
    body = tex.split(r"\toprule")[1]
    assert tex.count(r"\begin{tabular}") == 1 and "_" not in body.replace(r"\_", "")


def test_datastep_table_from_benchmark(tmp_path):
    rows = [
        {"device": "cpu: t", "volume": 32, "patch": 16, "views": 30, "method": m, "it_per_s": v}
        for m, v in (("exact", 2.0), ("H", 8.0))
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "bench_normal.csv", index=False)
    report.write_tables(
        {},
        {**CONFIG, "tasks": []},
        tmp_path / "t",
        commit="x",
        bench_normal=tmp_path / "bench_normal.csv",
    )
    md = (tmp_path / "t" / "table_datastep.md").read_text()
    assert "2.00 / 4.19 (−2.19)" in md and "8.00 / 12.50 (−4.50)" in md
    assert f"4.00 / {12.5 / 4.19:.2f}" in md  # speed-up H vs exact
    df = pd.read_csv(tmp_path / "t" / "table_datastep.csv")
    assert df.loc[df.metric == "speedup", "ours"].item() == pytest.approx(4.0)
    # absent benchmark: a labelled no-data table, not a crash
    report.write_tables({}, {**CONFIG, "tasks": []}, tmp_path / "u", commit="x", bench_normal=None)
    assert "no data" in (tmp_path / "u" / "table_datastep.md").read_text()


def test_table_for_disabled_task_says_no_data(tmp_path):
    cfg = {**CONFIG, "tasks": ["cbct"]}
    write_evals(tmp_path, cfg, slices=False)
    cells = report.collect_evals(tmp_path, cfg)
    report.write_tables(cells, cfg, tmp_path / "tables", commit="x")
    assert "no data" in (tmp_path / "tables" / "table2_mri.md").read_text()
    assert "Walnut-CBCT" in (tmp_path / "tables" / "table_ablation.md").read_text()


# ------------------------------------------------------------------------------ figures


def _assert_real_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.exists() and path.stat().st_size > 5_000, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert img[..., :3].std() > 0.05, f"{path} looks blank"


def test_figures_render(tmp_path):
    write_evals(tmp_path)
    write_bench(tmp_path)
    for task, s in (("cbct", "v30"), ("cbct", "v50"), ("mri", "R5")):
        write_normal_npz(tmp_path, task, s)
    cells = report.collect_evals(tmp_path, CONFIG)
    paths = report.write_figures(cells, CONFIG, tmp_path, tmp_path / "figures")
    assert {p.name for p in paths} == {f"{f}.{e}" for f in report.FIGURES for e in ("png", "pdf")}
    for p in paths:
        if p.suffix == ".png":
            _assert_real_png(p)
        else:
            assert p.read_bytes()[:5] == b"%PDF-"


def test_figures_no_data_panels(tmp_path):
    cfg = {**CONFIG, "tasks": ["mri"], "benchmarks": {"enabled": False}}
    write_evals(tmp_path, cfg, slices=False)
    cells = report.collect_evals(tmp_path, cfg)
    paths = report.write_figures(cells, cfg, tmp_path, tmp_path / "figures")
    assert len(paths) == 2 * len(report.FIGURES)
    for p in paths:
        assert p.stat().st_size > 0


def test_slice_psnr_matches_definition():
    ref = np.zeros((4, 4))
    ref[0, 0] = 2.0
    x = ref + 0.1
    assert report.slice_psnr(x, ref) == pytest.approx(10 * np.log10(4.0 / 0.01))


def test_cli_end_to_end(tmp_path):
    import yaml

    write_evals(tmp_path / "results")
    write_bench(tmp_path / "results")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    rc = report_cli.main(["--results", str(tmp_path / "results"), "--config", str(cfg_path)])
    assert rc == 0
    rc = report_cli.main(
        [
            "--results",
            str(tmp_path / "results"),
            "--config-json",
            json.dumps(CONFIG),
            "--config-label",
            "config/smoke.yaml",
            "--only",
            "tables",
        ]
    )
    assert rc == 0
    assert "config/smoke.yaml" in (tmp_path / "results" / "tables" / "table2_mri.md").read_text()
    assert (tmp_path / "results" / "tables" / "table1_cbct.md").exists()
    assert (tmp_path / "results" / "figures" / "fig_slices_mri.png").exists()
    # a broken cell makes the command fail with a message, not a traceback
    (tmp_path / "results" / "eval" / "mri" / "R5" / "fdk" / "vol_a.json").write_text("{oops")
    assert report_cli.main(["--results", str(tmp_path / "results"), "--config", str(cfg_path)]) == 1


def test_normal_illustration_exact_for_a_scaled_identity(tmp_path, monkeypatch):
    """AᵀA = 4·I is represented exactly by λ = 1, m = 1, scaling 4: the stored error is ~0."""
    torch = pytest.importorskip("torch")
    normal = pytest.importorskip("unroll3d.normal")
    import deepinv as dinv

    import unroll3d.data as data

    img = (1, 6, 7, 5)
    x = torch.rand((1, *img), generator=torch.Generator().manual_seed(0))
    physics = dinv.physics.LinearPhysics(A=lambda v: 2 * v, A_adjoint=lambda v: 2 * v)
    monkeypatch.setattr(data, "load_sample", lambda *a, **k: data.Sample(x, None, physics, {}))
    grid = normal.padded_grid(img[1:])
    lam = torch.ones(grid[:-1] + (grid[-1] // 2 + 1,), dtype=torch.complex64)
    hist = {
        "step": [0, 10],
        "heldout_rel_error": [0.5, 0.1],
        "train_rel_error": [float("nan"), 0.2],
    }
    own = normal.operator_hash(physics, img)
    normal.save_normal(tmp_path / "fit.pt", lam, torch.ones(img[1:]), img, 4.0, history=hist,
                       operator_hash=own)  # fmt: skip
    out = report.normal_illustration(tmp_path / "fit.pt", "unused.pt", "v30", tmp_path / "n.npz")
    z = np.load(out)
    assert float(z["rel_err_x"]) < 1e-5
    np.testing.assert_allclose(z["AtAx"], 4 * z["x"], rtol=1e-5)
    np.testing.assert_allclose(z["Hx"], z["AtAx"], rtol=1e-4, atol=1e-6)
    assert z["x"].shape == (7, 5) and z["mask"].shape == (7, 5)
    assert z["lam"].shape == grid[1:] and np.allclose(z["lam"], 0.0, atol=1e-5)  # log10|1| = 0
    assert float(z["heldout_rel_err"]) == pytest.approx(0.1)
    np.testing.assert_array_equal(z["history_step"], [0, 10])
    # a fit for another operator (one with a sampling mask) is refused, naming both hashes
    masked = dinv.physics.LinearPhysics(A=lambda v: 2 * v, A_adjoint=lambda v: 2 * v)
    masked.register_buffer("mask", torch.ones(img[1:]))
    other = normal.operator_hash(masked, img)
    assert other != own
    normal.save_normal(tmp_path / "other.pt", lam, torch.ones(img[1:]), img, 4.0,
                       operator_hash=other)  # fmt: skip
    with pytest.raises(report.ReportError, match=f"fitted for operator {other}, but the operator in use "
                                          f"hashes to {own}"):  # fmt: skip
        report.normal_illustration(tmp_path / "other.pt", "unused.pt", "v30", tmp_path / "o.npz")


@pytest.mark.parametrize("grid", [(6, 5, 7), (4, 6, 8)])
def test_lambda_plane_from_rfft_layout_matches_full_fft(grid):
    """The displayed k0 = 0 plane of λ, rebuilt from the rfft half by Hermitian symmetry."""
    torch = pytest.importorskip("torch")
    kernel = torch.randn(grid, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = torch.fft.fftn(kernel)
    expected = np.fft.fftshift(np.log10(full[0].abs().numpy() + 1e-8))
    got = _lam_center_slice(torch.fft.rfftn(kernel), grid)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # a full (complex-image) filter is used as is
    np.testing.assert_allclose(_lam_center_slice(full, grid), expected, atol=1e-10)


def test_failed_evaluation_is_shown_not_averaged(tmp_path):
    write_evals(tmp_path, slices=False)
    p = tmp_path / "eval" / "cbct" / "v30" / "postproc" / "vol_b.json"
    rec = json.loads(p.read_text())
    rec.update(status="failed", message="boom", psnr=None, ssim=None)
    p.write_text(json.dumps(rec))
    cells = report.collect_evals(tmp_path, CONFIG)
    report.write_tables(cells, CONFIG, tmp_path / "t", commit="x")
    md = (tmp_path / "t" / "table1_cbct.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| DRUNet[3D]"))
    assert row.split(" | ")[1].startswith("failed / 0.857")  # SSIM v30 cell


def _write_sweep(results: Path, task: str, setting: str, patch: str, psnrs, stats: dict) -> None:
    for vol, psnr in zip(VOLUMES, psnrs, strict=True):
        path = results / "eval" / task / setting / "sweep" / f"p{patch}" / f"{vol}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"task": task, "setting": setting, "variant": "partition-H", "volume": vol}
        rec.update(status="ok", psnr=psnr, ssim=0.9, device="CPU: test", train_stats=stats)
        path.write_text(json.dumps(rec))


def test_patch_sweep_points_and_figures(tmp_path):
    """Figs. 7/8: one point per configured patch, PSNR averaged over the test volumes; GPU peak
    preferred over the CPU RSS growth; a configured patch without files is an error."""
    cfg = {
        **CONFIG,
        "sweep": {"enabled": True, "variant": "partition-H", "cbct": [[4, 8, 8], [8, 16, 16]]},
    }
    cfg["sweep"]["mri"] = [[4, 8, 8]]
    cpu = {"peak_memory_gb": None, "peak_rss_growth_gb": 0.5, "step_time_mean_s": 0.2}
    gpu = {"peak_memory_gb": 3.0, "peak_rss_growth_gb": 9.0, "step_time_mean_s": 0.4}
    _write_sweep(tmp_path, "cbct", "v30", "4x8x8", [20.0, 22.0], cpu)
    _write_sweep(tmp_path, "cbct", "v30", "8x16x16", [24.0, 26.0], gpu)
    # one model for both view counts (train.share_across_settings): the PSNR is averaged over
    # the settings too, as in the paper
    _write_sweep(tmp_path, "cbct", "v50", "4x8x8", [22.0, 24.0], cpu)
    _write_sweep(tmp_path, "cbct", "v50", "8x16x16", [26.0, 28.0], gpu)
    points = report.collect_sweep(tmp_path, cfg, "cbct")
    assert [p.patch for p in points] == [(4, 8, 8), (8, 16, 16)]
    assert [p.psnr for p in points] == [22.0, 26.0] and points[0].n_volumes == 4
    per_setting = {**cfg, "train": {"share_across_settings": False}}  # first setting only
    assert [p.psnr for p in report.collect_sweep(tmp_path, per_setting, "cbct")] == [21.0, 25.0]
    assert [p.memory_gb for p in points] == [0.5, 3.0]
    assert points[0].memory_kind == "CPU peak RSS growth"
    assert points[1].memory_kind == "GPU peak allocated" and points[1].step_s == 0.4
    paths = report.fig_patch_sweep("cbct", tmp_path, cfg, tmp_path / "figures")
    _assert_real_png(next(p for p in paths if p.suffix == ".png"))
    with pytest.raises(report.ReportError, match="sweep"):  # mri files were never written
        report.collect_sweep(tmp_path, cfg, "mri")
    assert report.collect_sweep(tmp_path, {**cfg, "sweep": {"enabled": False}}, "cbct") == []


def test_cpu_training_memory_is_marked_and_has_no_delta(tmp_path):
    """Without a CUDA peak, the training's CPU peak-RSS growth fills the memory cell, marked
    "CPU" and never compared with the paper's GPU number."""
    path = tmp_path / "eval" / "cbct" / "v30" / "partition-H" / "vol_a.json"
    path.parent.mkdir(parents=True)
    rec = {"status": "ok", "psnr": 30.0, "ssim": 0.9, "device": "CPU: test"}
    rec["train_step"] = {"status": "ok", "step_time_s": 0.5, "peak_memory_gb": None, "steps": 2}
    rec["train_stats"] = {"peak_memory_gb": None, "peak_rss_growth_gb": 0.25}
    path.write_text(json.dumps(rec))
    r = report.read_eval(path)
    assert r.train_peak_mem_gb == 0.25 and r.train_mem_kind == "cpu_rss"
    agg = report.aggregate([r], "train_peak_mem_gb")
    cell = report.make_cell(agg, "cbct", "partition-H", "train_peak_mem_gb", "v30")
    assert cell.text.startswith("0.250 CPU / ") and cell.diff is None and cell.ours == 0.25
    rec["train_step"]["peak_memory_gb"] = 3.0  # a GPU number wins and gets its Δ
    path.write_text(json.dumps(rec))
    r = report.read_eval(path)
    cell = report.make_cell(
        report.aggregate([r], "train_peak_mem_gb"),
        "cbct",
        "partition-H",
        "train_peak_mem_gb",
        "v30",
    )
    assert r.train_mem_kind == "gpu" and cell.diff is not None and "CPU" not in cell.text


def test_report_config_keeps_every_key_the_report_reads(tmp_path):
    """The workflow passes the report only unroll3d.config.report_config(config): the tables are
    the same as with the whole config, and keys the report does not read are left out."""
    from unroll3d.config import report_config

    full = {
        **CONFIG,
        "seed": 3,
        "train": {"steps": 7},
        "model": {"blocks": 2},
        "cbct": {**CONFIG["cbct"], "K": 2, "splits": {"train": [1], "test": []}},
    }
    cut = report_config(full)
    assert cut["train"] == {"share_across_settings": True}  # where the sweep's points are
    assert "model" not in cut and "K" not in cut["cbct"] and "steps" not in cut["train"]
    results = tmp_path / "results"
    write_evals(results)
    out_full, out_cut = tmp_path / "full", tmp_path / "cut"
    cells = report.collect_evals(results, full)
    report.write_tables(cells, full, out_full, "cfg.yaml", commit="abc")
    report.write_tables(report.collect_evals(results, cut), cut, out_cut, "cfg.yaml", commit="abc")
    for name in report.TABLES:
        for ext in ("md", "csv", "tex"):
            a, b = out_full / f"{name}.{ext}", out_cut / f"{name}.{ext}"
            assert a.read_text() == b.read_text(), (name, ext)


# ------------------------------------------------------------------------------ structure


def test_csv_io_matches_pandas(tmp_path):
    """The tables' CSV are written without pandas, byte for byte as DataFrame.to_csv wrote them;
    benchmark CSVs are read with the types pandas gives them."""
    from unroll3d.report import csvio

    rows = [
        {"a": "x", "n": 2, "ours": 1.5, "paper": 30, "none": None, "mixed": 3, "q": 'say "hi", ok'},
        {"a": None, "n": 3, "ours": None, "paper": None, "none": None, "mixed": "t", "q": "é"},
        {"a": "z", "n": 4, "ours": np.float64(0.1 + 0.2), "paper": 2, "extra": -2.19e-05},
    ]
    csvio.write_rows(tmp_path / "ours.csv", rows)
    pd.DataFrame(rows).to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "ours.csv").read_text() == (tmp_path / "pandas.csv").read_text()
    csvio.write_rows(tmp_path / "empty.csv", [], columns=("table", "metric"))
    assert (tmp_path / "empty.csv").read_text() == "table,metric\n"

    (tmp_path / "b.csv").write_text("n,views,it,device\n32,30,2.5,cpu\n128,,4,\n")
    columns, got = csvio.read_rows(tmp_path / "b.csv")
    want = pd.read_csv(tmp_path / "b.csv")
    assert columns == list(want.columns)
    assert [r["n"] for r in got] == [32, 128] and isinstance(got[0]["views"], float)
    assert np.isnan(got[1]["views"]) and got[1]["it"] == 4.0 and got[1]["device"] is None
    assert csvio.read_rows(tmp_path / "absent.csv") is None


def test_benchmark_memory_is_read_as_peak_memory_gb_only(tmp_path):
    """Memory columns are GB with ``_gb`` names; an old MB column is an error naming the file
    and the expected column, not a silent unit guess."""
    rows = [{"n": 16, "step": s, "time_s": 0.1, "peak_mem_mb": 10.0} for s in ("data", "network")]
    pd.DataFrame(rows).to_csv(tmp_path / "bench_steps.csv", index=False)
    with pytest.raises(report.ReportError, match=r"bench_steps\.csv.*'peak_memory_gb'"):
        report.write_figures(
            {},
            {**CONFIG, "tasks": []},
            tmp_path,
            tmp_path / "figures",
            bench_steps=tmp_path / "bench_steps.csv",
        )


def test_report_layers_import_only_downward():
    """records/tables never import figures or the illustration; importing the report and its
    verb loads neither matplotlib nor pandas (nor torch)."""
    import ast
    import subprocess
    import sys

    root = Path(report.__file__).parent
    lower = ("common", "csvio", "provenance", "records", "tables", "latex", "output")
    for name in lower:
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("unroll3d.report.figures", "unroll3d.report.illustration", "unroll3d.cli")
                ), (name, node.module)
                assert node.module.split(".")[0] not in ("matplotlib", "pandas"), name
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in ("matplotlib", "pandas") for a in node.names)
    code = (
        "import sys, unroll3d.report, unroll3d.cli.report; "
        "print(sorted(m for m in ('matplotlib', 'pandas', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_labels_come_from_the_variant_registry():
    from unroll3d.report import common
    from unroll3d.variants import VARIANTS

    for name in ("no-such-variant",):
        assert common.method_label("cbct", name) == name
        assert common.short_label("mri", name) == name
        assert common.ablation_label(name) == name
    spec = VARIANTS["partition-H"]
    assert common.method_label("cbct", "partition-H") == spec.label_for("cbct")
    assert common.variant_style("partition-H") == spec.style
    for old in ("METHOD_LABEL", "SHORT_LABEL", "ABLATION_LABEL", "VARIANT_STYLE"):
        assert not hasattr(report, old) and not hasattr(common, old)


def test_non_finite_metrics_are_failed_cells_named_in_a_footnote(tmp_path):
    """A NaN PSNR in one file and an infinite one in another (JSON's NaN/Infinity) do not stop
    the report and are never tabulated: both cells read "failed", a footnote names each file and
    its value, and the other cells are rendered as usual."""
    write_evals(tmp_path, slices=False)
    nan_file = tmp_path / "eval" / "cbct" / "v30" / "postproc" / "vol_b.json"
    inf_file = tmp_path / "eval" / "mri" / "R5" / "partition" / "vol_a.json"
    for path, value in ((nan_file, "NaN"), (inf_file, "Infinity")):
        text = path.read_text()
        rec = json.loads(text)
        path.write_text(text.replace(f'"psnr": {json.dumps(rec["psnr"])}', f'"psnr": {value}'))
    assert "NaN" in nan_file.read_text() and "Infinity" in inf_file.read_text()
    cells = report.collect_evals(tmp_path, CONFIG)
    report.write_tables(cells, CONFIG, tmp_path / "t", commit="x")
    t1 = (tmp_path / "t" / "table1_cbct.md").read_text()
    t2 = (tmp_path / "t" / "table2_mri.md").read_text()
    row1 = next(line for line in t1.splitlines() if line.startswith("| DRUNet[3D]"))
    cols = row1.split(" | ")
    assert cols[1].startswith("failed") and cols[3].startswith("failed")  # SSIM, PSNR at v30
    assert not cols[2].startswith("failed")  # v50: its files are fine
    row2 = next(line for line in t2.splitlines() if line.startswith("| Unrolled[3D] + partition ("))
    assert "failed" in row2 and "inf" not in row2.lower()
    assert f"{nan_file}: non-finite psnr = nan" in t1
    assert f"{inf_file}: non-finite psnr = inf" in t2
    fdk = next(line for line in t1.splitlines() if line.startswith("| FDK"))
    assert "failed" not in fdk


def test_table1_ssim_is_slice_wise_with_3d_ssim_as_an_extra_column(tmp_path):
    """Table 1's SSIM is the mean 2D SSIM over slices (compared with the
    paper's), the 3D SSIM an extra column without a paper value; Table 2 keeps one SSIM."""
    write_evals(tmp_path)
    cells = report.collect_evals(tmp_path, CONFIG)
    t1 = report.build_table("table1_cbct", cells, CONFIG, commit="x")
    assert t1.header[1:5] == ["SSIM v30", "SSIM v50", "PSNR (dB) v30", "PSNR (dB) v50"]
    assert t1.header[5:7] == ["SSIM 3D (extra) v30", "SSIM 3D (extra) v50"]
    row = t1.rows[VARIANTS.index("postproc")]
    slices, three_d = row[1], row[5]
    assert slices.ours == pytest.approx(0.5)  # ssim_slices of the files
    assert slices.paper == pn.paper_value("cbct", "postproc", "ssim", "v30").value
    assert three_d.ours == pytest.approx(0.5 + 0.1 * VARIANTS.index("postproc"))
    assert three_d.paper is None and three_d.diff is None
    assert any("mean of 2D SSIM over the axial slices" in n for n in t1.footnotes)
    t2 = report.build_table("table2_mri", cells, CONFIG, commit="x")
    assert not any("3D" in h for h in t2.header)


def test_the_sweep_point_at_the_main_patch_reuses_the_main_evaluations(tmp_path):
    """The sweep's main patch size is the main model: its point is read from the main
    evaluations of the sweep variant (every setting), and no sweep file is needed for it."""
    cfg = {
        **CONFIG,
        "cbct": {**CONFIG["cbct"], "patch_size": [8, 16, 16]},
        "sweep": {"enabled": True, "variant": "partition-H", "cbct": [[4, 8, 8], [8, 16, 16]]},
    }
    write_evals(tmp_path, cfg)
    cpu = {"peak_memory_gb": None, "peak_rss_growth_gb": 0.5, "step_time_mean_s": 0.2}
    for setting in ("v30", "v50"):
        _write_sweep(tmp_path, "cbct", setting, "4x8x8", [20.0, 22.0], cpu)
    points = report.collect_sweep(tmp_path, cfg, "cbct")
    main = [
        report.read_eval(tmp_path / "eval" / "cbct" / s / "partition-H" / f"{v}.json").psnr
        for s in ("v30", "v50")
        for v in VOLUMES
    ]
    assert points[1].patch == (8, 16, 16) and points[1].psnr == pytest.approx(np.mean(main))
    assert not (tmp_path / "eval" / "cbct" / "v30" / "sweep" / "p8x16x16").exists()
    # the report rule gets only report_config(config): it must know the main patch too
    from unroll3d.config import report_config

    assert report.collect_sweep(tmp_path, report_config(cfg), "cbct") == points


def test_tables_say_which_h_the_h_rows_used_and_its_heldout_error(tmp_path):
    """An H variant's evaluation records its fit; the footnote says one H per test volume
    (MRI, normal.per_sample) with the range of held-out errors, or the one fit and its volume."""
    write_evals(tmp_path, slices=False)
    for task, setting, per_volume in (("mri", "R5", True), ("cbct", "v30", False)):
        for k, vol in enumerate(VOLUMES):
            path = tmp_path / "eval" / task / setting / "partition-H" / f"{vol}.json"
            rec = json.loads(path.read_text())
            fitted_on = vol if per_volume else "walnut1"
            rec["normal_fit"] = {
                "file": f"results/normal/{task}/{setting}/{fitted_on}.pt",
                "fitted_on": fitted_on,
                "heldout_rel_error": 0.5 + 0.1 * k if per_volume else 0.42,
            }
            validate_result(rec)
            path.write_text(json.dumps(rec))
    cells = report.collect_evals(tmp_path, CONFIG)
    report.write_tables(cells, CONFIG, tmp_path / "tables", commit="x")
    mri = (tmp_path / "tables" / "table2_mri.md").read_text()
    assert (
        "R5: one H per test volume, fitted to its own operator (2 fits), held-out error "
        "0.500–0.600" in mri
    )
    cbct = (tmp_path / "tables" / "table1_cbct.md").read_text()
    assert "v30: one H fitted on walnut1, held-out error 0.420" in cbct
