"""The accuracy study's driver (`make study`, unroll3d.bench.study): per-point configs, targets,
gap arithmetic and outputs, without running the pipeline."""

import csv

import pytest
import yaml

from unroll3d.bench import study as S


def _study(tmp_path):
    st = S.load_study(S.REPO / "config" / "study.yaml")
    st["out"] = str(tmp_path / "study")
    return st


def test_point_config_applies_overrides_and_length(tmp_path):
    st = _study(tmp_path)
    cfg = S.point_config(st, "cbct24", 1000)
    assert cfg["tasks"] == ["cbct"] and cfg["variants"] == ["unrolled", "partition", "partition-H", "partition-Ha"]
    assert cfg["cbct"]["toy"]["size"] == 24 and cfg["cbct"]["patch_size"] == [12, 18, 18]
    assert cfg["train"]["steps"] == 1000 and cfg["normal"]["steps"] == 2000
    assert cfg["evaluate"]["mri_refine"] is True and cfg["benchmarks"]["enabled"] is False
    base = yaml.safe_load((S.REPO / st["base"]).read_text())
    assert base["train"]["steps"] != 1000  # the base file itself is untouched
    targets = S.targets(cfg)
    assert len(targets) == len(cfg["cbct"]["views"]) * 4 * len(cfg["cbct"]["splits"]["test"]) + 1
    assert targets[-1] == "results/benchmarks/accuracy/cbct.csv"
    assert all(t.startswith("results/eval/cbct/") and t.endswith(".json") for t in targets[:-1])


def test_unknown_override_names_the_key(tmp_path):
    st = _study(tmp_path)
    st["points"]["cbct24"]["set"] = {"cbct.toy.sise": 24}
    with pytest.raises(KeyError, match="sise"):
        S.point_config(st, "cbct24", 100)
    st["points"]["cbct24"]["set"] = {"nosuch.key": 1}
    with pytest.raises(KeyError, match="nosuch"):
        S.point_config(st, "cbct24", 100)


def test_gaps_pair_the_same_setting_and_volume_across_points(tmp_path):
    st = _study(tmp_path)
    st["steps"] = [100]

    def row(point, variant, setting, volume, psnr):
        return {"point": point, "steps": 100, "variant": variant, "setting": setting,
                "volume": volume, "psnr": psnr}  # fmt: skip

    rows = [
        row("mri", "unrolled", "R5", "a", 30.0),
        row("mri", "unrolled", "R5", "b", 28.0),
        row("mri", "partition", "R5", "a", 27.0),
        row("mri", "partition", "R5", "b", 26.0),
        row("mri-slab", "partition", "R5", "a", 29.5),  # volume b missing: not paired
        row("mri", "partition-H", "R5", "a", 26.0),
        row("mri", "partition-H", "R5", "b", 25.0),
    ]
    got = {r["comparison"]: r for r in S.gaps(st, rows)}
    assert got["partition - unrolled (MRI, 12×16×16 patches)"]["mean_gap_db"] == -2.5
    slab = got["partition - unrolled (MRI, 12×32×28 slabs)"]
    assert slab["mean_gap_db"] == -0.5 and slab["n"] == 1 and slab["a"] == "mri-slab:partition"
    assert got["partition-H - partition (MRI)"]["mean_gap_db"] == -1.0
    assert not any(r["task"] == "cbct" for r in got.values())  # no CBCT rows, no CBCT gaps


def test_outputs_from_evaluation_files(tmp_path):
    import json

    st = _study(tmp_path)
    st["points"] = {"cbct24": st["points"]["cbct24"]}
    st["steps"] = [100]
    cfg = S.point_config(st, "cbct24", 100)
    run_dir = tmp_path / "study" / "cbct24" / "s100"
    (run_dir).mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    evals = [t for t in S.targets(cfg) if t.endswith(".json")]
    for i, target in enumerate(evals):
        f = run_dir / target
        f.parent.mkdir(parents=True, exist_ok=True)
        parts = target.split("/")
        ev = {"setting": parts[3], "variant": parts[4], "volume": parts[5][:-5],
              "psnr": 20.0 + i, "ssim": 0.9, "train_stats": {"step_time_mean_s": 0.5}}  # fmt: skip
        f.write_text(json.dumps(ev))
    acc = run_dir / S.accuracy_target(cfg)
    acc.parent.mkdir(parents=True)
    with open(acc, "w") as fh:  # two k of the H-refinement ratio, one PSNR
        fh.write("task,setting,volume,model,measure,k,alpha,value\n"
                 "cbct,v30,walnut8,partition,h_grad_ratio_H_refine,0,,2.0\n"
                 "cbct,v30,walnut8,partition,h_grad_ratio_H_refine,1,,3.0\n"
                 "cbct,v30,walnut8,partition,psnr_H_refine,,,25.5\n")  # fmt: skip
    out = S.write_outputs(st)
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert len(rows) == len(evals) and rows[0]["train_s"] == "50.0"
    (acc_row,) = csv.DictReader(open(out / "accuracy.csv"))
    assert acc_row["partition:h_grad_ratio_H_refine"] == "2.5"
    assert acc_row["partition:psnr_H_refine"] == "25.5" and acc_row["partition-H:psnr_H_refine"] == ""
    assert (out / "gaps.png").stat().st_size > 0
    md = (out / "gaps.md").read_text()
    assert "partition-H - partition (CBCT)" in md and "+0.04" in md
    assert "| cbct24 | 100 | partition-H |" in md
