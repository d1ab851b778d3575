"""Config strings reach the rules' shell commands as literal words: a name, a report key, a
weights path or a config file name full of shell metacharacters (apostrophes, quotes, `$(...)`,
`;`, `&`, spaces) neither breaks bash nor runs anything."""

import json
import shlex
import subprocess

import pytest
import yaml
from test_workflow_reruns import ROOT, _run

NASTY = "it's \"odd\" $(touch PWNED) `touch PWNED2`; echo & | > <"


def _nasty_config(tmp_path):
    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    config["name"] = NASTY
    weights = tmp_path / f"w {NASTY}.pth"
    config["train"]["dpir_weights"] = str(weights)
    config["train"]["dpir_sha256"] = "0" * 64
    config["report"]["input_checksums"] = ["resources", f"in {NASTY}"]
    configfile = tmp_path / "it's a config; $(x).yaml"
    return config, configfile


def _shell_commands(stdout):
    return [ln.split("Shell command: ", 1)[1] for ln in stdout.splitlines() if "Shell command: " in ln]


def test_every_planned_command_parses_and_carries_the_strings_verbatim(tmp_path):
    config, configfile = _nasty_config(tmp_path)
    configfile.write_text(yaml.safe_dump(config))
    res = _run(tmp_path, configfile, "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    commands = _shell_commands(res.stdout)
    assert len(commands) > 30
    seen = {"config-json": 0, "name": 0, "weights": 0, "label": 0, "inputs": 0}
    for cmd in commands:
        check = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert check.returncode == 0, (cmd[:300], check.stderr)
        words = shlex.split(cmd)
        for i, word in enumerate(words[:-1]):
            value = words[i + 1]
            if word == "--config-json":
                seen["config-json"] += 1
                data = json.loads(value)
                if "name" in data:
                    assert data["name"] == NASTY
                    seen["name"] += 1
                if "train" in data and "dpir_weights" in data["train"]:
                    assert data["train"]["dpir_weights"] == config["train"]["dpir_weights"]
                    seen["weights"] += 1
            elif word in ("--config-label", "--config"):
                assert value == configfile.name or value.endswith(f"/{configfile.name}"), value
                seen["label"] += 1
            elif word == "--inputs":
                assert words[i + 1 : i + 3] == config["report"]["input_checksums"]
                seen["inputs"] += 1
    assert all(n > 0 for n in seen.values()), seen


@pytest.mark.slow
def test_a_real_job_runs_with_the_nasty_config(tmp_path):
    """One cheap real job (MRI toy data, then `train` of fdk, which reads the job config)
    succeeds with the config above; nothing in the strings was executed."""
    config, configfile = _nasty_config(tmp_path)
    config["tasks"] = ["mri"]
    config["benchmarks"]["enabled"] = False
    configfile.write_text(yaml.safe_dump(config))
    res = _run(tmp_path, configfile, "results/models/mri/R5/fdk.pt")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "results/models/mri/R5/fdk.pt").is_file()
    assert not list(tmp_path.rglob("PWNED*")) and not list(ROOT.rglob("PWNED*"))
