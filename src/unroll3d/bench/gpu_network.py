"""The GPU check's sections on what the card spends its time on, wired into
:mod:`unroll3d.bench.gpu_check` (``--sections network train_modes train_loop profile``):

- ``network``: the DRUNet alone, forward + backward, at the paper's patch shapes, in each mode
  of the ``train`` keys (fp32-strict, tf32, bf16, bf16 + channels_last_3d, + cudnn.benchmark,
  + torch.compile), through the same ``configure_network`` and ``_denoise`` as training: ms per
  step, TFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) and peak GB;
- ``train_modes``: ``partition`` and ``partition-H`` training micro-steps (the ``train`` rows'
  format) with the bf16 network, contiguous and channels_last_3d + cudnn.benchmark;
- ``train_loop``: the real training loop, :func:`unroll3d.engine.train.train`, with its sample
  draws and transfers, on two synthetic volumes per task (one CBCT and one MRI variant), with the
  samples resident on the card (``train.device_cache: auto``, the GB kept there) against parked
  in pinned host memory (prefetched on a side stream), and the host syncs of one step counted
  under ``torch.cuda.set_sync_debug_mode("warn")`` (CUDA only);
- ``profile``: one CBCT ``partition-H`` training micro-step under ``torch.profiler``, its time
  by kind (convolutions, layout changes, elementwise, FFT, the projector, the rest) and the
  card's idle share.

The sections use the check's synthetic samples (:mod:`unroll3d.bench.gpu_samples`). Each runs at
toy sizes on the CPU with ``--tiny`` (``make test``); modes that act on CUDA only
are recorded as such there, not timed as if they did something.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from unroll3d.bench.gpu_recorder import free, peak_gb, sync
from unroll3d.bench.gpu_samples import SAMPLES, cbct_sample, check_config, impulse_H, mri_sample
from unroll3d.bench.gpu_train import train_case

#: sizes per profile: the network's input shapes (C, D, H, W) and the train loop's steps
SIZES = {
    "gpu": dict(
        network_shapes=[(1, 8, 384, 384), (2, 8, 128, 128), (1, 128, 128, 128)],
        repeats=5,
        loop_steps=8,
    ),
    "tiny": dict(
        network_shapes=[(1, 4, 12, 12), (2, 4, 8, 8), (1, 8, 8, 8)],
        repeats=1,
        loop_steps=2,
    ),
}

#: the network modes: name -> the train keys it sets (configure_network applies them)
MODES = {
    "fp32-strict": dict(bf16=False, tf32=False, channels_last=False),
    "tf32": dict(bf16=False, tf32=True, channels_last=False),
    "bf16": dict(bf16=True, tf32=True, channels_last=False),
    "bf16+channels_last_3d": dict(bf16=True, tf32=True, channels_last=True),
    "bf16+channels_last_3d+cudnn.benchmark": dict(
        bf16=True, tf32=True, channels_last=True, cudnn_benchmark=True
    ),
    "compiled (bf16+channels_last_3d+cudnn.benchmark)": dict(
        bf16=True, tf32=True, channels_last=True, cudnn_benchmark=True, compile=True
    ),
}
CUDA_ONLY = {"tf32", "cudnn_benchmark", "compile"}


def _train_keys(mode: dict) -> dict:
    return {"bf16": False, "tf32": True, "channels_last": False, "cudnn_benchmark": False,
            "compile": False, **mode}  # fmt: skip


def _fwd_bwd(model, x, sigma) -> None:
    model._denoise(x, sigma).square().mean().backward()
    model.zero_grad(set_to_none=True)


def network_flops(model, x, sigma) -> int:
    """FLOPs of one forward + backward of ``model._denoise`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _fwd_bwd(model, x, sigma)
    return int(counter.get_total_flops())


def section_network(rec, device, prof, sizes) -> None:
    """The DRUNet alone, forward + backward, per shape and mode (see the module docstring)."""
    import torch

    from unroll3d.models.build import configure_network
    from unroll3d.models.unrolled import PostProcess

    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        for shape in sizes["network_shapes"]:
            case = f"DRUNet {prof['channels']}×{prof['blocks']}, input {shape[0]}×" + "×".join(
                map(str, shape[1:])
            )
            flops = None
            for name, mode in MODES.items():
                if rec.left() < 20:
                    rec.add("network", case, name, "", status="skipped", note="time budget")
                    continue
                keys = _train_keys(mode)
                ignored = sorted(k for k in CUDA_ONLY if keys[k] and device.type != "cuda")
                if "compile" in ignored:
                    rec.add("network", case, f"{name}: time", "", status="info",
                            note="torch.compile runs on CUDA only (train.compile): not on the CPU")  # fmt: skip
                    continue
                torch.manual_seed(0)
                model = PostProcess(shape[0], prof["channels"], prof["blocks"], residual=True)
                model = configure_network(model.to(device), keys, device)
                x = torch.rand((1, *shape), device=device)
                sigma = torch.tensor(0.05, device=device)
                if flops is None:
                    flops = network_flops(model, x, sigma)
                    rec.add("network", case, "FLOPs per forward + backward", flops / 1e9, "GFLOP")

                _fwd_bwd(model, x, sigma)  # warm-up (and compilation)
                free(device)
                times = []
                for _ in range(sizes["repeats"]):
                    sync(device)
                    t0 = time.perf_counter()
                    _fwd_bwd(model, x, sigma)
                    sync(device)
                    times.append(time.perf_counter() - t0)
                t = sorted(times)[len(times) // 2]
                note = f"median of {len(times)}; " + (
                    f"{', '.join(ignored)} act on CUDA only (no effect here)" if ignored else ""
                )
                rec.add("network", case, f"{name}: time", t * 1e3, "ms", note=note.rstrip("; "))
                rec.add("network", case, f"{name}: throughput", flops / t / 1e12, "TFLOP/s")
                if device.type == "cuda":
                    rec.add("network", case, f"{name}: peak memory", peak_gb(device), "GB")
                del model, x
                free(device)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags


def section_train_modes(rec, device, backend, prof) -> None:
    """``partition`` and ``partition-H`` training micro-steps at the data sets' sizes with the
    bf16 network, contiguous and channels_last_3d + cudnn.benchmark (the ``train`` section
    measures fp32): the rows :mod:`unroll3d.bench.cost` needs to price a bf16 config."""
    import torch

    config = check_config(prof)
    fast = {"channels_last": True, "cudnn_benchmark": True}
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        for task, size in (("cbct", prof["volume"]), ("mri", tuple(prof["mri_shape"]))):
            for variant in ("partition", "partition-H"):
                for extra in ({}, fast):
                    if rec.left() < 40:
                        rec.add("train", f"{variant}, {task}", "bf16 modes", "", status="skipped",
                                note="time budget")  # fmt: skip
                        continue
                    cfg = {**config, "train": {**config["train"], **extra}}
                    train_case(rec, variant, task, size, prof, backend, device, cfg, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags
        SAMPLES.clear()
        free(device)


def _loop_config(prof, steps: int, device_cache: int, keys: dict) -> dict:

    config = check_config(prof)
    config["train"].update(
        steps=steps, accumulate=1, val_every=10**6, checkpoint_every=10**6, warmup_steps=1,
        device_cache=device_cache, share_across_settings=False, fresh_masks=False, **keys,
    )  # fmt: skip
    return config


def section_train_loop(rec, device, backend, prof, sizes, keys: dict | None = None) -> None:
    """The engine's training loop on two synthetic volumes per task: resident against parked."""
    import torch

    from unroll3d.engine.train import TrainJob, train

    keys = keys or {}
    cases = [("cbct", "partition-H", prof["volume"]), ("mri", "partition-H", prof["mri_shape"])]
    for task, variant, size in cases:
        samples = {}
        for i in range(2):  # two volumes: each draw may switch; own tensors and operators
            if task == "cbct":
                SAMPLES.clear()
                s, _, lip = cbct_sample(size, prof, backend, device)
            else:
                s, _, lip = mri_sample(tuple(size), prof, device)
            samples[f"vol{i}"] = s
        gb_each = sum(
            t.numel() * t.element_size()
            for t in (samples["vol0"].x, samples["vol0"].y)
        ) / 1e9  # fmt: skip
        H = impulse_H(
            samples["vol0"].physics, tuple(samples["vol0"].x.shape[1:]), lip, device,
            samples["vol0"].meta["setting"],
        )  # fmt: skip
        shape = "×".join(map(str, samples["vol0"].x.shape[2:]))
        for label, cache in (("resident", "auto"), ("parked", 0)):
            if rec.left() < 40:
                rec.add("train_loop", f"{variant}, {task}", label, "", status="skipped",
                        note="time budget")  # fmt: skip
                continue
            free(device)
            config = _loop_config(prof, sizes["loop_steps"], cache, keys)
            with tempfile.TemporaryDirectory() as tmp:
                job = TrainJob(
                    task=task, setting=samples["vol0"].meta["setting"], variant=variant,
                    config=config, train_paths=list(samples), val_paths=[],
                    out=Path(tmp) / "m.pt", H=H, device=device,
                    loader=samples.__getitem__, progress=False,
                    sync_debug_step=1 if sizes["loop_steps"] > 1 else None,
                )  # fmt: skip
                stats = train(job)
            case = f"{variant}, {task} {shape}, {label}"
            note = (
                f"{sizes['loop_steps']} steps, 2 volumes, train.device_cache={cache}; "
                f"x + y {gb_each:.2f} GB per volume"
            )
            if stats["status"] != "ok":
                rec.add("train_loop", case, "status", stats["status"], status="failed",
                        note=str(stats.get("message")))  # fmt: skip
                continue
            rec.add("train_loop", case, "time per step", stats["step_time_mean_s"], "s", note=note)
            if device.type == "cuda":
                rec.add("train_loop", case, "peak memory", stats["peak_memory_gb"], "GB")
                rec.add("train_loop", case, "samples resident", stats["resident_samples_gb"],
                        "GB", note=f"train.device_cache={cache}")  # fmt: skip
            _sync_rows(rec, case, stats)
            for s in samples.values():  # parked runs moved the operators: bring them back
                s.physics.to(device)
        del samples, H
        torch.manual_seed(0)
        free(device)


def _sync_rows(rec, case: str, stats: dict) -> None:
    """The host syncs of the loop's second step (``torch.cuda.set_sync_debug_mode("warn")``):
    their count and the first places; on the CPU a note that the check needs CUDA."""
    found = stats.get("host_syncs_in_step")
    if found is None:
        rec.add("train_loop", case, "host syncs in one step", "", status="info",
                note="set_sync_debug_mode needs CUDA: not counted here")  # fmt: skip
        return
    ops = found["ops"]
    where = "; ".join(dict.fromkeys(op.split(": ", 1)[0] for op in ops))
    rec.add("train_loop", case, "host syncs in one step", len(ops), "syncs",
            note=f"step {found['step']}: {where[:300] or 'none'}")  # fmt: skip


#: the kinds of work in a profile, matched on op or kernel names (first match wins: cuDNN's
#: layout kernels before the convolutions, whose names also hold "cudnn")
KINDS = [
    ("layout change", ("nchwtonhwc", "nhwctonchw", "nchw_to_nhwc", "nhwc_to_nchw")),
    ("projector", ("astra", "conebeam", "rtk", "project", "cone_", "fdk")),
    ("FFT", ("fft",)),
    ("convolution", ("conv", "cudnn", "gemm", "sm90", "sm80", "xmma", "wgrad", "dgrad")),
    ("layout change", ("copy", "contiguous", "permute", "transpose", "pad")),
    ("elementwise", ("add", "mul", "sub", "div", "relu", "elementwise", "vectorized", "where",
                     "fill", "sum", "mean", "reduce", "pow", "sqrt", "clamp", "cat")),
]  # fmt: skip


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


def section_profile(rec, device, backend, prof) -> None:
    """One CBCT partition-H training micro-step under torch.profiler: time per kind, idle share."""
    from torch.profiler import ProfilerActivity, profile

    from unroll3d.engine.operators import physics_for
    from unroll3d.engine.partitioning import make_partitioner
    from unroll3d.models import build_variant
    from unroll3d.variants import variant_spec

    spec = variant_spec("partition-H")
    config = check_config(prof)
    sample, x0, lip = cbct_sample(prof["volume"], prof, backend, device)
    H = impulse_H(sample.physics, tuple(sample.x.shape[1:]), lip, device, sample.meta["setting"])
    model = build_variant("partition-H", "cbct", config, lipschitz=lip, device=device).train()
    physics = physics_for(sample, spec, H, lip)
    part = make_partitioner(model, "cbct", config, sample.x.shape[1:])

    args = (model, spec, sample, physics, x0)
    _micro_step(*args, part, H, 0)  # warm-up
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as p:
        _micro_step(*args, part, H, 1)
        sync(device)
    wall = time.perf_counter() - t0
    events = [e for e in p.key_averages() if e.key]
    by_kind: dict[str, float] = {}
    for e in events:
        # device time of the kernels on CUDA; self CPU time of the ops on the CPU
        t = (getattr(e, "self_device_time_total", 0) or 0) if cuda else e.self_cpu_time_total
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + t / 1e6
    busy = sum(by_kind.values())
    case = f"partition-H, cbct {prof['volume']}³, patch {'×'.join(map(str, prof['patch']))}"
    what = "kernel time on the card" if cuda else "self CPU time of the ops"
    rec.add("profile", case, "wall time of the micro-step", wall, "s", note="under the profiler")
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        rec.add("profile", case, kind, t, "s", note=f"{what}; {100 * t / wall:.0f} % of the wall")
    if cuda:
        rec.add("profile", case, "card idle", max(0.0, wall - busy) / wall * 100, "%",
                note="wall time without kernel time (host work, syncs, astra's own calls)")  # fmt: skip
    del model, physics, H, part, args
    free(device)


def _micro_step(model, spec, sample, physics, x0, part, H, seed: int) -> None:
    """One training micro-step of the engine (estimate_pair, MSE, backward)."""
    import torch

    from unroll3d.engine.partitioning import estimate_pair

    gen = torch.Generator().manual_seed(seed)
    est, target = estimate_pair(model, spec, sample, physics, x0, gen, part)
    torch.mean((est.float() - target.float()) ** 2).backward()
    model.zero_grad(set_to_none=True)


def network_sections() -> dict:
    """The sections of this module in :mod:`unroll3d.bench.gpu_check`'s calling convention
    ``(rec, device, backend, prof, tiny, reference)``."""

    def network(rec, device, backend, prof, tiny, reference):
        section_network(rec, device, prof, SIZES["tiny" if tiny else "gpu"])

    def train_modes(rec, device, backend, prof, tiny, reference):
        section_train_modes(rec, device, backend, prof)

    def train_loop(rec, device, backend, prof, tiny, reference):
        section_train_loop(rec, device, backend, prof, SIZES["tiny" if tiny else "gpu"])

    def profile(rec, device, backend, prof, tiny, reference):
        section_profile(rec, device, backend, prof)

    return {
        "network": network,
        "train_modes": train_modes,
        "train_loop": train_loop,
        "profile": profile,
    }
