"""Shared fixtures: the device (CPU unless a test is marked gpu), seeded generators, the toy
training config, a toy sample and its fitted H, a preprocessed toy MRI volume. The plain helpers
behind them are in toys.py (imported by each fixture, so a break there fails only the tests that
use it)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped (not failed) where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def device(request) -> torch.device:
    """cuda for tests marked gpu (skipped without one), else cpu."""
    if request.node.get_closest_marker("gpu") is not None:
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator seeded with 0: every test draws the same numbers on every run."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def toy_config() -> dict:
    """The tiny training/evaluation config of the toy problem (a fresh copy per test)."""
    import toys

    return toys.toy_config()


@pytest.fixture
def toy_sample():
    """A seeded 16³ blob volume under the masked-blur toy operator."""
    import toys

    return toys.loader("toy0")


@pytest.fixture(scope="session")
def toy_normal():
    """H fitted (3 steps) to the toy operator of ``toy0``: a :class:`unroll3d.normal.NormalFit`."""
    import toys

    return toys.toy_H(toys.loader("toy0"))


@pytest.fixture
def one_thread():
    """Tiny FFTs and convolutions: one torch thread is much faster than several on a shared
    machine (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mri_volume(tmp_path_factory):
    """One preprocessed toy MRI volume in the real format (Calgary-Campinas h5 → .pt)."""
    import zipfile

    from unroll3d.data import mri, toy

    d = tmp_path_factory.mktemp("mri")
    vol = "e00001s3_P00001"
    toy.write_mri_toy(d, [vol], ["e00002s3_P00002"], (8, 12, 10), n_coils=2, seed=0)
    zips = [p for p in d.rglob("*.zip") if zipfile.is_zipfile(p)]
    mri.preprocess_mri(zips[0], vol, d / f"{vol}.pt", partial_fourier=0.85, calib=2)
    return str(d / f"{vol}.pt")
