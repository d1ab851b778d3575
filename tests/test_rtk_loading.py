"""The fast loader of RTK's wrappers (:func:`unroll3d.physics.rtk._rtk`): it provides every RTK
name the backend uses, and a fresh process gets the same numbers through it as through the full
``from itk import RTK``. Not a timing test (the timings are in ``_rtk``'s docstring)."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from unroll3d.physics import rtk as rtk_module


def _names_used_from_loader() -> set[str]:
    """Every ``rtk.<name>`` in rtk.py, where ``rtk = _rtk()``."""
    tree = ast.parse(inspect.getsource(rtk_module))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "rtk"
        ):
            names.add(node.attr)
    return names


def test_loader_provides_every_name_rtk_py_uses():
    used = _names_used_from_loader()
    # the backend uses the geometry, the two Joseph projectors, FDK and the FFT factory hook
    assert {"ThreeDCircularProjectionGeometry", "JosephForwardProjectionImageFilter"} <= used
    assert "register_fft_factory" in used
    ns = rtk_module._rtk()
    assert ns.fast, "the fast loader fell back to the full `from itk import RTK`"
    missing = sorted(name for name in used if not hasattr(ns, name))
    assert not missing, f"_rtk() lacks {missing}"
    assert set(rtk_module.RTK_CLASSES) <= used  # nothing loaded that is not used
    for name in rtk_module.RTK_CLASSES:
        assert callable(getattr(ns, name).New), name


# One fresh process per path: 12³ forward/back projection and FDK, the classes it used, and which
# ITK libraries got loaded. `full` breaks the fast loader's table so that it falls back, with a
# warning, to the full `from itk import RTK`.
_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    import unroll3d.physics.rtk as m
    from unroll3d.physics.conebeam import circular_vectors
    if sys.argv[1] == "full":  # a wrapper layout we do not know: the loader must fall back
        m.RTK_CLASSES["JosephForwardProjectionImageFilter"] = ("rtkNoSuchPython", "rtkNoSuch")
    # (not simplefilter("error"): itk's SWIG modules segfault if their import-time
    # DeprecationWarning is raised, with or without the fast loader)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m._rtk()
    fell_back = [str(w.message) for w in caught if "fast loader" in str(w.message)]
    vec = circular_vectors(6, 40.0, 20.0, 1.0)
    b = m.RTKConeBeamBackend(vec, (12, 12, 12), 1.0, (16, 18))
    x = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    p = b.forward(x)
    np.savez(sys.argv[2], forward=p, backward=b.backward(p), fdk=b.fdk(p, hann_cut=0.8))
    ns = m._rtk()
    print(json.dumps({
        "fast": ns.fast,
        "fell_back": fell_back,
        "classes": {k: f"{v.__module__}.{v.__qualname__}" for k, v in vars(ns).items()
                    if k in m.RTK_CLASSES},
        "libraries": sorted(k for k in sys.modules
                            if k.startswith(("itk._ITK", "itk._RTK")) and k.endswith("Python")),
    }))
    """
)


def _run(path: str, out) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, path, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fast_path_matches_full_rtk_import(tmp_path):
    fast = _run("fast", tmp_path / "fast.npz")
    full = _run("full", tmp_path / "full.npz")
    assert fast["fast"] and not fast["fell_back"]
    assert not full["fast"] and "rtkNoSuchPython" in full["fell_back"][0]
    # the very classes `rtk.<name>[itk.Image[itk.F, 3], ...]` resolves to
    assert fast["classes"] == full["classes"]
    # the point of the fast path: neither the big filtering libraries nor all of RTK's deps
    assert "itk._ITKImageIntensityPython" in full["libraries"]
    assert "itk._ITKImageIntensityPython" not in fast["libraries"]
    assert len(fast["libraries"]) < len(full["libraries"])
    a, b = np.load(tmp_path / "fast.npz"), np.load(tmp_path / "full.npz")
    for key in ("forward", "backward", "fdk"):
        assert a[key].shape == b[key].shape, key
        assert np.abs(a[key]).max() > 0, key
        assert float(np.abs(a[key] - b[key]).max()) < 1e-5, key
