"""``unroll3d manifest``: every output listed with a correct sha256 and its producing rule."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unroll3d import manifest
from unroll3d.cli import manifest as manifest_cli


def _fill(root: Path) -> dict[str, bytes]:
    files = {
        "results/tables/table1_cbct.md": b"| a |\n",
        "results/figures/fig.png": bytes(range(256)) * 10,
        "results/eval/cbct/v30/fdk/vol.json": b'{"psnr": 1}',
        "results/logs/report/tables_figures.log": b"log line\n",
        "results/tables/.table1_cbct.md.abc.tmp": b"half-written",
        "resources/cbct/raw/Walnut1.zip": b"zipbytes",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def _record(root: Path, target: str, rule: str, max_len: int = 255, log=()) -> None:
    """A Snakemake metadata record, named as Snakemake's ``_record_path`` names it."""
    b64 = base64.urlsafe_b64encode(target.encode()).decode()
    chunks = [b64[i : i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    parts = ["@" + c for c in chunks[:-1]] + [chunks[-1]]
    path = root / ".snakemake" / "metadata" / Path(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rule": rule, "endtime": 1.7e9, "input": [], "log": list(log)}))


def test_every_file_listed_with_correct_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = _fill(tmp_path)
    _record(tmp_path, "results/tables/table1_cbct.md", "tables_figures")
    _record(tmp_path, "results/eval/cbct/v30/fdk/vol.json", "evaluate", max_len=8)  # split name
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: unit\ntasks: [cbct]\n")
    rc = manifest_cli.main(["--results", "results", "--config", str(cfg), "--rules", _rules(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "results" / "manifest.json").read_text())
    expected = {
        k for k in files if k.startswith("results/") and "/logs/" not in k and ".tmp" not in k
    }
    assert set(m["files"]) == expected
    for key, entry in m["files"].items():
        assert entry["sha256"] == hashlib.sha256(files[key]).hexdigest(), key
        assert entry["bytes"] == len(files[key])
    assert m["files"]["results/tables/table1_cbct.md"]["rule"] == "tables_figures"
    assert m["files"]["results/eval/cbct/v30/fdk/vol.json"]["rule"] == "evaluate"
    assert m["files"]["results/figures/fig.png"]["rule"] == "from_mapping"
    zip_hash = hashlib.sha256(files["resources/cbct/raw/Walnut1.zip"]).hexdigest()
    assert m["inputs"]["resources/cbct/raw/Walnut1.zip"]["sha256"] == zip_hash
    assert m["config"]["values"] == {"name": "unit", "tasks": ["cbct"]}
    assert m["software"]["packages"]["torch"] and m["software"]["python"]
    assert "deepinv" in m["software"]["packages"] and "astra-toolbox" in m["software"]["packages"]
    assert m["hardware"]["cpu"]
    assert "commit" in m["git"]
    # logs on request; the manifest never lists itself; no temp file is left behind
    manifest_cli.main(["--results", "results", "--include-logs", "--inputs"])
    m2 = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert "results/logs/report/tables_figures.log" in m2["files"]
    assert "results/manifest.json" not in m2["files"]
    assert not list((tmp_path / "results").glob(".manifest.json*"))


def test_logs_and_benchmarks_attributed_through_the_job_log(tmp_path):
    files = {
        "results/tables/t.md": b"t",
        "results/logs/report/tables_figures.log": b"log",
        "results/benchmarks/rules/report/tables_figures.tsv": b"s\tmax_rss\n1\t2\n",
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    _record(
        tmp_path,
        "results/tables/t.md",
        "tables_figures",
        log=["results/logs/report/tables_figures.log"],
    )
    m = manifest.build_manifest(
        results=tmp_path / "results", inputs=(), workdir=tmp_path, include_logs=True
    )
    assert {k: e["rule"] for k, e in m["files"].items()} == dict.fromkeys(files, "tables_figures")
    assert m["files"]["results/benchmarks/rules/report/tables_figures.tsv"]["kind"] == "benchmark"


def test_the_plugins_source_is_recorded_when_listed(tmp_path, monkeypatch):
    """The config's plugins: a .py file's sha256 and size, a module name's source file (found
    without importing it), none for a module without a file; no plugins, no section."""
    monkeypatch.chdir(tmp_path)
    _fill(tmp_path)
    mine, theirs = b"# registers a variant\n", b"# an importable module\n"
    (tmp_path / "my_methods.py").write_bytes(mine)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "their_methods.py").write_bytes(theirs)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    config = {"name": "unit", "plugins": ["my_methods.py", "their_methods", "sys"]}
    argv = ["--results", "results", "--inputs", "--config-json"]
    assert manifest_cli.main([*argv, json.dumps(config)]) == 0
    m = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert m["plugins"] == {
        "my_methods.py": {
            "file": "my_methods.py",
            "sha256": hashlib.sha256(mine).hexdigest(),
            "bytes": len(mine),
        },
        "their_methods": {
            "file": str(tmp_path / "lib" / "their_methods.py"),
            "sha256": hashlib.sha256(theirs).hexdigest(),
            "bytes": len(theirs),
        },
        "sys": {"file": None, "sha256": None, "bytes": None},
    }
    assert "their_methods" not in sys.modules  # found, not run
    assert manifest_cli.main([*argv, json.dumps({**config, "plugins": []})]) == 0
    assert "plugins" not in json.loads((tmp_path / "results" / "manifest.json").read_text())


def _rules(root: Path) -> str:
    p = root / "rules.json"
    p.write_text(json.dumps({"results/figures/fig.png": "from_mapping"}))
    return str(p)


def test_hash_reuse_only_when_unchanged(tmp_path):
    f = tmp_path / "r" / "a.bin"
    f.parent.mkdir()
    f.write_bytes(b"one")
    first = manifest.hash_files(tmp_path / "r", prefix="r")
    fake = {k: {**v, "sha256": "cached"} for k, v in first.items()}
    assert (
        manifest.hash_files(tmp_path / "r", previous=fake, prefix="r")["r/a.bin"]["sha256"]
        == "cached"
    )
    f.write_bytes(b"two!")  # size changes -> re-hashed
    again = manifest.hash_files(tmp_path / "r", previous=fake, prefix="r")
    assert again["r/a.bin"]["sha256"] == hashlib.sha256(b"two!").hexdigest()


@pytest.mark.slow
def test_rules_from_a_real_snakemake_run(tmp_path):
    """The decoder reads what Snakemake itself writes into .snakemake/metadata."""
    smk = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which(
        "snakemake"
    )
    if smk is None:
        pytest.skip("snakemake not installed")
    (tmp_path / "Snakefile").write_text(
        'rule make_table:\n    output: "results/tables/deep/' + "x" * 150 + '.csv"\n'
        '    shell: "echo a,b > {output}"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(
        [smk, "--cores", "1", "--quiet"], cwd=tmp_path, check=True, env=env, capture_output=True
    )
    rules = manifest.snakemake_rules(tmp_path)
    key = "results/tables/deep/" + "x" * 150 + ".csv"
    assert rules[key]["rule"] == "make_table"
    m = manifest.build_manifest(results=tmp_path / "results", inputs=(), workdir=tmp_path)
    assert m["files"][key]["rule"] == "make_table"


def test_the_manifest_job_opens_the_config_files_under_directory(tmp_path):
    """Under ``snakemake --directory`` (``make mini``: ``runs/mini``) the jobs run in that
    directory: the manifest's ``--config`` must name the config file from there, while the
    tables' label still names it from the repository (``config/smoke.yaml``)."""
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(root / "Snakefile"),
         "--directory", str(tmp_path), "-n", "-p", "--cores", "1", "--forcerun", "manifest",
         "--configfile", "config/smoke.yaml", "--until", "manifest"],
        capture_output=True, text=True, cwd=root,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    command = next(line for line in res.stdout.splitlines() if "unroll3d manifest" in line)
    config_arg = command.split(" --config ")[1].split()[0].strip("'")
    assert config_arg.endswith("config/smoke.yaml")
    assert (tmp_path / config_arg).resolve() == (root / "config/smoke.yaml").resolve()
    assert "--config-label config/smoke.yaml" in res.stdout  # the tables' footnote label
