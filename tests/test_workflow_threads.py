"""config job_threads reaches every compute job as its Snakemake threads and its --threads, and
Snakemake lowers it to --cores (e.g. two 1-thread toy jobs side by side on 2 cores)."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _job_threads(tmp_path, config: dict, cores: int) -> tuple[Counter, Counter]:
    """Dry run: (threads of the planned jobs that take more than one, --threads of each printed
    command; Snakemake prints no ``threads:`` line for a 1-thread job)."""
    tmp_path.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n",
         "-p", "--cores", str(cores), "--configfile", str(cfg)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    planned = Counter(int(t) for t in re.findall(r"^\s+threads: (\d+)$", res.stdout, re.M))
    flags = Counter(int(t) for t in re.findall(r"--threads (\d+)", res.stdout))
    return planned, flags


def test_job_threads_sets_the_compute_jobs_threads(tmp_path):
    smoke = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    assert smoke["job_threads"] == 1
    planned, flags = _job_threads(tmp_path / "a", smoke, cores=2)
    assert not planned and set(flags) == {1}
    assert sum(flags.values()) > 40  # train, evaluate, fit-normal, benchmarks
    smoke["job_threads"] = 4
    planned, flags = _job_threads(tmp_path / "b", smoke, cores=2)
    assert set(flags) == {2} and set(planned) == {2}  # lowered to --cores
    assert planned[2] > sum(flags.values())  # also the jobs without a --threads flag (fdk_check)
