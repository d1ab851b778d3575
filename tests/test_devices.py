"""The GPU picker: exclusive indices across processes, release on crash, CPU fallback."""

import multiprocessing as mp
import os
import time

import pytest

from unroll3d.devices import acquire_gpu, job_device


def _hold(lock_dir, n, hold_s, queue):
    lock = acquire_gpu(n, lock_dir, timeout=30, poll=0.02)
    start = time.monotonic()
    time.sleep(hold_s)
    queue.put((lock.index, start, time.monotonic()))
    lock.release()


def test_concurrent_jobs_never_share_a_card(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(tmp_path, 2, 0.3, queue)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    records = [queue.get(timeout=5) for _ in procs]
    assert {r[0] for r in records} == {0, 1}
    for i, (idx_a, s_a, e_a) in enumerate(records):
        for idx_b, s_b, e_b in records[i + 1 :]:
            if idx_a == idx_b:  # same card: the holding intervals must not overlap
                assert e_a <= s_b + 1e-3 or e_b <= s_a + 1e-3


def _crash(lock_dir):
    acquire_gpu(1, lock_dir)
    os._exit(1)  # no cleanup: the kernel must drop the flock


def test_lock_released_after_crash(tmp_path):
    p = mp.get_context("fork").Process(target=_crash, args=(tmp_path,))
    p.start()
    p.join(10)
    lock = acquire_gpu(1, tmp_path, timeout=2)
    assert lock.index == 0
    lock.release()


def test_all_busy_times_out_with_clear_message(tmp_path):
    held = acquire_gpu(1, tmp_path)
    with pytest.raises(TimeoutError, match="GPU"):
        acquire_gpu(1, tmp_path, timeout=0.2, poll=0.05)
    held.release()


def test_cpu_fallback_warns(tmp_path):
    with pytest.warns(UserWarning, match="CPU"):
        with job_device(n_devices=0, lock_dir=tmp_path) as device:
            assert device.type == "cpu"
    with pytest.raises(RuntimeError, match="CUDA"):
        with job_device(prefer="cuda", n_devices=0, lock_dir=tmp_path):
            pass


def test_fake_gpus_get_distinct_indices(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL3D_FAKE_GPUS", "2")
    a = acquire_gpu(2, tmp_path)
    b = acquire_gpu(2, tmp_path)
    assert {a.index, b.index} == {0, 1}
    a.release()
    b.release()
