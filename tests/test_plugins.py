"""The config key ``plugins`` (unroll3d.plugins): a user's module registers a variant and its
builder, and config validation, the workflow's plan and the ``unroll3d train``/``evaluate`` jobs
all see it, without editing the package."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from unroll3d import cli, plugins
from unroll3d import config as u3config
from unroll3d.config import ConfigError
from unroll3d.engine import checkpoint
from unroll3d.engine import train as engine_train
from unroll3d.models import BUILDERS
from unroll3d.plugins import PluginError
from unroll3d.variants import BUILTIN_VARIANTS, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: example 04's learned Landweber as a plugin: K gradient steps with learned step sizes
PLUGIN = """
import torch
import torch.nn.functional as F
from deepinv.models import Reconstructor

from unroll3d import models, variants
from unroll3d.physics import initial_reconstruction


class LearnedLandweber(Reconstructor):
    def __init__(self, K, lipschitz):
        super().__init__()
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.step_raw = torch.nn.Parameter(torch.zeros(K))

    def set_tiling(self, tiler, stride=None):
        return self

    def forward(self, y, physics, x_init=None, **kwargs):
        x = initial_reconstruction(physics, y) if x_init is None else x_init
        aty = physics.A_adjoint(y)
        for eta in F.softplus(self.step_raw) / self.lipschitz:
            x = x - eta * (physics.A_adjoint_A(x) - aty)
        return x


models.BUILDERS["landweber"] = lambda c: LearnedLandweber(int(c.task_config["K"]), c.lipschitz)
variants.register(variants.VariantSpec(
    name="learned-landweber", kind="landweber", partition=True, use_H=False, learned=True,
    gpu=False, label={"mri": "Learned Landweber"},
))
"""
NAME = "learned-landweber"


def _forget_plugins(modules_before: set[str]) -> None:
    """The registry, the builders and the import record as a fresh process has them."""
    for name in set(VARIANTS) - BUILTIN_VARIANTS:
        del VARIANTS[name]
    BUILDERS.pop("landweber", None)
    plugins._LOADED.clear()
    for name in set(sys.modules) - modules_before:
        if name.startswith("unroll3d_plugin_") or name.startswith("my_methods"):
            del sys.modules[name]


@pytest.fixture
def fresh():
    """Each test starts and ends with the package's variants only; ``fresh()`` resets mid-test
    (what a new job process sees)."""
    before = set(sys.modules)
    _forget_plugins(before)
    yield lambda: _forget_plugins(before)
    _forget_plugins(before)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """tmp_path holding my_methods.py, as the working directory."""
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _smoke(**edits) -> dict:
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config.update(edits)
    return config


def test_a_file_path_and_a_module_name_both_register_the_variant(fresh, plugin_dir, monkeypatch):
    assert plugins.load(["my_methods.py"]) == [NAME]
    assert VARIANTS[NAME].kind == "landweber" and "landweber" in BUILDERS
    assert plugins.load(["./my_methods.py"]) == [NAME]  # the same file: imported once
    fresh()
    monkeypatch.syspath_prepend(str(plugin_dir))
    assert plugins.load(["my_methods"]) == [NAME]
    assert plugins.load(["my_methods"]) == [NAME]  # no second import, no clash


def test_validation_accepts_the_plugins_variant_only_with_plugins(fresh, plugin_dir):
    config = _smoke(variants=["fdk", NAME])
    with pytest.raises(ConfigError, match=rf"variants: unknown variant '{NAME}'.*under plugins"):
        u3config.validate(config)
    assert u3config.validate(_smoke())["plugins"] == []  # the schema's default
    config["plugins"] = ["my_methods.py"]
    filled = u3config.validate(config)
    assert filled["variants"] == ["fdk", NAME] and filled["plugins"] == ["my_methods.py"]
    assert u3config.validate(config)["variants"] == ["fdk", NAME]  # validating again is fine


@pytest.mark.parametrize(
    ("entry", "text", "message"),
    [
        ("no_such_module", None, r"'no_such_module' cannot be imported \(ModuleNotFoundError"),
        ("missing.py", None, r"'missing.py': no file .*missing.py \(a .py entry is a path"),
        ("empty.py", "x = 1\n", r"'empty.py' registered no variant"),
        ("broken.py", "def f(:\n", r"'broken.py' cannot be imported \(SyntaxError"),
        (
            "clash.py",
            PLUGIN.replace(f'name="{NAME}"', 'name="tv"'),
            r"'clash.py': variant 'tv' is already registered",
        ),
    ],
)
def test_a_bad_plugin_is_one_line_naming_it(fresh, tmp_path, monkeypatch, entry, text, message):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        (tmp_path / entry).write_text(text)
    config = _smoke(plugins=[entry])
    with pytest.raises(PluginError, match=rf"^config key plugins: {message}") as err:
        u3config.validate(config)
    assert "\n" not in str(err.value)
    assert set(VARIANTS) == BUILTIN_VARIANTS  # nothing half-registered


def test_a_failed_plugin_leaves_no_half_registered_variant(fresh, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = PLUGIN + "\nraise RuntimeError('after registering')\n"
    (tmp_path / "late.py").write_text(text)
    with pytest.raises(PluginError, match="RuntimeError: after registering"):
        plugins.load(["late.py"])
    assert NAME not in VARIANTS
    (tmp_path / "late.py").write_text(PLUGIN)
    assert plugins.load(["late.py"]) == [NAME]  # fixed: loads, no clash with the failed try


def test_only_jobs_of_a_plugins_variant_carry_the_list(fresh, plugin_dir):
    config = u3config.validate(_smoke(variants=["fdk", NAME], plugins=["my_methods.py"]))
    assert plugins.plugins_for(config, ["fdk"]) == {}
    assert plugins.plugins_for(config, [NAME]) == {"plugins": ["my_methods.py"]}
    assert plugins.plugins_for(config, ["fdk", NAME]) == {"plugins": ["my_methods.py"]}
    assert plugins.plugins_for({"plugins": []}, [NAME]) == {}


def test_cli_train_and_evaluate_a_plugins_variant(fresh, plugin_dir, mri_volume, capsys):
    """The job loads the plugin from its --config-json alone (a fresh registry, as in a new
    process), trains the learned step sizes and evaluates the model on the toy MRI volume."""
    config = _smoke(variants=["fdk", NAME], plugins=["my_methods.py"])
    config["mri"]["patch_size"] = [4, 6, 6]
    config["train"].update(steps=6, warmup_steps=1, lr=0.05)
    config = u3config.validate(config)
    job = {**u3config.job_config(config, "mri"), **plugins.plugins_for(config, [NAME])}
    fresh()  # what `unroll3d train` starts from in its own process
    model, stats = plugin_dir / "m.pt", plugin_dir / "m.json"
    common = ["--task", "mri", "--setting", "R2", "--variant", NAME, "--device", "cpu",
              "--threads", "1"]  # fmt: skip
    no_plugins = json.dumps({k: v for k, v in job.items() if k != "plugins"})
    with pytest.raises(SystemExit, match=rf"--variant '{NAME}' is not registered"):
        cli.main(["train", *common, "--config-json", no_plugins, "--train", mri_volume,
                  "--out", str(model)])  # fmt: skip
    assert not model.exists()
    argv = ["train", *common, "--config-json", u3config.dumps(job), "--train", mri_volume,
            "--out", str(model), "--stats", str(stats), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    steps = torch.load(model, weights_only=False)["state_dict"]["step_raw"]
    assert steps.shape == (config["mri"]["K"],) and steps.abs().max() > 0  # trained
    fresh()  # evaluate runs in a process of its own too
    out = plugin_dir / "eval.json"
    argv = ["evaluate", *common, "--config-json", u3config.dumps(job), "--model", str(model),
            "--train-stats", str(stats), "--sample", mri_volume, "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["variant"] == NAME and result["status"] == "ok"
    assert result["psnr"] > result["psnr_x0"]  # learned steps improve on the initial estimate
    capsys.readouterr()


#: run_fingerprint of _fingerprint_job's plain config with the code version pinned to "code", as
#: computed before the plugins' source joined it: checkpoints of the package's variants still resume
PLAIN_FINGERPRINT = "09c7ef0c53bf2922d92d64d9ac4af8c8"


def _fingerprint_job(config, out):
    return engine_train.TrainJob(
        task="cbct", setting="v30", variant="partition", config=config, train_paths=["toy0"],
        val_paths=[], out=out, loader=lambda path: None,
    )  # fmt: skip


def test_the_run_fingerprint_covers_the_plugins_source(fresh, plugin_dir, monkeypatch):
    """No plugins (absent or empty): the fingerprint as before; a listed plugin's source (a
    file's bytes, a module name's __file__) is part of it, and only its source."""
    monkeypatch.setattr(checkpoint, "_code_version", lambda: "code")
    plain = {"seed": 0, "train": {"steps": 6}}

    def fingerprint(**extra):
        return checkpoint.run_fingerprint(_fingerprint_job({**plain, **extra}, plugin_dir / "m.pt"))

    assert fingerprint() == fingerprint(plugins=[]) == PLAIN_FINGERPRINT
    by_file = fingerprint(plugins=["my_methods.py"])
    assert by_file != PLAIN_FINGERPRINT
    os.utime(plugin_dir / "my_methods.py", (1e9, 1e9))  # touched, same bytes: same fingerprint
    assert fingerprint(plugins=["my_methods.py"]) == by_file
    monkeypatch.syspath_prepend(str(plugin_dir))
    by_name = fingerprint(plugins=["my_methods"])
    (plugin_dir / "my_methods.py").write_text(PLUGIN.replace("K gradient", "K  gradient") + "#\n")
    assert fingerprint(plugins=["my_methods.py"]) not in (by_file, PLAIN_FINGERPRINT)
    assert fingerprint(plugins=["my_methods"]) not in (by_name, PLAIN_FINGERPRINT)
    assert fingerprint() == PLAIN_FINGERPRINT


def test_an_edited_plugin_restarts_training(fresh, plugin_dir, mri_volume, capsys):
    """A run of the plugin's variant killed at step 2 resumes while the plugin is unchanged;
    once its file is edited the checkpoint is discarded (the fingerprint's usual line)."""
    config = _smoke(variants=["fdk", NAME], plugins=["my_methods.py"])
    config["mri"]["patch_size"] = [4, 6, 6]
    config["train"].update(steps=4, warmup_steps=1, lr=0.05, checkpoint_every=1, val_every=100)
    config = u3config.validate(config)
    job_cfg = {**u3config.job_config(config, "mri"), **plugins.plugins_for(config, [NAME])}

    def job(name):
        return engine_train.TrainJob(
            task="mri", setting="R2", variant=NAME, config=job_cfg, train_paths=[mri_volume],
            val_paths=[], out=plugin_dir / f"{name}.pt", progress=False,
        )  # fmt: skip

    engine_train.train(job("same"), stop_at=2)
    engine_train.train(job("edited"), stop_at=2)
    capsys.readouterr()
    engine_train.train(job("same"))
    assert "resuming from" in capsys.readouterr().err
    (plugin_dir / "my_methods.py").write_text(PLUGIN + "# a changed step\n")
    engine_train.train(job("edited"))
    err = capsys.readouterr().err
    assert "discarding checkpoint" in err and "resuming" not in err


def _snakemake(workdir, configfile, *args):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
         str(workdir), "--configfile", str(configfile), "--cores", "1", *args],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def _planned(res) -> set[tuple[str, str | None]]:
    """(rule, {variant} wildcard or None) of each job a dry run plans (`rule all` aside)."""
    assert res.returncode == 0, res.stderr[-3000:]
    jobs: list[list] = []
    for line in res.stdout.splitlines():
        if rule := re.fullmatch(r"(?:local)?rule (\w+):", line):
            jobs.append([rule.group(1), None])
        elif jobs and (variant := re.match(r"    wildcards: .*\bvariant=([^,\s]+)", line)):
            jobs[-1][1] = variant.group(1)
    return {(rule, variant) for rule, variant in jobs if rule != "all"}


def test_the_workflow_plans_a_plugins_variant(tmp_path):
    """A dry run with the plugin's variant plans its train and evaluate jobs; their
    --config-json carries the plugins list, the package's variants' jobs do not (so changing
    the list reruns only the plugin's jobs and the report); without the key the plan stops."""
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    config = _smoke(tasks=["mri"], variants=["fdk", NAME], plugins=["my_methods.py"])
    config["benchmarks"]["enabled"] = False
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    res = _snakemake(tmp_path, configfile, "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    commands = [ln for ln in res.stdout.splitlines() if "unroll3d train " in ln or
                "unroll3d evaluate " in ln or "unroll3d report --results" in ln]  # fmt: skip
    mine = [c for c in commands if f"--variant {NAME}" in c]
    assert any("unroll3d train " in c for c in mine) and any(
        "unroll3d evaluate " in c for c in mine
    )
    for command in commands:
        has_list = '"plugins": ["my_methods.py"]' in command
        assert has_list == (f"--variant {NAME}" in command or "unroll3d report" in command)
    # every planned output made, the plugin file older; then the plugin edited: under the mtime
    # trigger exactly its variant's jobs rerun, and the report that reads it (and the manifest)
    made = time.time() - 1000
    for line in res.stdout.splitlines():
        if line.startswith("    output: "):
            for out in line.split(": ", 1)[1].split(", "):
                (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / out).touch()
                os.utime(tmp_path / out, (made, made))
    os.utime(tmp_path / "my_methods.py", (made - 10, made - 10))
    assert _planned(_snakemake(tmp_path, configfile, "-n", "--rerun-triggers", "mtime")) == set()
    os.utime(tmp_path / "my_methods.py", (made + 10, made + 10))
    res = _snakemake(tmp_path, configfile, "-n", "--rerun-triggers", "mtime")
    assert _planned(res) == {("train", NAME), ("evaluate", NAME), ("tables_figures", None),
                             ("manifest", None)}  # fmt: skip
    del config["plugins"]
    configfile.write_text(yaml.safe_dump(config))
    res = _snakemake(tmp_path, configfile, "-n")
    assert res.returncode != 0
    assert f"config key variants: unknown variant '{NAME}'" in res.stderr + res.stdout


def test_the_report_tabulates_a_plugins_variant(fresh, plugin_dir, capsys):
    """`unroll3d report` given the plugins list (as the workflow passes it) loads the plugin and
    puts its variant in the tables under the plugin's label; without the list it refuses it."""
    import test_report

    results = plugin_dir / "results"
    test_report.write_evals(results)
    test_report.write_bench(results)
    config = {**test_report.CONFIG, "variants": [*test_report.VARIANTS, NAME]}
    for src in sorted((results / "eval").glob("*/*/fdk/*.json")):  # fdk's files as the plugin's
        rec = {**json.loads(src.read_text()), "variant": NAME, "n_params": 3}
        rec["psnr"] += 4.25
        dst = src.parents[1] / NAME / src.name
        dst.parent.mkdir(exist_ok=True)
        dst.write_text(json.dumps(rec))
        (dst.with_suffix(".npz")).write_bytes(src.with_suffix(".npz").read_bytes())
    argv = ["report", "--results", str(results), "--only", "tables", "--config-json"]
    assert cli.main([*argv, json.dumps(config)]) == 1  # the variant is unknown without plugins
    assert f"unknown variant(s) ['{NAME}']" in capsys.readouterr().err
    assert cli.main([*argv, json.dumps({**config, "plugins": ["my_methods.py"]})]) == 0
    table = (results / "tables" / "table2_mri.md").read_text()
    row = next(line for line in table.splitlines() if "Learned Landweber" in line)
    assert "22.75" in row  # fdk's mean PSNR 18.5 + 4.25


@pytest.mark.slow
def test_the_workflow_runs_a_plugins_variant_and_reruns_only_it(tmp_path):
    """A real toy run of the plugin's variant next to fdk through Snakemake; adding a second
    plugin then reruns the plugin variant's train and evaluate jobs and nothing else."""
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    (tmp_path / "other.py").write_text(
        "from unroll3d import variants\nvariants.register(variants.VariantSpec("
        "'other-adjoint', 'adjoint', False, False, False, gpu=False))\n"
    )
    config = _smoke(tasks=["mri"], variants=["fdk", NAME], plugins=["my_methods.py"])
    config["benchmarks"]["enabled"] = False
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    volume = config["mri"]["splits"]["test"][0]
    targets = [f"results/eval/mri/R5/{v}/{volume}.json" for v in ("fdk", NAME)]
    res = _snakemake(tmp_path, configfile, *targets)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / targets[1]).read_text())
    assert result["status"] == "ok" and result["psnr"] > result["psnr_x0"]

    def planned():
        res = _snakemake(tmp_path, configfile, *targets, "-n", "-p", "--rerun-triggers", "params")
        assert res.returncode == 0, res.stderr[-2000:]
        return sorted(
            (ln.split("unroll3d ")[2].split()[0], ln.split("--variant ")[1].split()[0])
            for ln in res.stdout.splitlines()
            if "--variant " in ln and "device run" in ln
        )

    assert planned() == []
    config["plugins"].append("other.py")
    configfile.write_text(yaml.safe_dump(config))
    assert planned() == [("evaluate", NAME), ("train", NAME)]
