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
    env.pop("CUDA_VISIBLE_DEVICES", None)
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
    from unroll3d.cli.device import main

    monkeypatch.setenv("UNROLL3D_FAKE_GPUS", "two")
    assert main(["count"]) == 2
    assert "UNROLL3D_FAKE_GPUS must be a whole number ≥ 0, got 'two'" in capsys.readouterr().err


# ---- the wrapper without torch ----

_NO_EXEC = """
import os, sys
from unroll3d.cli import main
def record(file, args, env):
    heavy = sorted(m for m in ("torch", "numpy", "deepinv") if m in sys.modules)
    print(repr((args, env.get("CUDA_VISIBLE_DEVICES"), heavy)))
    sys.exit(0)
os.execvpe = record
sys.exit(main(sys.argv[1:]))
"""


def _wrapper(args, env_extra, tmp_path, code=_NO_EXEC):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip


def test_device_run_imports_neither_torch_nor_numpy(tmp_path):
    """The wrapper decides and hands over without torch: the command it would become, the card
    it was given, and no heavy module loaded (CPU case and fake-GPU case)."""
    import ast

    done = _wrapper(["device", "run", "--", "true", "x"], {"UNROLL3D_FAKE_GPUS": "0"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout.strip()) == (["true", "x"], "", [])
    assert "no CUDA device, running on the CPU" in done.stderr
    locks = str(tmp_path / "locks")
    done = _wrapper(["device", "run", "--lock-dir", locks, "--", "true"],
                    {"UNROLL3D_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": "3,1"}, tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout.strip()) == (["true"], "3", [])
    done = _wrapper(["device", "count"], {"UNROLL3D_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": "2"},
                    tmp_path, code=_NO_EXEC.replace("print(repr", "print(heavy, repr"))  # fmt: skip
    assert done.stdout.strip() == "1"
    probe = "import sys; from unroll3d.cli import main; main(['device', 'count']); print(sorted(sys.modules))"
    done = _wrapper([], {"UNROLL3D_FAKE_GPUS": "2"}, tmp_path, code=probe)
    lines = done.stdout.splitlines()
    assert lines[0] == "2" and "'torch'" not in lines[1] and "'numpy'" not in lines[1]


def test_visible_gpu_ids_reads_cuda_visible_devices_as_cuda_does():
    from unroll3d.devices import visible_gpu_ids

    assert visible_gpu_ids(3, None) == ["0", "1", "2"]
    assert visible_gpu_ids(0, "0,1") == []  # no card: nothing to give, whatever the variable says
    assert visible_gpu_ids(3, "") == []
    assert visible_gpu_ids(3, "-1") == []
    assert visible_gpu_ids(3, "2, 0") == ["2", "0"]
    assert visible_gpu_ids(2, "1,5,0") == ["1"]  # out of range: CUDA stops the list there
    assert visible_gpu_ids(2, "0,0,1") == ["0"]  # a repeat ends it too
    assert visible_gpu_ids(2, "0,x,1") == ["0"]
    assert visible_gpu_ids(1, "GPU-8f2a,MIG-77c1") == ["GPU-8f2a", "MIG-77c1"]


def test_driver_gpu_count_from_proc_then_nvidia_smi(tmp_path, monkeypatch):
    from unroll3d.devices import driver_gpu_count

    proc = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0"):
        (proc / bus).mkdir(parents=True)
    assert driver_gpu_count(proc) == 3
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert driver_gpu_count(tmp_path / "absent") == 0  # no driver folder, no nvidia-smi
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1)'\n"
                   "echo '  MIG 1g.18gb Device 0: (UUID: MIG-2)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-3)'\n")  # fmt: skip
    smi.chmod(0o755)
    assert driver_gpu_count(tmp_path / "absent") == 2
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert driver_gpu_count(tmp_path / "absent") == 0  # a broken driver: the CPU


_HOLDER = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
tmp = out.with_suffix(".tmp")
tmp.write_text(f"{os.getpid()} {os.environ['CUDA_VISIBLE_DEVICES']}")
tmp.replace(out)
time.sleep(60)
"""


def test_device_run_becomes_the_job_which_holds_the_lock(tmp_path):
    """The wrapper execs the job: same pid, the job holds the card's flock (the lock file names
    it), a second job gets the other card, and killing the job (no cleanup) frees its card."""
    import signal
    import subprocess
    import sys

    locks = tmp_path / "locks"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(UNROLL3D_FAKE_GPUS="8", CUDA_VISIBLE_DEVICES="7,5")  # 8 cards, 2 visible
    jobs, outs = [], []
    for i in range(2):
        out = tmp_path / f"job{i}.txt"
        cmd = [sys.executable, "-m", "unroll3d.cli", "device", "run", "--lock-dir", str(locks),
               "--", sys.executable, "-c", _HOLDER, str(out)]  # fmt: skip
        jobs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL))
        outs.append(out)
        deadline = time.monotonic() + 60
        while not out.exists():
            assert jobs[-1].poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    seen = [out.read_text().split() for out in outs]
    assert [int(pid) for pid, _ in seen] == [job.pid for job in jobs]  # exec: no wrapper left
    assert sorted(card for _, card in seen) == ["5", "7"]
    for pid, card in seen:
        index = ["7", "5"].index(card)
        assert (locks / f"gpu{index}.lock").read_text().strip() == pid
    with pytest.raises(TimeoutError):  # both cards taken by the jobs themselves
        acquire_gpu(2, locks, timeout=0.2, poll=0.05)
    jobs[0].send_signal(signal.SIGKILL)
    jobs[0].wait(30)
    lock = acquire_gpu(2, locks, timeout=2)
    assert ["7", "5"][lock.index] == seen[0][1]  # the killed job's card, free again
    lock.release()
    jobs[1].send_signal(signal.SIGKILL)
    jobs[1].wait(30)


def test_device_run_unknown_command_is_one_line(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, UNROLL3D_FAKE_GPUS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([sys.executable, "-m", "unroll3d.cli", "device", "run", "--lock-dir",
                           str(tmp_path), "--", "no-such-command-u3d"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 127
    assert "cannot run 'no-such-command-u3d'" in done.stderr
    lock = acquire_gpu(1, tmp_path, timeout=2)  # the failed job left the card free
    lock.release()


def test_no_verb_loads_torch_for_help(tmp_path):
    """The entry point is lazy: `unroll3d VERB --help` for every verb (and `device count`) loads
    no torch, so only the verbs that compute pay for it."""
    probe = (
        "import sys\nfrom unroll3d.cli import VERBS, main\n"
        "for verb in VERBS:\n"
        "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
        "main(['device', 'count'])\n"
        "print(sorted(m for m in ('torch', 'deepinv') if m in sys.modules))\n"
    )
    done = _wrapper([], {"UNROLL3D_FAKE_GPUS": "0"}, tmp_path, code=probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
