"""The benchmarks as modules behind ``unroll3d bench <name>``: the verb lists them without loading
torch, each parser accepts what its workflow rule passes (smoke config), the ``benchmarks/``
scripts still run, and the CSVs name memory in GB (``*_memory_gb``, ``cuda_free_drop_gb``).
No timing assertions."""

from __future__ import annotations

import csv
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unroll3d.bench import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["steps", "physics", "partition", "normal", "normal_floor"]


def _smoke_argv(name: str, out: str) -> list[str]:
    """What ``workflow/rules/bench.smk`` passes to ``unroll3d bench <name>`` under the smoke
    config (threads: the rules' 2)."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    b, model = cfg["benchmarks"], cfg["model"]
    sizes = [str(s) for s in b["sizes"]]
    channels = [str(c) for c in model["channels"]]
    views = str(b["views"])
    return {
        "steps": ["--sizes", *sizes, "--views", views, "--channels", *channels,
                  "--blocks", str(model["blocks"])],
        "physics": ["--sizes", *sizes, "--views", views, "--threads", "2"],
        "partition": ["--sizes", *sizes, "--patch", str(b["patch"]),
                      "--op", b["partition_operator"], "--views", views, "--channels", *channels,
                      "--blocks", str(model["blocks"]), "--threads", "2"],
        "normal": ["--volumes", str(max(b["sizes"])), "--patches", str(b["patch"]),
                   "--views", views, "--threads", "2"],
        "normal_floor": ["--size", str(b["normal_floor"]["size"]), "--views", views,
                         "--steps", str(b["normal_floor"]["steps"]),
                         "--rows", str(b["normal_floor"]["rows"]),
                         "--geometries", *b["normal_floor"]["geometries"],
                         "--seed", str(cfg["seed"]), "--threads", "2"],
    }[name] + ["--out", out]  # fmt: skip


def _rule_commands() -> dict[str, str]:
    """name -> the shell command of its rule in bench.smk (string pieces joined)."""
    text = (ROOT / "workflow" / "rules" / "bench.smk").read_text()
    out = {}
    for block in re.split(r"\nrule ", text)[1:]:
        shell = block.split("shell:", 1)[1]
        cmd = "".join(re.findall(r'"([^"]*)"', shell.split("\n\n", 1)[0]))
        m = re.search(r"unroll3d bench (\w+)", cmd)
        assert m, f"rule {block.split(':')[0]} does not run `unroll3d bench <name>`: {cmd}"
        out[m.group(1)] = cmd
    return out


def test_registry_lists_the_five_benchmarks():
    assert list(BENCHMARKS) == NAMES
    for name, (module, summary) in BENCHMARKS.items():
        assert module == f"unroll3d.bench.{name}"
        assert summary and "\n" not in summary


def test_help_lists_every_benchmark_on_one_line_without_loading_torch():
    code = (
        "import sys\n"
        "from unroll3d.cli import main\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'itk', 'deepinv', 'pandas') "
        "if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    for name in NAMES:
        assert any(re.match(rf"\s+{name}\s+\S", line) for line in lines), (name, res.stdout)
    assert "HEAVY []" in res.stdout


@pytest.mark.parametrize("name", NAMES)
def test_module_exposes_parser_run_main_and_accepts_smoke_flags(name, tmp_path):
    mod = importlib.import_module(f"unroll3d.bench.{name}")
    assert callable(mod.run) and callable(mod.main)
    args = mod.build_parser().parse_args(_smoke_argv(name, str(tmp_path / "x.csv")))
    assert str(args.out).endswith("x.csv")


def test_rules_call_the_verb_with_flags_the_parsers_know():
    commands = _rule_commands()
    assert sorted(commands) == sorted(NAMES)
    for name, cmd in commands.items():
        assert "python benchmarks/" not in cmd
        known = importlib.import_module(f"unroll3d.bench.{name}").build_parser()
        known = set(known._option_string_actions)
        flags = set(re.findall(r"(?<!\S)--[\w-]+", cmd.split(f"bench {name}", 1)[1]))
        assert flags and flags <= known, (name, flags - known)


@pytest.mark.parametrize("name", NAMES)
def test_scripts_stay_thin_entry_points(name):
    script = ROOT / "benchmarks" / f"bench_{name}.py"
    assert f"from unroll3d.bench.{name} import main" in script.read_text()
    res = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    )
    assert "--out" in res.stdout


def test_memory_helpers_are_in_gb():
    from unroll3d.bench.memory import gb, peak_rss_gb, rss_gb

    assert gb(2.5e9) == 2.5
    rss, peak = rss_gb(), peak_rss_gb()
    if rss is None:
        pytest.skip("no /proc/self/status here")
    assert 0.001 < rss <= peak < 1000  # this process: between a MB and a TB


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def test_physics_runs_tiny_and_writes_gb_columns(tmp_path):
    from unroll3d.bench import main

    out = tmp_path / "bench_physics.csv"
    argv = ["physics", "--sizes", "8", "--views", "4", "--backends", "rtk", "--coils", "2",
            "--repeats", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    header = _header(out)
    assert {"peak_memory_gb", "cuda_free_drop_gb"} <= set(header)
    assert not [h for h in header if h.endswith("_mb")]
    rows = list(csv.DictReader(open(out)))
    assert {r["modality"] for r in rows} == {"cbct", "mri"}
    for r in rows:
        if r["peak_memory_gb"] != "":
            assert 0 <= float(r["peak_memory_gb"]) < 1  # an 8³ op takes far less than a GB


def test_partition_runs_tiny_and_writes_gb_columns(tmp_path):
    from unroll3d.bench import main

    out = tmp_path / "bench_partition.csv"
    argv = ["partition", "--sizes", "16", "--patch", "8", "--op", "blur", "--channels",
            "2", "2", "2", "2", "--blocks", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    header = _header(out)
    gb_cols = [f"{k}_memory_gb" for k in ("peak", "base", "step", "image", "op")]
    assert set(gb_cols) <= set(header)
    assert not [h for h in header if h.endswith("_mb")]
    rows = list(csv.DictReader(open(out)))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    # x*, y, x₀ at 16³ float32: 3 · 16³ · 4 B
    assert float(rows[0]["image_memory_gb"]) == pytest.approx(3 * 16**3 * 4 / 1e9, abs=1e-6)
    assert all(float(r["ratio_step"]) > 0 for r in rows)  # ratios stay ratios


def test_steps_and_partition_column_names():
    from unroll3d.bench import partition, physics, steps

    assert "peak_memory_gb" in steps.FIELDS
    assert "cuda_free_drop_gb" in physics.FIELDS
    for fields in (steps.FIELDS, physics.FIELDS, partition.FIELDS):
        assert not [f for f in fields if f.endswith("_mb")]
