"""The step loop of a learned training run (:func:`unroll3d.engine.train.train`): each optimiser
step seeded with ``(seed, step)``, the losses read back once per logging interval, validation,
progress lines and checkpoints on schedule."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from unroll3d.engine.checkpoint import rng_state
from unroll3d.engine.model_file import use_lipschitz
from unroll3d.engine.partitioning import estimate_pair
from unroll3d.engine.run_record import write_csv
from unroll3d.engine.samples import Prepared
from unroll3d.engine.timing import StepClock, peak_memory_gb, sync_warnings
from unroll3d.engine.tuning import validate_psnr
from unroll3d.utils import atomic_torch_save, reset_peak_rss, rss_gb
from unroll3d.variants import VariantSpec

__all__ = ["NonFiniteLoss", "ValidationFailed", "train_step", "run_steps"]


class NonFiniteLoss(RuntimeError):
    """Raised when the training loss becomes NaN or inf."""


class ValidationFailed(RuntimeError):
    """The validation PSNR could not be computed (the message names the volume and the step)."""


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


def run_steps(run, pick: Callable[[torch.Generator], Prepared], stop_at: int | None) -> bool:
    """The steps of ``run`` (the training state) from ``run.start`` on, each drawing its samples
    with ``pick``, validated, logged and checkpointed on schedule; True when ``stop_at`` stopped
    the run early."""
    job, t = run.job, run.t
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


def _one_step(run, pick: Callable, step: int, clock: StepClock) -> dict:
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


def _read_back(run, clock: StepClock) -> None:
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
    write_csv(job.csv_path, run.rows)
    raise NonFiniteLoss(
        f"non-finite loss ({bad['loss']}) at step {bad['step']}; "
        f"last good checkpoint: step {last} ({ckpt})"
    )


def _validate(run, row: dict) -> None:
    """On a validation step (every ``val_every`` and the last), the mean validation PSNR into
    ``row``; a PSNR that cannot be computed writes the CSV and raises :class:`ValidationFailed`."""
    job, t, done = run.job, run.t, row["step"]
    if not run.val_paths or (done % t["val_every"] != 0 and done != t["steps"]):
        return
    prepared = [c.get(i) for c in run.val_caches.values() for i in range(len(c))]
    try:
        row["val_psnr"] = validate_psnr(run.model, run.spec, job.task, job.config, prepared)
    except ValueError as err:
        write_csv(job.csv_path, run.rows)
        raise ValidationFailed(f"step {done}: {err}") from None


def _log_step(run, row: dict) -> None:
    """One progress line on stderr (where there is no progress bar)."""
    val = "" if row["val_psnr"] is None else f", val PSNR {row['val_psnr']:.2f} dB"
    print(
        f"{run.job.variant}: step {row['step']}/{run.t['steps']}, loss {row['loss']:.4g}, "
        f"{row['step_time_s']:.3f} s/step{val}",
        file=sys.stderr,
        flush=True,
    )


def _save_checkpoint(run, at_step: int) -> None:
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
    write_csv(run.job.csv_path, run.rows)
