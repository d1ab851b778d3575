"""The next fresh MRI mask drawn ahead on a worker thread (engine.samples.MaskPrefetch): the draw
that asks for it gets that very mask, any other draw draws its own inline, and training draws the
same samples and learns the same weights, bit for bit, as when every mask is drawn inline."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from toys import toy_config

import unroll3d.data.mri as data_mri
import unroll3d.engine.samples as engine_samples
import unroll3d.engine.train as tr
from unroll3d.data import load_sample
from unroll3d.engine.samples import FreshMaskLoader, VolumeStore

pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = "unroll3d-mask"


@pytest.fixture
def mask_draws(monkeypatch):
    """Every seeded Poisson-disc draw as ``(seed, thread name)``; ``.event`` is set by each."""
    calls: list[tuple[int, str]] = []
    calls_event = threading.Event()
    real = data_mri.sampling_mask

    def spy(shape, acceleration, calib, seed):
        mask = real(shape, acceleration, calib, seed)
        calls.append((seed, threading.current_thread().name))
        calls_event.set()
        return mask

    monkeypatch.setattr(data_mri, "sampling_mask", spy)
    calls_event.clear()
    return calls, calls_event


def _same_sample(got, seed, calls):
    """``got`` is ``load_sample``'s sample with mask ``seed`` (whose draw is not counted)."""
    n = len(calls)
    want = load_sample(got.meta["source"], got.meta["setting"], mask_seed=seed)
    del calls[n:]
    assert torch.equal(got.physics.mask, want.physics.mask)
    assert torch.equal(got.y, want.y) and torch.equal(got.x, want.x)
    assert got.meta["mask_seed"] == seed and got.meta["mask"] == "seeded"


def _mask_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(WORKER)]


def test_the_prefetched_mask_is_drawn_by_the_worker_and_used_as_drawn(mri_volume, mask_draws):
    calls, drawn = mask_draws
    draw = FreshMaskLoader("R2", "cpu")
    draw(mri_volume, 1)  # the file's first draw reads it (inline)
    assert [s for s, _ in calls] == [1] and not calls[0][1].startswith(WORKER)
    drawn.clear()
    draw.prefetch(mri_volume, 5)
    assert drawn.wait(60)  # the worker drew seed 5 before anyone asked for it
    assert len(calls) == 2 and calls[1][0] == 5 and calls[1][1].startswith(WORKER)
    got = draw(mri_volume, 5)
    assert len(calls) == 2  # no second draw: the worker's mask was used
    _same_sample(got, 5, calls)
    draw.close()
    assert not _mask_threads()


def test_a_prefetch_for_another_draw_is_not_used_and_waits_for_its_own(mri_volume, mask_draws):
    calls, drawn = mask_draws
    store = VolumeStore("cpu")
    r2, r4 = FreshMaskLoader("R2", "cpu", store), FreshMaskLoader("R4", "cpu", store)
    r2(mri_volume, 1)
    drawn.clear()
    r2.prefetch(mri_volume, 5)
    assert drawn.wait(60)
    n = len(calls)
    got = r2(mri_volume, 7)  # another seed: drawn inline, the prefetched one untouched
    assert calls[n:] == [(7, threading.current_thread().name)]
    _same_sample(got, 7, calls)
    got = r4(mri_volume, 5)  # the same seed under another setting: inline too
    assert calls[n + 1 :] == [(5, threading.current_thread().name)]
    _same_sample(got, 5, calls)
    assert got.meta["acceleration"] == 4
    got = r2(mri_volume, 5)  # the pending draw's own key: taken, not drawn again
    assert len(calls) == n + 2
    _same_sample(got, 5, calls)
    got = r2(mri_volume, 5)  # taken once only: drawn inline now
    assert calls[n + 2 :] == [(5, threading.current_thread().name)]
    store.masks.close()


def test_a_mask_drawn_for_another_seed_is_refused(mri_volume):
    data, meta, _task, _value = engine_samples.read_sample_file(mri_volume, "R2")
    mask = data_mri.draw_sample_mask(data, meta, 2.0, 5)
    with pytest.raises(ValueError, match="drawn for seed 5 at R2, not seed 6"):
        data_mri.make_sample(data, meta, "R2", 2.0, 6, "cpu", mask=mask)
    given = data_mri.make_sample(data, meta, "R2", 2.0, 5, "cpu", mask=mask)
    inline = data_mri.make_sample(data, meta, "R2", 2.0, 5, "cpu")
    assert torch.equal(given.physics.mask, inline.physics.mask)
    assert torch.equal(given.y, inline.y) and given.meta == inline.meta


def test_training_with_prefetched_masks_draws_and_learns_what_inline_draws_do(
    tmp_path, mri_volume, mask_draws, monkeypatch
):
    """The samples (mask, y, x0) of every training draw and the trained weights of a partition
    run with fresh masks are those of inline draws and of main's per-draw ``load_sample``; each
    step but the first finds its first mask drawn by the worker, and no thread outlives train."""
    calls, _ = mask_draws
    cfg = toy_config(steps=4, accumulate=2, fresh_masks=True)
    cfg["mri"] = {"K": 1, "patch_size": [4, 8, 8], "stride": None}
    seen: list[tuple] = []
    real_fresh = engine_samples.SampleCache.fresh

    def record(self, i, redraw, seed):
        prep = real_fresh(self, i, redraw, seed)
        seen.append((prep.sample.physics.mask.clone(), prep.sample.y.clone(), prep.x0.clone()))
        return prep

    monkeypatch.setattr(engine_samples.SampleCache, "fresh", record)

    def run(name, redraw=None):
        seen.clear()
        calls.clear()
        job = tr.TrainJob(
            task="mri", setting="R2", variant="partition", config=cfg, train_paths=[mri_volume],
            val_paths=[], out=tmp_path / name / "m.pt", progress=False,
        )  # fmt: skip
        job.redraw = redraw or job.redraw
        assert tr.train(job)["status"] == "ok"
        assert not _mask_threads()
        weights = torch.load(job.out, weights_only=False)["state_dict"]
        return list(seen), list(calls), weights

    ahead, ahead_calls, w_ahead = run("ahead")
    on_worker = [s for s, thread in ahead_calls if thread.startswith(WORKER)]
    # the volume's first load (its ‖A‖²), then 4 steps × 2 draws: each mask drawn once
    assert len(ahead) == 8 and len(ahead_calls) == 1 + 8
    assert len(on_worker) == 3  # the first draw of steps 2, 3 and 4
    monkeypatch.setattr(FreshMaskLoader, "prefetch", lambda self, path, seed=None: None)
    inline, inline_calls, w_inline = run("inline")
    assert sorted(s for s, _ in inline_calls) == sorted(s for s, _ in ahead_calls)
    assert all(not t.startswith(WORKER) for _, t in inline_calls)
    main, _, w_main = run("main", lambda p, seed: load_sample(p, "R2", mask_seed=seed))
    for other in (inline, main):
        assert len(other) == len(ahead)
        for a, b in zip(ahead, other, strict=True):
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    for w in (w_inline, w_main):
        assert w.keys() == w_ahead.keys() and all(torch.equal(w[k], w_ahead[k]) for k in w)


def test_a_stopped_run_ends_the_mask_worker(tmp_path, mri_volume, mask_draws):
    calls, _ = mask_draws
    cfg = toy_config(steps=4, fresh_masks=True)
    cfg["mri"] = {"K": 1, "patch_size": [4, 8, 8], "stride": None}
    job = tr.TrainJob(
        task="mri", setting="R2", variant="partition", config=cfg, train_paths=[mri_volume],
        val_paths=[], out=tmp_path / "m.pt", progress=False,
    )  # fmt: skip
    assert tr.train(job, stop_at=2) == {"stopped_at": 2}
    assert any(t.startswith(WORKER) for _, t in calls)  # step 3's mask was drawn ahead
    assert not _mask_threads()


def test_a_mask_drawn_for_another_volume_is_refused(mri_volume):
    """A mask carries its volume's partial-Fourier block: given to another file of the same grid
    it would sample k-space that file never acquired, so make_sample refuses it (before, it built
    the sample silently), as it refuses a mask of another grid with a clear line."""
    data, meta, _task, _value = engine_samples.read_sample_file(mri_volume, "R2")
    mask = data_mri.draw_sample_mask(data, meta, 2.0, 5)
    pf = data["pf_mask"].clone()
    pf[:, pf.shape[1] // 2 :] = 0  # another file: a shorter partial-Fourier side
    other = {**data, "pf_mask": pf}
    other_meta = {**meta, "source": mri_volume.replace(".pt", "_other.pt")}
    with pytest.raises(ValueError, match=r"drawn for .*\.pt \(12×10\), not for .*_other\.pt"):
        data_mri.make_sample(other, other_meta, "R2", 2.0, 5, "cpu", mask=mask)
    own = data_mri.draw_sample_mask(other, other_meta, 2.0, 5)
    assert not torch.equal(own.mask, mask.mask)  # what the refused call would have got wrong
    wrong_grid = dataclasses.replace(mask, mask=mask.mask[:, :-1])
    with pytest.raises(ValueError, match=r"\(12×9\), not for .* \(12×10\)"):
        data_mri.make_sample(data, meta, "R2", 2.0, 5, "cpu", mask=wrong_grid)
