"""Training of one variant on one task and setting (the ``unroll3d train`` verb's library call).

- Partitioned variants (``partition``, ``partition-H``) and ``postproc`` train on random patches
  with ground-truth context through
  :meth:`unroll3d.partition.PartitionedReconstructor.training_pair`; ``unrolled`` and
  ``unrolled-H`` train on the full volume. Loss: mean squared error (paper L_PART / L_UNR).
- Adam with a cosine schedule, gradient accumulation, gradient clipping, seeded; the network's
  speed keys (``train.bf16`` autocast around the network only, ``tf32``, ``channels_last``,
  ``cudnn_benchmark``, ``compile``) are applied by :func:`unroll3d.models.build_variant`.
- Every random choice of step ``s`` (which training volume, which patch) comes from a generator
  seeded with ``(seed, s)``, so a run resumed from a checkpoint reaches the same weights as an
  uninterrupted one. Checkpoints (``<out>.ckpt``) are written atomically every
  ``checkpoint_every`` steps and hold the step, model, optimiser, scheduler, RNG states,
  histories, the config and the operator normalisation. A checkpoint is resumed only if its
  fingerprint (:func:`run_fingerprint`: config section, input files, H, code) matches; otherwise,
  or when it cannot be read, it is deleted with a log line. It is deleted when the run ends.
- A NaN/inf loss raises :class:`NonFiniteLoss` naming the step; the last good checkpoint is kept.
- CUDA out-of-memory is caught and written as the result (``status: oom``, "OOM at volume N³,
  peak X GB"), so the pipeline continues and the tables show OOM.
- One model can serve several settings (``TrainJob.settings``, ``train.share_across_settings``):
  each micro-step draws a setting, then a volume; the sample's setting sets the step sizes'
  ‖A‖² and its H. The model file keeps ‖A‖² per setting.
- ``pnp`` trains its denoiser on noisy patches, then chooses α-PGD's parameters per setting on
  the validation volumes (:mod:`unroll3d.engine.tuning`).
- Non-learned variants (``fdk``/``adjoint``, ``tv``, ``inr``, ``dpir``) write a small model file
  too (``tv``: the regularisation weight chosen on the validation volumes from
  ``train.tv_grid``; ``dpir``: status ``unavailable`` without its checked weights file).
- Progress: a tqdm bar on a terminal only; otherwise one log line every ``log_every`` steps.

Outputs: ``<out>`` (final model), ``<csv>`` (per step: loss, lr, step time, peak memory,
validation PSNR), ``<stats>`` (JSON: peak memory, mean step time after warm-up, device).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from unroll3d import __version__
from unroll3d.config import train_settings
from unroll3d.engine.core import (
    Prepared,
    SampleCache,
    default_loader,
    estimate_pair,
    fresh_mask_loader,
    h_builder,
    lipschitz_of,
    load_H,
    make_partitioner,
    mri_h_mode,
    peak_memory_gb,
    shape_text,
    sync,
    use_lipschitz,
)
from unroll3d.engine.tuning import select_pnp, select_tv, validate_psnr
from unroll3d.models import build_variant, count_parameters, resolve_model_config
from unroll3d.models.build import network_settings
from unroll3d.models.dpir import checked_weights, expected_sha256, weights_file
from unroll3d.normal import NormalFit
from unroll3d.utils import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    device_name,
    peak_rss_gb,
    reset_peak_rss,
    resumable_checkpoint,
    rss_gb,
    seed_everything,
    source_digest,
)
from unroll3d.variants import VariantSpec, variant_spec

__all__ = [
    "NonFiniteLoss",
    "ValidationFailed",
    "TrainJob",
    "train",
    "train_step",
    "validate_psnr",
    "config_hash",
]

CSV_FIELDS = ["step", "loss", "lr", "step_time_s", "peak_memory_gb", "val_psnr"]


class NonFiniteLoss(RuntimeError):
    """Raised when the training loss becomes NaN or inf."""


class ValidationFailed(RuntimeError):
    """The validation PSNR could not be computed (the message names the volume and the step)."""


def config_hash(config: dict) -> str:
    """Short hash of the config sections that define a training run (seed, model, train, tasks)."""
    keys = ("seed", "train", "cbct", "mri")
    sections = {k: config.get(k) for k in keys}
    sections["model"] = resolve_model_config(config)
    text = json.dumps(sections, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: modules whose code decides what a training step computes (part of the run fingerprint)
_STEP_CODE = (
    "engine/train.py",
    "engine/core.py",
    "engine/tuning.py",
    "models",
    "partition",
    "normal/operator.py",
)


@cache
def _code_version() -> str:
    """Hash of the package version and the source of the modules a training step runs."""
    return hashlib.sha256((__version__ + source_digest(*_STEP_CODE)).encode()).hexdigest()


def _file_stamp(path: str | Path | None) -> str:
    """Size and modification time of an input file (``absent`` when it does not exist)."""
    if path is None:
        return "none"
    try:
        st = Path(path).stat()
    except OSError:
        return "absent"
    return f"{st.st_size}:{st.st_mtime_ns}"


def run_fingerprint(job: TrainJob) -> str:
    """What a checkpoint must match to be resumed: the task, setting, variant, the job's config
    section, every input file (training/validation volumes and H: path, size, mtime), the H
    tensors when H is given in memory, and the code of the training step."""
    h = hashlib.sha256()
    head = {"task": job.task, "setting": job.setting, "variant": job.variant, "config": job.config}
    head["settings"] = job.settings
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for role, paths in (("train", job.train_paths), ("val", job.val_paths)):
        for p in paths:
            h.update(f"{role}:{p}:{_file_stamp(p)}\n".encode())
    files = job.normal_path if isinstance(job.normal_path, list) else [job.normal_path]
    for f in files:
        h.update(f"normal:{f}:{_file_stamp(f)}\n".encode())
    fits = job.H.values() if isinstance(job.H, dict) else [job.H]
    for fit in (f for f in fits if f is not None):
        for t in (fit.fourier_filter, fit.spatial_mask):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(_code_version().encode())
    return h.hexdigest()[:32]


def _resumable_state(job: TrainJob, fingerprint: str, device) -> dict | None:
    """The checkpoint's state if it can be resumed, else None; a checkpoint written for other
    inputs, or one that cannot be read (truncated), is deleted with a log line
    (:func:`unroll3d.utils.resumable_checkpoint`, shared with ``fit-normal``)."""
    return resumable_checkpoint(
        job.ckpt_path,
        fingerprint,
        required=("step", "model", "optimizer"),
        map_location=device,
        what="config, data, H file or code",
        restart="training from step 0",
    )


def _rss_growth_gb(base_gb: float | None) -> float | None:
    """Host peak RSS since the training loop began minus the RSS then (GB): what the steps
    themselves added (activations, gradients, optimiser state, cached samples). The CPU
    counterpart of the CUDA peak; None where the kernel's peak counter cannot be reset."""
    peak = peak_rss_gb()
    if base_gb is None or peak is None:
        return None
    return max(0.0, peak - base_gb)


@dataclass
class TrainJob:
    """Everything one training run needs. ``loader(path) -> Sample`` defaults to ``load_sample``
    under each setting; ``redraw(path, seed) -> Sample`` draws an MRI volume with a fresh mask
    (``train.fresh_masks``; by default from ``load_sample`` when the default loader is used,
    else none). ``settings`` (default ``[setting]``) are the settings one model trains on, drawn
    uniformly per micro-step (``train.share_across_settings``; ``setting`` is then a label such
    as ``all``); ``normal_path`` is one H file or one per setting, ``H`` a fit or
    ``{setting: fit}``."""

    task: str
    setting: str
    variant: str
    config: dict
    train_paths: list[str]
    val_paths: list[str]
    out: Path
    csv_path: Path | None = None
    stats_path: Path | None = None
    normal_path: str | list[str] | None = None
    H: NormalFit | dict[str, NormalFit] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loader: Callable | None = None
    redraw: Callable | None = None
    progress: bool | None = None
    log_every: int = 50
    settings: list[str] | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        self.csv_path = Path(self.csv_path or self.out.with_suffix(".csv"))
        self.stats_path = Path(self.stats_path or self.out.with_suffix(".json"))
        self.settings = list(self.settings or [self.setting])
        fresh = self.task == "mri" and train_settings(self.config)["fresh_masks"]
        self._defaults: dict[str, tuple] = {}
        if self.loader is None:
            self._defaults = {
                s: (
                    default_loader(s, self.device),
                    fresh_mask_loader(s, self.device) if fresh else None,
                )
                for s in self.settings
            }
            self.loader, self.redraw = self._defaults[self.settings[0]]

    def _own(self, setting: str) -> tuple | None:
        """The default (loader, redraw) of ``setting``, unless the caller set its own."""
        own = self._defaults.get(setting)
        first = self._defaults.get(self.settings[0])
        return own if own and (self.loader, self.redraw) == first else None

    def loader_for(self, setting: str) -> Callable:
        own = self._own(setting)
        return own[0] if own else self.loader

    def redraw_for(self, setting: str) -> Callable | None:
        own = self._own(setting)
        return own[1] if own else self.redraw

    def normal_fits(self) -> dict[str, NormalFit | None]:
        """{setting: H} from ``H`` or the ``normal_path`` file(s) (each fit names its setting);
        a setting without its fit is an error naming it."""
        if isinstance(self.H, dict):
            fits = dict(self.H)
        elif self.H is not None:
            fits = dict.fromkeys(self.settings, self.H)
        else:
            files = self.normal_path if isinstance(self.normal_path, list) else [self.normal_path]
            loaded = [load_H(f, self.device) for f in files if f is not None]
            if len(loaded) == 1 and len(self.settings) == 1:
                return {self.settings[0]: loaded[0]}
            fits = {fit.setting: fit for fit in loaded}
        missing = [s for s in self.settings if fits.get(s) is None]
        if fits and missing:
            raise ValueError(
                f"no fitted H for setting(s) {missing} among the H files given ({self.normal_path})"
            )
        return {s: fits.get(s) for s in self.settings}

    @property
    def ckpt_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt")


def train_step(
    model,
    optimizer,
    spec: VariantSpec,
    pick: Callable[[torch.Generator], Prepared],
    generator: torch.Generator,
    accumulate: int,
    grad_clip: float,
    partitioner=None,
) -> float:
    """One optimiser step with ``accumulate`` micro-batches; returns the mean loss. Each drawn
    sample brings its setting's ‖A‖² (the step-size normalisation) and H.

    The micro-steps' losses are summed on the device (in float64, as Python would) and read
    once per step, so the queue is not drained after every micro-step. Raises
    :class:`NonFiniteLoss` before touching the weights if a loss is not finite.
    """
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for _ in range(accumulate):
        prep = pick(generator)
        use_lipschitz(model, prep.lipschitz)
        est, target = estimate_pair(
            model, spec, prep.sample, prep.physics, prep.x0, generator, partitioner, prep.H
        )
        loss = torch.mean((est.float() - target.float()) ** 2)
        (loss / accumulate).backward()
        losses.append(loss.detach().double())
    values = torch.stack(losses).cpu()  # the step's one read of the device
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteLoss(float(values[~torch.isfinite(values)][0]))
    if grad_clip and grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return sum(values.tolist()) / accumulate


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
        "config_hash": config_hash(job.config),
    }


def train(job: TrainJob, stop_at: int | None = None) -> dict:
    """Run (or resume) the training of ``job``; returns the stats dict also written to JSON.

    :param int stop_at: testing hook, stop after this step as if the process had been killed.
    """
    spec = variant_spec(job.variant)
    t = train_settings(job.config)
    seed = int(job.config.get("seed", 0))
    seed_everything(seed)
    result = _base_result(job, spec)
    fits = job.normal_fits() if spec.use_H else dict.fromkeys(job.settings)
    H = fits[job.settings[0]]

    if not spec.learned:
        extra = {"lipschitz": None}
        status, message = "ok", None
        if spec.kind == "dpir":  # pretrained elsewhere: only its weights file is checked
            weights = checked_weights(t["dpir_weights"], t["dpir_sha256"], t["dpir_denoiser"])
            if weights is None:
                status = "unavailable"
                where = (
                    "train.dpir_weights is not set"
                    if not t["dpir_weights"]
                    else f"{weights_file(t['dpir_weights'], t['dpir_denoiser'])} does not exist"
                )
                message = (
                    f"weights not available: {where} (train.dpir_weights: download fetches "
                    "deepinv's published file; no others are used)"
                )
                print(f"dpir: {message}", file=sys.stderr)
            else:
                extra = {"lipschitz": lipschitz_of(job.loader(job.train_paths[0]))}
                sha, how = expected_sha256(weights, t["dpir_sha256"])
                extra.update(weights=weights, weights_sha256=sha, weights_checked_against=how)
        elif spec.kind == "tv":
            val = job.val_paths or job.train_paths
            cache = SampleCache(val[: max(1, t["val_max"])], job.loader, spec, H)
            extra = select_tv(job.variant, job.task, job.config, cache, job.device)
        elif spec.kind not in ("analytical", "adjoint"):  # iterative, no weights: needs ‖A‖²
            extra = {"lipschitz": lipschitz_of(job.loader(job.train_paths[0]))}
        payload = {**result, **extra, "status": status, "message": message, "state_dict": None}
        atomic_torch_save(payload, job.out)
        _write_csv(job.csv_path, [])
        stats = {**result, **extra, "status": status, "message": message, "steps": 0}
        stats.update(peak_memory_gb=None, step_time_mean_s=None, n_params=0)
        atomic_write_json(job.stats_path, stats)
        return stats

    device = job.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not job.train_paths:
        raise ValueError("no training volumes given (--train)")
    on_device = t["device_cache"] // len(job.settings)  # the volumes kept per setting
    h_of = h_builder(spec, job.task, job.config)  # normal.mri_h mask: each draw's own H
    shape_ref: dict = {}  # training and validation volumes: one data set, one shape
    caches = {
        s: SampleCache(
            job.train_paths,
            job.loader_for(s),
            spec,
            fits[s],
            on_device=on_device,
            h_of=h_of,
            shape_ref=shape_ref,
        )
        for s in job.settings
    }
    val_paths = (job.val_paths or [])[: t["val_max"]]
    val_caches = {
        s: SampleCache(val_paths, job.loader_for(s), spec, fits[s], h_of=h_of, shape_ref=shape_ref)
        for s in job.settings
    }
    rows: list[dict] = []
    volume = "?"
    step = 0
    try:
        first = caches[job.settings[0]].get(0)
        volume = shape_text(first.sample.x)
        by_setting = {}
        for s in job.settings:  # ‖A‖² per setting, on its first training volume
            caches[s].get(0)
            by_setting[s] = val_caches[s].lipschitz = caches[s].lipschitz
        lipschitz = by_setting[job.settings[0]]
        # build_variant applies train.bf16/tf32/channels_last/cudnn_benchmark/compile
        model = build_variant(job.variant, job.task, job.config, lipschitz, device=device)
        model.train()
        partitioner = None
        if spec.partition:
            partitioner = make_partitioner(model, job.task, job.config, first.sample.x.shape[1:])
        opt = torch.optim.Adam(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=t["steps"], eta_min=t["lr_min"]
        )
        start = 0
        fingerprint = run_fingerprint(job)
        ckpt = job.ckpt_path
        state = _resumable_state(job, fingerprint, device)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            rows = list(state["history"])
            start = int(state["step"])
            print(f"resuming from {ckpt} at step {start}", file=sys.stderr)

        def save_ckpt(at_step: int) -> None:
            atomic_torch_save(
                {
                    "step": at_step,
                    "variant": job.variant,
                    "fingerprint": fingerprint,
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

        def pick(gen: torch.Generator) -> Prepared:
            s = job.settings[0]
            if len(job.settings) > 1:  # one model for every setting: a setting per draw
                s = job.settings[int(torch.randint(len(job.settings), (1,), generator=gen))]
            cache = caches[s]
            i = int(torch.randint(len(cache), (1,), generator=gen))
            redraw = job.redraw_for(s)
            if redraw is None:
                return cache.get(i)
            seed = int(torch.randint(2**31 - 1, (1,), generator=gen))  # a fresh mask per draw
            return cache.fresh(i, redraw, seed)

        # a bar on a terminal only (disable=None); logs get one line every log_every steps
        bar = tqdm(
            total=t["steps"],
            initial=start,
            desc=job.variant,
            file=sys.stderr,
            disable=None if job.progress is None else not job.progress,
        )
        log_lines = bar.disable
        rss_base = rss_gb() if reset_peak_rss() else None
        for step in range(start, t["steps"]):
            gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)
            sync(device)
            t0 = time.perf_counter()
            try:
                loss = train_step(
                    model, opt, spec, pick, gen, t["accumulate"], t["grad_clip"], partitioner
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
            sync(device)
            row = {
                "step": step + 1,
                "loss": loss,
                "lr": opt.param_groups[0]["lr"],
                "step_time_s": time.perf_counter() - t0,
                "peak_memory_gb": peak_memory_gb(device),
                "val_psnr": None,
            }
            if val_paths and ((step + 1) % t["val_every"] == 0 or step + 1 == t["steps"]):
                prepared = [c.get(i) for c in val_caches.values() for i in range(len(c))]
                try:
                    row["val_psnr"] = validate_psnr(model, spec, job.task, job.config, prepared)
                except ValueError as err:
                    _write_csv(job.csv_path, rows)
                    raise ValidationFailed(f"step {step + 1}: {err}") from None
            rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            if log_lines and ((step + 1) % job.log_every == 0 or step + 1 == t["steps"]):
                val = "" if row["val_psnr"] is None else f", val PSNR {row['val_psnr']:.2f} dB"
                print(
                    f"{job.variant}: step {step + 1}/{t['steps']}, loss {loss:.4g}, "
                    f"{row['step_time_s']:.3f} s/step{val}",
                    file=sys.stderr,
                    flush=True,
                )
            if (step + 1) % t["checkpoint_every"] == 0 or step + 1 == t["steps"]:
                save_ckpt(step + 1)
            if stop_at is not None and step + 1 >= stop_at:
                return {"stopped_at": step + 1}
        bar.close()
        tuned = {}
        if spec.kind == "pnp":  # the test-time parameters, per setting, on its validation volumes
            for s in job.settings:
                c = val_caches[s] if val_paths else caches[s]
                prepared = [c.get(i) for i in range(len(c) if val_paths else 1)]
                use_lipschitz(model, by_setting[s])
                for key, value in select_pnp(model, job.task, job.config, prepared).items():
                    tuned.setdefault(key, {})[s] = value
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
        "lipschitz_by_setting": by_setting,
        "settings": job.settings,
        "peak_memory_gb": max(peaks) if peaks else None,
        "peak_rss_gb": peak_rss_gb(),
        "peak_rss_growth_gb": _rss_growth_gb(rss_base),
        "step_time_mean_s": float(np.mean(times[warm:])) if times else None,
        "warmup_steps": warm,
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "val_psnr_last": vals[-1] if vals else None,
        "bf16": bool(getattr(model, "bf16", False)),  # a model without a DRUNet has none
        "network": network_settings(t, device),  # what ran: None = not applicable on the device
        "masks": "fresh per draw" if job.redraw is not None else "fixed per volume",
    }
    if spec.use_H:  # which H the data steps used (normal.mri_h)
        stats["normal_h"] = (
            "the setting's data-free fit"
            if h_of is None
            else f"built from each draw's own mask (normal.mri_h: {mri_h_mode(job.task, job.config)})"
        )
    if partitioner is not None:  # what was really trained: patch, stride and the inference grid
        stats["patch_size"] = list(partitioner.patch_size)
        stats["stride"] = list(partitioner.stride)
        stats["n_patches"] = len(partitioner.starts)
    stats.update(tuned)
    if spec.kind == "unrolled":
        stats["step_sizes"] = model.step_sizes.detach().cpu().tolist()
        stats["sigmas"] = model.sigmas.detach().cpu().tolist()
    payload = {
        **result,
        "status": "ok",
        "state_dict": model.state_dict(),
        "lipschitz": lipschitz,
        "lipschitz_by_setting": by_setting,
        "settings": job.settings,
        "model_config": job.config.get("model", {}),
        "K": job.config.get(job.task, {}).get("K"),
        "steps": len(rows),
        "algo_params": tuned.get("algo_params"),
    }
    atomic_torch_save(payload, job.out)
    _write_csv(job.csv_path, rows)
    atomic_write_json(job.stats_path, stats)
    job.ckpt_path.unlink(missing_ok=True)  # resume state only lives while the job is unfinished
    return stats
