"""Foundation: pins agree, the CLI lists its verbs, the workflow dry-runs and rejects bad configs."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _pins(requirements):
    return dict(re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", r).groups() for r in requirements if "==" in r)


def test_conda_env_pins_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = _pins(project["dependencies"])
    env = yaml.safe_load((ROOT / "envs/unroll3d.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = _pins(pip_section)
    assert pyproject == conda
    assert all("==" in r for r in project["dependencies"]), "every runtime dependency is pinned"


def test_cli_help_lists_verbs():
    out = subprocess.run(
        [sys.executable, "-m", "unroll3d.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in ["toy", "data", "fit-normal", "train", "evaluate", "report", "manifest"]:
        assert verb in out
    version = subprocess.run(
        [sys.executable, "-m", "unroll3d.cli", "--version"], capture_output=True, text=True
    ).stdout
    assert version.startswith("unroll3d ")


def _snakemake(workdir, *args):
    return subprocess.run(
        [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True, text=True, cwd=ROOT,
    )


@pytest.mark.parametrize("configfile", ["config/smoke.yaml", "config/config.yaml"])
def test_dry_run(configfile, tmp_path):
    res = _snakemake(tmp_path, "-n", "--configfile", str(ROOT / configfile))
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["train"].update(stepz=c["train"].pop("steps")), "stepz"),
        (lambda c: c.update(variantz=c.pop("variants")), "variantz"),
        (lambda c: c["train"].update(lr="fast"), "fast"),
        (lambda c: c["cbct"].pop("views"), "views"),
    ],
    ids=["misspelt-nested-key", "misspelt-top-key", "wrong-type", "missing-required"],
)
def test_bad_config_is_rejected_naming_the_key(mutate, expected, tmp_path):
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    mutate(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    res = _snakemake(tmp_path, "-n", "--configfile", str(bad))
    assert res.returncode != 0
    assert expected in res.stderr + res.stdout
    assert "Job stats" not in res.stdout  # stopped before scheduling any job


def test_snakemake_on_path():
    assert Path(SNAKEMAKE).exists() or shutil.which("snakemake")


@pytest.mark.parametrize("profile", ["profiles/local-gpu", "profiles/slurm"])
def test_profiles_dry_run(profile, tmp_path):
    res = _snakemake(
        tmp_path, "-n", "--workflow-profile", str(ROOT / profile),
        "--configfile", str(ROOT / "config/config.yaml"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
