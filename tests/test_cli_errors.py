"""Bad input to a verb gives one line naming the problem, before any work:
a YAML syntax error names the file and line, a device the machine lacks is named, an output
under a path that is a file stops the verb before it starts."""

import importlib

import pytest
import torch

from unroll3d import cli
from unroll3d.config import ConfigError, load_config
from unroll3d.engine.device import DeviceError, resolve_device

BAD_YAML = "name: x\nseed: [1, 2\ntasks: [cbct]\n"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    with pytest.raises(ConfigError, match=rf"config file {bad}: line 3, column 6 is not valid YAML"):
        load_config(bad)
    argv = ["--task", "mri", "--setting", "R5", "--variant", "fdk", "--train", "x"]
    assert cli.main(["report", "--config", str(bad), "--results", str(tmp_path)]) == 1
    assert f"config file {bad}: line 3" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as err:
        cli.main(["train", *argv, "--out", str(tmp_path / "m.pt"), "--config", str(bad)])
    assert f"config file {bad}: line 3" in str(err.value) and "\n" not in str(err.value)


def test_cuda_without_cuda_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="'gpu' is not a device"):
        resolve_device("gpu")
    assert resolve_device("auto").type == "cpu"
    argv = ["--task", "mri", "--setting", "R5", "--variant", "fdk", "--train", "x"]
    smoke = str(importlib.import_module("test_workflow_reruns").ROOT / "config/smoke.yaml")
    code = cli.main(["train", *argv, "--config", smoke, "--out", str(tmp_path / "m.pt"),
                     "--device", "cuda"])  # fmt: skip
    assert code == 1
    assert _one_error_line(capsys).endswith("--device cuda: CUDA is not available on this "
                                            "machine; use --device cpu or auto")  # fmt: skip



@pytest.mark.parametrize("bench", ["gpu_check", "gpu_accuracy"])
def test_the_gpu_checks_without_cuda_stop_with_one_usage_line(monkeypatch, tmp_path, capsys, bench):
    """Without a GPU a GPU check stops before any work unless --tiny asks for the CPU toy run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", bench, "--out-dir", str(out)])
    assert err.value.code == 2 and not out.exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"unroll3d bench {bench}: error: no CUDA device: run on a GPU, or use --tiny "
                    "for the CPU toy check")  # fmt: skip


@pytest.mark.parametrize(
    ("verb", "option"),
    [
        ("train", "--out"),
        ("train", "--stats"),
        ("evaluate", "--out"),
        ("evaluate", "--slices"),
        ("fit-normal", "--out"),
        ("report", "--tables"),
        ("bench", "--out"),
        ("data", "--dest"),
        ("manifest", "--out"),
    ],
)
def test_an_output_under_a_file_fails_before_the_work(monkeypatch, tmp_path, capsys, verb, option):
    afile = tmp_path / "afile"
    afile.write_text("")
    module = importlib.import_module(cli.VERBS[verb][0])

    def work(argv):
        raise AssertionError("the verb started its work")

    monkeypatch.setattr(module, "main", work)
    target = afile / "sub" / "out.json"
    assert cli.main([verb, "--some", "x", option, str(target)]) == 1
    assert _one_error_line(capsys) == (
        f"unroll3d {verb}: error: {option} {target}: {afile} is a file, not a folder"
    )
    assert cli.main([verb, f"{option}={target}"]) == 1
    capsys.readouterr()


def test_the_manifest_names_a_broken_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    (tmp_path / "results").mkdir()
    code = cli.main(["manifest", "--results", str(tmp_path / "results"), "--config", str(bad)])
    assert code == 1
    assert f"config file {bad}: line 3, column 6 is not valid YAML" in _one_error_line(capsys)


@pytest.mark.parametrize("option", ["--steps", "--batch", "--heldout", "--eval-every",
                                    "--checkpoint-every", "--plateau-patience", "--threads"])  # fmt: skip
def test_fit_normal_refuses_counts_below_one(option, capsys):
    from unroll3d.cli.fit_normal import build_parser

    argv = ["--input", "x.pt", "--setting", "v30", "--out", "h.pt"]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, option, "0"])
    assert f"argument {option}: expected a whole number ≥ 1, got 0" in capsys.readouterr().err
    assert getattr(build_parser().parse_args([*argv, option, "3"]), option[2:].replace("-", "_")) == 3
