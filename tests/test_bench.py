"""The benchmarks as modules behind ``unroll3d bench <name>``: the verb lists them without loading
torch, each parser accepts what its workflow rule passes (smoke config), the ``benchmarks/``
scripts still run, and the CSVs name memory in GB (``*_memory_gb``, ``cuda_free_drop_gb``).
No timing assertions."""

from __future__ import annotations

import csv
import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unroll3d.bench import BENCHMARKS
from unroll3d.physics import initial_reconstruction

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "steps",
    "physics",
    "partition",
    "normal",
    "normal_floor",
    "normal_transfer",
    "inr",
    "study",
    "cost",
    "precision_ab",
    "gpu_check",
    "accuracy",
    "gpu_accuracy",
]
#: the benchmarks the workflow runs (gpu_check and gpu_accuracy are `make gpu-check` and
#: `make gpu-accuracy` on one CUDA card; cost reads gpu_check's output: none is a rule; inr is a
#: library-level baseline benchmark, not yet in the workflow; study is `make study`, which runs
#: the workflow itself; precision_ab retrains on a prepared run's data, by hand)
RULE_NAMES = [
    n
    for n in NAMES
    if n
    not in ("gpu_check", "gpu_accuracy", "cost", "normal_transfer", "inr", "study", "precision_ab")
]


def _smoke_argv(name: str, out: str) -> list[str]:
    """What ``workflow/rules/bench.smk`` passes to ``unroll3d bench <name>`` under the smoke
    config (threads: the rules' 2): the config values it reads as ``--config-json``."""
    from unroll3d.bench.settings import bench_config
    from unroll3d.config import dumps, load_config

    cfg = load_config(ROOT / "config" / "smoke.yaml")
    if name == "accuracy":
        return ["--task", "cbct", "--setting", "v30", "--config-json", "{}",
                "--partition", "p.pt", "--partition-H", "h.pt", "--normal", "v30.pt",
                "--data", "walnut5.pt", "--patches", "4", "--summary", "x.md", "--threads", "2",
                "--out", out]  # fmt: skip
    threads = [] if name == "steps" else ["--threads", "2"]
    return ["--config-json", dumps(bench_config(cfg, name)), *threads, "--out", out]


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


def test_registry_lists_every_benchmark():
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
def test_each_benchmark_is_a_typed_function_behind_a_cli_module(name):
    """The library module has a ``run_<name>`` and no parser; the parser and ``main(argv)`` are
    in ``unroll3d.cli.bench.<name>``."""
    import inspect

    lib = importlib.import_module(f"unroll3d.bench.{name}")
    run = getattr(lib, f"run_{name}")
    params = inspect.signature(run).parameters
    assert "argv" not in params and "args" not in params
    assert not hasattr(lib, "build_parser") and not hasattr(lib, "main")
    cli = importlib.import_module(f"unroll3d.cli.bench.{name}")
    assert callable(cli.build_parser) and callable(cli.main)


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_parser_is_named_and_described_by_its_module(name):
    """``unroll3d bench NAME``'s usage line names it; its description is the first paragraph of
    the benchmark module's docstring."""
    lib = importlib.import_module(f"unroll3d.bench.{name}")
    parser = importlib.import_module(f"unroll3d.cli.bench.{name}").build_parser()
    assert parser.prog == f"unroll3d bench {name}"
    assert parser.description == lib.__doc__.split("\n\n")[0]


def test_the_gpu_checks_run_tiny_on_the_cpu_and_refuse_full_size_without_cuda():
    """The library's side of the refusal (the CLI's usage line: tests/test_cli_errors.py)."""
    import torch

    from unroll3d.bench.gpu_recorder import NO_CUDA, mode_device

    assert mode_device(True).type == "cpu"
    if torch.cuda.is_available():
        assert mode_device(False).type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="--tiny") as exc:
            mode_device(False)
        assert str(exc.value) == NO_CUDA


def _parse(name: str, argv: list[str]):
    from unroll3d.cli.bench.common import parse_bench_args

    mod = importlib.import_module(f"unroll3d.cli.bench.{name}")
    if hasattr(mod, "from_config"):
        return parse_bench_args(mod.build_parser(), argv, name, mod.from_config)
    return mod.build_parser().parse_args(argv)


# the values the smoke config sets, as each benchmark's options (what the loose flags said)
SMOKE_VALUES = {
    "steps": dict(sizes=[16, 32], views=30, channels=[4, 8, 8, 8], blocks=1),
    "physics": dict(sizes=[16, 32], views=[30], threads=2),
    "partition": dict(sizes=[16, 32], patch=16, op="blur", views=30, nc=[4, 8, 8, 8], nb=1),
    "normal": dict(volumes=[32], patches=[16], views=30, threads=2),
    "normal_floor": dict(size=16, views=[30], steps=50, rows=256, geometries=["toy"], seed=0),
    "accuracy": dict(task="cbct", setting="v30", patches=4, seed=None),
}


@pytest.mark.parametrize("name", RULE_NAMES)
def test_the_verb_reads_the_smoke_rule_config_into_its_options(name, tmp_path):
    args = _parse(name, _smoke_argv(name, str(tmp_path / "x.csv")))
    assert str(args.out).endswith("x.csv")
    for key, value in SMOKE_VALUES[name].items():
        assert getattr(args, key) == value, key


def test_flags_win_over_config_json_and_bad_values_are_one_line_errors(capsys):
    text = '{"benchmarks": {"sizes": [16, 32], "views": 30}}'
    args = _parse("physics", ["--config-json", text, "--views", "60", "--out", "x.csv"])
    assert (args.sizes, args.views) == ([16, 32], [60])
    with pytest.raises(SystemExit):
        _parse("physics", ["--config-json", '{"benchmarks": {"views": 0}}', "--out", "x.csv"])
    assert "config key benchmarks.views" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a key physics does not read would be silently ignored
        _parse("physics", ["--config-json", '{"benchmarks": {"patch": 8}}', "--out", "x.csv"])
    assert "reads none of ['benchmarks.patch']" in capsys.readouterr().err
    # steps needs --sizes, unless the config gives it
    args = _parse("steps", ["--config-json", text, "--out", "x.csv"])
    assert args.sizes == [16, 32]
    with pytest.raises(SystemExit):
        _parse("steps", ["--out", "x.csv"])


def test_options_that_mirror_a_config_key_take_the_schemas_default():
    """One place for each default: an option of a config value the workflow passes defaults to
    the schema's (the options left out keep quick standalone sizes: see their help)."""
    from unroll3d.bench.settings import KEYS, schema_default
    from unroll3d.config import section_defaults

    b, model = section_defaults("benchmarks"), section_defaults("model")
    assert schema_default("benchmarks.normal_floor.rows") == b["normal_floor"]["rows"]
    assert schema_default("seed") == 0
    steps = _parse("steps", ["--sizes", "8", "--out", "x"])
    assert (steps.views, steps.channels, steps.blocks) == (b["views"], model["channels"],
                                                            model["blocks"])  # fmt: skip
    part = _parse("partition", [])
    assert (part.op, part.views) == (b["partition_operator"], b["views"])
    assert _parse("normal", ["--out", "x"]).views == b["views"]
    floor = _parse("normal_floor", ["--out", "x"])
    nf = b["normal_floor"]
    assert (floor.size, floor.rows, floor.geometries) == (nf["size"], nf["rows"], nf["geometries"])
    assert floor.views == [b["views"]] and floor.seed == schema_default("seed")
    # the keys each rule passes: every one is a schema key with a default
    for keys in KEYS.values():
        for key in keys:
            schema_default(key)


def test_rules_call_the_verb_with_flags_the_parsers_know():
    commands = _rule_commands()
    assert sorted(commands) == sorted(RULE_NAMES)
    for name, cmd in commands.items():
        assert "python benchmarks/" not in cmd
        known = importlib.import_module(f"unroll3d.cli.bench.{name}").build_parser()
        known = set(known._option_string_actions)
        flags = set(re.findall(r"(?<!\S)--[\w-]+", cmd.split(f"bench {name}", 1)[1]))
        assert flags and flags <= known, (name, flags - known)


@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_answers_help_through_the_verb(name, capsys):
    """`unroll3d bench NAME --help` is each benchmark's one entry point (no copies under
    benchmarks/)."""
    from unroll3d.cli.bench import main as bench_main

    with pytest.raises(SystemExit) as stop:
        bench_main([name, "--help"])
    assert stop.value.code == 0
    assert "--out" in capsys.readouterr().out
    assert not (ROOT / "benchmarks" / f"bench_{name}.py").exists()


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
    from unroll3d.cli.bench import main

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
    from unroll3d.cli.bench import main

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


# ---- gpu_check (make gpu-check) -------------------------------------------------------------
def test_walnut_vectors_are_the_scanner_at_501():
    """At 501³ the check's geometry is the Walnut scanner: 66.0014 mm source-axis, 199.0062 mm
    source-detector, 0.1496 mm pixels on 972 × 768, 0.1 mm voxels. As on the real scanner, the
    field of view is a cylinder of about 17–19 mm radius (768 × 0.1496 mm / magnification 3.015 ≈
    38 mm across) inside the 50.1 mm grid: points on it land on the detector in every view.
    Smaller sizes keep the field of view."""
    import numpy as np

    from unroll3d.bench.gpu_geometry import walnut_vectors
    from unroll3d.data.walnut import project_point

    vec, voxel, det = walnut_vectors(30, 501)
    assert det == (972, 768) and voxel == pytest.approx(0.1)
    s, d, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    assert np.linalg.norm(s, axis=1) == pytest.approx(66.0014)
    assert np.linalg.norm(d - s, axis=1) == pytest.approx(199.0062)
    assert np.linalg.norm(u, axis=1) == pytest.approx(0.1496)
    assert np.abs((u * v).sum(1)).max() < 1e-12
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        for z in (-14.0, 14.0):
            rc = project_point(vec, np.array([17 * np.cos(a), 17 * np.sin(a), z]), det)
            assert (rc >= 0).all() and (rc[:, 0] < det[0]).all() and (rc[:, 1] < det[1]).all()
    centre = project_point(vec, np.zeros(3), det)
    assert np.abs(centre - (np.array(det) - 1) / 2).max() < 5  # the 0.5° tilt moves it a little
    vec16, voxel16, det16 = walnut_vectors(30, 16)
    assert 16 * voxel16 == pytest.approx(501 * 0.1) and det16 == (31, 25)


def test_gpu_check_tiny_runs_every_section(tmp_path):
    """`make gpu-check TINY=1`: every section of the GPU check at toy sizes on the CPU, rows in
    the CSV and a summary naming the device; the agreement check reads a reference file."""
    import csv

    from unroll3d.cli.bench import main

    ref = tmp_path / "ref.pt"
    assert main(["gpu_check", "--tiny", "--write-reference", str(ref)]) == 0
    out = tmp_path / "gpu"
    assert main(["gpu_check", "--tiny", "--out-dir", str(out), "--reference", str(ref)]) == 0
    with open(out / "gpu_check.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["section"] for r in rows} == {
        "env",
        "tests",
        "projector",
        "normal_step",
        "network",
        "train",
        "train_loop",
        "profile",
        "inference",
    }
    assert not [r for r in rows if r["status"] in ("failed", "skipped") and r["section"] != "tests"]
    speedup = next(float(r["value"]) for r in rows if r["metric"] == "H / exact speed-up")
    assert speedup > 1.0
    trained = {r["case"].split(",")[0] for r in rows if r["metric"] == "time per micro-step"}
    assert trained == {"unrolled", "partition", "partition-H"}
    assert (out / "summary.md").read_text().startswith("# GPU check on CPU")

    # network: every shape in every mode that runs on the CPU, with FLOPs, ms and TFLOP/s;
    # compile is CUDA-only and recorded as not run, never timed
    net = [r for r in rows if r["section"] == "network"]
    flops = {r["case"]: float(r["value"]) for r in net if r["metric"].startswith("FLOPs")}
    assert len(flops) == 3 and all(f > 0 for f in flops.values())
    timed = [r for r in net if r["metric"].endswith(": throughput")]
    assert len(timed) == 3 * 5 and all(float(r["value"]) > 0 for r in timed)
    assert all(r["status"] == "info" for r in net if r["metric"].startswith("compiled"))
    # train_modes: partitioned training in bf16, contiguous and channels-last, in the train
    # rows' format, which the cost estimate reads as their own precision and layout
    from unroll3d.bench.cost import parse_setup

    modes = {
        (r["case"].split(",")[0], s.task, s.precision, s.layout)
        for r in rows
        if r["section"] == "train" and r["metric"] == "time per micro-step"
        for s in [parse_setup("train", r["case"], r["note"].split(";")[0])]
    }
    for variant in ("partition", "partition-H"):
        for task in ("cbct", "mri"):
            assert (variant, task, "bf16", "contiguous") in modes
            assert (variant, task, "bf16", "channels_last_3d") in modes
    loop = {r["case"].rsplit(", ", 1)[1] for r in rows if r["section"] == "train_loop"}
    assert loop == {"resident", "parked"}
    kinds = {r["metric"] for r in rows if r["section"] == "profile"}
    assert {"wall time of the micro-step", "convolution"} <= kinds


def test_network_flops_count_the_convolutions_forward_and_backward():
    """The FLOPs of the network section: one 3×3×3 convolution is 2·27·Cin·Cout per output voxel
    forward, as much again for the weight gradient and, when the input needs one, for the input
    gradient."""
    import torch

    from unroll3d.bench.gpu_network import kind_of, network_flops

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 3, 3, padding=1, bias=False)

        def _denoise(self, x, sigma):
            return self.conv(x)

    forward = 2 * 27 * 2 * 3 * (4 * 5 * 6)
    assert network_flops(One(), torch.rand(1, 2, 4, 5, 6), None) == 2 * forward
    x = torch.rand(1, 2, 4, 5, 6, requires_grad=True)
    assert network_flops(One(), x, None) == 3 * forward
    assert kind_of("aten::cudnn_convolution") == "convolution"
    assert kind_of("void cudnn::ops::nchwToNhwcKernel<float>") == "layout change"
    assert kind_of("aten::copy_") == "layout change" and kind_of("aten::fft_r2c") == "FFT"


def test_gpu_check_refuses_a_reference_of_another_size(tmp_path):
    """A reference file for another volume is a failed agreement row, not a silent pass."""
    import torch

    from unroll3d.bench.gpu_check import PROFILES
    from unroll3d.bench.gpu_projector import agreement
    from unroll3d.bench.gpu_recorder import Recorder

    rec = Recorder(tmp_path, 60, "tiny")
    ref = tmp_path / "ref.pt"
    torch.save({"n": 99, "views": 6}, ref)
    prof = dict(PROFILES["tiny"])
    agreement(rec, torch.device("cpu"), "rtk", prof, ref, use_rtk=False)
    assert rec.rows[-1]["status"] == "failed" and "99³" in rec.rows[-1]["note"]


def test_gpu_check_train_rows_of_a_step_that_fits_and_one_that_runs_out_of_memory(
    tmp_path, monkeypatch
):
    """A training case that fits gives its peak (with what was held before) and its time per
    micro-step; one that runs out of memory only its peak, status oom, with the message."""
    import torch
    import toys

    import unroll3d.models
    from unroll3d.bench.gpu_check import PROFILES
    from unroll3d.bench.gpu_recorder import Recorder
    from unroll3d.bench.gpu_samples import check_config
    from unroll3d.bench.gpu_train import train_case

    prof, cpu = dict(PROFILES["tiny"]), torch.device("cpu")
    rec = Recorder(tmp_path, 60, "tiny")
    args = ("cbct", prof["volume"], prof, "rtk", cpu, check_config(prof))
    assert train_case(rec, "partition", *args) == "ok"
    monkeypatch.setattr(unroll3d.models, "build_variant", lambda *a, **k: toys.OOMModel())
    assert train_case(rec, "partition", *args) == "oom"
    n, p = prof["volume"], "×".join(map(str, prof["patch"]))
    case = f"partition, cbct {n}×{n}×{n}, patch {p}"
    note = f"K={prof['K']}, DRUNet {prof['channels']}×{prof['blocks']}, fp32, batch 1"
    fits, timed, oom = rec.rows
    assert {k: fits[k] for k in ("section", "case", "metric", "unit", "status")} == dict(
        section="train", case=case, metric="peak memory", unit="GB", status="n/a"
    )  # no CUDA peak on the CPU
    assert fits["note"] == f"{note}; held before the step 0.00 GB; not tracked on the CPU"
    assert (timed["metric"], timed["unit"], timed["status"], timed["note"]) == (
        "time per micro-step", "s", "ok", note
    )
    assert timed["case"] == case and timed["value"] > 0
    assert (oom["case"], oom["metric"], oom["value"], oom["status"]) == (
        case, "peak memory", 0.0, "oom"
    )
    assert oom["note"] == f"{note}; OOM at volume {n}³, peak 0.00 GB"


def test_cost_estimate_counts_jobs_and_names_its_sources(tmp_path):
    """`unroll3d bench cost`: train hours = steps × accumulate × measured s/step; a variant whose
    measured training OOMs costs nothing; a variant without a GPU-check row of the same setup is
    "not measured", has no hours and is in no total (never the paper's s/step)."""
    from unroll3d.bench import cost

    gc = tmp_path / "gpu_check.csv"
    gc.write_text(
        "section,case,metric,value,unit,status,note\n"
        'train,"partition, mri 256×218×170, patch 8×128×128",time per micro-step,0.5,s,ok,'
        '"K=5, DRUNet [64, 128, 256, 512]×4, fp32, batch 1"\n'
        'train,"unrolled, mri 256×218×170, whole volume",peak memory,150,GB,oom,'
        '"K=5, DRUNet [64, 128, 256, 512]×4, fp32, batch 1; OOM"\n'
        'inference,"partition, mri 256×218×170, patch 8×128×128, refinement on",time,36,s,ok,\n'
    )
    from unroll3d.config import load_config

    config = load_config(ROOT / "config" / "config.yaml")
    config["tasks"] = ["mri"]
    config["variants"] = ["fdk", "postproc", "unrolled", "partition"]
    config["train"].update(steps=1000, accumulate=2, checkpoint_unrolled="none")
    config["evaluate"]["timing_steps"] = 4
    config["sweep"]["enabled"] = False
    rows = cost.estimate(config, cost.read_gpu_check([gc]))
    train = {(r["setting"], r["variant"]): r for r in rows if r["rule"] == "train"}
    assert train[("all", "partition")]["hours"] == pytest.approx(2000 * 0.5 / 3600, abs=1e-3)
    assert train[("all", "unrolled")]["hours"] == 0 and "OOM" in train[("all", "unrolled")]["basis"]
    postproc = train[("all", "postproc")]  # no GPU-check row: not measured, not the paper's
    assert postproc["hours"] is None and postproc["basis"].startswith("not measured")
    assert len(train) == 3  # one model for R5 and R10 × three learned variants
    ev = {(r["setting"], r["variant"]): r for r in rows if r["rule"] == "evaluate"}
    assert ev[("R5", "partition")]["hours"] == pytest.approx(16 * (36 + 4 * 0.5) / 3600, abs=1e-3)
    assert ev[("R5", "postproc")]["hours"] is None  # measured only for partition
    assert all(r["jobs"] == len(config["mri"]["splits"]["test"]) for r in ev.values())
    text = cost.summarise(rows, "unit")
    unknown = sum(r["hours"] is None for r in rows)
    assert f"**{unknown}**" in text and "not measured" in text.lower()

    # another precision or layout is another measurement
    config["train"]["bf16"] = True
    bf16 = {r["variant"]: r for r in cost.estimate(config, cost.read_gpu_check([gc]))}
    assert bf16["partition"]["hours"] is None
    config["train"].update(bf16=False, channels_last=True)
    cl = {r["variant"]: r for r in cost.estimate(config, cost.read_gpu_check([gc]))}
    assert cl["partition"]["hours"] is None
    config["train"].update(channels_last=False, share_across_settings=False)
    per = [r for r in cost.estimate(config, cost.read_gpu_check([gc])) if r["rule"] == "train"]
    assert len(per) == 2 * 3  # R5, R10 × three learned variants


def test_cost_reads_the_precision_and_layout_of_gpu_check_rows():
    """The first GPU checks' "fp32" is torch's default TF32 convolutions; "fp32 strict", "bf16
    network" and channels_last_3d are their own setups."""
    from unroll3d.bench.cost import parse_setup

    s = parse_setup("train", "partition-H, 501³, patch 8×384×384", "K=3, DRUNet [64, 128]×4, fp32")
    assert (s.variant, s.task, s.shape, s.patch) == (
        "partition-H",
        "cbct",
        (501,) * 3,
        (8, 384, 384),
    )
    assert (s.precision, s.layout, s.K, s.widths, s.blocks) == (
        "tf32",
        "contiguous",
        3,
        (64, 128),
        4,
    )
    m = parse_setup(
        "train",
        "unrolled, mri 256×218×170, whole volume",
        "K=5, bf16 network, channels_last_3d, checkpointed iterations",
    )
    assert (m.task, m.shape, m.patch, m.precision, m.layout, m.checkpointed) == (
        "mri",
        (256, 218, 170),
        None,
        "bf16",
        "channels_last_3d",
        True,
    )
    assert parse_setup("train", "x, 64³", "fp32 strict").precision == "fp32-strict"


def test_normal_transfer_error_is_zero_for_the_exact_H_and_grows_for_another_operator():
    """`unroll3d bench normal_transfer`: the held-out error of H on a sample's AᵀA is 0 when H is
    that AᵀA (a circular blur is exactly diagonal-circulant) and not for another operator."""
    import deepinv as dinv
    import torch

    from unroll3d.bench.normal_transfer import heldout_error, summary
    from unroll3d.normal import DiagCirculant

    n = 8
    g = torch.Generator().manual_seed(0)
    k = torch.rand((1, 1, 3, 3, 3), generator=g) + 0.5
    blur = dinv.physics.Blur(filter=k / k.sum(), padding="circular", use_fft=True)
    e = torch.zeros(1, 1, n, n, n)
    e[..., 0, 0, 0] = 1.0
    lam = torch.fft.rfftn(blur.A_adjoint_A(e)[0, 0]).to(torch.complex64)
    H = DiagCirculant(lam, torch.ones(n, n, n), (1, n, n, n))
    assert heldout_error(blur, H, (1, n, n, n), 1.0, probes=2) < 1e-5
    k2 = torch.rand((1, 1, 3, 3, 3), generator=g) + 0.5
    other = dinv.physics.Blur(filter=k2 / k2.sum(), padding="circular", use_fft=True)
    assert heldout_error(other, H, (1, n, n, n), 1.0, probes=2) > 1e-3
    rows = [
        {"is_fit_volume": True, "mask": "fixed", "rel_error": 0.5},
        {"is_fit_volume": False, "mask": "fixed", "rel_error": 0.7},
        {"is_fit_volume": False, "mask": "fresh", "rel_error": 0.8},
    ]
    assert summary(rows).endswith(
        "fit volume 0.500 (1); other volumes, fixed masks 0.700 (1); fresh masks 0.800 (1)"
    )


# ---- accuracy (unroll3d bench accuracy) and gpu_accuracy (make gpu-accuracy) ----------------
ACCURACY_MEASURES = {
    ("", "psnr_x0"), ("", "h_rel_error_gt"), ("", "h_grad_ratio_gt"),
    ("partition", "h_grad_ratio_predicts_harmless"),
} | {
    (m, f"psnr_{k}") for m in ("partition", "partition-H")
    for k in ("first_pass", "exact_refine", "H_refine", "anchored_H_refine")
} | {(m, f"h_{e}_{s}_refine") for m in ("partition", "partition-H")
     for e in ("rel_error", "grad_ratio") for s in ("exact", "H")}  # fmt: skip


def _exact_blur_case(n=16):
    """A circular blur (AᵀA exactly diagonal × circulant) with its exact H (scaling 1)."""
    import deepinv as dinv
    import torch
    from toys import ToySample, toy_volume

    from unroll3d.normal import NormalFit

    g = torch.Generator().manual_seed(0)
    k = torch.rand((1, 1, 3, 3, 3), generator=g) + 0.5
    blur = dinv.physics.Blur(filter=k / k.sum(), padding="circular", use_fft=True)
    x = toy_volume((n, n, n))
    y = blur.A(x) + 0.01 * torch.randn(x.shape, generator=g)
    e = torch.zeros(1, 1, n, n, n)
    e[..., 0, 0, 0] = 1.0
    lam = torch.fft.rfftn(blur.A_adjoint_A(e)[0, 0]).to(torch.complex64)
    H = NormalFit(lam, torch.ones(n, n, n), (1, n, n, n), grid=(n, n, n), scaling=1.0)
    return ToySample(x, y, blur, {"op_norm_sq": 1.0, "volume": "blur"}), H


def test_accuracy_with_an_exact_H_refinements_agree_and_H_error_is_zero():
    """Where AᵀA is exactly diagonal × circulant, exact and H refinement give the same PSNR for
    both models, every α gives it too, and H's error on the iterates and at the truth is ~0."""
    import torch
    from toys import toy_config

    from unroll3d.bench.accuracy import headline, measure_volume
    from unroll3d.models import build_variant

    torch.set_num_threads(1)
    sample, H = _exact_blur_case()
    cfg = toy_config()
    torch.manual_seed(0)
    models = {v: build_variant(v, "cbct", cfg, lipschitz=1.0).eval() for v in MODELS_AH}
    rows = measure_volume(
        models, "cbct", "v30", "blur", cfg, sample, H, 1.0, patches=2, alphas=(0, 0.5, 1),
        log=lambda *a: None,
    )  # fmt: skip
    assert {(r["model"], r["measure"]) for r in rows} >= ACCURACY_MEASURES
    val = {(r["model"], r["measure"], r["k"], r["alpha"]): r["value"] for r in rows}
    for m in MODELS_AH:
        for refine in ("psnr_H_refine", "psnr_anchored_H_refine"):
            assert val[(m, "psnr_exact_refine", "", "")] == pytest.approx(
                val[(m, refine, "", "")], abs=1e-4
            )
    mix = [r["value"] for r in rows if r["measure"] == "psnr_mix"]
    assert len(mix) == 3 and max(mix) - min(mix) < 1e-4
    errors = [r["value"] for r in rows if r["measure"].startswith("h_")
              and r["measure"] != "h_grad_ratio_predicts_harmless"]  # fmt: skip
    assert errors and max(errors) < 1e-4
    h = headline(rows)
    assert abs(h["h_refine_cost_db"]) < 1e-4 and h["harmless"] is True


MODELS_AH = ("partition", "partition-H")


def test_accuracy_on_tiny_trained_models_writes_every_row(tmp_path):
    """Tiny trained partition / partition-H models (a masked blur, fitted H): every row is there
    and finite, the exact-step iterates reproduce the model's own patch output, the CSV and the
    summary are written, and the claims table's H row states the measured cause."""

    import torch
    from toys import loader, make_job, toy_config, toy_H

    import unroll3d.engine.model_file as model_file
    import unroll3d.engine.train as tr
    from unroll3d.bench import accuracy
    from unroll3d.partition import PartitionedPhysics
    from unroll3d.report.claims import FAILS, claim_close, collect_claims
    from unroll3d.report.records import EvalRecord
    from unroll3d.utils import atomic_write_csv

    torch.set_num_threads(1)
    cfg = toy_config(steps=3)
    sample = loader("toy0")
    H = toy_H(sample)
    models = {}
    for v in MODELS_AH:
        job = make_job(tmp_path, v, cfg, name=v, H=H if v == "partition-H" else None)
        assert tr.train(job)["status"] == "ok"
        models[v], _ = model_file.load_trained(job.out, "cbct", cfg)
    alphas = (0.0, 0.3, 1.0)
    rows = accuracy.measure_volume(
        models, "cbct", "v30", "toy0", cfg, sample, H, sample.meta["op_norm_sq"], patches=2,
        alphas=alphas, log=lambda *a: None,
    )  # fmt: skip
    assert {(r["model"], r["measure"]) for r in rows} >= ACCURACY_MEASURES
    assert all(math.isfinite(r["value"]) for r in rows)
    for m in MODELS_AH:
        for meas in ("h_rel_error_H_refine", "h_grad_ratio_exact_refine"):
            ks = sorted(r["k"] for r in rows if r["model"] == m and r["measure"] == meas)
            assert ks == [0, 1]
    assert sorted(r["alpha"] for r in rows if r["measure"] == "psnr_mix") == list(alphas)
    # the diagnostic's exact-step iterates are the model's own on that patch
    model, img, start, patch = models["partition"], tuple(sample.x.shape[1:]), (4, 0, 8), (8,) * 3
    x0 = initial_reconstruction(sample.physics, sample.y)
    op = H.operator(img).restrict(start, patch)
    _, last = accuracy.iterate_errors(
        model, sample.physics, img, start, patch, sample.y, sample.x, x0, op, 1.0, "exact"
    )
    pp = PartitionedPhysics(sample.physics, img, start, patch, sample.y, sample.x, x_init=x0)
    with torch.no_grad():
        assert torch.allclose(last, model(pp.y_tilde, pp), atol=1e-5)
    # files and the claims table's cause
    out = tmp_path / "acc.csv"
    atomic_write_csv(out, rows, accuracy.FIELDS)
    back = accuracy.read_rows([out, tmp_path / "absent.csv"])
    assert len(back) == len(rows)
    text = accuracy.summary(back)
    assert "Predictor" in text and "α-mixing" in text
    cells = {
        ("cbct", "v30", v): [EvalRecord("cbct", "v30", v, "toy0", psnr=p)]
        for v, p in (("partition", 30.0), ("partition-H", 28.0))
    }
    config = {"name": "t", "tasks": ["cbct"], "variants": list(MODELS_AH), "cbct": {"views": [30]}}
    claim = claim_close(cells, config, "cbct", "partition-H", "partition",
                        cause=accuracy.cause_text(back, "cbct"))  # fmt: skip
    assert claim.verdict == FAILS
    assert "H refinement costs" in claim.why and "error/gradient ratio" in claim.why
    rows_claims = collect_claims(cells, config, bench_accuracy=[out])
    h_row = next(c for c in rows_claims if c.claim.startswith("partition-H within"))
    assert "measured cause" in h_row.why


def test_gpu_accuracy_tiny_writes_finite_complete_outputs(tmp_path):
    """`make gpu-accuracy TINY=1`: both sections at toy sizes on the CPU: the ratio along
    gradient steps for both contexts and at the truth, both variants trained for the same budget
    and measured with exact and H refinement, every value finite, a summary naming the device."""
    from unroll3d.bench import gpu_accuracy
    from unroll3d.cli.bench import main

    out = tmp_path / "gpu-accuracy-tiny"
    argv = ["gpu_accuracy", "--tiny", "--out-dir", str(out), "--train-s", "1"]
    assert main(argv) == 0
    with open(out / "gpu_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(math.isfinite(float(r["value"])) for r in rows)
    assert all(r["device"].startswith("CPU") for r in rows)
    got = {(r["model"], r["measure"]) for r in rows}
    ks = gpu_accuracy.PROFILES["tiny"]["ratio_steps"]
    for context in ("truth context", "FDK context"):
        steps = [r for r in rows if r["model"] == context and r["measure"] == "h_grad_ratio_steps"]
        assert sorted(int(r["k"]) for r in steps) == list(range(ks))
    assert ACCURACY_MEASURES <= got
    for variant in MODELS_AH:
        assert {(variant, "train_steps"), (variant, "train_loss_last")} <= got
    alphas = sorted(float(r["alpha"]) for r in rows if r["measure"] == "psnr_mix")
    assert alphas == list(gpu_accuracy.ALPHAS)
    text = (out / "summary.md").read_text()
    assert text.startswith("# GPU accuracy check on CPU") and "Predictor" in text


def test_each_rule_passes_only_the_config_values_its_benchmark_reads():
    """`--rerun-triggers params`: the rule's params are bench_config(config, name), so an edit
    reruns exactly the benchmarks that read the key (benchmarks.patch: partition and normal)."""
    import copy

    from unroll3d.bench.settings import KEYS, bench_config
    from unroll3d.config import load_config

    cfg = load_config(ROOT / "config" / "smoke.yaml")
    edits = {
        "benchmarks.patch": (["benchmarks", "patch"], 8, {"partition", "normal"}),
        "model.blocks": (["model", "blocks"], 2, {"steps", "partition"}),
        "seed": (["seed"], 7, {"normal_floor"}),
        "train.steps": (["train", "steps"], 9, set()),
    }
    for key, (path, value, expected) in edits.items():
        edited = copy.deepcopy(cfg)
        node = edited
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        changed = {n for n in KEYS if bench_config(edited, n) != bench_config(cfg, n)}
        assert changed == expected, key
    text = (ROOT / "workflow" / "rules" / "bench.smk").read_text()
    for name in KEYS:  # and each rule passes exactly that
        assert f'config=bench_config_json("{name}")' in text, name
