"""``unroll3d train``: train one variant on one task and setting.

- Partitioned variants (``partition``, ``partition-H``) and ``postproc`` train on random patches
  with ground-truth context through
  :meth:`unroll3d.partition.PartitionedReconstructor.training_pair`; ``unrolled`` and
  ``unrolled-H`` train on the full volume. Loss: mean squared error (paper L_PART / L_UNR).
- Adam with a cosine schedule, gradient accumulation, gradient clipping, bf16 autocast of the
  network on CUDA only (the physics stays fp32), seeded.
- Every random choice of step ``s`` (which training volume, which patch) comes from a generator
  seeded with ``(seed, s)``, so a run resumed from a checkpoint reaches the same weights as an
  uninterrupted one. Checkpoints (``<out>.ckpt``) are written atomically every
  ``checkpoint_every`` steps and at the end, and hold the step, model, optimiser, scheduler,
  RNG states, histories, the config and the operator normalisation.
- A NaN/inf loss stops the run (exit 1) naming the step; the last good checkpoint is kept.
- CUDA out-of-memory is caught and written as the result (``status: oom``, "OOM at volume N³,
  peak X GB") with exit 0, so the pipeline continues and the tables show OOM.
- Non-learned variants (``fdk``/``adjoint``, ``tv``) write a small model file too (``tv``: the
  regularisation weight chosen on the validation volumes from ``train.tv_grid``).

Outputs: ``<out>`` (final model), ``<csv>`` (per step: loss, lr, step time, peak memory,
validation PSNR), ``<stats>`` (JSON: peak memory, mean step time after warm-up, device).
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unroll3d.models import (
    VariantSpec,
    build_variant,
    count_parameters,
    resolve_model_config,
    variant_spec,
)
from unroll3d.utils import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    device_name,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
)

__all__ = [
    "TrainJob",
    "train",
    "train_step",
    "estimate_pair",
    "lipschitz_of",
    "load_H",
    "physics_for",
    "make_partitioner",
    "patch_ranges",
    "peak_memory_gb",
    "main",
]

CSV_FIELDS = ["step", "loss", "lr", "step_time_s", "peak_memory_gb", "val_psnr"]


class NonFiniteLoss(RuntimeError):
    """Raised when the training loss becomes NaN or inf."""


# --------------------------------------------------------------------------- helpers


def config_hash(config: dict) -> str:
    """Short hash of the config sections that define a training run (seed, model, train, tasks)."""
    keys = ("seed", "train", "cbct", "mri")
    sections = {k: config.get(k) for k in keys}
    sections["model"] = resolve_model_config(config)
    text = json.dumps(sections, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def peak_memory_gb(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in GB on CUDA, else None."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 1e9
    return None


def _rss_growth_gb(base_mb: float | None) -> float | None:
    """Host peak RSS since the training loop began minus the RSS then (GB): what the steps
    themselves added (activations, gradients, optimiser state, cached samples). The CPU
    counterpart of the CUDA peak; None where the kernel's peak counter cannot be reset."""
    peak = peak_rss_mb()
    if base_mb is None or peak is None:
        return None
    return max(0.0, peak - base_mb) * 2**20 / 1e9  # MiB → GB (10⁹ B, as peak_memory_gb)


def peak_rss_gb() -> float:
    """Peak resident memory of this process (GB, Linux ``ru_maxrss`` in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _sync(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _shape_text(x: torch.Tensor) -> str:
    s = list(x.shape[-3:])
    return f"{s[0]}³" if len(set(s)) == 1 else "×".join(str(v) for v in s)


def lipschitz_of(sample, x0: torch.Tensor | None = None) -> float:
    """:math:`\\|A\\|^2` of a sample's operator.

    Read from ``sample.meta`` (``op_norm_sq``/``lipschitz``, or ``op_norm``/``opnorm`` squared),
    else estimated with the physics' power method (``compute_norm``).
    """
    meta = getattr(sample, "meta", None) or {}
    for key in ("op_norm_sq", "lipschitz"):
        if key in meta and meta[key] is not None:
            return float(meta[key])
    for key in ("op_norm", "opnorm"):
        if key in meta and meta[key] is not None:
            return float(meta[key]) ** 2
    ref = sample.x if x0 is None else x0
    gen = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(ref.shape, generator=gen).to(ref.device, ref.dtype)
    with torch.no_grad():
        phys = sample.physics
        if hasattr(phys, "operator_norm"):
            return float(phys.operator_norm()) ** 2
        if hasattr(phys, "compute_sqnorm"):
            norm = phys.compute_sqnorm(probe, max_iter=50, tol=1e-4, verbose=False)
        else:
            norm = phys.compute_norm(probe, max_iter=50, tol=1e-4, verbose=False)
    return float(norm)


def load_H(path: str | Path | None, device: torch.device | str = "cpu") -> dict | None:
    """Load the fitted H (``fourier_filter``, ``spatial_mask``, extras) via ``unroll3d.normal``."""
    if path is None:
        return None
    from unroll3d import normal

    loaded = normal.load_normal(path)
    if isinstance(loaded, dict):
        out = dict(loaded)
    elif isinstance(loaded, (tuple, list)):
        out = {"fourier_filter": loaded[0], "spatial_mask": loaded[1]}
        if len(loaded) > 2 and isinstance(loaded[2], dict):
            out.update({k: v for k, v in loaded[2].items() if k not in out})
    else:
        out = {
            "fourier_filter": loaded.fourier_filter,
            "spatial_mask": loaded.spatial_mask,
        }
    for key in ("fourier_filter", "spatial_mask"):
        if key not in out:
            raise ValueError(f"{path}: normal-operator file has no {key!r}")
        out[key] = torch.as_tensor(out[key]).to(device)
    return out


def h_kwargs(spec: VariantSpec, H: dict | None, img_size: Sequence[int]) -> dict:
    """Keyword arguments that carry H to a ``PartitionedReconstructor`` call.

    One :class:`unroll3d.normal.DiagCirculant` is built per H and kept in ``H["_op"]``, so its
    cropped kernel λ_k (one inverse FFT of the full λ) is computed once per patch size rather
    than at every training step.
    """
    if not spec.use_H:
        return {}
    if H is None:
        raise ValueError("variant uses H but no normal-operator file (--normal) was given")
    if "_op" not in H:
        from unroll3d.normal import DiagCirculant

        kw = {"two_sided": bool(H.get("two_sided", False))}
        if H.get("grid") is not None:
            kw["grid"] = tuple(H["grid"])
        H["_op"] = DiagCirculant(H["fourier_filter"], H["spatial_mask"], tuple(img_size), **kw)
    return {"normal": H["_op"]}


def physics_for(sample, spec: VariantSpec, H: dict | None, lipschitz: float, device=None):
    """The physics a variant sees: the sample's own, or wrapped with H (``scaling`` = ‖A‖²)."""
    if not spec.use_H:
        return sample.physics
    if H is None:
        raise ValueError("variant uses H but no normal-operator file (--normal) was given")
    from unroll3d.normal import DiagCirculantWrapper

    scaling = H.get("scaling")
    return DiagCirculantWrapper(
        sample.physics,
        img_size=tuple(sample.x.shape[1:]),
        scaling=float(lipschitz if scaling is None else scaling),
        device=sample.x.device,
        fourier_filter=H["fourier_filter"],
        spatial_mask=H["spatial_mask"],
        two_sided=bool(H.get("two_sided", False)),
        grid=H.get("grid"),
    )


def _task_section(config: dict, task: str) -> dict:
    return config.get(task, {})


def make_partitioner(model, task: str, config: dict, img_size: Sequence[int]):
    """``PartitionedReconstructor`` around ``model`` with the task's patch size and stride."""
    from unroll3d.partition import PartitionedReconstructor

    tcfg = _task_section(config, task)
    patch = tcfg.get("patch_size", [8, 16, 16])
    patch = [min(int(p), int(n)) for p, n in zip(patch, img_size[-3:], strict=True)]
    stride = tcfg.get("stride")
    margin = config.get("train", {}).get(f"{task}_patch_margin")
    return PartitionedReconstructor(
        base_reconstructor=model,
        img_size=tuple(img_size),
        patch_size=tuple(patch),
        stride=None if stride is None else tuple(stride),
        train_ranges=patch_ranges(img_size[-3:], patch, margin),
    )


def patch_ranges(spatial: Sequence[int], patch: Sequence[int], margin: Sequence[float] | None):
    """Training patch-corner bounds from margins given as fractions of each axis.

    Corner ``c`` on an axis of size ``n`` with patch ``p`` and margin ``f`` lies in
    ``[round(f n), n − round(f n) − p]`` (paper.md §10, CBCT: z ∈ [80, 421 − D] and
    y, x ∈ [50, 451 − H] at 501³ ≈ margins (0.16, 0.1, 0.1)). An axis too small for its margin
    falls back to the whole axis. ``None`` = uniform over the volume.
    """
    if margin is None:
        return None
    out = []
    for n, p, f in zip(spatial, patch, margin, strict=True):
        m = int(round(float(f) * int(n)))
        lo, hi = m, int(n) - m - int(p)
        out.append((lo, hi) if hi >= lo else None)
    return out


def estimate_pair(
    model,
    spec: VariantSpec,
    sample,
    physics,
    x0: torch.Tensor,
    generator: torch.Generator,
    partitioner=None,
    H: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, target) of one training sample: a random patch or the full volume."""
    if spec.partition:
        return partitioner.training_pair(
            sample.y,
            physics,
            sample.x,
            generator=generator,
            x0=x0,
            **h_kwargs(spec, H, sample.x.shape[1:]),
        )
    return model(sample.y, physics, x_init=x0), sample.x


# --------------------------------------------------------------------------- samples


@dataclass
class _Prepared:
    sample: Any
    physics: Any
    x0: torch.Tensor
    offloaded: bool = False
    device: Any = None


def _moved(prep: _Prepared, device: torch.device | str) -> _Prepared:
    """A copy of ``prep`` whose volumes (x, y, x0) live on ``device`` (physics unchanged)."""
    sample = copy.copy(prep.sample)
    sample.x = prep.sample.x.to(device, non_blocking=True)
    sample.y = prep.sample.y.to(device, non_blocking=True)
    x0 = prep.x0.to(device, non_blocking=True)
    return _Prepared(sample, prep.physics, x0, prep.offloaded, prep.device)


class SampleCache:
    """Loads samples lazily (``loader(path)``), computes their x0 = A†y once and caches them.

    The first ``on_device`` samples keep their volumes on the device; the volumes of the others
    (x, y, x0) are parked in host memory and copied over at each use, so 30 Walnut volumes of
    501³ do not fill the GPU (``train.device_cache``).
    """

    def __init__(
        self,
        paths: Sequence[str],
        loader: Callable,
        spec,
        H,
        lipschitz_fn=None,
        on_device: int | None = None,
    ):
        self.paths = list(paths)
        self.loader = loader
        self.spec = spec
        self.H = H
        self.lipschitz: float | None = None
        self._cache: dict[int, _Prepared] = {}
        self.lipschitz_fn = lipschitz_fn or lipschitz_of
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> _Prepared:
        if i not in self._cache:
            sample = self.loader(self.paths[i])
            with torch.no_grad():
                x0 = sample.physics.A_dagger(sample.y).float()
            if self.lipschitz is None:
                self.lipschitz = self.lipschitz_fn(sample, x0)
            phys = physics_for(sample, self.spec, self.H, self.lipschitz)
            prep = _Prepared(sample, phys, x0)
            full = self.on_device is not None and len(self._cache) >= self.on_device
            if full and x0.device.type != "cpu":
                prep = _moved(prep, "cpu")
                prep.offloaded, prep.device = True, x0.device
            self._cache[i] = prep
        prep = self._cache[i]
        return _moved(prep, prep.device) if prep.offloaded else prep


def default_loader(setting: str, device: torch.device) -> Callable:
    from unroll3d.data import load_sample

    def load(path):
        return load_sample(path, setting, device=device)

    return load


# --------------------------------------------------------------------------- training


@dataclass
class TrainJob:
    """Everything one training run needs. ``loader(path) -> Sample`` defaults to ``load_sample``."""

    task: str
    setting: str
    variant: str
    config: dict
    train_paths: list[str]
    val_paths: list[str]
    out: Path
    csv_path: Path | None = None
    stats_path: Path | None = None
    normal_path: str | None = None
    H: dict | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loader: Callable | None = None
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.csv_path = Path(self.csv_path or self.out.with_suffix(".csv"))
        self.stats_path = Path(self.stats_path or self.out.with_suffix(".json"))
        if self.loader is None:
            self.loader = default_loader(self.setting, self.device)

    @property
    def ckpt_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt")


def _tcfg(config: dict) -> dict:
    t = dict(config.get("train", {}))
    t.setdefault("steps", 100)
    t.setdefault("lr", 1e-4)
    t.setdefault("lr_min", 0.0)
    t.setdefault("weight_decay", 0.0)
    t.setdefault("accumulate", 1)
    t.setdefault("grad_clip", 1.0)
    t.setdefault("checkpoint_every", 1000)
    t.setdefault("val_every", 1000)
    t.setdefault("bf16", False)
    t.setdefault("warmup_steps", 2)
    t.setdefault("val_max", 2)
    t.setdefault("device_cache", 8)
    return t


def train_step(
    model,
    optimizer,
    spec: VariantSpec,
    pick: Callable[[torch.Generator], tuple[_Prepared, torch.Generator]],
    generator: torch.Generator,
    accumulate: int,
    grad_clip: float,
    partitioner=None,
    H=None,
) -> float:
    """One optimiser step with ``accumulate`` micro-batches; returns the mean loss.

    Raises :class:`NonFiniteLoss` before touching the weights if the loss is not finite.
    """
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(accumulate):
        prep = pick(generator)
        est, target = estimate_pair(
            model, spec, prep.sample, prep.physics, prep.x0, generator, partitioner, H
        )
        loss = torch.mean((est.float() - target.float()) ** 2)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(float(loss.detach()))
        (loss / accumulate).backward()
        total += float(loss.detach())
    if grad_clip and grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total / accumulate


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    atomic_write_text(path, buf.getvalue())


def _base_result(job: TrainJob, spec: VariantSpec) -> dict:
    return {
        "task": job.task,
        "setting": job.setting,
        "variant": job.variant,
        "kind": spec.kind,
        "partition": spec.partition,
        "use_H": spec.use_H,
        "learned": spec.learned,
        "device": device_name(job.device),
        "config_name": job.config.get("name"),
        "config_hash": config_hash(job.config),
    }


def validate_psnr(model, spec, task, config, prepared: list[_Prepared], H) -> float:
    """Mean PSNR (evaluation convention) of full-volume inference on the validation samples."""
    from unroll3d.evaluate import reconstruct
    from unroll3d.metrics import compute_metrics, convention_for

    conv = convention_for(task, config.get("evaluate", {}))
    # validation during training: Algorithm 1's first pass only (no per-patch refinement)
    config = {**config, "evaluate": {**config.get("evaluate", {}), "refine": False}}
    vals = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for prep in prepared:
            x = reconstruct(model, spec, task, config, prep.sample, prep.physics, prep.x0, H)
            vals.append(compute_metrics(x, prep.sample.x, conv)["psnr"])
    model.train(was_training)
    return float(np.mean(vals)) if vals else float("nan")


def _select_tv(job: TrainJob, spec: VariantSpec, H) -> dict:
    """Choose the TV weight α on the validation volumes (grid search on PSNR)."""
    t = _tcfg(job.config)
    grid = list(t.get("tv_grid", [0.001, 0.003, 0.01, 0.03, 0.1]))
    paths = job.val_paths or job.train_paths
    cache = SampleCache(paths[: max(1, t["val_max"])], job.loader, spec, H)
    prepared = [cache.get(i) for i in range(len(cache))]
    scores = []
    for a in grid:
        model = build_variant(job.variant, job.task, job.config, cache.lipschitz, alpha=a)
        model = model.to(job.device)
        scores.append(validate_psnr(model, spec, job.task, job.config, prepared, H))
        print(f"tv: alpha={a:g} val PSNR {scores[-1]:.2f} dB", file=sys.stderr)
    best = int(np.nanargmax(scores))
    return {
        "alpha": grid[best],
        "tv_grid": grid,
        "tv_val_psnr": scores,
        "lipschitz": cache.lipschitz,
    }


def train(job: TrainJob, stop_at: int | None = None) -> dict:
    """Run (or resume) the training of ``job``; returns the stats dict also written to JSON.

    :param int stop_at: testing hook, stop after this step as if the process had been killed.
    """
    from unroll3d.utils import seed_everything

    spec = variant_spec(job.variant)
    t = _tcfg(job.config)
    seed = int(job.config.get("seed", 0))
    seed_everything(seed)
    result = _base_result(job, spec)
    H = job.H if job.H is not None else load_H(job.normal_path, job.device)
    H = H if spec.use_H else None

    if not spec.learned:
        extra = {"lipschitz": None}
        if spec.kind == "tv":
            extra = _select_tv(job, spec, H)
        payload = {**result, **extra, "status": "ok", "state_dict": None}
        atomic_torch_save(payload, job.out)
        _write_csv(job.csv_path, [])
        stats = {**result, **{k: v for k, v in extra.items()}, "status": "ok", "steps": 0}
        stats.update(peak_memory_gb=None, step_time_mean_s=None, n_params=0)
        atomic_write_json(job.stats_path, stats)
        return stats

    device = job.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cache = SampleCache(job.train_paths, job.loader, spec, H, on_device=t["device_cache"])
    if len(cache) == 0:
        raise ValueError("no training volumes given (--train)")
    val_paths = (job.val_paths or [])[: t["val_max"]]
    val_cache = SampleCache(val_paths, job.loader, spec, H)
    rows: list[dict] = []
    volume = "?"
    step = 0
    try:
        first = cache.get(0)
        volume = _shape_text(first.sample.x)
        lipschitz = cache.lipschitz
        val_cache.lipschitz = lipschitz
        model = build_variant(job.variant, job.task, job.config, lipschitz, device=device)
        model.bf16 = bool(t["bf16"]) and device.type == "cuda"
        model.train()
        partitioner = None
        if spec.partition:
            partitioner = make_partitioner(model, job.task, job.config, first.sample.x.shape[1:])
        opt = torch.optim.Adam(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=t["steps"], eta_min=t["lr_min"]
        )
        start = 0
        chash = config_hash(job.config)
        ckpt = job.ckpt_path
        if ckpt.exists():
            state = torch.load(ckpt, map_location=device, weights_only=False)
            if state.get("config_hash") == chash and state.get("variant") == job.variant:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                _set_rng_state(state["rng"])
                rows = list(state["history"])
                start = int(state["step"])
                print(f"resuming from {ckpt} at step {start}", file=sys.stderr)
            else:
                print(f"ignoring {ckpt}: different config or variant", file=sys.stderr)

        def save_ckpt(at_step: int) -> None:
            atomic_torch_save(
                {
                    "step": at_step,
                    "variant": job.variant,
                    "config_hash": chash,
                    "config": job.config,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": _rng_state(),
                    "history": rows,
                    "lipschitz": lipschitz,
                },
                ckpt,
            )
            _write_csv(job.csv_path, rows)

        def pick(gen: torch.Generator) -> _Prepared:
            i = int(torch.randint(len(cache), (1,), generator=gen))
            return cache.get(i)

        bar = None
        if job.progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=t["steps"], initial=start, desc=job.variant, file=sys.stderr)
            except ImportError:  # pragma: no cover
                bar = None
        rss_base = rss_mb() if reset_peak_rss() else None
        for step in range(start, t["steps"]):
            gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)
            _sync(device)
            t0 = time.perf_counter()
            try:
                loss = train_step(
                    model, opt, spec, pick, gen, t["accumulate"], t["grad_clip"], partitioner, H
                )
            except NonFiniteLoss as err:
                last = int(torch.load(ckpt, weights_only=False)["step"]) if ckpt.exists() else 0
                msg = (
                    f"non-finite loss ({err}) at step {step + 1}; "
                    f"last good checkpoint: step {last} ({ckpt})"
                )
                _write_csv(job.csv_path, rows)
                raise NonFiniteLoss(msg) from None
            sched.step()
            _sync(device)
            row = {
                "step": step + 1,
                "loss": loss,
                "lr": opt.param_groups[0]["lr"],
                "step_time_s": time.perf_counter() - t0,
                "peak_memory_gb": peak_memory_gb(device),
                "val_psnr": None,
            }
            if len(val_cache) and ((step + 1) % t["val_every"] == 0 or step + 1 == t["steps"]):
                prepared = [val_cache.get(i) for i in range(len(val_cache))]
                row["val_psnr"] = validate_psnr(model, spec, job.task, job.config, prepared, H)
            rows.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3g}")
            if (step + 1) % t["checkpoint_every"] == 0 or step + 1 == t["steps"]:
                save_ckpt(step + 1)
            if stop_at is not None and step + 1 >= stop_at:
                return {"stopped_at": step + 1}
        if bar is not None:
            bar.close()
    except torch.OutOfMemoryError:
        peak = peak_memory_gb(device) or 0.0
        msg = f"OOM at volume {volume}, peak {peak:.2f} GB (step {step + 1})"
        print(msg, file=sys.stderr)
        stats = {**result, "status": "oom", "message": msg, "peak_memory_gb": peak}
        stats.update(steps=step, step_time_mean_s=None, n_params=None, volume=volume)
        atomic_torch_save({**result, "status": "oom", "message": msg, "state_dict": None}, job.out)
        _write_csv(job.csv_path, rows)
        atomic_write_json(job.stats_path, stats)
        return stats

    times = [r["step_time_s"] for r in rows]
    warm = t["warmup_steps"] if len(times) > t["warmup_steps"] else min(1, len(times) - 1)
    peaks = [r["peak_memory_gb"] for r in rows if r["peak_memory_gb"] is not None]
    vals = [r["val_psnr"] for r in rows if r["val_psnr"] is not None]
    stats = {
        **result,
        "status": "ok",
        "steps": len(rows),
        "accumulate": t["accumulate"],
        "volume": volume,
        "n_params": count_parameters(model),
        "lipschitz": lipschitz,
        "peak_memory_gb": max(peaks) if peaks else None,
        "peak_rss_gb": peak_rss_gb(),
        "peak_rss_growth_gb": _rss_growth_gb(rss_base),
        "step_time_mean_s": float(np.mean(times[warm:])) if times else None,
        "warmup_steps": warm,
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "val_psnr_last": vals[-1] if vals else None,
        "bf16": model.bf16,
    }
    if spec.kind == "unrolled":
        stats["step_sizes"] = model.step_sizes.detach().cpu().tolist()
        stats["sigmas"] = model.sigmas.detach().cpu().tolist()
    payload = {
        **result,
        "status": "ok",
        "state_dict": model.state_dict(),
        "lipschitz": lipschitz,
        "model_config": job.config.get("model", {}),
        "K": _task_section(job.config, job.task).get("K"),
        "steps": len(rows),
    }
    atomic_torch_save(payload, job.out)
    _write_csv(job.csv_path, rows)
    atomic_write_json(job.stats_path, stats)
    return stats


def load_trained(path: str | Path, task: str, config: dict, device="cpu"):
    """Rebuild a variant from its model file; returns (model or None, payload)."""
    payload = torch.load(path, map_location=device, weights_only=False)
    if payload.get("status") != "ok":
        return None, payload
    name = payload["variant"]
    model = build_variant(
        name,
        task,
        config,
        lipschitz=payload.get("lipschitz") or 1.0,
        alpha=payload.get("alpha"),
        device=device,
    )
    if payload.get("state_dict") is not None:
        model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


# --------------------------------------------------------------------------- CLI


def read_config(args) -> dict:
    if args.config_json:
        return json.loads(args.config_json)
    if args.config:
        import yaml

        return yaml.safe_load(Path(args.config).read_text())
    raise SystemExit("give --config FILE or --config-json TEXT")


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=["cbct", "mri"])
    p.add_argument("--setting", required=True, help="v30, v50, ... (CBCT) or R5, R10 (MRI)")
    p.add_argument("--variant", required=True)
    p.add_argument("--config", help="pipeline config YAML")
    p.add_argument("--config-json", help="pipeline config as JSON text (the rules pass this)")
    p.add_argument("--normal", default=None, help="fitted H file (variants with -H)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unroll3d train", description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--train", nargs="+", required=True, help="training volume files")
    p.add_argument("--val", nargs="*", default=[], help="validation volume files")
    p.add_argument("--out", required=True, help="model file (.pt)")
    p.add_argument("--csv", default=None, help="per-step log (default: <out> with .csv)")
    p.add_argument("--stats", default=None, help="train stats JSON (default: <out> with .json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = read_config(args)
    variant_spec(args.variant)
    job = TrainJob(
        task=args.task,
        setting=args.setting,
        variant=args.variant,
        config=config,
        train_paths=args.train,
        val_paths=args.val,
        out=Path(args.out),
        csv_path=args.csv,
        stats_path=args.stats,
        normal_path=args.normal,
        device=resolve_device(args.device),
        progress=not args.no_progress,
    )
    try:
        stats = train(job)
    except NonFiniteLoss as err:
        print(f"unroll3d train: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
