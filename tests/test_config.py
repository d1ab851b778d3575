"""unroll3d.config: schema validation with defaults, registry checks, the per-job sections."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from unroll3d import config as u3config
from unroll3d.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smoke() -> dict:
    return yaml.safe_load((ROOT / "config/smoke.yaml").read_text())


def test_both_shipped_configs_validate():
    for name in ("smoke", "config"):
        cfg = u3config.load_config(ROOT / f"config/{name}.yaml")
        assert cfg["train"]["steps"] >= 1 and set(cfg["tasks"]) <= {"cbct", "mri"}


def test_defaults_come_from_the_schema(smoke):
    del smoke["train"]["warmup_steps"]
    filled = u3config.validate(smoke)
    assert filled["train"]["warmup_steps"] == u3config.section_defaults("train")["warmup_steps"]
    assert u3config.train_settings({})["steps"] == 100000  # the schema's, not a second default


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["train"].update(lrr=1.0), r"config key train: Additional properties"),
        (lambda c: c.update(variants=["fdk", "nope"]), r"unknown variant 'nope'"),
        (lambda c: c["sweep"].update(variant="tv"), r"sweep.variant: 'tv' is not a partitioned"),
        (lambda c: c["cbct"].update(patch_size=[8, 16, 99]), r"cbct.patch_size: patch"),
    ],
)
def test_bad_configs_name_the_key(smoke, edit, message):
    edit(smoke)
    with pytest.raises(ConfigError, match=message):
        u3config.validate(smoke)


def test_job_config_holds_only_what_train_and_evaluate_read(smoke):
    cfg = u3config.validate(smoke)
    job = u3config.job_config(cfg, "mri")
    assert set(job) == {"seed", "model", "train", "evaluate", "mri", "normal"}
    assert job["normal"] == {"mri_h": "mask"}  # which H the MRI H variants use
    assert "normal" not in u3config.job_config(cfg, "cbct")
    assert set(job["mri"]) == {"K", "patch_size", "stride"}
    assert "cbct_patch_margin" not in job["train"] and "cbct_crop" not in job["evaluate"]
    other = copy.deepcopy(cfg)
    other["report"]["inset_size"] = 0.4
    other["sweep"]["mri"] = [[4, 4, 4]]
    other["mri"]["splits"]["test"] = ["x"]
    assert u3config.job_config(other, "mri") == job  # keys the job does not read
    assert u3config.job_config(job, "mri") == job  # idempotent (the CLI fills defaults again)
    swept = u3config.sweep_job_config(cfg, "mri", [4, 8, 8])
    assert swept["mri"]["patch_size"] == [4, 8, 8] and swept["train"] == job["train"]


def test_volume_shapes(smoke):
    assert u3config.volume_shape(smoke, "cbct") == (24, 24, 24)
    assert u3config.volume_shape(smoke, "mri") == (16, 20, 18)
    smoke["cbct"]["source"] = "zenodo"
    assert u3config.volume_shape(smoke, "cbct") == (501, 501, 501)
