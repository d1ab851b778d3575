"""GPU accuracy check (``make gpu-accuracy``): does H keep its accuracy at the
paper's sizes? At most ~8 minutes on one CUDA card.

Sections, each recorded even when it fails (its error becomes a ``section_error`` row):

1. ``ratio``: at the Walnut size (501³, 30 views, the scanner's geometry through astra; see
   :mod:`unroll3d.bench.gpu_geometry`) on a walnut-like synthetic volume, H is fitted (a short Adam
   fit from the impulse response, ``fit_steps``) and H's relative error and H-error-to-gradient
   ratio ‖(N − H) x_k‖ / ‖N x_k − b‖ are measured along a few plain gradient steps
   x ← x − (N x − b) / ‖A‖² on seeded patches of the paper's CBCT size (8 × 384 × 384), with
   the ground truth as context (the training problem) and with FDK as context (a test-time
   problem), and at the ground truth. The predictor (ours): a ratio ≲ 0.1 should be harmless.
2. ``train``: ``partition`` and ``partition-H`` trained for the same wall-clock budget
   (``train_s`` each, same seed, same initial weights, same patch draws) at 128³ on walnut-like
   volumes with a patch of the paper's proportions (8 × 96 × 96 against 8 × 384 × 384 in 501³),
   then each evaluated on a held-out volume with exact and with H refinement, H's error along
   its refinement iterates and the α-mixing curve (:func:`unroll3d.bench.accuracy.measure_volume`).

``--tiny`` runs both sections at toy sizes on the CPU in well under a minute, with a masked
circular blur instead of the cone beam (no ITK start-up), so ``make test`` keeps it working.

Outputs in ``--out-dir`` (default ``results/benchmarks/gpu-accuracy``, ``-tiny`` for the toy
mode): ``gpu_accuracy.csv`` (the long format of ``unroll3d bench accuracy`` plus ``device``) and
``summary.md`` naming the device, rewritten after every section.

    unroll3d bench gpu_accuracy                         # on a CUDA card
    unroll3d bench gpu_accuracy --tiny --out-dir /tmp/gpu_accuracy_tiny
"""

from __future__ import annotations

import math
import platform
import statistics
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from unroll3d.bench.accuracy import FIELDS as ACCURACY_FIELDS
from unroll3d.bench.accuracy import PREDICTOR_MAX, headline
from unroll3d.bench.accuracy import summary as accuracy_summary
from unroll3d.bench.gpu_recorder import mode_device, profiles
from unroll3d.utils import atomic_write_csv, atomic_write_text

FIELDS = [*ACCURACY_FIELDS, "device"]

PROFILES = profiles(  # each size: (gpu, tiny)
    ratio_volume=(501, 20),
    ratio_patch=([8, 384, 384], [4, 12, 12]),
    ratio_fit_steps=(60, 10),
    ratio_patches=(3, 2),
    ratio_steps=(5, 3),
    views=(30, 6),
    train_volume=(128, 16),
    train_patch=([8, 96, 96], [4, 8, 8]),
    train_volumes=(4, 2),
    fit_steps=(300, 10),
    train_s=(90.0, 2.0),
    lr=(1e-3, 3e-3),
    channels=([32, 64, 128, 256], [4, 8, 8, 8]),
    blocks=(2, 1),
    K=(3, 2),
    patches=(4, 2),
)
ALPHAS = (0.0, 0.1, 0.3, 1.0)
#: Gaussian noise on y, as a fraction of max |y|
NOISE = 0.01
MARGIN = [0.16, 0.1, 0.1]  # paper §10: training patch corners away from the walnut's border


# ----------------------------------------------------------------------------------- operators
def masked_blur(n: int, device, seed: int = 0):
    """The toy mode's operator: a 3 × 3 × 3 circular blur then a random voxel mask (60 % kept),
    so AᵀA is not diagonal × circulant and H has an error."""
    import deepinv as dinv
    import torch
    from deepinv.physics import LinearPhysics

    g = torch.Generator().manual_seed(seed)
    k = torch.rand((1, 1, 3, 3, 3), generator=g) + 0.5
    blur = dinv.physics.Blur(filter=k / k.sum(), padding="circular", use_fft=True)
    mask = (torch.rand((1, 1, n, n, n), generator=g) < 0.6).float()

    class MaskedBlur(LinearPhysics):
        def __init__(self):
            super().__init__()
            self.blur = blur
            self.register_buffer("mask", mask)

        def A(self, x, **kw):
            return self.mask * self.blur.A(x)

        def A_adjoint(self, y, **kw):
            return self.blur.A_adjoint(self.mask * y)

        def initial_reconstruction(self, y, **kw):
            return self.A_adjoint(y)  # an FDK stand-in: the back projection

    return MaskedBlur().to(device)


def walnut_like(n: int, seed: int, device):
    """``(1, 1, n, n, n)`` walnut-like volume: the nested-ball shell and core of
    :func:`unroll3d.bench.gpu_geometry.ball_phantom` with seeded inner blobs of other densities
    (kernel-like texture), in [0, 1]."""
    import torch

    from unroll3d.bench.gpu_geometry import ball_phantom

    g = torch.Generator().manual_seed(seed)
    vol = ball_phantom(n, device)[0, 0]
    r = torch.linspace(-1, 1, n, device=device)
    z, y, x = r[:, None, None], r[None, :, None], r[None, None, :]
    for _ in range(6):
        c = (torch.rand(3, generator=g) * 1.0 - 0.5).tolist()
        rad = 0.08 + 0.15 * float(torch.rand(1, generator=g))
        amp = 0.2 + 0.5 * float(torch.rand(1, generator=g))
        d = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2).sqrt()
        vol = vol + amp * torch.sigmoid((rad - d) * 40)
    return (vol / vol.max()).clamp(0, 1)[None, None].float()


def make_sample(n: int, seed: int, physics, lip: float, setting: str, device, noise=0.0):
    """A :class:`unroll3d.data.sample.Sample` of :func:`walnut_like` under ``physics``."""
    import torch

    from unroll3d.data.sample import Sample

    x = walnut_like(n, seed, device)
    with torch.no_grad():
        y = physics.A(x)
        if noise:
            g = torch.Generator().manual_seed(10_000 + seed)
            y = y + noise * y.abs().max() * torch.randn(y.shape, generator=g).to(y.device)
    meta = {"setting": setting, "op_norm_sq": lip, "volume": f"walnut-like {n}³ #{seed}"}
    return Sample(x, y, physics, meta)


def operator(n: int, prof: dict, tiny: bool, device):
    """(physics, ‖A‖², setting): the masked blur (tiny) or the Walnut cone beam on astra."""
    from unroll3d.physics import sqnorm

    if tiny:
        physics, setting = masked_blur(n, device), "blur"
    else:
        from unroll3d.bench.gpu_geometry import walnut_physics

        physics, setting = walnut_physics(n, prof["views"], "astra", device), f"v{prof['views']}"
    lip = sqnorm(physics, img_size=(1, n, n, n), device=device, rtol=1e-3, max_iter=30)
    return physics, float(lip), setting


def fit_H(physics, n: int, lip: float, steps: int, setting: str, device):
    """A short data-free fit of H (Adam from the impulse response; ``steps`` = 0: the impulse
    response itself) as a :class:`~unroll3d.normal.NormalFit`, with its held-out error."""
    import torch

    from unroll3d.normal import NormalFit, fit_normal_operator, padded_grid
    from unroll3d.normal.fit import impulse_filter

    img = (1, n, n, n)
    if steps <= 0:
        grid = padded_grid(img[1:])
        lam = impulse_filter(physics, img, grid, lip, device)
        fit = NormalFit(lam, torch.ones(img[1:], device=device), img, grid=grid, scaling=lip)
        fit.meta["setting"] = setting
        return fit, None
    lam, m, hist = fit_normal_operator(
        physics, img, n_steps=steps, heldout=2, progress=False, sqnorm=lip, device=device
    )
    fit = NormalFit(
        lam.to(device),
        m.to(device),
        img,
        grid=tuple(hist["grid"]),
        two_sided=bool(hist["two_sided"]),
        scaling=float(hist["sqnorm"]),
        meta={"setting": setting},
    )
    return fit, float(hist["best_heldout_rel_error"])  # the returned (best) step's


class GradientSteps:
    """A network-free "unrolled model" for :func:`unroll3d.bench.accuracy.iterate_errors`: K
    plain data steps x ← x − (N x − b) / ‖A‖²."""

    def __init__(self, K: int, lip: float, device):
        import torch

        self.K = int(K)
        self.step_sizes = torch.full((self.K,), 1.0 / lip, device=device)
        self.sigmas = torch.zeros(self.K, device=device)

    def _denoise(self, x, sigma):
        return x


# ----------------------------------------------------------------------------------- recording
class Recorder:
    """Rows and notes, rewritten to CSV and Markdown after every section; the time budget."""

    def __init__(self, out_dir: Path, budget_s: float, mode: str, device: str):
        self.out_dir, self.budget_s, self.mode, self.device = Path(out_dir), budget_s, mode, device
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.trained: list[dict] = []  # the rows of measure_volume (section train)
        self.notes: list[str] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, volume, model, measure, value, k="", alpha="", task="cbct", setting=""):
        row = dict(task=task, setting=setting, volume=volume, model=model, measure=measure)
        self.rows.append({**row, "k": k, "alpha": alpha, "value": value, "device": self.device})

    def extend(self, rows: list[dict]) -> None:
        self.rows += [{**r, "device": self.device} for r in rows]
        self.trained += rows

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.notes.append(text)

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(self.out_dir / "gpu_accuracy.csv", self.rows, FIELDS)
        atomic_write_text(self.out_dir / "summary.md", self.markdown())

    def markdown(self) -> str:
        import torch

        lines = [
            f"# GPU accuracy check on {self.device}",
            "",
            f"- mode: {self.mode}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{time.perf_counter() - self.t0:.0f} s of a {self.budget_s:.0f} s budget",
            f"- torch {torch.__version__}, Python {platform.python_version()}",
            f"- predictor: an H error/gradient ratio ≤ {PREDICTOR_MAX:g} should be harmless",
            "",
            *[f"- {n}" for n in self.notes],
            "",
            "## Ratio along gradient steps (section ratio)",
            "",
            "| case | context | "
            + " | ".join(f"k = {k}" for k in range(self._ks()))
            + " | truth |",
            "|---|---|" + "---|" * (self._ks() + 1),
        ]
        for (volume, model), group in _by(self.rows, ("volume", "model")).items():
            per_k = {r["k"]: r for r in group if r["measure"] == "h_grad_ratio_steps"}
            if not per_k:
                continue
            gt = [
                r for r in self.rows if r["volume"] == volume and r["measure"] == "h_grad_ratio_gt"
            ]
            cells = [_cell(per_k.get(k)) for k in range(self._ks())]
            lines.append(
                f"| {volume} | {model} | "
                + " | ".join(cells)
                + f" | {_cell(gt[0] if gt else None)} |"
            )
        trained = self.trained
        if trained:
            lines += ["", "## Trained partition vs partition-H (section train)", ""]
            stats = [r for r in self.rows if r["measure"].startswith("train_")]
            if stats:
                names = list(dict.fromkeys(r["measure"] for r in stats))
                lines += ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
                for (model,), group in _by(stats, ("model",)).items():
                    vals = {r["measure"]: float(r["value"]) for r in group}
                    cells = [f"{vals[m]:.4g}" if m in vals else "—" for m in names]
                    lines.append(f"| {model} | " + " | ".join(cells) + " |")
                lines.append("")
            body = accuracy_summary(trained).split("\n", 2)[2]  # without its title
            lines.append(body)
        return "\n".join(lines) + "\n"

    def _ks(self) -> int:
        ks = [int(r["k"]) for r in self.rows if r["measure"] == "h_grad_ratio_steps"]
        return max(ks) + 1 if ks else 0


def _cell(row) -> str:
    return "—" if row is None else f"{float(row['value']):.3f}"


def _by(rows, keys) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


# ----------------------------------------------------------------------------------- sections
def section_ratio(rec: Recorder, prof: dict, tiny: bool, device, seed: int) -> None:
    """H's error against the exact gradient along plain gradient steps at the Walnut size."""
    import torch

    from unroll3d.bench.accuracy import gt_errors, iterate_errors
    from unroll3d.engine.partitioning import patch_ranges
    from unroll3d.partition import sample_patch_start
    from unroll3d.physics import initial_reconstruction

    n, patch = prof["ratio_volume"], tuple(prof["ratio_patch"])
    physics, lip, setting = operator(n, prof, tiny, device)
    sample = make_sample(n, seed, physics, lip, setting, device, noise=NOISE)
    with torch.no_grad():
        x0 = initial_reconstruction(physics, sample.y).float()
    t0 = time.perf_counter()
    H, heldout = fit_H(physics, n, lip, prof["ratio_fit_steps"], setting, device)
    volume = f"{n}³, patch {'×'.join(map(str, patch))}"
    rec.note(
        f"ratio: {volume}, {setting}; H fitted in {prof['ratio_fit_steps']} Adam steps "
        f"({time.perf_counter() - t0:.0f} s), held-out error "
        + ("—" if heldout is None else f"{heldout:.3f}")
    )
    if heldout is not None:
        rec.add(volume, "", "h_heldout_error", heldout, setting=setting)
    op = H.operator((1, n, n, n))
    s = float(H.scaling)
    ranges = patch_ranges((n, n, n), patch, MARGIN)
    gen = torch.Generator().manual_seed(seed)
    starts = [
        sample_patch_start((1, n, n, n), patch, ranges, gen) for _ in range(prof["ratio_patches"])
    ]
    steps = GradientSteps(prof["ratio_steps"], lip, device)
    img = (1, n, n, n)
    for context_name, context in (("truth context", sample.x), ("FDK context", x0)):
        per = [
            iterate_errors(steps, physics, img, st, patch, sample.y, context, x0,
                           op.restrict(st, patch), s, "exact")[0]
            for st in starts
        ]  # fmt: skip
        for k in range(steps.K):
            rel = statistics.mean(p[k][0] for p in per)
            ratio = statistics.mean(p[k][1] for p in per)
            rec.add(volume, context_name, "h_rel_error_steps", rel, k=k, setting=setting)
            rec.add(volume, context_name, "h_grad_ratio_steps", ratio, k=k, setting=setting)
        if rec.left() < 20:
            break
    gts = [
        gt_errors(physics, img, st, patch, sample.y, sample.x, op.restrict(st, patch), s)
        for st in starts
    ]
    rec.add(volume, "", "h_rel_error_gt", statistics.mean(g[0] for g in gts), setting=setting)
    rec.add(volume, "", "h_grad_ratio_gt", statistics.mean(g[1] for g in gts), setting=setting)
    del physics, sample, H, op


def _config(prof: dict, seed: int) -> dict:
    from unroll3d.config import job_config

    return job_config(
        {
            "seed": seed,
            "cbct": {"K": prof["K"], "patch_size": list(prof["train_patch"]), "stride": None},
            "model": {"channels": list(prof["channels"]), "blocks": prof["blocks"]},
            "train": {"bf16": False, "cbct_patch_margin": MARGIN},
            "evaluate": {"refine": True, "cbct_crop": [0.2, 0.8], "cbct_data_range": 1.0},
        },
        "cbct",
    )


def train_timeboxed(variant, config, preps, H, lip, seconds, lr, device, seed):
    """Train ``variant`` on random patches of ``preps`` (``[(sample, physics, x0)]``) for
    ``seconds`` of wall clock; returns (model in eval mode, stats)."""
    import torch

    from unroll3d.engine.partitioning import estimate_pair, make_partitioner
    from unroll3d.engine.timing import sync
    from unroll3d.models import build_variant
    from unroll3d.variants import variant_spec

    spec = variant_spec(variant)
    torch.manual_seed(seed)  # same initial weights for both variants
    model = build_variant(variant, "cbct", config, lipschitz=lip, device=device).train()
    part = make_partitioner(model, "cbct", config, preps[0][0].x.shape[1:])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)  # same patch draws
    losses, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or not losses:
        i = int(torch.randint(len(preps), (1,), generator=gen))
        sample, physics, x0 = preps[i]
        opt.zero_grad(set_to_none=True)
        est, target = estimate_pair(model, spec, sample, physics, x0, gen, part)
        loss = torch.mean((est.float() - target.float()) ** 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    sync(device)
    elapsed = time.perf_counter() - t0
    tail = losses[-max(1, len(losses) // 10) :]
    stats = {
        "train_steps": len(losses),
        "train_s_per_step": elapsed / len(losses),
        "train_loss_first": losses[0],
        "train_loss_last": statistics.mean(tail),
    }
    return model.eval(), stats


def section_train(rec: Recorder, prof: dict, tiny: bool, device, seed: int, train_s: float):
    """partition vs partition-H for the same budget, evaluated with exact and H refinement."""
    import torch

    from unroll3d.bench.accuracy import measure_volume
    from unroll3d.engine.operators import physics_for
    from unroll3d.physics import initial_reconstruction
    from unroll3d.variants import variant_spec

    n = prof["train_volume"]
    physics, lip, setting = operator(n, prof, tiny, device)
    config = _config(prof, seed)
    t0 = time.perf_counter()
    H, heldout = fit_H(physics, n, lip, prof["fit_steps"], setting, device)
    rec.note(
        f"train: {n}³, patch {'×'.join(map(str, prof['train_patch']))}, {setting}, K = "
        f"{prof['K']}, DRUNet {prof['channels']}×{prof['blocks']}, {train_s:g} s per variant; "
        f"H fitted in {prof['fit_steps']} steps ({time.perf_counter() - t0:.0f} s), held-out "
        "error " + ("—" if heldout is None else f"{heldout:.3f}")
    )
    samples = [
        make_sample(n, seed + 1 + i, physics, lip, setting, device, noise=NOISE)
        for i in range(prof["train_volumes"])
    ]
    test = make_sample(n, seed + 100, physics, lip, setting, device, noise=NOISE)
    with torch.no_grad():
        x0s = [initial_reconstruction(physics, s.y).float() for s in samples]
    models = {}
    for variant in ("partition", "partition-H"):
        spec = variant_spec(variant)
        preps = [(s, physics_for(s, spec, H, lip), x0) for s, x0 in zip(samples, x0s, strict=True)]
        model, stats = train_timeboxed(
            variant,
            config,
            preps,
            H if spec.use_H else None,
            lip,
            train_s,
            prof["lr"],
            device,
            seed,
        )
        models[variant] = model
        for key, value in stats.items():
            rec.add(f"{n}³ training", variant, key, value, setting=setting)
        rec.note(
            f"{variant}: {stats['train_steps']} steps, {stats['train_s_per_step']:.3f} s/step, "
            f"loss {stats['train_loss_first']:.3g} → {stats['train_loss_last']:.3g}"
        )
    volume = str(test.meta["volume"])
    rows = measure_volume(
        models, "cbct", setting, volume, config, test, H, lip, patches=prof["patches"],
        seed=seed, alphas=ALPHAS, log=rec.note,
    )  # fmt: skip
    rec.extend(rows)
    h = headline(rows)
    rec.note(
        "headline: "
        + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in h.items())
    )


# ----------------------------------------------------------------------------------- driver
SECTION_NAMES = ("ratio", "train")


def run_gpu_accuracy(
    *,
    tiny: bool = False,
    out_dir: str | Path | None = None,
    budget_s: float,
    train_s: float | None = None,
    seed: int,
    sections: Sequence[str] = SECTION_NAMES,
) -> int:
    """The sections in turn (``tiny``: toy sizes on the CPU, a masked blur); ``out_dir``
    defaults to ``results/benchmarks/gpu-accuracy[-tiny]``, ``train_s`` (training seconds per
    variant) to the profile's. Returns 1 when a section failed."""
    import torch

    from unroll3d.utils import device_name

    prof = dict(PROFILES["tiny" if tiny else "gpu"])
    device = mode_device(tiny)
    out = Path(out_dir) if out_dir else Path("results/benchmarks/gpu-accuracy" + ("-tiny" if tiny else ""))
    train_s = float(prof["train_s"] if train_s is None else train_s)
    rec = Recorder(out, budget_s, "tiny (CPU)" if tiny else "gpu", device_name(device))
    failures = 0
    for name in sections:
        # the training section needs two budgets and an evaluation: skip it when that won't fit
        need = 2 * train_s + (10 if tiny else 90)
        if name == "train" and rec.left() < need:
            rec.note(f"train: skipped, {rec.left():.0f} s left of the budget, needs ~{need:.0f} s")
            continue
        try:
            if name == "ratio":
                section_ratio(rec, prof, tiny, device, seed)
            else:
                section_train(rec, prof, tiny, device, seed, train_s)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the other
            failures += 1
            rec.add(name, "", "section_error", math.nan)
            rec.note(f"{name}: failed, {type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rec.write()
    print(f"wrote {rec.out_dir / 'gpu_accuracy.csv'} and {rec.out_dir / 'summary.md'}")
    return 1 if failures else 0
