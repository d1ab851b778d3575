"""The MRI H built from each draw's own Cartesian mask (normal.mri_h), and the
MRI H rows using H at test time (evaluate.mri_refine: H)."""

from __future__ import annotations

import pytest
import torch

import unroll3d.engine.operators as operators
import unroll3d.engine.partitioning as partitioning
import unroll3d.engine.reconstruct as reconstruct
import unroll3d.engine.samples as samples
from unroll3d.data.sample import Sample
from unroll3d.models import build_variant
from unroll3d.normal import fit_normal_operator, mask_normal
from unroll3d.normal.mask import probe_error
from unroll3d.physics import (
    MultiCoilMRI3D,
    initial_reconstruction,
    poisson_disc_mask,
    rss_normalize,
)
from unroll3d.variants import variant_spec

SHAPE = (6, 12, 10)


def _maps(n_coils, smooth=True, seed=0):
    if smooth:
        from unroll3d.data.toy import simulated_coil_maps

        maps = torch.from_numpy(simulated_coil_maps(SHAPE, n_coils)).to(torch.complex64)
    else:
        g = torch.Generator().manual_seed(seed)
        maps = torch.randn((n_coils, *SHAPE), dtype=torch.complex64, generator=g)
    return rss_normalize(maps[None])[0]


def _physics(n_coils, mask_seed=0, smooth=True):
    mask = poisson_disc_mask(SHAPE[1:], 3, calib=2, seed=mask_seed)
    return MultiCoilMRI3D(mask, _maps(n_coils, smooth), SHAPE)


@pytest.mark.parametrize("grid", [None, SHAPE])
def test_mask_built_h_is_exact_for_one_coil(grid):
    """One coil (a complex map): AᵀA = s̄ F⁻¹MF s is exactly the two-sided H, on the padded grid
    (linear convolution of the periodic kernel) and on the circular one."""
    phys = _physics(1, smooth=False)
    H = mask_normal(phys, (2, *SHAPE), grid=grid)
    assert H.scaling == 1.0 and H.two_sided
    assert probe_error(phys, H.operator(), probes=3) < 1e-5


def test_mask_built_h_beats_the_fitted_h_on_a_fresh_mask():
    """Several smooth coils: the coherence-weighted mask H of a draw beats an H fitted
    (data-free) to the fixed mask, and its plain mask kernel is worse than both."""
    fixed, fresh = _physics(4, mask_seed=0), _physics(4, mask_seed=7)
    img = (2, *SHAPE)
    lam, m, hist = fit_normal_operator(fixed, img, n_steps=150, heldout=2, seed=0, progress=False)
    from unroll3d.normal import NormalFit

    fit = NormalFit(lam, m, img, grid=tuple(hist["grid"]), two_sided=True, scaling=hist["sqnorm"])
    fitted = probe_error(fresh, fit.operator(), fit.scaling)
    own = probe_error(fresh, mask_normal(fresh, img).operator())
    with_fit_m = probe_error(fresh, mask_normal(fresh, img, m=m, grid=fit.grid).operator())
    plain = probe_error(fresh, mask_normal(fresh, img, m="ones", kernel="mask").operator())
    assert own < fitted and with_fit_m < fitted
    assert plain > own
    with pytest.raises(ValueError, match="neither the image length"):
        mask_normal(fresh, img, grid=(8, 20, 16))


def _sample(mask_seed, n_coils=4, setting="R3"):
    phys = _physics(n_coils, mask_seed=mask_seed)
    g = torch.Generator().manual_seed(mask_seed)
    x = torch.randn((1, 2, *SHAPE), generator=g) * 0.1 + 0.5
    meta = {"op_norm_sq": 1.0, "setting": setting, "volume": "v", "mask_seed": mask_seed}
    return Sample(x, phys.A(x), phys, meta)


def test_a_fresh_draw_trains_with_the_h_of_its_own_mask():
    """normal.mri_h mask: SampleCache.fresh gives each draw the H of its own mask (m from the
    setting's fit), not the fit's; normal.mri_h fit keeps the setting's fit."""
    from unroll3d.normal.mask import mask_filter

    spec = variant_spec("partition-H")
    cfg = {"normal": {"mri_h": "mask-coils"}}
    reference = mask_normal(_physics(4, mask_seed=99), (2, *SHAPE), meta={"setting": "R3"})
    cache = samples.SampleCache(
        ["p"], lambda p: _sample(0), spec, reference, h_of=operators.h_builder(spec, "mri", cfg)
    )
    draws = [cache.fresh(0, lambda p, seed: _sample(seed), seed) for seed in (1, 2)]
    for seed, prep in zip((1, 2), draws, strict=True):
        mask = prep.sample.physics.mask[0, 0]
        own = mask_filter(mask, prep.H.grid, prep.sample.physics.coil_maps[0], prep.H.spatial_mask)
        assert torch.allclose(prep.H.fourier_filter, own)
        assert prep.H.meta["mask_seed"] == seed
        assert prep.physics.normal_op.fourier_filter is prep.H.fourier_filter
    assert not torch.allclose(draws[0].H.fourier_filter, draws[1].H.fourier_filter)
    assert not torch.allclose(draws[0].H.fourier_filter, reference.fourier_filter)
    # mask: m is the setting fit's
    cfg = {"normal": {"mri_h": "mask"}}
    m = torch.rand(SHAPE) + 0.5
    ref = mask_normal(_physics(4, mask_seed=99), (2, *SHAPE), m=m, meta={"setting": "R3"})
    prep = samples.SampleCache(
        ["p"], lambda p: _sample(0), spec, ref, h_of=operators.h_builder(spec, "mri", cfg)
    ).get(0)  # noqa: E501
    assert torch.equal(prep.H.spatial_mask, ref.spatial_mask) and prep.H.meta["m_from"]
    with pytest.raises(ValueError, match="mask-coils"):
        operators.own_normal(_sample(0), None, "mask")
    assert operators.h_builder(spec, "mri", {"normal": {"mri_h": "fit"}}) is None
    assert operators.h_builder(spec, "cbct", cfg) is None
    assert operators.h_builder(variant_spec("partition"), "mri", cfg) is None


def test_mri_h_rows_use_h_at_test_time():
    """mri_refine H: partition-H's MRI reconstruction runs the refinement pass with H; with an
    exact H (one coil) it equals the exact refinement, with a wrong H it differs."""
    from toys import TINY

    cfg = {
        "model": dict(TINY, residual=False),
        "mri": {"K": 2, "patch_size": [4, 8, 8], "stride": None},
        "evaluate": {"refine": True, "mri_refine": "H"},
        "normal": {"mri_h": "mask-coils"},
    }
    torch.manual_seed(0)
    spec = variant_spec("partition-H")
    model = build_variant("partition-H", "mri", cfg, 1.0).eval()
    sample = _sample(3, n_coils=1)
    x0 = initial_reconstruction(sample.physics, sample.y)
    exact_H = operators.own_normal(sample, None, "mask-coils")
    phys = operators.physics_for(sample, spec, exact_H, 1.0)
    first = reconstruct.reconstruct(model, spec, "mri", cfg, sample, phys, x0, refine=False)
    with_h = reconstruct.reconstruct(model, spec, "mri", cfg, sample, phys, x0)
    exact = reconstruct.reconstruct(model, variant_spec("partition"), "mri", cfg, sample,
                             sample.physics, x0, refine=True)  # fmt: skip
    assert not torch.allclose(with_h, first, atol=1e-4)  # the refinement ran
    assert torch.allclose(with_h, exact, atol=1e-4)  # H exact: the exact refinement
    wrong = mask_normal(sample.physics, (2, *SHAPE), m="ones", kernel="mask")
    wrong.fourier_filter = wrong.fourier_filter * 0.5
    bad = reconstruct.reconstruct(model, spec, "mri", cfg, sample,
                           operators.physics_for(sample, spec, wrong, 1.0), x0)  # fmt: skip
    assert not torch.allclose(bad, exact, atol=1e-4)


def test_slab_patches_resolve_to_the_whole_axis():
    """-1 / null patch entries mean the whole axis (an MRI readout slab), resolved once
    when the config is loaded; other entries are a clear error."""
    from unroll3d.config import ConfigError, check_patch_sizes, resolve_patch_size

    assert resolve_patch_size([12, -1, None], (24, 32, 28)) == (12, 32, 28)
    for bad, match in (([0, 8, 8], "entry 0"), ([-2, 8, 8], "entry -2"), ([8, 40, -1], "fit")):
        with pytest.raises(ConfigError, match=match):
            resolve_patch_size(bad, (24, 32, 28), "mri.patch_size")
    cfg = {
        "tasks": ["mri"],
        "mri": {"source": "toy", "toy": {"shape": [24, 32, 28]}, "patch_size": [12, -1, -1]},
        "sweep": {"enabled": True, "mri": [[8, -1, -1], [8, 16, 16]]},
    }
    check_patch_sizes(cfg)
    assert cfg["mri"]["patch_size"] == [12, 32, 28]
    assert cfg["sweep"]["mri"] == [[8, 32, 28], [8, 16, 16]]
    part = partitioning.make_partitioner(
        torch.nn.Identity(), "mri", {"mri": {"patch_size": [4, -1, -1]}}, (2, *SHAPE)
    )  # noqa: E501
    assert tuple(part.patch_size) == (4, *SHAPE[1:])


def test_the_tables_say_which_h_the_mri_rows_used():
    """The -H rows' footnote names an H built from each test volume's own mask."""
    from types import SimpleNamespace

    from unroll3d.report.tables import _normal_fit_note

    recs = [
        SimpleNamespace(
            setting="R5",
            volume=v,
            extra={"normal_fit": {"fitted_on": v, "heldout_rel_error": e, "h": "mask"}},
        )
        for v, e in (("a", 0.5), ("b", 0.6))
    ]
    note = _normal_fit_note(recs)
    assert "built from each test volume's own mask" in note and "0.500–0.600" in note
