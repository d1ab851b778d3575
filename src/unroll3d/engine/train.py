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

Here: the job, the run's state and setup, and each step's draws; the step loop is
:mod:`unroll3d.engine.train_loop`, what a run writes :mod:`unroll3d.engine.run_record`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unroll3d.config import train_settings
from unroll3d.engine.checkpoint import resumable_state, run_fingerprint, set_rng_state
from unroll3d.engine.operators import h_builder, load_H
from unroll3d.engine.partitioning import make_partitioner
from unroll3d.engine.run_record import model_payload, stats_record, write_csv, write_oom
from unroll3d.engine.samples import (
    Prepared,
    SampleCache,
    VolumeStore,
    close_redraws,
    default_loader,
    fresh_mask_loader,
)
from unroll3d.engine.timing import shape_text
from unroll3d.engine.train_loop import NonFiniteLoss, ValidationFailed, run_steps, train_step
from unroll3d.engine.transfer import plan_residency
from unroll3d.engine.tuning import tune_pnp, validate_psnr
from unroll3d.engine.untrained import untrained_record
from unroll3d.models import build_variant, resolve_model_config
from unroll3d.normal import NormalFit
from unroll3d.utils import atomic_torch_save, atomic_write_json, device_name, seed_everything
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
        write_csv(job.csv_path, [])
        atomic_write_json(job.stats_path, stats)
        return stats
    run = _Run.prepare(job, spec, t, seed, fits)
    try:
        _setup(run)
        if run_steps(run, _picker(run), stop_at):
            return {"stopped_at": run.step + 1}
        tuned = tune_pnp(run)
    except torch.OutOfMemoryError:
        return write_oom(run, result)
    finally:  # the fresh-mask loaders' worker thread
        close_redraws(job.redraw_for(s) for s in job.settings)
    stats = stats_record(run, result, tuned)
    atomic_torch_save(model_payload(run, result, tuned), job.out)
    write_csv(job.csv_path, run.rows)
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
