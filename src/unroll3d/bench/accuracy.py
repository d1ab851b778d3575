"""Where H costs accuracy, measured on a run's own trained models.

Given the exact-data-step model (``partition``), the H-trained model (``partition-H``) of one
task, the fitted H and test volumes, this measures per volume and setting:

- **PSNR** (the task's convention, :func:`unroll3d.metrics.psnr_under`, as ``unroll3d evaluate``
  reports it) of the first pass only (Algorithm 1 step 1), of the exact refinement and of the H
  refinement, for both models (``psnr_first_pass``, ``psnr_exact_refine``, ``psnr_H_refine``),
  and of the refinement with H anchored at each patch's initial iterate (``psnr_anchored_H_refine``,
  ours: :class:`unroll3d.partition.PartitionedPhysics` ``normal_anchor``);
- **H's error along the refinement pass**, per unrolled iteration k, on ``--patches`` seeded
  patches of the inference grid: ``h_rel_error`` = ‖N x_k − H x_k‖ / ‖N x_k‖ and
  ``h_grad_ratio`` = ‖N x_k − H x_k‖ / ‖N x_k − b‖, with N = S AᵀA Sᵀ, b = Ãᵀỹ (the patch's
  data) and H scaled by ‖A‖² exactly as the data step uses it, so the ratio is the part of
  each data step x ← x − η (N x − b) that H gets wrong. The iterates are those of the exact
  refinement (``*_exact_refine``) and of the H refinement (``*_H_refine``), mean over the
  patches; ``*_gt``: the same at the ground truth with ground-truth context (the training
  problem's patch, model-independent);
- **the α-mixing curve** (``psnr_mix``): the exact-trained model refined with the normal
  operator (1 − α) N + α H, for ``--alphas`` (α = 0 is the exact refinement, α = 1 the H one).

The predictor (ours): an H-error-to-gradient ratio ≲ 0.1 along the exact-trained model's H
refinement should be harmless; the row ``h_grad_ratio_predicts_harmless`` is 1 when the mean
ratio is at most :data:`PREDICTOR_MAX`, and the summary states it next to the measured cost.

Output: one long-format CSV (``task, setting, volume, model, measure, k, alpha, value``) and a
Markdown summary. The claims table reads the CSV: a failing H-accuracy claim states the cause
(:func:`headline`).

    unroll3d bench accuracy --task cbct --setting v30 --config-json '...' \\
        --partition results/models/cbct/all/partition.pt \\
        --partition-H results/models/cbct/all/partition-H.pt \\
        --normal results/normal/cbct/v30.pt --data results/data/cbct/walnut5.pt \\
        --out results/benchmarks/accuracy/cbct.csv --summary results/benchmarks/accuracy/cbct.md
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

FIELDS = ["task", "setting", "volume", "model", "measure", "k", "alpha", "value"]
#: the exact-data-step model and the H-trained model
MODELS = ("partition", "partition-H")
DEFAULT_ALPHAS = (0.0, 0.1, 0.3, 1.0)
#: H's error below this fraction of the exact patch gradient should be harmless
PREDICTOR_MAX = 0.1


# ------------------------------------------------------------------------------ normal operators
class ExactNormal:
    """``restrict(start, patch)`` → the exact ``S AᵀA Sᵀ`` of ``physics`` on that patch."""

    def __init__(self, physics, spatial: Sequence[int]):
        self.physics, self.spatial = physics, tuple(int(s) for s in spatial)

    def restrict(self, start, patch_size):
        from unroll3d.partition import crop_patch, embed_patch

        def apply(x):
            full = embed_patch(x, tuple(start), self.spatial)
            return crop_patch(self.physics.A_adjoint(self.physics.A(full)), start, patch_size)

        return apply


class MixedNormal:
    """``restrict(start, patch)`` → ``(1 − α) S AᵀA Sᵀ + α s S H Sᵀ`` (``s`` = H's ‖A‖²)."""

    def __init__(self, physics, spatial, H_op, scaling: float, alpha: float):
        self.exact = ExactNormal(physics, spatial)
        self.H_op, self.scaling, self.alpha = H_op, float(scaling), float(alpha)

    def restrict(self, start, patch_size):
        exact = self.exact.restrict(start, patch_size)
        h = self.H_op.restrict(start, patch_size)
        a, s = self.alpha, self.scaling

        def apply(x):
            return (1.0 - a) * exact(x) + (a * s) * h(x)

        return apply


def h_scaling(H, lipschitz: float) -> float:
    """The factor the data step applies to H: the fit's ‖A‖², else the model's."""
    return float(lipschitz if H.scaling is None else H.scaling)


# ------------------------------------------------------------------------------ measurements
def _norm(t) -> float:
    return float(t.detach().double().norm())


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def _back_projection(pp):
    """``Ãᵀỹ`` as these numbers were measured, bit for bit: ``Ãᵀ(ỹ)`` with ỹ formed once. On
    the MRI readout-slab path ``A_adjoint(None)`` (the model's own) would save ỹ's global
    forward but differs from it at round-off, so it is not used here."""
    return pp.A_adjoint(pp.y_tilde if pp.context_on_slabs else None)


def iterate_errors(model, physics, img_size, start, patch, y, context, x0, h_patch, scaling, steps):
    """H's errors at each iterate x_k (k < K) of ``model`` on one patch problem (``context``
    outside the patch, first iterate S x0), stepping with the exact N (``steps="exact"``) or
    with H (``"H"``). Returns ``[(‖(N − H) x_k‖ / ‖N x_k‖, ‖(N − H) x_k‖ / ‖N x_k − b‖), ...]``
    and the last iterate (it equals the model's own output on that patch)."""
    import torch

    from unroll3d.partition import PartitionedPhysics

    if steps not in ("exact", "H"):
        raise ValueError(f"steps must be 'exact' or 'H', got {steps!r}")
    with torch.no_grad():
        pp = PartitionedPhysics(physics, img_size, start, patch, y, context, x_init=x0)
        x = pp.initial_reconstruction(None).float()  # S x0: ỹ not needed
        b = _back_projection(pp)
        eta, sig = model.step_sizes, model.sigmas
        out = []
        for k in range(model.K):
            n = pp.A_adjoint_A(x)
            h = scaling * h_patch(x)
            err = _norm(n - h)
            out.append((_ratio(err, _norm(n)), _ratio(err, _norm(n - b))))
            data = n if steps == "exact" else h
            x = model._denoise(x - eta[k] * (data - b), sig[k])  # UnrolledPGD._iteration
    return out, x


def gt_errors(physics, img_size, start, patch, y, x_true, h_patch, scaling) -> tuple[float, float]:
    """H's relative error and error-to-gradient ratio at the ground-truth patch, with the
    ground-truth context (the training problem)."""
    import torch

    from unroll3d.partition import PartitionedPhysics

    with torch.no_grad():
        pp = PartitionedPhysics(physics, img_size, start, patch, y, x_true)
        x = pp.crop(x_true).float()
        b = _back_projection(pp)
        n = pp.A_adjoint_A(x)
        err = _norm(n - scaling * h_patch(x))
        return _ratio(err, _norm(n)), _ratio(err, _norm(n - b))


def pick_patches(starts: Sequence, n: int, seed: int) -> list:
    """``n`` seeded corners of the inference grid (all of them when it has fewer)."""
    starts = list(starts)
    return sorted(random.Random(seed).sample(starts, min(int(n), len(starts))))


def measure_volume(
    models: dict,
    task: str,
    setting: str,
    volume: str,
    config: dict,
    sample,
    H,
    lipschitz: float | None = None,
    patches: int = 4,
    seed: int = 0,
    alphas: Iterable[float] = DEFAULT_ALPHAS,
    log=print,
) -> list[dict]:
    """Every row of one volume. ``models``: ``{"partition": model, "partition-H": model}`` (either
    may be missing), set up for ``setting`` (:func:`unroll3d.engine.model_file.load_trained`); ``H``:
    the :class:`~unroll3d.normal.NormalFit` of the setting (or of the volume)."""
    import torch

    from unroll3d.config import evaluate_settings
    from unroll3d.engine.operators import lipschitz_of, physics_for
    from unroll3d.engine.partitioning import make_partitioner
    from unroll3d.engine.reconstruct import reconstruct
    from unroll3d.metrics import convention_for, psnr_under
    from unroll3d.physics import initial_reconstruction
    from unroll3d.variants import variant_spec

    conv = convention_for(task, evaluate_settings(config))
    img = tuple(sample.x.shape[1:])
    with torch.no_grad():
        x0 = initial_reconstruction(sample.physics, sample.y).float()
    lip = float(lipschitz) if lipschitz else lipschitz_of(sample, x0)
    s = h_scaling(H, lip)
    wrapped = physics_for(sample, variant_spec("partition-H"), H, lip)
    H_op = wrapped.operator()  # the fit's one DiagCirculant
    rows: list[dict] = []

    def add(model, measure, value, k="", alpha=""):
        row = dict(task=task, setting=setting, volume=volume, model=model, measure=measure)
        rows.append({**row, "k": k, "alpha": alpha, "value": float(value)})

    def psnr(rec):
        return psnr_under(rec, sample.x, conv)

    add("", "psnr_x0", psnr(x0))
    starts = None
    for name in MODELS:
        model = models.get(name)
        if model is None:
            continue
        spec = variant_spec(name)
        part = make_partitioner(model, task, config, img)
        starts = pick_patches(part.starts, patches, seed) if starts is None else starts
        est = reconstruct(model, spec, task, config, sample, sample.physics, x0, refine=False)
        add(name, "psnr_first_pass", psnr(est))
        with torch.no_grad():
            exact = part(sample.y, sample.physics, x0=x0, x_init=est, refine=True, normal=False)
            h_ref = part(sample.y, wrapped, x0=x0, x_init=est, refine=True)  # H: the wrapper's
            anchored = part(sample.y, wrapped, x0=x0, x_init=est, refine=True, anchored=True)
        add(name, "psnr_exact_refine", psnr(exact))
        add(name, "psnr_H_refine", psnr(h_ref))
        add(name, "psnr_anchored_H_refine", psnr(anchored))
        log(
            f"{volume} {name}: first pass {rows[-4]['value']:.2f}, exact refinement "
            f"{rows[-3]['value']:.2f}, H refinement {rows[-2]['value']:.2f}, anchored H "
            f"refinement {rows[-1]['value']:.2f} dB"
        )
        for steps in ("exact", "H"):
            per_k = [
                iterate_errors(
                    model, sample.physics, img, st, part.patch_size, sample.y, est, x0,
                    H_op.restrict(st, part.patch_size), s, steps,
                )[0]
                for st in starts
            ]  # fmt: skip
            for k in range(model.K):
                add(name, f"h_rel_error_{steps}_refine", statistics.mean(p[k][0] for p in per_k), k)
                add(
                    name, f"h_grad_ratio_{steps}_refine", statistics.mean(p[k][1] for p in per_k), k
                )
        if name == "partition":
            for a in alphas:
                a = float(a)
                if a == 0.0:
                    value = psnr(exact)
                elif a == 1.0:
                    value = psnr(h_ref)
                else:
                    mix = MixedNormal(sample.physics, img[1:], H_op, s, a)
                    with torch.no_grad():
                        rec = part(sample.y, sample.physics, x0=x0, x_init=est, refine=True,
                                   normal=mix)  # fmt: skip
                    value = psnr(rec)
                add(name, "psnr_mix", value, alpha=a)
            ratio = statistics.mean(
                r["value"] for r in rows
                if r["model"] == name and r["measure"] == "h_grad_ratio_H_refine"
            )  # fmt: skip
            add(name, "h_grad_ratio_predicts_harmless", float(ratio <= PREDICTOR_MAX))
    if starts is not None:
        gts = [
            gt_errors(sample.physics, img, st, part.patch_size, sample.y, sample.x,
                      H_op.restrict(st, part.patch_size), s)
            for st in starts
        ]  # fmt: skip
        add("", "h_rel_error_gt", statistics.mean(g[0] for g in gts))
        add("", "h_grad_ratio_gt", statistics.mean(g[1] for g in gts))
    return rows


# ------------------------------------------------------------------------------ summaries
def _mean(rows: list[dict], model: str, measure: str, **match) -> float | None:
    vals = [
        float(r["value"])
        for r in rows
        if (r.get("model") or "") == model
        and r["measure"] == measure
        and all(str(r.get(k, "")) == str(v) for k, v in match.items())
        and r["value"] not in ("", None)
    ]
    return statistics.mean(vals) if vals else None


def headline(rows: list[dict], task: str | None = None) -> dict:
    """The numbers that explain an H-accuracy gap, means over the volumes (None when absent):

    - ``h_refine_cost_db``: exact-trained model, exact minus H refinement;
    - ``h_trained_loss_db``: exact-trained minus H-trained model, both with exact refinement;
    - ``h_grad_ratio``: H's error over the exact gradient along the exact-trained model's H
      refinement (mean over k); ``h_grad_ratio_gt``: at the ground truth;
    - ``h_rel_error``: H's relative error on those iterates; ``harmless``: ratio ≤ 0.1.
    """
    rows = [r for r in rows if task is None or r.get("task") == task]
    ex = _mean(rows, "partition", "psnr_exact_refine")
    hr = _mean(rows, "partition", "psnr_H_refine")
    hx = _mean(rows, "partition-H", "psnr_exact_refine")
    ratio = _mean(rows, "partition", "h_grad_ratio_H_refine")
    return {
        "h_refine_cost_db": None if ex is None or hr is None else ex - hr,
        "h_trained_loss_db": None if ex is None or hx is None else ex - hx,
        "h_grad_ratio": ratio,
        "h_grad_ratio_gt": _mean(rows, "", "h_grad_ratio_gt"),
        "h_rel_error": _mean(rows, "partition", "h_rel_error_H_refine"),
        "harmless": None if ratio is None else ratio <= PREDICTOR_MAX,
    }


def cause_text(rows: list[dict], task: str | None = None) -> str:
    """One sentence of measured causes (for the claims table), empty when nothing is measured."""
    h = headline(rows, task)
    parts = []
    if h["h_refine_cost_db"] is not None:
        parts.append(
            f"H refinement costs {h['h_refine_cost_db']:.2f} dB on the exact-trained model"
        )
    if h["h_trained_loss_db"] is not None:
        parts.append(f"the H-trained model loses {h['h_trained_loss_db']:.2f} dB with exact steps")
    if h["h_grad_ratio"] is not None:
        verdict = "≤" if h["harmless"] else ">"
        text = f"H error/gradient ratio {h['h_grad_ratio']:.2f} ({verdict} {PREDICTOR_MAX:g})"
        if h["h_grad_ratio_gt"] is not None:
            text += f", {h['h_grad_ratio_gt']:.2f} at the ground truth"
        parts.append(text)
    return "; ".join(parts)


def _fmt(v, digits=2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def summary(rows: list[dict]) -> str:
    """Markdown: PSNR per model and refinement, H's errors per k, the α curve, the predictor."""
    lines = ["# H accuracy diagnostic (unroll3d bench accuracy)", ""]
    for (task, setting), group in _groups(rows, ("task", "setting")).items():
        volumes = sorted({r["volume"] for r in group})
        lines += [f"## {task} {setting} ({len(volumes)} volume(s): {', '.join(volumes)})", ""]
        lines += ["PSNR (dB, mean over volumes):", ""]
        lines += ["| model | first pass | exact refinement | H refinement | anchored H refinement |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for m in MODELS:
            vals = [
                _mean(group, m, f"psnr_{k}")
                for k in ("first_pass", "exact_refine", "H_refine", "anchored_H_refine")
            ]
            if any(v is not None for v in vals):
                lines.append(f"| {m} | " + " | ".join(_fmt(v) for v in vals) + " |")
        lines += ["", f"A†y: {_fmt(_mean(group, '', 'psnr_x0'))} dB", ""]
        ks = sorted({int(r["k"]) for r in group if str(r["k"]) not in ("", "None")})
        lines += [
            "H's error on the refinement iterates (mean over patches and volumes): relative error"
            " ‖(N − H)x‖/‖Nx‖ / error-to-gradient ratio ‖(N − H)x‖/‖Nx − b‖:",
            "",
            "| model | steps | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---|---|" + "---|" * len(ks),
        ]
        for m in MODELS:
            for steps in ("exact", "H"):
                cells = []
                for k in ks:
                    a = _mean(group, m, f"h_rel_error_{steps}_refine", k=k)
                    b = _mean(group, m, f"h_grad_ratio_{steps}_refine", k=k)
                    cells.append(f"{_fmt(a)} / {_fmt(b)}")
                if any(c != "— / —" for c in cells):
                    lines.append(f"| {m} | {steps} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"At the ground truth (ground-truth context): relative error "
            f"{_fmt(_mean(group, '', 'h_rel_error_gt'))}, error-to-gradient ratio "
            f"{_fmt(_mean(group, '', 'h_grad_ratio_gt'))}.",
            "",
        ]
        alphas = sorted({float(r["alpha"]) for r in group if r["measure"] == "psnr_mix"})
        if alphas:
            lines += ["α-mixing, exact-trained model refined with (1 − α) N + α H:", ""]
            lines += ["| α | " + " | ".join(f"{a:g}" for a in alphas) + " |"]
            lines += ["|---|" + "---|" * len(alphas)]
            vals = [
                _mean(group, "partition", "psnr_mix", alpha=_alpha_key(group, a)) for a in alphas
            ]
            lines += ["| PSNR (dB) | " + " | ".join(_fmt(v) for v in vals) + " |", ""]
        h = headline(group)
        if h["h_grad_ratio"] is not None:
            verdict = "predicts no loss" if h["harmless"] else "predicts a loss"
            lines.append(
                f"**Predictor**: H error/gradient ratio along the exact-trained model's H "
                f"refinement {_fmt(h['h_grad_ratio'])} (≤ {PREDICTOR_MAX:g} should be harmless: "
                f"{verdict}); measured cost of H refinement {_fmt(h['h_refine_cost_db'])} dB."
            )
        text = cause_text(group)
        if text:
            lines += ["", f"Cause line for the claims table: {text}.", ""]
    return "\n".join(lines) + "\n"


def _alpha_key(rows, a: float):
    """The ``alpha`` cell as written in ``rows`` for the value ``a`` (float or text)."""
    for r in rows:
        if r["measure"] == "psnr_mix" and float(r["alpha"]) == a:
            return r["alpha"]
    return a


def _groups(rows, keys) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def read_rows(paths: Iterable[str | Path]) -> list[dict]:
    """Rows of accuracy CSVs (text cells; ``value`` as float); absent files are skipped."""
    import csv

    rows = []
    for p in paths:
        if p and Path(p).is_file():
            with open(p, newline="") as fh:
                for r in csv.DictReader(fh):
                    try:
                        r["value"] = float(r["value"])
                    except (TypeError, ValueError):
                        continue
                    rows.append(r)
    return rows


# ------------------------------------------------------------------------------ driver
def pick_fit(fits: list, setting: str, index: int, n_data: int):
    """The H for data file ``index``: one per data file when as many are given (MRI per-sample
    fits), else the fit recorded for ``setting``, else the only one."""
    if len(fits) == n_data and n_data > 1:
        return fits[index]
    if len(fits) == 1:
        return fits[0]
    own = [f for f in fits if f.setting == setting]
    if not own:
        raise SystemExit(
            f"unroll3d bench accuracy: none of the {len(fits)} H files is for setting {setting}"
        )
    return own[0]


def run_accuracy(
    task: str,
    setting: str,
    config: dict,
    *,
    partition: str | Path,
    partition_H: str | Path,
    normal: Sequence[str | Path],
    data: Sequence[str | Path],
    out: str | Path,
    summary_md: str | Path | None = None,
    patches: int,
    seed: int,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    device: str = "auto",
    threads: int | None = None,
) -> list[dict]:
    """:func:`measure_volume` of both trained models (``config``: the job's section,
    :func:`unroll3d.config.job_config`) on each of the ``data`` volumes with its H
    (:func:`pick_fit` of the ``normal`` files); the CSV at ``out`` and the Markdown
    :func:`summary` at ``summary_md`` (default: the CSV's .md). Returns the rows."""
    import torch

    from unroll3d.engine.device import resolve_device
    from unroll3d.engine.model_file import load_trained
    from unroll3d.engine.operators import load_H
    from unroll3d.engine.samples import default_loader
    from unroll3d.utils import atomic_write_csv, atomic_write_text

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    models, lips = {}, {}
    for name, path in (("partition", partition), ("partition-H", partition_H)):
        model, payload = load_trained(
            path, task, config, device=dev, setting=setting, variant=name
        )
        if model is None:
            print(f"{name}: {payload.get('status')} ({payload.get('message')}); skipped")
            continue
        models[name], lips[name] = model, payload.get("lipschitz")
    fits = [load_H(f, dev) for f in normal]
    loader = default_loader(setting, dev)
    rows = []
    for i, path in enumerate(data):
        sample = loader(path)
        volume = (getattr(sample, "meta", None) or {}).get("volume") or Path(path).stem
        H = pick_fit(fits, setting, i, len(data))
        lip = lips.get("partition") or lips.get("partition-H")
        rows += measure_volume(
            models, task, setting, str(volume), config, sample, H, lip,
            patches=patches, seed=seed, alphas=alphas,
        )  # fmt: skip
    out = Path(out)
    atomic_write_csv(out, rows, FIELDS)
    md = Path(summary_md) if summary_md else out.with_suffix(".md")
    atomic_write_text(md, summary(rows))
    print(cause_text(rows) or "no measurement")
    print(f"wrote {out} and {md}")
    return rows
