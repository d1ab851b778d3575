"""The walk of a patch size from the config to the partitioner: one normaliser
(``unroll3d.config.resolve_patch_size``), called where a patch enters (the config, once per key,
naming it; the library's partitioning classes, on their own argument) and by nobody else; the
default is the schema's only; the engine and the partitioner's grid pass the normalised tuple on."""

from __future__ import annotations

import ast
import copy
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from toys import toy_config, toy_sample

from unroll3d.config import ConfigError, read_yaml, resolve_patch_size, schema, validate
from unroll3d.engine import partitioning
from unroll3d.partition import PartitionedPhysics, PartitionedReconstructor
from unroll3d.partition.grid import spatial_sizes

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "unroll3d"


def _calls(fn, *codes) -> Counter:
    """Run ``fn()``; count the calls of each function in ``codes`` by (callee, caller)."""
    wanted = {c: c.co_name for c in codes}
    seen: Counter = Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in wanted:
            caller = frame.f_back.f_code.co_qualname.split(".<locals>")[0]  # a listcomp's too
            seen[(wanted[frame.f_code], caller)] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def test_a_wrong_patch_size_is_refused_once_at_the_config_with_the_key_named():
    smoke = read_yaml(ROOT / "config" / "smoke.yaml")
    ok = _calls(lambda: validate(copy.deepcopy(smoke)), resolve_patch_size.__code__)
    sweep = smoke["sweep"]
    keys = 2 + (len(sweep["cbct"]) + len(sweep["mri"]) if sweep["enabled"] else 0)
    assert ok == Counter({("resolve_patch_size", "check_patch_sizes"): keys})  # once per key
    for bad, problem in (
        ([8, 16, 99], "patch [8, 16, 99] does not fit in volumes of 24×24×24 voxels"),
        ([0, 8, 8], "patch entry 0 is neither a size ≥ 1 nor -1 (the whole axis)"),
    ):
        cfg = copy.deepcopy(smoke)
        cfg["cbct"]["patch_size"] = bad
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert str(err.value) == f"config key cbct.patch_size: {problem}"
    cfg = copy.deepcopy(smoke)
    cfg["sweep"]["mri"][1] = [8, -1, 40]
    with pytest.raises(ConfigError, match=r"^config key sweep.mri\[1\]: patch \[8, -1, 40\] "):
        validate(cfg)
    # -1 is resolved at the config: the job gets the whole axis, never -1
    cfg = copy.deepcopy(smoke)
    cfg["mri"]["patch_size"] = [8, -1, -1]
    assert validate(cfg)["mri"]["patch_size"] == [8, *cfg["mri"]["toy"]["shape"][1:]]


def test_the_library_entry_takes_an_int_cube_and_names_the_argument():
    assert spatial_sizes((1, 9, 10, 11), 4) == ((9, 10, 11), (4, 4, 4))
    assert spatial_sizes((12, 10), 4) == ((12, 10), (4, 4))
    assert spatial_sizes((2, 9, 10, 11), (3, -1, None)) == ((9, 10, 11), (3, 10, 11))
    with pytest.raises(ValueError, match=r"^patch_size: patch \[4, 4, 12\] does not fit in vol"):
        PartitionedReconstructor(lambda y, physics, **kw: y, (1, 9, 10, 11), (4, 4, 12))
    with pytest.raises(
        ValueError, match=r"^patch_size: a patch needs 3 entries, one per axis; got 4\.5$"
    ):
        spatial_sizes((9, 9, 9), 4.5)


def test_the_engine_hands_the_config_patch_down_and_nothing_checks_it_again():
    """One training job's worth of partitioning (the partitioner, three training draws, one
    inference) normalises the patch once, at the partitioner's entry: the engine does not, the
    grid and the corner draws take the normalised tuple, and only the patch problems built
    along the way (PartitionedPhysics, a public class of its own) read their argument."""
    sample = toy_sample()
    cfg = toy_config()
    g = torch.Generator().manual_seed(0)
    base = lambda y, physics, **kw: physics.A_adjoint(y)  # noqa: E731

    def job():
        part = partitioning.make_partitioner(base, "cbct", cfg, tuple(sample.x.shape[1:]))
        for _ in range(3):
            part.training_pair(sample.y, sample.physics, sample.x, generator=g)
        part(sample.y, sample.physics, refine=False)

    seen = _calls(job, resolve_patch_size.__code__, spatial_sizes.__code__)
    entry = ("spatial_sizes", PartitionedReconstructor.__init__.__qualname__)
    patch_problem = ("spatial_sizes", PartitionedPhysics.__init__.__qualname__)
    assert seen[entry] == 1
    assert set(seen) == {entry, patch_problem, ("resolve_patch_size", "spatial_sizes")}
    assert seen[("resolve_patch_size", "spatial_sizes")] == 1 + seen[patch_problem]


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text())


def _callers(name: str) -> set[str]:
    """``file::function`` of every call of ``name`` in the package's source."""
    out = set()
    for rel, tree in _sources():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    called = node.func.id if isinstance(node.func, ast.Name) else None
                    called = node.func.attr if isinstance(node.func, ast.Attribute) else called
                    if called == name:
                        out.add(f"{rel}::{fn.name}")
    return out


def test_only_the_doors_call_the_normaliser_and_no_module_has_a_default_of_its_own():
    # the config (once per key) and the library's entry; the engine never normalises again
    assert _callers("resolve_patch_size") == {
        "config/patches.py::check_patch_sizes",
        "partition/grid.py::spatial_sizes",
    }
    assert _callers("spatial_sizes") == {
        "partition/grid.py::patch_grid",
        "partition/grid.py::sample_patch_start",
        "partition/grid.py::blend_normaliser",
        "partition/reconstructor.py::__init__",
        "partition/physics.py::__init__",
    }
    # no fallback patch size outside the schema: no .get("patch_size", <default>), no `or`
    fallbacks = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "patch_size"
            ):
                fallbacks.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
                if "patch_size" in ast.unparse(node.values[0]):
                    fallbacks.append(f"{rel}:{node.lineno}")
    assert not fallbacks, f"patch_size fallbacks outside the schema: {fallbacks}"
    tasks = schema()["properties"]
    assert tasks["cbct"]["properties"]["patch_size"]["default"] == [8, 384, 384]
    assert tasks["mri"]["properties"]["patch_size"]["default"] == [8, 128, 128]
