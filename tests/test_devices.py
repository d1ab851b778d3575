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


_CHILD = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(signum, frame):
    time.sleep(1.0)  # a job that needs a moment to stop (flush, save)
    out.write_text(f"stopped by {signum}")
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
out.with_suffix(".ready").write_text("ready")
time.sleep(60)
"""


def test_device_run_forwards_sigterm_and_keeps_the_lock_until_the_child_exits(tmp_path):
    """SIGTERM to `unroll3d device run` reaches the child; the card stays locked while the child
    shuts down, and the wrapper exits with the child's code (fake-GPU mode)."""
    import signal
    import subprocess
    import sys

    locks, out = tmp_path / "locks", tmp_path / "child.txt"
    env = dict(os.environ, UNROLL3D_FAKE_GPUS="1")
    cmd = [sys.executable, "-m", "unroll3d.cli", "device", "run", "--lock-dir", str(locks), "--",
           sys.executable, "-c", _CHILD, str(out)]  # fmt: skip
    wrapper = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.with_suffix(".ready").exists():
        assert wrapper.poll() is None and time.monotonic() < deadline, wrapper.stderr.read()
        time.sleep(0.05)
    wrapper.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(TimeoutError):  # the child is still stopping: the card is still taken
        acquire_gpu(1, locks, timeout=0.2, poll=0.05)
    assert wrapper.wait(30) == 3
    assert out.read_text() == f"stopped by {int(signal.SIGTERM)}"
    lock = acquire_gpu(1, locks, timeout=2)  # released once the child is gone
    lock.release()


def test_bad_fake_gpu_count_is_one_line(monkeypatch, capsys):
    from unroll3d.devices import main

    monkeypatch.setenv("UNROLL3D_FAKE_GPUS", "two")
    assert main(["count"]) == 2
    assert "UNROLL3D_FAKE_GPUS must be a whole number ≥ 0, got 'two'" in capsys.readouterr().err
