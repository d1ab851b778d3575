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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unroll3d.config import train_settings
from unroll3d.engine.checkpoint import resumable_state, rng_state, run_fingerprint, set_rng_state
from unroll3d.engine.model_file import use_lipschitz
from unroll3d.engine.operators import h_builder, load_H
from unroll3d.engine.partitioning import estimate_pair, make_partitioner
from unroll3d.engine.run_record import model_payload, stats_record
from unroll3d.engine.samples import (
    Prepared,
    SampleCache,
    VolumeStore,
    close_redraws,
    default_loader,
    fresh_mask_loader,
)
from unroll3d.engine.timing import StepClock, peak_memory_gb, shape_text, sync_warnings
from unroll3d.engine.transfer import plan_residency
from unroll3d.engine.tuning import select_pnp, validate_psnr
from unroll3d.engine.untrained import untrained_record
from unroll3d.models import build_variant, resolve_model_config
from unroll3d.normal import NormalFit
from unroll3d.utils import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    device_name,
    reset_peak_rss,
    rss_gb,
    seed_everything,
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
    sync_debug_step: int | None = None  # CUDA: the host syncs of this step, in the stats

    def __post_init__(self):
        self.out = Path(self.out)
        self.csv_path = Path(self.csv_path or self.out.with_suffix(".csv"))
        self.stats_path = Path(self.stats_path or self.out.with_suffix(".json"))
        self.settings = list(self.settings or [self.setting])
        fresh = self.task == "mri" and train_settings(self.config)["fresh_masks"]
        self._defaults: dict[str, tuple] = {}
        if self.loader is None:
            store = VolumeStore(self.device)  # each file's arrays once, for every setting
            self._defaults = {
                s: (
                    default_loader(s, self.device),
                    fresh_mask_loader(s, self.device, store) if fresh else None,
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
) -> torch.Tensor:
    """One optimiser step with ``accumulate`` micro-batches; returns the mean loss as a 0-dim
    float64 tensor on the device, unread. Each drawn sample brings its setting's ‖A‖² (the
    step-size normalisation) and H.

    The micro-steps' losses are summed on the device (in float64, in the order Python's ``sum``
    would) and nothing is read back to the host, so the queue is never drained here; the
    training loop reads the losses once per logging interval and raises
    :class:`NonFiniteLoss` there, naming the first non-finite step.
    """
    optimizer.zero_grad(set_to_none=True)
    total = None
    for _ in range(accumulate):
        prep = pick(generator)
        use_lipschitz(model, prep.lipschitz)
        parked_on = prep.device if prep.offloaded else None
        est, target = estimate_pair(
            model, spec, prep.sample, prep.physics, prep.x0, generator, partitioner, parked_on,
            prep.y_residual,
        )  # fmt: skip
        loss = torch.mean((est.float() - target.float()) ** 2)
        (loss / accumulate).backward()
        total = loss.detach().double() if total is None else total + loss.detach().double()
        del prep, est, target, loss  # the next draw's tensors may take this one's memory
    if grad_clip and grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total / accumulate


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
    if not spec.learned:
        payload, stats = untrained_record(job, spec, t, result, fits[job.settings[0]])
        atomic_torch_save(payload, job.out)
        _write_csv(job.csv_path, [])
        atomic_write_json(job.stats_path, stats)
        return stats
    run = _Run.prepare(job, spec, t, seed, fits)
    try:
        _setup(run)
        if _run_steps(run, stop_at):
            return {"stopped_at": run.step + 1}
        tuned = _tune_pnp(run)
    except torch.OutOfMemoryError:
        return _write_oom(run, result)
    finally:  # the fresh-mask loaders' worker thread
        close_redraws(job.redraw_for(s) for s in job.settings)
    stats = stats_record(run, result, tuned)
    atomic_torch_save(model_payload(run, result, tuned), job.out)
    _write_csv(job.csv_path, run.rows)
    atomic_write_json(job.stats_path, stats)
    job.ckpt_path.unlink(missing_ok=True)  # resume state only lives while the job is unfinished
    return stats


@dataclass
class _Run:
    """A learned training run in progress: the job, its sample caches and, once :func:`_setup`
    ran, the model, partitioner, optimiser, schedule and the rows of the steps done."""

    job: TrainJob
    spec: VariantSpec
    t: dict
    seed: int
    caches: dict[str, SampleCache]
    val_caches: dict[str, SampleCache]
    val_paths: list[str]
    h_of: Callable | None
    rows: list[dict] = field(default_factory=list)
    volume: str = "?"
    step: int = 0
    start: int = 0
    model: Any = None
    partitioner: Any = None
    opt: Any = None
    sched: Any = None
    lipschitz: float | None = None
    by_setting: dict[str, float | None] = field(default_factory=dict)
    fingerprint: str = ""
    rss_base: float | None = None
    residency: list = field(default_factory=list)  # where the training volumes stay
    next_draw: int | None = None  # the seed of the step whose first draw is prefetched
    syncs: list | None = None  # the host syncs of job.sync_debug_step (CUDA)

    @classmethod
    def prepare(cls, job: TrainJob, spec: VariantSpec, t: dict, seed: int, fits: dict) -> _Run:
        """The run's training and validation sample caches, one per setting (nothing loaded)."""
        if job.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(job.device)
        if not job.train_paths:
            raise ValueError("no training volumes given (--train)")
        residency = plan_residency(job.settings, t["device_cache"], job.device)
        h_of = h_builder(spec, job.task, job.config)  # normal.mri_h mask: each draw's own H
        shape_ref: dict = {}  # training and validation volumes: one data set, one shape
        caches = {
            s: SampleCache(
                job.train_paths,
                job.loader_for(s),
                spec,
                fits[s],
                h_of=h_of,
                shape_ref=shape_ref,
                residency=residency[s],
            )
            for s in job.settings
        }
        val_paths = (job.val_paths or [])[: t["val_max"]]
        val_caches = {
            s: SampleCache(
                val_paths, job.loader_for(s), spec, fits[s], h_of=h_of, shape_ref=shape_ref
            )
            for s in job.settings
        }
        kept = list({id(r): r for r in residency.values()}.values())
        run = cls(job, spec, t, seed, caches, val_caches, val_paths, h_of, residency=kept)
        for s in job.settings:  # fresh MRI masks: the files' arrays share the volumes' room
            store = getattr(job.redraw_for(s), "store", None)
            if store is not None and store.residency not in kept:
                store.residency = residency["store"]
                kept.append(store.residency)
        return run


def _setup(run: _Run) -> None:
    """Load each setting's first training volume (its ‖A‖²), build the model, its partitioner,
    Adam and the cosine schedule, and resume from the checkpoint when its fingerprint matches."""
    job, t = run.job, run.t
    first = run.caches[job.settings[0]].get(0)
    run.volume = shape_text(first.sample.x)
    for s in job.settings:  # ‖A‖² per setting, on its first training volume
        run.caches[s].get(0)
        run.by_setting[s] = run.val_caches[s].lipschitz = run.caches[s].lipschitz
    run.lipschitz = run.by_setting[job.settings[0]]
    # the init depends on the seed only, not on what loading the volumes drew from the RNGs
    seed_everything(run.seed)
    # build_variant applies train.bf16/tf32/channels_last/cudnn_benchmark/compile
    model = build_variant(job.variant, job.task, job.config, run.lipschitz, device=job.device)
    run.model = model
    model.train()
    if run.spec.partition:
        run.partitioner = make_partitioner(model, job.task, job.config, first.sample.x.shape[1:])
    run.opt = torch.optim.Adam(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    run.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        run.opt, T_max=t["steps"], eta_min=t["lr_min"]
    )
    run.fingerprint = run_fingerprint(job)
    state = resumable_state(job, run.fingerprint, job.device)
    if state is not None:
        model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        run.rows = list(state["history"])
        run.start = int(state["step"])
        print(f"resuming from {job.ckpt_path} at step {run.start}", file=sys.stderr)


def _picker(run: _Run) -> Callable[[torch.Generator], Prepared]:
    """``generator -> Prepared``: a setting (when the model serves several), then a volume, drawn
    from the step's generator; with fresh masks, a new mask per draw. The first draw of a step
    also starts copying the next step's first sample (:func:`_prefetch_next`)."""

    def pick(gen: torch.Generator) -> Prepared:
        s, i, redraw, seed = _draw(run, gen)
        cache = run.caches[s]
        prep = cache.get(i) if redraw is None else cache.fresh(i, redraw, seed)
        if run.next_draw is not None:
            _prefetch_next(run, run.next_draw)
            run.next_draw = None
        return prep

    return pick


def _draw(run: _Run, gen: torch.Generator) -> tuple:
    """``(setting, volume, redraw, mask seed)`` of one draw from ``gen``."""
    job = run.job
    s = job.settings[0]
    if len(job.settings) > 1:  # one model for every setting: a setting per draw
        s = job.settings[int(torch.randint(len(job.settings), (1,), generator=gen))]
    i = int(torch.randint(len(run.caches[s]), (1,), generator=gen))
    redraw = job.redraw_for(s)
    if redraw is None:
        return s, i, None, None
    return s, i, redraw, int(torch.randint(2**31 - 1, (1,), generator=gen))  # a fresh mask


def _prefetch_next(run: _Run, step_seed: int) -> None:
    """Start copying the first sample the step seeded with ``step_seed`` will draw (its draws
    replayed on a generator of its own: the step's own stream is untouched)."""
    s, i, redraw, mask_seed = _draw(run, torch.Generator(device="cpu").manual_seed(step_seed))
    if redraw is None:
        run.caches[s].prefetch(i)
    elif hasattr(redraw, "prefetch"):  # its arrays' copy and its mask's draw
        redraw.prefetch(run.caches[s].paths[i], mask_seed)


def _run_steps(run: _Run, stop_at: int | None) -> bool:
    """The steps from ``run.start`` on, each validated, logged and checkpointed on schedule;
    True when ``stop_at`` stopped the run early."""
    job, t = run.job, run.t
    pick = _picker(run)
    # a bar on a terminal only (disable=None); logs get one line every log_every steps
    bar = tqdm(
        total=t["steps"],
        initial=run.start,
        desc=job.variant,
        file=sys.stderr,
        disable=None if job.progress is None else not job.progress,
    )
    log_lines = bar.disable
    run.rss_base = rss_gb() if reset_peak_rss() else None
    clock = StepClock(job.device)
    for step in range(run.start, t["steps"]):
        run.step = step
        row = _one_step(run, pick, step, clock)
        run.rows.append(row)
        done = step + 1
        validating = run.val_paths and (done % t["val_every"] == 0 or done == t["steps"])
        checkpoint = done % t["checkpoint_every"] == 0 or done == t["steps"]
        logging = done % job.log_every == 0 or done == t["steps"]
        stopping = stop_at is not None and done >= stop_at
        bar.update(1)
        if logging or validating or checkpoint or stopping:  # the interval's one host read
            _read_back(run, clock)
            bar.set_postfix(loss=f"{row['loss']:.3g}", refresh=False)
        _validate(run, row)
        if log_lines and logging:
            _log_step(run, row)
        if checkpoint:
            _save_checkpoint(run, done)
        if stopping:
            return True
    bar.close()
    return False


def _one_step(run: _Run, pick: Callable, step: int, clock: StepClock) -> dict:
    """Optimiser step ``step`` (seeded with ``(seed, step)``) and the schedule's; its CSV row,
    whose loss and step time stay unread (on the device) until :func:`_read_back`."""
    t, device = run.t, run.job.device
    gen = torch.Generator(device="cpu").manual_seed(run.seed * 1_000_003 + step)
    if step + 1 < t["steps"]:
        run.next_draw = run.seed * 1_000_003 + step + 1
    t0 = clock.mark()
    with sync_warnings(device, step == run.job.sync_debug_step) as syncs:
        loss = train_step(
            run.model, run.opt, run.spec, pick, gen, t["accumulate"], t["grad_clip"],
            run.partitioner,
        )  # fmt: skip
    run.syncs = run.syncs if syncs is None else syncs
    run.sched.step()
    return {
        "step": step + 1,
        "loss": loss,
        "lr": run.opt.param_groups[0]["lr"],
        "step_time_s": (t0, clock.mark()),
        "peak_memory_gb": peak_memory_gb(device),
        "val_psnr": None,
    }


def _read_back(run: _Run, clock: StepClock) -> None:
    """The rows' losses and step times read from the device at once (one host sync per logging
    interval). A non-finite loss drops the rows from its step on, writes the CSV and raises
    :class:`NonFiniteLoss` naming the step and the last checkpoint (checkpoints are written only
    after a read-back, so none holds weights past a non-finite loss)."""
    pending = [r for r in run.rows if isinstance(r["loss"], torch.Tensor)]
    if not pending:
        return
    losses = torch.stack([r["loss"] for r in pending]).tolist()  # the one read
    for r, value in zip(pending, losses, strict=True):
        r["loss"] = value
        r["step_time_s"] = clock.seconds(*r["step_time_s"])
    bad = next((r for r in pending if not np.isfinite(r["loss"])), None)
    if bad is None:
        return
    job = run.job
    run.rows = [r for r in run.rows if r["step"] < bad["step"]]
    ckpt = job.ckpt_path
    last = int(torch.load(ckpt, weights_only=False)["step"]) if ckpt.exists() else 0
    _write_csv(job.csv_path, run.rows)
    raise NonFiniteLoss(
        f"non-finite loss ({bad['loss']}) at step {bad['step']}; "
        f"last good checkpoint: step {last} ({ckpt})"
    )


def _validate(run: _Run, row: dict) -> None:
    """On a validation step (every ``val_every`` and the last), the mean validation PSNR into
    ``row``; a PSNR that cannot be computed writes the CSV and raises :class:`ValidationFailed`."""
    job, t, done = run.job, run.t, row["step"]
    if not run.val_paths or (done % t["val_every"] != 0 and done != t["steps"]):
        return
    prepared = [c.get(i) for c in run.val_caches.values() for i in range(len(c))]
    try:
        row["val_psnr"] = validate_psnr(run.model, run.spec, job.task, job.config, prepared)
    except ValueError as err:
        _write_csv(job.csv_path, run.rows)
        raise ValidationFailed(f"step {done}: {err}") from None


def _log_step(run: _Run, row: dict) -> None:
    """One progress line on stderr (where there is no progress bar)."""
    val = "" if row["val_psnr"] is None else f", val PSNR {row['val_psnr']:.2f} dB"
    print(
        f"{run.job.variant}: step {row['step']}/{run.t['steps']}, loss {row['loss']:.4g}, "
        f"{row['step_time_s']:.3f} s/step{val}",
        file=sys.stderr,
        flush=True,
    )


def _save_checkpoint(run: _Run, at_step: int) -> None:
    """The resume state after ``at_step`` steps (atomically) and the CSV so far."""
    atomic_torch_save(
        {
            "step": at_step,
            "variant": run.job.variant,
            "fingerprint": run.fingerprint,
            "config": run.job.config,
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "rng": rng_state(),
            "history": run.rows,
            "lipschitz": run.lipschitz,
        },
        run.job.ckpt_path,
    )
    _write_csv(run.job.csv_path, run.rows)


def _tune_pnp(run: _Run) -> dict:
    """PnP: α-PGD's test-time parameters chosen per setting on its validation volumes (on its
    first training volume without them); ``{}`` for the other variants."""
    tuned: dict = {}
    if run.spec.kind != "pnp":
        return tuned
    job = run.job
    for s in job.settings:
        c = run.val_caches[s] if run.val_paths else run.caches[s]
        prepared = [c.get(i, whole=True) for i in range(len(c) if run.val_paths else 1)]
        use_lipschitz(run.model, run.by_setting[s])
        for key, value in select_pnp(run.model, job.task, job.config, prepared).items():
            tuned.setdefault(key, {})[s] = value
    return tuned


def _write_oom(run: _Run, result: dict) -> dict:
    """CUDA ran out of memory: status ``oom`` with the volume and peak, written as the result."""
    job, step = run.job, run.step
    peak = peak_memory_gb(job.device) or 0.0
    msg = f"OOM at volume {run.volume}, peak {peak:.2f} GB (step {step + 1})"
    print(msg, file=sys.stderr)
    stats = {**result, "status": "oom", "message": msg, "peak_memory_gb": peak}
    stats.update(steps=step, step_time_mean_s=None, n_params=None, volume=run.volume)
    atomic_torch_save({**result, "status": "oom", "message": msg, "state_dict": None}, job.out)
    run.rows = [r for r in run.rows if not isinstance(r["loss"], torch.Tensor)]  # read ones
    _write_csv(job.csv_path, run.rows)
    atomic_write_json(job.stats_path, stats)
    return stats
