"""Config values are checked for meaning, not only for type: every value the
schema's types let through but no run can mean stops the load with the key named; the job
config the rules pass as --config-json goes through the same checks."""

import copy
import json

import pytest
import yaml
from test_workflow_reruns import ROOT, _run

from unroll3d.config import (
    ConfigError,
    dumps,
    job_config,
    job_config_from_json,
    load_config,
    report_config,
    validate,
    validate_partial,
)

SMOKE = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())


def _edit(path, value):
    def apply(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def _pf_budget(config):
    config["mri"].update(partial_fourier=0.7, accelerations=[1.25])


CASES = [
    # strides: larger than the patch (the task's or a sweep's), or of the wrong length
    ("cbct.stride", _edit(["cbct", "stride"], [16, 16, 16]), "larger than the patch"),
    ("cbct.stride", _edit(["cbct", "stride"], [8, 16, 16]), "sweep.cbct[0]"),
    ("mri.stride", _edit(["mri", "stride"], [4, 4]), "too short"),
    ("mri.stride", _edit(["mri", "stride"], [4, 4, 4, 4]), "too long"),
    # duplicated settings (a second table column each) and duplicated grids / sweep points
    ("cbct.views", _edit(["cbct", "views"], [30, 30]), "non-unique"),
    ("mri.accelerations", _edit(["mri", "accelerations"], [5, 5.0000001]), "['R5']"),
    ("train.tv_grid", _edit(["train", "tv_grid"], [0.01, 0.01]), "non-unique"),
    ("train.pnp_grid.iters", _edit(["train", "pnp_grid", "iters"], [5, 5]), "non-unique"),
    ("sweep.mri[1]", _edit(["sweep", "mri"], [[8, 20, 18], [8, -1, -1]]), "listed twice"),
    ("benchmarks.sizes", _edit(["benchmarks", "sizes"], [16, 16]), "non-unique"),
    # ranges in the wrong order
    ("evaluate.cbct_crop", _edit(["evaluate", "cbct_crop"], [0.8, 0.2]), "lo < hi"),
    ("train.lr_min", _edit(["train", "lr_min"], 0.1), "above train.lr"),
    ("train.inr.base_resolution", _edit(["train", "inr", "base_resolution"], 64), "finest"),
    # counts beyond what they count from, or empty
    ("cbct.views", _edit(["cbct", "views"], [500]), "full orbit of only 120"),
    ("mri.calib", _edit(["mri", "calib"], 12), "more than the 72 of R=5"),
    # partial Fourier: kz < ceil(pf·18) must hold the calibration disc (kz ≤ 9 + 3) and the
    # seeded budget (here R=1.25: 288 of 20×18; pf 0.7 acquires 20×13 = 260)
    ("mri.partial_fourier", _edit(["mri", "partial_fourier"], 0.5), "cutting the calibration"),
    ("mri.partial_fourier", _edit(["mri", "partial_fourier"], 0.65), "kz < 12 of 18"),
    ("mri.partial_fourier", _pf_budget, "260 ky–kz samples, fewer than the 288 of R=1.25"),
    ("benchmarks.sizes", _edit(["benchmarks", "sizes"], []), "non-empty"),
    ("benchmarks.patch", _edit(["benchmarks", "patch"], 64), "larger than every size"),
    ("benchmarks.normal_floor.rows", _edit(["benchmarks", "normal_floor", "rows"], 5000), "16³"),
    ("cbct.log_clip", _edit(["cbct", "log_clip"], 1.0), "greater than or equal to the maximum"),
    # volumes named that the splits lack, splits that overlap, settings the tasks lack
    ("cbct.splits", _edit(["cbct", "splits", "val"], [1]), "in both train and val"),
    ("normal.reference.cbct", _edit(["normal", "reference", "cbct"], "walnut9"), "not a volume"),
    ("report.qualitative_setting", _edit(["report", "qualitative_setting"], "v50"), "cbct"),
    ("report.qualitative_volume", _edit(["report", "qualitative_volume"], "walnut9"), "test"),
    ("train.dpir_sha256", _edit(["train", "dpir_weights"], "w.pth"), "required"),
]


def test_partial_fourier_that_keeps_the_disc_and_the_budget_passes():
    """The bounds of the partial-Fourier cases above are tight: one kz column more passes."""
    config = copy.deepcopy(SMOKE)
    config["mri"]["partial_fourier"] = 0.7  # kz < 13: the disc (kz ≤ 12) and R5's 72 samples
    validate(config)


@pytest.mark.parametrize(("key", "edit", "why"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_meaningless_values_are_refused_naming_the_key(key, edit, why):
    config = copy.deepcopy(SMOKE)
    edit(config)
    with pytest.raises(ConfigError) as err:
        validate(config)
    text = str(err.value)
    assert f"config key {key}:" in text and why in text and "\n" not in text


@pytest.mark.parametrize("name", ["config", "smoke", "mini", "reviewer"])
def test_the_shipped_configs_pass(name):
    load_config(ROOT / f"config/{name}.yaml")


def test_a_stride_within_the_patch_and_distinct_settings_pass():
    config = copy.deepcopy(SMOKE)
    config["cbct"]["stride"] = [4, 8, 8]  # ≤ every patch, sweep's included
    config["cbct"]["views"] = [30, 60]
    config["mri"]["accelerations"] = [5, 5.5]
    validate(config)


def test_job_config_json_is_validated_like_the_file():
    """The rules pass each job only its section as --config-json: a negative lr, an unknown key
    or a stride larger than the patch stop there, not in torch."""
    config = validate(copy.deepcopy(SMOKE))
    good = job_config(config, "mri")
    assert job_config_from_json(dumps(good), "mri") == good
    bad_lr = copy.deepcopy(good)
    bad_lr["train"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"--config-json: config key train.lr: -1.0 is less"):
        job_config_from_json(dumps(bad_lr), "mri")
    typo = copy.deepcopy(good)
    typo["train"]["lrr"] = 1.0
    with pytest.raises(ConfigError, match=r"config key train: Additional properties.*'lrr'"):
        job_config_from_json(dumps(typo), "mri")
    stride = copy.deepcopy(good)
    stride["mri"]["stride"] = [9, 9, 9]
    with pytest.raises(ConfigError, match=r"config key mri.stride: stride \[9, 9, 9\] is larger"):
        job_config_from_json(dumps(stride), "mri")
    with pytest.raises(ConfigError, match="not valid JSON"):
        job_config_from_json("{'train': 1}", "mri")
    validate_partial(json.loads(dumps(report_config(config))), "--config-json")


def test_train_cli_refuses_a_negative_lr_and_zero_threads(capsys):
    from unroll3d.cli import train

    job = job_config(validate(copy.deepcopy(SMOKE)), "mri")
    job["train"]["lr"] = -1.0
    argv = ["--task", "mri", "--setting", "R5", "--variant", "fdk", "--train", "x", "--out", "m.pt"]
    with pytest.raises(SystemExit) as err:
        train.main([*argv, "--config-json", dumps(job)])
    assert "config key train.lr: -1.0" in str(err.value)
    with pytest.raises(SystemExit):
        train.build_parser().parse_args([*argv, "--config", "c.yaml", "--threads", "0"])
    assert "argument --threads: expected a whole number ≥ 1, got 0" in capsys.readouterr().err


def test_planning_stops_on_a_repeated_setting(tmp_path):
    """Through Snakemake: a view count listed twice stops the plan (it used to give Table 1
    every column twice)."""
    config = copy.deepcopy(SMOKE)
    config["cbct"]["views"] = [30, 30]
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    res = _run(tmp_path, configfile, "-n")
    assert res.returncode != 0
    assert "cbct.views" in res.stderr + res.stdout and "non-unique" in res.stderr + res.stdout
