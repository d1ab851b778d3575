"""Snakemake reruns exactly what a changed config value feeds, nothing else (params trigger)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(workdir, configfile, *args):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(configfile),
            "--cores",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _planned_jobs(workdir, configfile):
    """Rule names a dry run would execute (from Snakemake's job-stats table)."""
    res = _run(workdir, configfile, "-n", "--quiet", "rules")
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in {"total", "job"}:
            jobs.add(parts[0])
    return jobs


@pytest.mark.slow
def test_changed_param_reruns_only_its_rule_and_dependents(tmp_path):
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    mri_registry = "resources/mri/toy/registry.csv"
    res = _run(tmp_path, configfile, mri_registry)
    assert res.returncode == 0, res.stderr[-3000:]

    before = _planned_jobs(tmp_path, configfile)
    assert "toy_mri" not in before  # up to date
    assert "toy_cbct" in before  # never run: the control

    config["mri"]["toy"]["coils"] += 1  # a value only the toy_mri rule reads
    configfile.write_text(yaml.safe_dump(config))
    after = _planned_jobs(tmp_path, configfile)
    assert "toy_mri" in after  # params changed -> rerun
    assert {"download_mri", "preprocess_mri"} <= after  # and what depends on it
    assert after - before == {"toy_mri"}  # nothing else newly scheduled


@pytest.mark.slow
def test_train_and_evaluate_rerun_only_for_keys_they_read(tmp_path):
    """Each train/evaluate job gets only its own config section (unroll3d.config.job_config):
    a report-only or sweep-only edit reruns none of them, a training edit reruns exactly them."""
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config["tasks"] = ["mri"]  # pure torch: no ITK start-up in this test
    config["benchmarks"]["enabled"] = False
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    test_volume = config["mri"]["splits"]["test"][0]
    targets = [
        "results/models/mri/R5/fdk.pt",
        f"results/eval/mri/R5/fdk/{test_volume}.json",
    ]
    res = _run(tmp_path, configfile, *targets)
    assert res.returncode == 0, res.stderr[-3000:]

    def planned():
        res = _run(
            tmp_path, configfile, *targets, "-n", "--rerun-triggers", "params", "--quiet", "rules"
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return {
            ln.split()[0]
            for ln in res.stdout.splitlines()
            if len(ln.split()) == 2 and ln.split()[1].isdigit()
        } - {"total", "job"}

    assert planned() == set()  # up to date

    config["report"]["inset_size"] = 0.3  # read by the report only
    config["sweep"]["mri"] = [[4, 4, 4]]  # read by the sweep rules only
    config["benchmarks"]["sizes"] = [8]  # read by the benchmark rules only
    configfile.write_text(yaml.safe_dump(config))
    assert planned() == set()

    config["evaluate"]["mri_ground_truth"] = "rss"  # read by the evaluations only
    configfile.write_text(yaml.safe_dump(config))
    assert planned() == {"evaluate"}

    config["train"]["tv_grid"] = [0.01]  # read by train (and evaluate, whose model it changes)
    configfile.write_text(yaml.safe_dump(config))
    assert planned() == {"train", "evaluate"}


@pytest.mark.slow
def test_fit_normal_reruns_only_for_keys_it_reads(tmp_path):
    """fit_normal gets its settings as one --config-json (unroll3d.config.fit_normal_config): an
    edit of a normal key it does not read, or of another section, reruns no fit; an edit of a
    key it reads (top level or nested) reruns exactly the fit."""
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config["tasks"] = ["mri"]  # pure torch: no ITK start-up in this test
    config["benchmarks"]["enabled"] = False
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = "results/normal/mri/R5.pt"
    res = _run(tmp_path, configfile, target)
    assert res.returncode == 0, res.stderr[-3000:]

    def planned():
        res = _run(tmp_path, configfile, target, "-n", "--rerun-triggers", "params", "--quiet", "rules")
        assert res.returncode == 0, res.stderr[-2000:]
        return {
            ln.split()[0]
            for ln in res.stdout.splitlines()
            if len(ln.split()) == 2 and ln.split()[1].isdigit()
        } - {"total", "job"}

    assert planned() == set()
    config["normal"]["mri_h"] = "fit"  # which H the evaluations use: no fit setting
    config["train"]["steps"] = 7
    config["report"]["inset_size"] = 0.3
    unread = yaml.safe_dump(config)
    configfile.write_text(unread)
    assert planned() == set()
    for edit in (lambda n: n.update(lr=0.02), lambda n: n["plateau"].update(patience=3)):
        config = yaml.safe_load(unread)
        edit(config["normal"])
        configfile.write_text(yaml.safe_dump(config))
        assert planned() == {"fit_normal"}
        configfile.write_text(unread)
        assert planned() == set()  # back to the fitted values: nothing to rerun


@pytest.mark.parametrize("store_all", [False, True])
def test_preprocess_stores_only_the_settings_views_unless_asked(tmp_path, store_all):
    """cbct.store_all_views false: the walnut preprocess command gets --views with the union of
    the settings' view counts (120 of 1,200 views at 30/50/100 instead of all); true: no --views."""
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config["cbct"]["store_all_views"] = store_all
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    res = _run(tmp_path, configfile, "results/data/cbct/walnut1.pt", "-n", "-p")
    assert res.returncode == 0, res.stderr[-2000:]
    cmd = next(ln for ln in res.stdout.splitlines() if "data preprocess cbct" in ln)
    views = " ".join(str(v) for v in config["cbct"]["views"])
    assert (f"--views {views}" in cmd) != store_all, cmd


@pytest.mark.parametrize(
    ("key", "edit"),
    [
        ("cbct.patch_size", lambda c: c["cbct"].update(patch_size=[8, 16, 32])),
        ("sweep.mri[1]", lambda c: c["sweep"].update(mri=[[4, 8, 8], [8, 32, 16]])),
    ],
)
def test_a_patch_that_does_not_fit_stops_the_plan(tmp_path, key, edit):
    """The schema cannot see volume sizes; the plan can (toy sizes from the config, the data
    sets' from unroll3d.config): a patch larger than the volume stops Snakemake naming the key."""
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    edit(config)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    res = _run(tmp_path, configfile, "-n")
    assert res.returncode != 0
    assert f"config key {key}: patch" in res.stderr + res.stdout


@pytest.mark.slow
def test_refitting_h_retrains_the_h_model_from_step_zero(tmp_path):
    """Through Snakemake on the toy run: refit H (another normal.lr) -> the partition-H model is
    retrained, a checkpoint left from before is discarded (never resumed), and its weights differ."""
    import torch

    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config["tasks"] = ["mri"]
    config["benchmarks"]["enabled"] = False
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    model = tmp_path / "results/models/mri/R5/partition-H.pt"
    res = _run(tmp_path, configfile, str(model.relative_to(tmp_path)))
    assert res.returncode == 0, res.stderr[-3000:]
    before = torch.load(model, weights_only=False)["state_dict"]
    ckpt = model.with_name(model.name + ".ckpt")
    assert not ckpt.exists()  # a finished job leaves no resume state
    torch.save({"step": 10, "model": {}, "optimizer": {}, "fingerprint": "old"}, ckpt)

    config["normal"]["lr"] = 0.02  # a refit of H
    configfile.write_text(yaml.safe_dump(config))
    res = _run(tmp_path, configfile, str(model.relative_to(tmp_path)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rule fit_normal" in res.stderr and "rule train" in res.stderr
    log = (tmp_path / "results/logs/train/mri/R5/partition-H.log").read_text()
    assert "discarding checkpoint" in log and "resuming" not in log
    after = torch.load(model, weights_only=False)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not ckpt.exists()


def _train_commands(tmp_path, configfile):
    res = _run(tmp_path, configfile, "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    return [ln for ln in res.stdout.splitlines() if "unroll3d train --task" in ln]


def test_paper_plan_trains_one_model_per_task_and_learned_variant(tmp_path):
    """train.share_across_settings (the paper's protocol): the paper config plans one `train`
    job per task and learned variant, on every setting with every setting's H; FDK/TV/DPIR stay
    per setting; false restores one model per setting."""
    from unroll3d.variants import variant_spec

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    main = [c for c in _train_commands(tmp_path, configfile) if "/sweep/" not in c]
    learned = [v for v in config["variants"] if variant_spec(v).learned]
    per_setting = [v for v in config["variants"] if not variant_spec(v).learned]
    n_settings = len(config["cbct"]["views"]) + len(config["mri"]["accelerations"])
    assert len(main) == 2 * len(learned) + n_settings * len(per_setting)
    ph = [c for c in main if "--variant partition-H " in c and "--task cbct" in c]
    assert len(ph) == 1 and "--setting all" in ph[0] and "--settings v30 v50 v100" in ph[0]
    assert all(f"results/normal/cbct/v{n}.pt" in ph[0] for n in (30, 50, 100))
    # MRI H of each volume's own mask (normal.mri_h: mask, the default): every evaluation takes
    # only m from its setting's fit; no per-sample fit is planned
    res = _run(tmp_path, configfile, "-n", "-p")
    evals = [ln for ln in res.stdout.splitlines() if "unroll3d evaluate --task mri" in ln
             and "--variant partition-H " in ln and "/sweep/" not in ln]  # fmt: skip
    test = config["mri"]["splits"]["test"]
    assert len(evals) == len(test) * len(config["mri"]["accelerations"])
    for line in evals:
        setting = line.split("--setting ")[1].split()[0]
        assert f"--normal results/normal/mri/{setting}.pt --out" in line
    assert "fit-normal --input" in res.stdout
    assert not any(f"results/normal/mri/{s}/" in res.stdout for s in ("R5", "R10"))
    # normal.mri_h: fit (the old behaviour): each test volume's evaluation uses its own fit
    fit_cfg = {**config, "normal": {**config["normal"], "mri_h": "fit"}}
    configfile.write_text(yaml.safe_dump(fit_cfg))
    res = _run(tmp_path, configfile, "-n", "-p")
    evals = [ln for ln in res.stdout.splitlines() if "unroll3d evaluate --task mri" in ln
             and "--variant partition-H " in ln and "/sweep/" not in ln]  # fmt: skip
    assert len(evals) == len(test) * len(config["mri"]["accelerations"])
    for line in evals:
        volume = line.split("--volume ")[1].split()[0]
        setting = line.split("--setting ")[1].split()[0]
        assert f"--normal results/normal/mri/{setting}/{volume}.pt" in line
    configfile.write_text(yaml.safe_dump(config))
    cbct = [ln for ln in res.stdout.splitlines() if "unroll3d evaluate --task cbct" in ln
            and "--variant partition-H " in ln]  # fmt: skip
    assert all("--normal results/normal/cbct/v" in ln and ".pt --out" in ln for ln in cbct)

    config["train"]["share_across_settings"] = False
    configfile.write_text(yaml.safe_dump(config))
    main = [c for c in _train_commands(tmp_path, configfile) if "/sweep/" not in c]
    assert len(main) == n_settings * len(config["variants"])
