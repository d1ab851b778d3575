"""A fit-normal checkpoint is resumed only for the inputs it was written for.

A fit killed after its first checkpoint and rerun for another operator (a cone beam whose
detector pixels are 1.5× larger), with another lr, or over a corrupt checkpoint starts again
from step 0, says so in one line naming the file, and gives exactly the fresh fit's λ and m.
The same operator and settings still resume (and say so)."""

from __future__ import annotations

import pytest
import torch

import unroll3d.normal.fit as fit_module
from unroll3d.normal import fit_normal_operator
from unroll3d.physics import ConeBeam
from unroll3d.physics.conebeam import circular_vectors

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = (1, 8, 8, 8)
KW = dict(n_steps=12, heldout=2, eval_every=4, seed=1, progress=False)


def _cone(det_spacing: float) -> ConeBeam:
    """A tiny cone beam (12 views, 10 × 12 detector); det_spacing changes its geometry."""
    vectors = circular_vectors(12, 24.0, 12.0, det_spacing=det_spacing)
    return ConeBeam(torch.as_tensor(vectors), IMG[1:], det_shape=(10, 12))


def _killed_fit(physics, ckpt, kill_at: int, **kw) -> None:
    """A fit (checkpoints every 4 steps) killed right after writing its checkpoint of step
    ``kill_at``."""
    real_save = fit_module.atomic_torch_save

    def save_then_die(state, path):
        real_save(state, path)
        if state["step"] >= kill_at:
            raise KeyboardInterrupt

    fit_module.atomic_torch_save = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_normal_operator(physics, IMG, checkpoint=ckpt, checkpoint_every=4, **{**KW, **kw})
    finally:
        fit_module.atomic_torch_save = real_save
    assert torch.load(ckpt, weights_only=False)["step"] == kill_at


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.fixture(scope="module")
def fresh():
    """Uninterrupted fits without a checkpoint: the reference results."""
    return {
        "a": fit_normal_operator(_cone(1.0), IMG, **KW),
        "b": fit_normal_operator(_cone(1.5), IMG, **KW),
        "a_lr": fit_normal_operator(_cone(1.0), IMG, **{**KW, "lr": 0.02}),
    }


def test_a_checkpoint_of_another_operator_is_discarded_and_the_fit_restarts(
    tmp_path, capsys, fresh
):
    ckpt = tmp_path / "v30.ckpt"
    _killed_fit(_cone(1.0), ckpt, kill_at=4)  # a checkpoint at step 4, for operator a
    capsys.readouterr()
    rerun = fit_normal_operator(_cone(1.5), IMG, checkpoint=ckpt, checkpoint_every=4, **KW)
    err = capsys.readouterr().err
    assert f"discarding checkpoint {ckpt}" in err and "operator" in err
    assert "fitting from step 0" in err and "resuming" not in err
    assert _same(rerun, fresh["b"])  # refitted from step 0: exactly the fresh fit of b
    assert rerun[2]["sqnorm"] == fresh["b"][2]["sqnorm"]  # b's ‖A‖², not a's
    assert rerun[2]["sqnorm"] != pytest.approx(fresh["a"][2]["sqnorm"], rel=1e-3)


def test_a_changed_setting_refits_instead_of_failing(tmp_path, capsys, fresh):
    ckpt = tmp_path / "v30.ckpt"
    _killed_fit(_cone(1.0), ckpt, kill_at=4)
    capsys.readouterr()
    rerun = fit_normal_operator(
        _cone(1.0), IMG, checkpoint=ckpt, checkpoint_every=4, **{**KW, "lr": 0.02}
    )
    err = capsys.readouterr().err
    assert f"discarding checkpoint {ckpt}" in err and "config.lr 0.01 -> 0.02" in err
    assert _same(rerun, fresh["a_lr"])


def test_a_corrupt_checkpoint_is_one_line_and_discarded(tmp_path, capsys, fresh):
    ckpt = tmp_path / "v30.ckpt"
    _killed_fit(_cone(1.0), ckpt, kill_at=4)
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # truncated
    capsys.readouterr()
    rerun = fit_normal_operator(_cone(1.0), IMG, checkpoint=ckpt, checkpoint_every=4, **KW)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "checkpoint" in ln]
    assert len(lines) == 1 and f"unreadable checkpoint {ckpt}" in lines[0]
    assert _same(rerun, fresh["a"])
    ckpt.write_bytes(b"not a checkpoint at all")
    rerun = fit_normal_operator(_cone(1.0), IMG, checkpoint=ckpt, checkpoint_every=4, **KW)
    assert _same(rerun, fresh["a"])


def test_the_same_inputs_still_resume(tmp_path, capsys, fresh):
    ckpt = tmp_path / "v30.ckpt"
    _killed_fit(_cone(1.0), ckpt, kill_at=8)
    capsys.readouterr()
    rerun = fit_normal_operator(_cone(1.0), IMG, checkpoint=ckpt, checkpoint_every=4, **KW)
    err = capsys.readouterr().err
    assert f"resuming from {ckpt} at step 8/12" in err and "discarding" not in err
    assert _same(rerun, fresh["a"])


def _snakemake(workdir, configfile, *args, background=False):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    binary = Path(sys.executable).parent
    cmd = [
        str(binary / "snakemake"),
        "--snakefile",
        str(root / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        "1",
        *args,
    ]
    env = dict(os.environ, PATH=f"{binary}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    if background:  # its own process group, so that the test can kill the job like a user
        return subprocess.Popen(
            cmd, cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_workflow_fit_killed_then_rerun_for_another_operator_matches_a_fresh_fit(tmp_path):
    """Through Snakemake on the toy run: kill fit_normal after its first checkpoint, change the
    operator (the toy detector 30 × 24 -> 36 × 28 pixels), rerun: the fit restarts from step 0
    (logged) and its λ, m and ‖A‖² equal those of a fresh fit with the same command."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    import yaml

    from unroll3d.normal import load_normal

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config/smoke.yaml").read_text())
    config.update(tasks=["cbct"])
    config["benchmarks"]["enabled"] = False
    config["sweep"]["enabled"] = False
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = "results/normal/cbct/v30.pt"
    ckpt = tmp_path / "results/normal/cbct/v30.ckpt"
    job = _snakemake(tmp_path, configfile, target, background=True)
    deadline = time.monotonic() + 600
    while not ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "the fit wrote no checkpoint"
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(60)
    assert ckpt.exists() and not (tmp_path / target).exists()
    stale_step = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < stale_step < config["normal"]["steps"]

    config["cbct"]["toy"]["det_shape"] = [36, 28]  # another operator
    configfile.write_text(yaml.safe_dump(config))
    res = _snakemake(tmp_path, configfile, target, "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "results/logs/fit_normal/cbct/v30.log").read_text()
    assert "discarding checkpoint results/normal/cbct/v30.ckpt" in log
    assert "operator" in log and "fitting from step 0" in log and "resuming" not in log
    assert not ckpt.exists()

    # a fresh fit: the rule's own command, writing elsewhere, with no checkpoint to find
    command = next(
        ln for ln in (res.stdout + res.stderr).splitlines() if "unroll3d fit-normal" in ln
    )
    command = command[command.index("unroll3d device run") :].split(" > ")[0]
    command = command.replace("results/normal/cbct/v30", "fresh/v30")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(__import__('sys').executable).parent}:{env['PATH']}"
    fresh = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a, b = load_normal(tmp_path / target), load_normal(tmp_path / "fresh/v30.pt")
    assert torch.equal(a.fourier_filter, b.fourier_filter)
    assert torch.equal(a.spatial_mask, b.spatial_mask)
    assert a.scaling == b.scaling and a.operator_hash == b.operator_hash


def test_a_download_part_file_of_another_url_is_not_resumed(tmp_path):
    """The other resumable job, the download: an unpinned file (no checksum to catch it) must
    not be joined from the bytes of another URL's interrupted transfer and this one's rest."""
    from unroll3d.data import download as dl

    src = tmp_path / "src"
    src.mkdir()
    data = bytes(range(256)) * 64
    (src / "Walnut2.zip").write_bytes(data)
    dest = tmp_path / "raw"
    dest.mkdir()
    part = dest / ".Walnut2.zip.part"
    part.write_bytes(b"x" * 1000)  # an interrupted transfer of another file
    part.with_name(part.name + ".url").write_text("https://example.org/old/Walnut2.zip")
    entry = dl.RegistryEntry("Walnut2.zip", "Walnut2.zip", None)
    with dl.serve_directory(src) as base:
        got = dl.download(entry, dest, base_url=base, retries=0)
    assert got.read_bytes() == data
    assert not part.exists() and not part.with_name(part.name + ".url").exists()
