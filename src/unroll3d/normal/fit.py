"""Data-free fit of H to AᵀA/‖A‖²: min over (λ, m) of E‖AᵀAx − Hx‖² on Gaussian probes x (Adam,
seeded, resumable from a checkpoint, held-out probes for the error curve; a fixed step count or a
stop on the held-out error's plateau)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from torch import nn
from tqdm.auto import tqdm

from unroll3d.normal.identity import operator_hash
from unroll3d.normal.operator import (
    SPATIAL_DIMS,
    apply_h,
    check_img_size,
    operator_sqnorm,
    padded_grid,
    physics_device,
    to_complex,
)
from unroll3d.utils import atomic_torch_save, fingerprint, resumable_checkpoint, source_digest

__all__ = ["fit_normal_operator", "fit_inputs"]

#: modules whose code decides what a fit computes (part of a checkpoint's fingerprint)
_FIT_CODE = ("normal/fit.py", "normal/operator.py")


def fit_inputs(
    physics: LinearPhysics, img_size: Sequence[int], config: dict[str, Any], sqnorm: float | None
) -> dict[str, Any]:
    """Everything that defines a fit's result, as the checkpoint records it: the operator
    (:func:`operator_hash`: geometry, mask, coil maps), the image size, the fit's settings
    (``config``: grid, lr, schedule, steps, seed, ...), ‖A‖² when given, and the fit code."""
    return {
        "operator": operator_hash(physics, img_size),
        "config": config,
        "sqnorm": None if sqnorm is None else float(sqnorm),
        "code": source_digest(*_FIT_CODE)[:16],
    }


def _probe(shape: Sequence[int], seed: int, tag: int, index: int) -> torch.Tensor:
    """Gaussian probe number ``index`` of stream ``tag``: CPU-generated, so identical on any device
    and independent of how the run was split by checkpoints."""
    state = np.random.SeedSequence([int(seed), int(tag), int(index)]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randn(tuple(shape), generator=g)


def impulse_filter(
    physics: LinearPhysics,
    img_size: tuple[int, ...],
    grid: tuple[int, ...],
    sqnorm: float,
    device: torch.device,
) -> torch.Tensor:
    """λ of the kernel AᵀA e_c / ‖A‖² around the centre voxel c, laid on the FFT grid."""
    spatial = img_size[1:]
    c = tuple(n // 2 for n in spatial)
    e = torch.zeros((1, *img_size), device=device)
    e[(0, 0, *c)] = 1.0
    with torch.no_grad():
        r = physics.A_adjoint_A(e) / sqnorm
    complex_images = img_size[0] == 2
    r = to_complex(r)[0] if complex_images else r[0, 0]
    idx = [
        ((torch.arange(n) - cd) % g).to(device) for n, cd, g in zip(spatial, c, grid, strict=True)
    ]
    h = torch.zeros(grid, dtype=r.dtype, device=device)
    h[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]] = r
    if complex_images:
        return torch.fft.fftn(h, dim=SPATIAL_DIMS).to(torch.complex64)
    return torch.fft.rfftn(h, dim=SPATIAL_DIMS).to(torch.complex64)


SCHEDULES = ("cosine", "constant", "plateau")


def _cosine(step: int, start: int, end: int) -> float:
    t = min(max(step - start, 0), max(end - start, 1))
    return 0.5 * (1.0 + math.cos(math.pi * t / max(end - start, 1)))


def _lr_factor(step: int, n_steps: int, schedule: str, stop: dict[str, Any]) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return _cosine(step, 0, n_steps)
    if schedule == "plateau":  # constant, then a cosine tail from decay_start to decay_end
        if stop["decay_start"] is None:
            return 1.0
        return _cosine(step, stop["decay_start"], stop["decay_end"])
    raise ValueError(f"unknown lr schedule {schedule!r} ({', '.join(SCHEDULES)})")


def _start_decay(stop: dict[str, Any], step: int, n_steps: int, decay: float, reason: str) -> None:
    """Begin the plateau schedule's cosine tail at ``step``: ``decay`` × step more steps, at least
    one, never past ``n_steps``."""
    stop["decay_start"] = int(step)
    stop["decay_end"] = int(min(n_steps, step + max(1, math.ceil(decay * step))))
    stop["reason"] = reason


def fit_normal_operator(
    physics: LinearPhysics,
    img_size: Sequence[int],
    n_steps: int = 2000,
    batch: int = 1,
    lr: float = 1e-2,
    *,
    seed: int = 0,
    heldout: int = 8,
    two_sided: bool | None = None,
    symmetric_kernel: bool = False,
    fit_mask: bool = True,
    complex_mask: bool = False,
    lr_schedule: str = "cosine",
    plateau_patience: int = 4,
    plateau_min_improvement: float = 2e-3,
    plateau_decay: float = 0.25,
    floor: float | None = None,
    floor_note: str | None = None,
    grid: Sequence[int] | None = None,
    sqnorm: float | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    eval_every: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    r"""Fit H(m, λ) to :math:`A^\top A / \|A\|^2` by Adam on Gaussian probes (data-free).

    Minimises :math:`\sum_b \|t_b - H x_b\|^2 / \sum_b \|t_b\|^2` with :math:`x_b \sim N(0, I)`
    and :math:`t_b = A^\top A x_b / \|A\|^2`, from m = 1 and λ = F(AᵀA e_c)/‖A‖² (the impulse
    response at the centre voxel). The result does not depend on the scale of A; use it with
    ``scaling = history["sqnorm"]``.

    Deterministic given ``seed``: probe *i* is drawn on the CPU from (seed, i), so a run
    resumed from ``checkpoint`` (written atomically every ``checkpoint_every`` steps and at the
    end) gives the same result as an uninterrupted one. A checkpoint is resumed only if its
    fingerprint (:func:`fit_inputs`: operator hash, image size, every setting, ‖A‖² when given,
    code) matches; one written for other inputs, or one that cannot be read, is deleted with a
    log line naming it (and what differs) and the fit starts from step 0
    (:func:`unroll3d.utils.resumable_checkpoint`, shared with training).

    ``lr_schedule="plateau"`` stops on the held-out error's plateau instead of a fixed count:
    ``n_steps`` is then the maximum. The lr stays constant until ``plateau_patience``
    evaluations in a row fail to lower the best held-out error by the relative
    ``plateau_min_improvement``, at step s; a cosine tail then decays it to 0 over
    ``plateau_decay`` × s more steps and the fit stops (``stop_reason = "plateau"``). A fit
    without a plateau by step n_steps / (1 + plateau_decay) starts the same tail there and ends
    at n_steps (``"max_steps"``). The fixed schedules always end at n_steps (``"max_steps"``).

    The returned (λ, m) are those of the lowest held-out error over every evaluation (the
    later one on a tie; ``history["best_step"]``), not necessarily the last step's.

    :param physics: the operator (only ``A_adjoint_A`` is called).
    :param img_size: ``(C, D, H, W)``; C = 2 means real/imag images (complex λ, full FFT).
    :param int n_steps: Adam iterations.
    :param int batch: probes per iteration.
    :param float lr: Adam learning rate (peak of the schedule).
    :param int seed: seed of the probes.
    :param int heldout: held-out probes for the reported relative error.
    :param two_sided: two-sided form; default True for C = 2 (MRI), False otherwise.
    :param bool symmetric_kernel: real λ (zero-phase kernel, half the memory).
    :param bool fit_mask: learn m (else m = 1).
    :param bool complex_mask: complex m (real/imag images only; lets the two-sided MRI form carry
        a phase, an extension of the paper's real m).
    :param str lr_schedule: ``"cosine"`` decay to 0 over n_steps, ``"constant"``, or
        ``"plateau"`` (constant, stop on the held-out plateau after a cosine tail; see above).
    :param int plateau_patience: evaluations without improvement that make a plateau.
    :param float plateau_min_improvement: relative decrease of the best held-out error that
        counts as an improvement.
    :param float plateau_decay: length of the final cosine tail, as a fraction of the steps
        before it.
    :param floor: the error floor of this operator if known (e.g.
        :func:`unroll3d.normal.floor.error_floor`); recorded with the gap to it.
    :param floor_note: why no floor is given (recorded when ``floor`` is None).
    :param grid: FFT grid (default :func:`padded_grid`).
    :param sqnorm: ‖A‖² if known (else the power method).
    :param checkpoint: resumable state file (see above: resumed only for the same inputs).
    :param eval_every: steps between held-out evaluations (default n_steps // 20).
    :param progress: a tqdm bar (None: only on a terminal; without a bar, each held-out
        evaluation prints one log line).
    :return: ``(fourier_filter, spatial_mask, history)`` of the best held-out evaluation;
        ``history`` holds ``step`` and
        ``heldout_rel_error`` (‖AᵀAx − Hx‖/‖AᵀAx‖ on the held-out probes), ``train_rel_error``
        (running mean over the steps since the previous evaluation), ``sqnorm``, ``grid``,
        ``two_sided``, ``seconds``, ``stop_reason`` (``plateau`` / ``max_steps``),
        ``stop_step``, ``decay_start`` (plateau schedule: where the tail began, else None),
        ``final_heldout_rel_error`` (the last evaluation's), ``best_step`` and
        ``best_heldout_rel_error`` (the returned parameters'), ``floor`` and ``floor_gap``
        (best − floor; None without a floor) and ``floor_note``.
    """
    img_size = check_img_size(img_size)
    complex_images = img_size[0] == 2
    if two_sided is None:
        two_sided = complex_images
    spatial = img_size[1:]
    grid = padded_grid(spatial) if grid is None else tuple(int(g) for g in grid)
    device = torch.device(device) if device is not None else physics_device(physics)
    if complex_mask and not complex_images:
        raise ValueError("complex_mask needs real/imag images (img_size[0] == 2)")
    if n_steps < 0 or batch < 1 or heldout < 1 or lr <= 0:
        raise ValueError(
            f"need n_steps ≥ 0, batch ≥ 1, heldout ≥ 1, lr > 0 (got {n_steps}, {batch}, "
            f"{heldout}, {lr})"
        )
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {lr_schedule!r} ({', '.join(SCHEDULES)})")
    plateau = lr_schedule == "plateau"
    if plateau and (plateau_patience < 1 or plateau_min_improvement < 0 or plateau_decay < 0):
        raise ValueError(
            "need plateau_patience ≥ 1, plateau_min_improvement ≥ 0, plateau_decay ≥ 0 (got "
            f"{plateau_patience}, {plateau_min_improvement}, {plateau_decay})"
        )
    eval_every = max(1, n_steps // 20) if eval_every is None else int(eval_every)
    config = {
        "img_size": list(img_size),
        "grid": list(grid),
        "batch": int(batch),
        "lr": float(lr),
        "seed": int(seed),
        "heldout": int(heldout),
        "two_sided": bool(two_sided),
        "symmetric_kernel": bool(symmetric_kernel),
        "fit_mask": bool(fit_mask),
        "complex_mask": bool(complex_mask),
        "lr_schedule": lr_schedule,
        "eval_every": eval_every,
        "n_steps": int(n_steps),
    }
    if plateau:
        config["plateau"] = {
            "patience": int(plateau_patience),
            "min_improvement": float(plateau_min_improvement),
            "decay": float(plateau_decay),
        }

    state = None
    if checkpoint is not None:
        inputs = fit_inputs(physics, img_size, config, sqnorm)
        key = fingerprint(inputs)
        state = resumable_checkpoint(
            checkpoint,
            key,
            required=("step", "lam", "m", "optim", "history", "sqnorm", "best"),
            inputs=inputs,
            what="operator, image size, settings or code",
            restart="fitting from step 0",
        )
        if state is not None:
            print(
                f"fit H: resuming from {checkpoint} at step {int(state['step'])}/{n_steps}",
                file=sys.stderr,
                flush=True,
            )

    t_start = time.perf_counter()
    if state is not None:
        sqnorm = float(state["sqnorm"])
    elif sqnorm is None:
        sqnorm = operator_sqnorm(physics, img_size, seed=seed, device=device)
    sqnorm = float(sqnorm)

    if state is not None:
        lam0 = state["lam"]
        m0 = state["m"]
    else:
        lam0 = impulse_filter(physics, img_size, grid, sqnorm, device)
        if symmetric_kernel:
            lam0 = lam0.real.clone()
        m0 = torch.ones(spatial)
    lam_p = nn.Parameter(
        (lam0 if not lam0.is_complex() else torch.view_as_real(lam0)).to(device).clone()
    )
    if complex_mask and not m0.is_complex():
        m0 = m0.to(torch.complex64)
    m_p = nn.Parameter(
        (torch.view_as_real(m0) if m0.is_complex() else m0).to(device).clone(),
        requires_grad=fit_mask,
    )
    params = [lam_p] + ([m_p] if fit_mask else [])
    opt = torch.optim.Adam(params, lr=lr)
    history: dict[str, Any] = {
        "step": [],
        "heldout_rel_error": [],
        "train_rel_error": [],
    }
    step = 0
    running: list[float] = []
    # where the fit stops: the plateau schedule's tracking (best held-out error, evaluations
    # without improvement) and its tail [decay_start, decay_end)
    stop: dict[str, Any] = {
        "best": math.inf,
        "bad": 0,
        "decay_start": None,
        "decay_end": None,
        "reason": "max_steps",
    }
    # the parameters of the lowest held-out error so far (what the fit returns), on the CPU
    best: dict[str, Any] = {"step": None, "err": math.inf, "lam": None, "m": None}
    if state is not None:
        opt.load_state_dict(state["optim"])
        history = state["history"]
        step = int(state["step"])
        running = list(state.get("running", []))
        stop = dict(state.get("stop", stop))
        best = dict(state["best"])
    # no plateau by here: the tail starts here and ends at n_steps
    forced_decay = math.floor(n_steps / (1.0 + plateau_decay)) if plateau else n_steps

    def end_step() -> int:
        return n_steps if stop["decay_end"] is None else int(stop["decay_end"])

    def track(err: float) -> None:
        """The plateau test after an evaluation at ``step``."""
        if not plateau or stop["decay_start"] is not None:
            return
        if err < stop["best"] * (1.0 - plateau_min_improvement):
            stop["best"], stop["bad"] = err, 0
        else:  # best is kept: small gains add up until one evaluation beats it by enough
            stop["bad"] += 1
        if stop["bad"] >= plateau_patience and step > 0:
            _start_decay(stop, step, n_steps, plateau_decay, "plateau")

    def lam_value() -> torch.Tensor:
        return torch.view_as_complex(lam_p) if lam_p.dim() == 4 else lam_p

    def m_value() -> torch.Tensor:
        return torch.view_as_complex(m_p) if m_p.dim() == 4 else m_p

    def h_apply(x: torch.Tensor) -> torch.Tensor:
        return apply_h(x, lam_value(), m_value(), grid, complex_images, two_sided)

    def keep_if_best(err: float) -> None:
        """Remember the parameters of the lowest held-out error (the later one on a tie)."""
        if err <= best["err"]:
            lam_cpu, m_cpu = (v().detach().to("cpu", copy=True) for v in (lam_value, m_value))
            best.update(step=step, err=err, lam=lam_cpu, m=m_cpu)

    # held-out targets, computed once
    held_x = [_probe((1, *img_size), seed, 1, i) for i in range(heldout)]
    with torch.no_grad():
        held_t = [physics.A_adjoint_A(x.to(device)) / sqnorm for x in held_x]

    def evaluate() -> float:
        num = 0.0
        den = 0.0
        with torch.no_grad():
            for x, t in zip(held_x, held_t, strict=True):
                r = t - h_apply(x.to(device))
                num += float((r * r).sum())
                den += float((t * t).sum())
        return math.sqrt(num / max(den, 1e-30))

    def save_state() -> None:
        if checkpoint is None:
            return
        atomic_torch_save(
            {
                "fingerprint": key,
                "inputs": inputs,
                "config": config,
                "step": step,
                "lam": lam_value().detach().cpu(),
                "m": m_value().detach().cpu(),
                "optim": opt.state_dict(),
                "history": history,
                "running": list(running),
                "stop": dict(stop),
                "best": dict(best),
                "sqnorm": sqnorm,
            },
            checkpoint,
        )

    if step == 0 and not history["step"]:
        history["step"].append(0)
        history["heldout_rel_error"].append(evaluate())
        history["train_rel_error"].append(float("nan"))
        track(history["heldout_rel_error"][-1])
        keep_if_best(history["heldout_rel_error"][-1])

    bar = tqdm(
        total=n_steps,
        initial=min(step, n_steps),
        desc="fit H",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if progress is None else not progress,
    )
    while step < end_step():
        if plateau and stop["decay_start"] is None and step >= forced_decay:
            _start_decay(stop, step, n_steps, plateau_decay, "max_steps")
            stop["decay_end"] = n_steps
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, n_steps, lr_schedule, stop)
        x = torch.cat([_probe((1, *img_size), seed, 0, step * batch + b) for b in range(batch)])
        x = x.to(device)
        with torch.no_grad():
            t = physics.A_adjoint_A(x) / sqnorm
        opt.zero_grad(set_to_none=True)
        r = t - h_apply(x)
        loss = (r * r).sum() / (t * t).sum().clamp_min(1e-30)
        loss.backward()
        opt.step()
        step += 1
        running.append(math.sqrt(float(loss.detach())))
        bar.update(1)
        bar.set_postfix(rel=f"{running[-1]:.4f}", refresh=False)
        last = step == end_step()
        if step % eval_every == 0 or last:
            history["step"].append(step)
            history["heldout_rel_error"].append(evaluate())
            history["train_rel_error"].append(float(np.mean(running)) if running else float("nan"))
            running = []
            was_constant = stop["decay_start"] is None
            track(history["heldout_rel_error"][-1])
            keep_if_best(history["heldout_rel_error"][-1])
            if bar.disable:  # a log, not a terminal: one line per evaluation
                note = ""
                if plateau and was_constant and stop["decay_start"] is not None:
                    note = f"; plateau, lr decays to 0 until step {stop['decay_end']}"
                print(
                    f"fit H: step {step}/{n_steps}, held-out relative error "
                    f"{history['heldout_rel_error'][-1]:.4f}{note}",
                    file=sys.stderr,
                    flush=True,
                )
            last = step == end_step()  # the plateau test may have moved the end
        if step % checkpoint_every == 0 or last:
            save_state()
    bar.close()
    final = float(history["heldout_rel_error"][-1])
    history["stop_reason"] = stop["reason"]
    history["stop_step"] = int(step)
    history["decay_start"] = stop["decay_start"]
    history["final_heldout_rel_error"] = final
    if best["step"] is None or best["step"] == step:  # the last step is the best (or all NaN)
        best.update(step=step, err=final, lam=lam_value().detach(), m=m_value().detach())
    history["best_step"] = int(best["step"])
    history["best_heldout_rel_error"] = float(best["err"])
    history["floor"] = None if floor is None else float(floor)
    history["floor_gap"] = None if floor is None else float(best["err"]) - float(floor)
    history["floor_note"] = (
        floor_note or "floor not computed"
        if floor is None
        else floor_note or "floor given by the caller"
    )
    history["sqnorm"] = sqnorm
    history["grid"] = list(grid)
    history["two_sided"] = bool(two_sided)
    history["seconds"] = history.get("seconds", 0.0) + time.perf_counter() - t_start
    history["config"] = config
    return best["lam"].to(device, copy=True), best["m"].to(device, copy=True), history
