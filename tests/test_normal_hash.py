"""``operator_hash``: the digests stored in fitted H files and fit caches stay as they were, and
every operator is told apart, including one defined by functions (no tensor to hash).

The pinned digests were computed with the code of main at 514ae41, before the hash learnt to
probe function-defined operators; they are in fitted H files, fit caches and results folders,
so a change here means every stored H is refused. The toys are built from integers (exact in
float32) so that the digests do not depend on a platform's sin/cos or on a random generator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deepinv.physics import Blur, LinearPhysics

from unroll3d.normal import (
    DiagCirculant,
    DiagCirculantWrapper,
    NormalFileError,
    operator_hash,
    padded_grid,
    save_normal,
)
from unroll3d.physics import ConeBeam, MultiCoilMRI3D


def _ints(seed, shape, lo, hi):
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.float64)


def _toy_cone():
    base = np.array(
        [
            [0, -40, 0, 0, 25, 0, 1, 0, 0, 0, 0, 1],
            [40, 0, 0, -25, 0, 0, 0, 1, 0, 0, 0, 1],
            [0, 40, 0, 0, -25, 0, -1, 0, 0, 0, 0, 1],
            [-40, 0, 0, 25, 0, 0, 0, -1, 0, 0, 0, 1],
        ],
        dtype=np.float64,
    )
    vec = base + _ints(7, base.shape, -3, 4) / 64
    return ConeBeam(vec, (1, 8, 9, 10), det_shape=(11, 13), backend="rtk")


def _toy_mri():
    mask = torch.as_tensor(_ints(2, (10, 8), 0, 2), dtype=torch.float32)
    mask[4:6, 3:5] = 1
    re, im = _ints(5, (2, 3, 4, 10, 8), -4, 5) / 8
    maps = torch.complex(torch.as_tensor(re), torch.as_tensor(im)).to(torch.complex64)
    return MultiCoilMRI3D(mask, maps, (2, 4, 10, 8))


def _toy_blur():
    kernel = torch.as_tensor(_ints(3, (1, 1, 3, 3, 3), 1, 9) / 16, dtype=torch.float32)
    return Blur(filter=kernel)


PINNED = [  # (builder, img_size, digest on main before the probe fix)
    (_toy_cone, (1, 8, 9, 10), "4cccc1c45e4419ba"),
    (_toy_mri, (2, 4, 10, 8), "6fa4fd7296412e58"),
    (_toy_blur, (1, 6, 7, 8), "1c40538b7fd180d2"),
]


@pytest.mark.parametrize("build,img_size,digest", PINNED, ids=["cone_rtk", "mri", "blur"])
def test_stored_digests_do_not_move(build, img_size, digest):
    physics = build()
    assert operator_hash(physics) == digest
    assert operator_hash(physics, img_size) == digest  # img_size only serves the probe
    wrapped = DiagCirculantWrapper(physics, img_size)  # the wrapper hashes as what it wraps
    assert operator_hash(wrapped) == digest


def _function_physics(scale=2.0, shift=0, adjoint_scale=None, img_size=None):
    """A deepinv LinearPhysics defined by closures: nothing but ``_device_holder`` as buffer."""
    a = scale
    b = scale if adjoint_scale is None else adjoint_scale
    return LinearPhysics(
        A=lambda x: a * torch.roll(x, shift, dims=-1),
        A_adjoint=lambda y: b * torch.roll(y, -shift, dims=-1),
        img_size=img_size,
    )


def _identity_h(img):
    """λ = 1, m = 1: H = I (a real image's half-spectrum filter on the padded grid)."""
    grid = padded_grid(img[1:])
    lam = torch.ones((grid[0], grid[1], grid[2] // 2 + 1), dtype=torch.complex64)
    return lam, torch.ones(img[1:])


def test_function_defined_operators_hash_by_their_response():
    img = (1, 4, 5, 6)
    ref = operator_hash(_function_physics(), img)
    assert operator_hash(_function_physics(), img) == ref  # deterministic
    assert operator_hash(_function_physics(shift=1), img) != ref  # another operator
    assert operator_hash(_function_physics(scale=3.0), img) != ref  # another ‖A‖²
    assert operator_hash(_function_physics(adjoint_scale=1.0), img) != ref  # a wrong adjoint
    # the physics' own img_size serves when none is passed
    assert operator_hash(_function_physics(img_size=img)) == operator_hash(
        _function_physics(img_size=img), img
    )
    with pytest.raises(ValueError, match="pass img_size"):
        operator_hash(_function_physics())


def test_probe_failure_is_one_clear_line():
    physics = LinearPhysics(A=lambda x: x[:, :, :3] @ torch.ones(7, 2), A_adjoint=lambda y: y)
    with pytest.raises(ValueError, match=r"cannot hash LinearPhysics by its response to a \(1, 1"):
        operator_hash(physics, (1, 4, 5, 6))


class _OwnSetParameters(LinearPhysics):
    """A user's physics with a ``set_parameters`` method and a real buffer (not a wrapper)."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))

    def set_parameters(self, weight):
        self.weight = torch.as_tensor(weight, dtype=torch.float32)

    def A(self, x, **kw):
        return self.weight * x

    def A_adjoint(self, y, **kw):
        return self.weight * y


def test_only_the_wrapper_is_unwrapped():
    """A physics is unwrapped only when it is a DiagCirculantWrapper, not when it merely has a
    ``set_parameters`` method or a ``normal_op`` attribute."""
    a, b = _OwnSetParameters(2.0), _OwnSetParameters(3.0)
    assert operator_hash(a) != operator_hash(b)
    img = (1, 4, 5, 6)
    twice = DiagCirculantWrapper(DiagCirculantWrapper(_toy_blur(), img), img)
    assert operator_hash(twice) == operator_hash(_toy_blur())
    c = _function_physics()  # with submodules named like the wrapper's: it is still itself
    c.normal_op = DiagCirculant(*_identity_h(img), img)
    c.physics = _toy_blur()
    assert operator_hash(c, img) != operator_hash(_toy_blur())


def test_from_file_checks_a_function_defined_operator(tmp_path):
    """``DiagCirculantWrapper.from_file`` hashes the operator at the fit's image size, so a
    function-defined operator is checked (before, any such operator passed)."""
    img = (1, 4, 5, 6)
    physics = _function_physics()
    path = tmp_path / "H.pt"
    save_normal(
        path, *_identity_h(img), img, scaling=4.0, operator_hash=operator_hash(physics, img)
    )
    W = DiagCirculantWrapper.from_file(physics, path)
    x = torch.randn(1, *img, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(W.A_adjoint_A(x), 4.0 * x, atol=1e-5)
    with pytest.raises(NormalFileError, match="fitted for operator"):
        DiagCirculantWrapper.from_file(_function_physics(shift=1), path)
    DiagCirculantWrapper.from_file(_function_physics(shift=1), path, check_hash=False)


def _fft_blur_physics(cast_to_float32=False):
    """A function-defined 3D circulant blur plus a global sum term (an FFT and a reduction, whose
    float32 results change in their last bits with the number of CPU threads). ``cast_to_float32``:
    an operator that computes in float32 whatever its input."""
    n = 48  # large enough for torch to split the FFT and the sum over threads
    kernel = torch.randn(1, 1, n, n, n, generator=torch.Generator().manual_seed(0))
    K = torch.fft.fftn(kernel, dim=(-3, -2, -1))

    def conv(x, spectrum):
        x = x.float() if cast_to_float32 else x
        out = torch.fft.ifftn(torch.fft.fftn(x, dim=(-3, -2, -1)) * spectrum, dim=(-3, -2, -1))
        return out.real + 1e-3 * x.sum()

    physics = LinearPhysics(A=lambda x: conv(x, K), A_adjoint=lambda y: conv(y, K.conj()))
    return physics, (1, n, n, n)


@pytest.mark.parametrize("cast_to_float32", [False, True], ids=["any_dtype", "float32_only"])
def test_probe_hash_does_not_depend_on_the_thread_count(cast_to_float32):
    """The probe's response is rounded to 4 significant digits; computed in float32 with 1 and
    with 2 CPU threads, a few entries of AᵀA x land on either side of a rounding boundary, and an
    H fitted in a job with other threads would be refused. The probe runs on one thread (and in
    float64 where the operator takes it)."""
    physics, img = _fft_blur_physics(cast_to_float32)
    threads = torch.get_num_threads()
    try:
        digests = set()
        for n in (1, 2):
            torch.set_num_threads(n)
            digests.add(operator_hash(physics, img))
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1
    assert torch.get_num_threads() == threads
