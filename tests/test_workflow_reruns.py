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
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
         str(workdir), "--configfile", str(configfile), "--cores", "1", *args],
        capture_output=True, text=True, cwd=ROOT, env=env,
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
