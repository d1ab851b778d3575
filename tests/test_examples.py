"""The examples gallery (examples/*.py) runs and its printed numbers are right: each example is
run as a user would run it, in a fresh Python process (one CPU thread), and the numbers it
prints are checked against what the method guarantees (exact identities to float precision,
the fit at its floor, the trained model above its initial estimate)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NUMBER = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"

pytestmark = pytest.mark.slow


def run_example(name: str) -> str:
    """Run ``examples/<name>`` in a fresh process; return its stdout (fails on a non-zero exit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def number(text: str, before: str, after: str = "") -> float:
    """The number printed right after ``before`` (a regex) and before ``after``."""
    m = re.search(before + r"\s*" + NUMBER + after, text)
    assert m, f"no number after {before!r} in:\n{text}"
    return float(m.group(1))


def test_every_example_is_tested():
    names = sorted(p.name for p in EXAMPLES.glob("[0-9]*.py"))
    tested = {"01_partition_your_operator.py", "02_fit_H_for_your_operator.py"}
    tested |= {"03_reconstruct_a_large_volume.py", "04_add_a_variant.py"}
    assert set(names) == tested, names


def test_partition_your_operator():
    out = run_example("01_partition_your_operator.py")
    assert number(out, r"partitioned forward vs global forward: relative error") < 1e-5
    assert abs(number(out, r"adjointness test .*?\(deepinv\):")) < 1e-4
    assert number(out, r"normal operator .*?relative error") < 1e-5
    # the patch problem is solvable; ignoring the context is not
    assert number(out, r"patch solved from y_tilde: relative error") < 0.05
    assert number(out, r"patch solved from raw y \(no context\): relative error") > 1.0
    assert number(out, r"blended identity vs x0: relative error") < 1e-6


def test_fit_H_for_your_operator():
    out = run_example("02_fit_H_for_your_operator.py")
    start = number(out, r"step\s+0: held-out relative error")
    fit = number(out, r"fit stopped at step \d+ \(plateau\); held-out relative error")
    floor = number(out, r"error floor of H for this operator:")
    assert floor > 0.1  # a masked blur is outside H's family
    assert fit < start - 0.05  # the fit improves on its impulse-response start...
    assert abs(fit - floor) < 0.02  # ...down to the floor
    assert abs(number(out, r"wrapper on 16 fresh probes: relative error") - fit) < 0.02
    assert number(out, r"saved and reloaded H vs the original: relative error") < 1e-6
    assert "fit loaded for another operator: refused (NormalFileError)" in out
    assert number(out, r"restricted H vs S H Sᵀ on a 6³ patch: relative error") < 1e-5
    assert number(out, r"circular blur \(exactly representable\): held-out relative error") < 1e-5


def test_reconstruct_a_large_volume():
    out = run_example("03_reconstruct_a_large_volume.py")
    assert number(out, r"identity through 27 windows: relative error") < 1e-6
    first = number(out, r"training loss: first 10 steps")
    last = number(out, r"last 10")
    assert last < first
    psnr_x0 = number(out, r"PSNR of x0")
    psnr_rec = number(out, r"partitioned reconstruction")
    assert psnr_rec > psnr_x0 + 5, (psnr_x0, psnr_rec)
    patch_mb = number(out, r"24³ patch", r" MB")
    whole_mb = number(out, r"whole 48³ volume", r" MB")
    assert whole_mb > 4 * patch_mb  # the graph grows with the volume (8x the voxels)


def test_add_a_variant():
    out = run_example("04_add_a_variant.py")
    assert "variants: ['learned-landweber']" in out
    first = number(out, r"training: 40 steps, loss")
    last = number(out, r"->")
    assert last < first
    untrained = number(out, r"untrained \(initial step sizes\) on the held-out volume: PSNR")
    psnr = number(out, r"evaluation on a held-out volume: PSNR")
    psnr_x0 = number(out, r"\(x0:")
    assert "status ok" in out
    assert psnr > untrained > psnr_x0, (psnr, untrained, psnr_x0)
