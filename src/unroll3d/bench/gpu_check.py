"""One-command GPU check (``make gpu-check``): what Table 1's memory and s/step columns and §6.4
need from one CUDA card, in a few minutes.

Sections, each recorded even when it fails (its error becomes the row's ``status``), in order:

1. ``env``: the card, its memory, torch/CUDA/astra versions.
2. ``tests``: ``pytest -m gpu`` (astra vs RTK, bf16 training, real CUDA OOM capture).
3. ``projector``: cone-beam adjointness and forward/back/FDK time at 128³ and at the Walnut size
   (501³, 972 × 768 detector, 30 views, the scanner's distances and 0.5° axis tilt); astra vs RTK
   agreement on a small volume, against RTK in-process or a reference file written on a machine
   with ITK (``--write-reference``).
4. ``normal_step``: the §6.4 patch data step (exact S AᵀA Sᵀ vs the cropped-kernel H) with
   backward, in the Walnut-size volume.
5. ``train``: peak memory and s/step of one training micro-step through the engine's own
   ``time_train_steps``: full-volume ``unrolled`` at growing sizes until the first OOM, then
   ``partition`` and ``partition-H`` with the paper's CBCT patch in the Walnut-size volume;
   ``train_mri``: the same at the MRI data set's size (12 coils, K = 5), full-volume ``unrolled``
   in fp32 and with the bf16 network.
6. ``network``, ``train_modes``, ``train_loop``, ``profile`` (:mod:`unroll3d.bench.gpu_network`):
   the DRUNet alone in each precision/layout mode, partitioned training in the bf16 modes, the
   engine's real training loop with resident against parked samples, and a profile of one CBCT
   ``partition-H`` micro-step.
7. ``inference``: one sliding-window ``partition-H`` reconstruction (Algorithm 1 with refinement)
   of the Walnut-size volume: time and peak memory.

The volumes are synthetic (smooth balls); H is the impulse response of AᵀA (its values do not
change its cost, so timing needs no fit) and the networks are untrained: this measures memory and
speed, not quality. A time budget (``--budget-s``) skips what would not fit, saying so.
``--tiny`` runs every section at toy sizes on the CPU (RTK), so ``make test`` keeps it working.

Outputs in ``--out-dir`` (default ``results/benchmarks/gpu``): ``gpu_check.csv`` (one row per
measurement: section, case, metric, value, unit, status, note), ``summary.md`` naming the card,
and ``pytest_gpu.txt``. Both files are rewritten after every section.

    unroll3d bench gpu_check                      # on a CUDA card
    unroll3d bench gpu_check --tiny --out-dir /tmp/gpu_tiny
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from unroll3d.bench.gpu_network import network_sections
from unroll3d.bench.memory import gb
from unroll3d.utils import atomic_write_csv, atomic_write_text, device_name

FIELDS = ["section", "case", "metric", "value", "unit", "status", "note"]

#: Walnut scanner: source-axis and source-detector distances (mm), detector
#: pixel (mm, after 2×2 binning), detector (rows, cols), reconstruction grid and voxel (mm).
WALNUT = dict(sod=66.0014, sdd=199.0062, pixel=0.1496, det=(972, 768), n=501, voxel=0.1)

#: sizes of each mode. ``train_sizes``: full-volume unrolled until OOM; ``patch``: the paper's
#: CBCT patch (config/config.yaml); ``model``: DRUNet widths/blocks and K.
PROFILES = {
    "gpu": dict(
        projector_sizes=[128, 501],
        views=30,
        agreement_size=32,
        volume=501,
        normal_patch=128,
        train_sizes=[64, 96, 128, 160, 192, 224, 256],
        patch=[8, 384, 384],
        channels=[64, 128, 256, 512],
        blocks=4,
        K=3,
        steps=2,
        repeats=3,
        mri_shape=[256, 218, 170],
        mri_coils=12,
        mri_R=5,
        mri_K=5,
        mri_patch=[8, 128, 128],
    ),
    "tiny": dict(
        projector_sizes=[16],
        views=6,
        agreement_size=12,
        volume=24,
        normal_patch=12,
        train_sizes=[12, 16],
        patch=[4, 12, 12],
        channels=[4, 8, 8, 8],
        blocks=1,
        K=2,
        steps=1,
        repeats=1,
        mri_shape=[8, 12, 10],
        mri_coils=2,
        mri_R=2,
        mri_K=2,
        mri_patch=[4, 8, 8],
    ),
}


# ----------------------------------------------------------------------------------- geometry
def walnut_vectors(n_views: int, n: int, tilt_deg: float = 0.5):
    """``(n_views, 12)`` cone_vec rows (mm) of the Walnut scanner for an ``n``³ volume.

    At ``n = 501`` these are the real distances, pixel and 972 × 768 detector over a 50.1 mm field
    of view; a smaller ``n`` keeps the field of view and the distances and coarsens voxels and
    detector pixels by ``501 / n``. Returns ``(vectors, voxel_mm, det_shape)``.
    """
    import numpy as np

    scale = WALNUT["n"] / n
    voxel = WALNUT["voxel"] * scale
    rows, cols = (max(4, round(d / scale)) for d in WALNUT["det"])
    pix = WALNUT["pixel"] * WALNUT["det"][1] / cols
    sod, sdd = WALNUT["sod"], WALNUT["sdd"]
    t = math.radians(tilt_deg)
    tilt = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    vec = np.zeros((n_views, 12))
    for i in range(n_views):
        th = 2 * math.pi * i / n_views
        s = np.array([math.sin(th) * sod, -math.cos(th) * sod, 0.0])
        u = np.array([math.cos(th), math.sin(th), 0.0]) * pix
        v = np.array([0.0, 0.0, -1.0]) * pix
        d = np.array([-math.sin(th), math.cos(th), 0.0]) * (sdd - sod)
        vec[i] = np.concatenate([tilt @ s, tilt @ d, tilt @ u, tilt @ v])
    return vec, voxel, (rows, cols)


def walnut_physics(n: int, n_views: int, backend: str, device):
    """The cone-beam operator of :func:`walnut_vectors` on ``device``."""
    from unroll3d.physics import ConeBeam

    vec, voxel, det = walnut_vectors(n_views, n)
    return ConeBeam(vec, (1, n, n, n), voxel, det, backend=backend).to(device)


def ball_phantom(n: int, device):
    """``(1, 1, n, n, n)`` smooth nested balls in [0, 1] (a walnut-like shell and core)."""
    import torch

    r = torch.linspace(-1, 1, n, device=device)
    rr = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2).sqrt()
    shell = torch.sigmoid((0.8 - rr) * 40) - 0.6 * torch.sigmoid((0.65 - rr) * 40)
    core = 0.5 * torch.sigmoid((0.3 - rr) * 40)
    return (shell + core)[None, None].float()


# ----------------------------------------------------------------------------------- recording
class Recorder:
    """Rows of the check, rewritten to CSV and Markdown after every section; the time budget."""

    def __init__(self, out_dir: Path, budget_s: float, mode: str):
        self.out_dir, self.budget_s, self.mode = Path(out_dir), float(budget_s), mode
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.header: dict[str, str] = {}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, section, case, metric, value, unit="", status="ok", note=""):
        if isinstance(value, float):
            value = float(f"{value:.6g}")
        if value is None:
            value, status = "", ("n/a" if status == "ok" else status)
            note = (note + "; " if note else "") + "not tracked on the CPU"
        row = dict(section=section, case=case, metric=metric, value=value, unit=unit)
        row.update(status=status, note=note)
        self.rows.append(row)
        shown = f"{value} {unit}".strip()
        print(f"[{section}] {case} {metric}: {shown} ({status}) {note}".rstrip(), flush=True)

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(self.out_dir / "gpu_check.csv", self.rows, FIELDS)
        atomic_write_text(self.out_dir / "summary.md", self.markdown())

    def markdown(self) -> str:
        h = self.header
        lines = [
            f"# GPU check on {h.get('card', '?')}",
            "",
            f"- mode: {self.mode}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{time.perf_counter() - self.t0:.0f} s of a {self.budget_s:.0f} s budget",
            f"- torch {h.get('torch', '?')}, CUDA {h.get('cuda', '?')}, astra {h.get('astra', '?')}, "
            f"Python {platform.python_version()}",
            "- synthetic volumes, untrained networks, H = impulse response of AᵀA: memory and speed "
            "only. Memory is torch's peak allocation in GB (10⁹ B); astra's own buffers are not in it.",
            "",
        ]
        for section in dict.fromkeys(r["section"] for r in self.rows):
            lines += [f"## {section}", "", "| case | metric | value | unit | status | note |"]
            lines.append("|---|---|---|---|---|---|")
            for r in self.rows:
                if r["section"] == section:
                    cells = [str(r[k]).replace("|", "/") for k in FIELDS[1:]]
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    import torch

    return gb(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _timed(fn, arg, repeats: int, device) -> tuple[float, object]:
    """Median seconds of ``fn(arg)`` over ``repeats`` calls after one warm-up; the last output."""
    out = fn(arg)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(arg)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ----------------------------------------------------------------------------------- sections
def section_env(rec: Recorder, device, backend: str) -> None:
    import torch

    rec.header.update(card=device_name(device), torch=torch.__version__, cuda=torch.version.cuda)
    try:
        import astra

        rec.header["astra"] = astra.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        rec.header["astra"] = f"not importable ({type(exc).__name__}: {exc})"
    rec.add("env", "device", "name", rec.header["card"])
    rec.add("env", "device", "cone-beam backend", backend)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.add("env", "device", "memory", gb(props.total_memory), "GB")
    rec.add(
        "env", "software", "versions", f"torch {torch.__version__}, astra {rec.header['astra']}"
    )


def section_tests(rec: Recorder, tiny: bool, timeout_s: float) -> None:
    if tiny:
        rec.add("tests", "pytest -m gpu", "run", "", status="skipped", note="--tiny (no CUDA)")
        return
    root = Path(__file__).resolve().parents[3]
    log = rec.out_dir / "pytest_gpu.txt"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider"]
    cmd += ["--continue-on-collection-errors"]  # a module needing ITK or Snakemake must not stop it
    cmd += [str(root / "tests")]
    try:
        proc = subprocess.run(
            cmd, cwd=root, capture_output=True, text=True, timeout=max(30.0, timeout_s)
        )
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"{exc.stdout or ''}\n(timeout after {timeout_s:.0f} s)", "timeout"
    atomic_write_text(log, text if isinstance(text, str) else text.decode())
    tail = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["(no output)"]
    status = "ok" if rc == 0 else f"rc {rc}"
    rec.add(
        "tests",
        "pytest -m gpu",
        "summary",
        tail[0].strip("= "),
        status=status,
        note="full log: pytest_gpu.txt",
    )
    for ln in text.splitlines():
        if ln.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL")):
            word, _, name = ln.partition(" ")
            rec.add("tests", name.split(" - ")[0][:120], "result", word.lower())


def _rtk_reference(n: int, views: int):
    """x, y, A x and Aᵀ y of the Walnut-like geometry at ``n``³ with RTK (CPU, needs ITK)."""
    import torch

    physics = walnut_physics(n, views, "rtk", "cpu")
    x = ball_phantom(n, "cpu")
    y = torch.rand((1, *physics.meas_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ax = physics.A(x)
        return dict(
            n=n, views=views, x=x, y=y, Ax=ax, ATy=physics.A_adjoint(y), ATAx=physics.A_adjoint(ax)
        )


def write_reference(path: Path, n: int, views: int) -> None:
    """Save the RTK reference of the agreement check (run where ITK is installed)."""
    from unroll3d.utils import atomic_torch_save

    atomic_torch_save(_rtk_reference(n, views), path)
    print(f"wrote RTK reference {n}³, {views} views, to {path}")


def section_projector(rec, device, backend, prof, reference: Path | None) -> None:
    import torch

    for n in prof["projector_sizes"]:
        if rec.left() < 20:
            rec.add("projector", f"{n}³", "all", "", status="skipped", note="time budget")
            continue
        case = f"{n}³, {prof['views']} views"
        physics = walnut_physics(n, prof["views"], backend, device)
        case += f", detector {physics.det_shape[0]}×{physics.det_shape[1]}"
        g = torch.Generator().manual_seed(0)
        x = torch.rand((1, 1, n, n, n), generator=g).to(device)
        y = torch.rand((1, *physics.meas_shape), generator=g).to(device)
        with torch.no_grad():
            _free(device)
            t_a, ax = _timed(physics.A, x, prof["repeats"], device)
            t_at, aty = _timed(physics.A_adjoint, y, prof["repeats"], device)
            lhs, rhs = (
                float((ax.double() * y.double()).sum()),
                float((x.double() * aty.double()).sum()),
            )
            rec.add(
                "projector",
                case,
                "adjointness: relative gap of ⟨Ax,y⟩ and ⟨x,Aᵀy⟩",
                abs(lhs - rhs) / abs(lhs),
            )
            rec.add("projector", case, "A time", t_a, "s")
            rec.add("projector", case, "Aᵀ time", t_at, "s")
            del ax, aty
            t0 = time.perf_counter()
            rec_fdk = physics.fdk(physics.A(x))
            _sync(device)
            rec.add("projector", case, "A then FDK time", time.perf_counter() - t0, "s")
            del rec_fdk
            if device.type == "cuda":
                rec.add("projector", case, "peak memory (torch)", _peak_gb(device), "GB")
        del physics, x, y
        _free(device)
    _agreement(rec, device, backend, prof, reference)


def _agreement(rec, device, backend, prof, reference: Path | None, use_rtk: bool = True) -> None:
    """Relative difference of this backend's A x and Aᵀ y to RTK's on the same geometry (RTK
    in-process when ``use_rtk`` and ITK imports, else the ``reference`` file)."""
    import torch

    n, views = prof["agreement_size"], prof["views"]
    case = f"{backend} vs RTK, {n}³, {views} views"
    ref, how = None, ""
    try:
        if not use_rtk:
            raise ImportError("RTK not asked for")
        ref, how = _rtk_reference(n, views), "RTK in-process"
    except ImportError as exc:  # no ITK on this machine: fall back to the file
        how = f"RTK not importable here ({exc})"
        if reference is not None and Path(reference).exists():
            ref, how = torch.load(reference, weights_only=True), f"reference file {reference}"
            if (ref.get("n"), ref.get("views")) != (n, views) or "ATAx" not in ref:
                rec.add(
                    "projector",
                    case,
                    "agreement",
                    "",
                    status="failed",
                    note=f"{reference} is for {ref.get('n')}³/{ref.get('views')} views or "
                    "predates the smooth-data check: rerun tools/device/prepare.sh",
                )
                return
    if ref is None:
        rec.add("projector", case, "agreement", "", status="not measured", note=how)
        return
    physics = walnut_physics(n, views, backend, device)
    with torch.no_grad():
        ax = physics.A(ref["x"].to(device)).cpu()
        atax = physics.A_adjoint(ref["Ax"].to(device)).cpu()
        aty = physics.A_adjoint(ref["y"].to(device)).cpu()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    # Bounds: both forward projectors integrate the same rays (0.18% apart on an H200); astra's
    # back projector is not the transpose of its own forward one (3.1% adjointness gap at the
    # Walnut geometry), so its agreement with RTK's exact transpose is bounded above that gap.
    for metric, value, tol in (
        ("‖A x − A_rtk x‖/‖A_rtk x‖ (phantom)", rel(ax, ref["Ax"]), 0.02),
        ("‖Aᵀy − Aᵀ_rtk y‖/‖Aᵀ_rtk y‖ (y = A_rtk x, smooth)", rel(atax, ref["ATAx"]), 0.05),
    ):
        rec.add(
            "projector",
            case,
            metric,
            value,
            status="ok" if value < tol else "failed",
            note=f"{how}; tolerance {tol}",
        )
    # white-noise y: astra's voxel-driven BP is not the exact adjoint of its ray-driven FP (the
    # adjointness rows above), and RTK's is; the gap shows at high frequencies. Recorded, no bound.
    rec.add(
        "projector",
        case,
        "‖Aᵀy − Aᵀ_rtk y‖/‖Aᵀ_rtk y‖ (y white noise)",
        rel(aty, ref["ATy"]),
        status="info",
        note=f"{how}; mismatched FP/BP pair, no bound",
    )


def _impulse_H(physics, img, lipschitz: float, device, setting: str):
    """A :class:`NormalFit` whose λ is AᵀA's impulse response (cost as a fitted H's); ``img`` is
    ``(C, D, H, W)`` or a cube's side."""
    import torch

    from unroll3d.normal import NormalFit, padded_grid
    from unroll3d.normal.fit import _impulse_filter

    img = (1, img, img, img) if isinstance(img, int) else tuple(img)
    grid = padded_grid(img[1:])
    lam = _impulse_filter(physics, img, grid, lipschitz, device)
    return NormalFit(
        lam,
        torch.ones(img[1:], device=device),
        img,
        grid=grid,
        scaling=lipschitz,
        meta={"setting": setting},
    )


def section_normal_step(rec, device, backend, prof) -> None:
    from unroll3d.bench.normal import bench_one

    n, p = prof["volume"], prof["normal_patch"]
    if rec.left() < 30:
        rec.add("normal_step", f"{p}³ in {n}³", "all", "", status="skipped", note="time budget")
        return
    physics = walnut_physics(n, prof["views"], backend, device)
    rows = bench_one(
        n,
        p,
        prof["views"],
        iters=prof["repeats"],
        warmup=1,
        device=device,
        backward=True,
        physics=physics,
    )
    case = f"{p}³ patch in {n}³, {prof['views']} views, with backward"
    for r in rows:
        rec.add(
            "normal_step",
            case,
            f"{r['method']} data step",
            r["it_per_s"],
            "it/s",
            note="paper §6.4: exact 4.19, H 12.5 it/s",
        )
    rec.add(
        "normal_step",
        case,
        "H / exact speed-up",
        rows[-1]["speedup_H_vs_exact"],
        "×",
        status="ok" if rows[-1]["speedup_H_vs_exact"] >= 3 else "below 3×",
        note="issue target ≥ 3× (paper 2.98×)",
    )
    del physics
    _free(device)


def _job_config(prof) -> dict:
    return {
        "cbct": {"K": prof["K"], "patch_size": list(prof["patch"]), "stride": None},
        "mri": {"K": prof["mri_K"], "patch_size": list(prof["mri_patch"]), "stride": None},
        "model": {"channels": list(prof["channels"]), "blocks": prof["blocks"]},
        "train": {"bf16": False},
        "evaluate": {"refine": True},
    }


_SAMPLES: dict = {}


def _sample(n, prof, backend, device):
    """Synthetic Walnut-geometry sample on ``device`` with x0 = FDK(y) and ‖A‖² (the last size's
    is kept, so partition, partition-H and inference share one 501³ sample)."""
    import torch

    key = (n, prof["views"], backend, str(device))
    if key in _SAMPLES:
        return _SAMPLES[key]
    _SAMPLES.clear()

    from unroll3d.data.sample import Sample
    from unroll3d.physics import sqnorm

    physics = walnut_physics(n, prof["views"], backend, device)
    x = ball_phantom(n, device)
    with torch.no_grad():
        y = physics.A(x)
        x0 = physics.fdk(y)
    lip = sqnorm(physics, img_size=(1, n, n, n), device=device, rtol=1e-3, max_iter=30)
    meta = {"setting": f"v{prof['views']}", "op_norm_sq": lip, "volume": "synthetic"}
    _SAMPLES[key] = (Sample(x, y, physics, meta), x0, lip)
    return _SAMPLES[key]


def _mri_sample(shape, prof, device):
    """Synthetic multi-coil MRI sample (smooth coil maps, seeded Poisson-disc mask) on
    ``device``, with x0 = Aᴴy (zero-filled) and ‖A‖²."""
    import torch

    from unroll3d.data.sample import Sample
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask, rss_normalize, sqnorm

    d, h, w = shape
    coils, R = prof["mri_coils"], prof["mri_R"]
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    maps = []
    for c in range(coils):
        a = 2 * math.pi * c / coils
        centre = (0.0, 1.2 * math.cos(a), 1.2 * math.sin(a))
        r2 = sum((g - c0) ** 2 for g, c0 in zip(grid, centre, strict=True))
        maps.append(torch.exp(-r2) * torch.exp(1j * a * torch.ones_like(r2)))
    maps = rss_normalize(torch.stack(maps)[None].to(torch.complex64))[0]
    mask = poisson_disc_mask((h, w), R, calib=max(2, h // 12), seed=0)
    physics = MultiCoilMRI3D(mask, maps, (d, h, w)).to(device)
    x = torch.cat([ball_phantom(max(shape), device)[..., :d, :h, :w]] * 2, dim=1)
    x[:, 1] *= 0.0
    with torch.no_grad():
        y = physics.A(x)
        x0 = physics.A_adjoint(y)
    lip = sqnorm(physics, img_size=(2, d, h, w), device=device, rtol=1e-3, max_iter=30)
    meta = {"setting": f"R{R}", "op_norm_sq": lip, "volume": "synthetic"}
    return Sample(x, y, physics, meta), x0, lip


def _train_case(
    rec, variant, task, size, prof, backend, device, config, bf16=False, checkpoint=False
) -> str:
    """One training micro-step of ``variant`` on a synthetic ``size`` volume: memory, time
    (``checkpoint``: gradient checkpointing per unrolled iteration)."""
    from unroll3d.engine.core import physics_for, time_train_steps
    from unroll3d.models import build_variant
    from unroll3d.variants import variant_spec

    spec = variant_spec(variant)
    train = {"bf16": bool(bf16), "checkpoint_unrolled": "all" if checkpoint else "none"}
    config = {**config, "train": {**config["train"], **train}}
    if task == "cbct":
        sample, x0, lip = _sample(size, prof, backend, device)
        shape, patch, K = (size,) * 3, prof["patch"], prof["K"]
    else:
        sample, x0, lip = _mri_sample(size, prof, device)
        shape, patch, K = tuple(size), prof["mri_patch"], prof["mri_K"]
    H = None
    if spec.use_H:
        H = _impulse_H(
            sample.physics, tuple(sample.x.shape[1:]), lip, device, sample.meta["setting"]
        )
    model = build_variant(variant, task, config, lipschitz=lip, device=device)
    physics = physics_for(sample, spec, H, lip)
    _free(device)
    base = _peak_gb(device)
    stats = time_train_steps(
        model, spec, task, config, sample, physics, x0, H, prof["steps"], device
    )
    case = f"{variant}, {task} {'×'.join(map(str, shape))}" + (
        f", patch {'×'.join(map(str, patch))}" if spec.partition else ", whole volume"
    )
    precision = "bf16 network" if bf16 else "fp32"
    precision += ", channels_last_3d" if config["train"].get("channels_last") else ""
    precision += ", cudnn.benchmark" if config["train"].get("cudnn_benchmark") else ""
    precision += ", checkpointed iterations" if checkpoint else ""
    note = f"K={K}, DRUNet {prof['channels']}×{prof['blocks']}, {precision}, batch 1"
    if stats["status"] == "ok":
        rec.add(
            "train",
            case,
            "peak memory",
            stats["peak_memory_gb"],
            "GB",
            note=f"{note}; held before the step {base or 0:.2f} GB",
        )
        rec.add("train", case, "time per micro-step", stats["step_time_s"], "s", note=note)
    else:
        rec.add(
            "train",
            case,
            "peak memory",
            stats["peak_memory_gb"],
            "GB",
            status="oom",
            note=f"{note}; {stats['message']}",
        )
    del H, model, physics, sample, x0
    if task != "cbct" or size != prof["volume"]:
        _SAMPLES.clear()
    _free(device)
    return stats["status"]


def section_train(rec, device, backend, prof) -> None:
    config = _job_config(prof)
    for n in prof["train_sizes"]:
        if rec.left() < 40:
            rec.add("train", f"unrolled, {n}³", "all", "", status="skipped", note="time budget")
            break
        if _train_case(rec, "unrolled", "cbct", n, prof, backend, device, config) == "oom":
            break
    for variant in ("partition", "partition-H"):
        if rec.left() < 40:
            rec.add(
                "train",
                f"{variant}, {prof['volume']}³",
                "all",
                "",
                status="skipped",
                note="time budget",
            )
            continue
        _train_case(rec, variant, "cbct", prof["volume"], prof, backend, device, config)


def section_train_mri(rec, device, backend, prof) -> None:
    """MRI at the data set's size (256 × 218 × 170, 12 coils, K = 5): full-volume unrolled in
    fp32 and with the bf16 network, each without and with gradient checkpointing per iteration
    (Table 2: 75.93 GB on an 80 GB card), then partition and partition-H with the paper's MRI
    patch."""
    config = _job_config(prof)
    shape = tuple(prof["mri_shape"])
    cases = [("unrolled", bf16, ckpt) for ckpt in (False, True) for bf16 in (False, True)]
    cases += [("partition", False, False), ("partition-H", False, False)]
    for variant, bf16, ckpt in cases:
        if rec.left() < 30:
            rec.add("train", f"{variant}, mri", "all", "", status="skipped", note="time budget")
            continue
        _train_case(rec, variant, "mri", shape, prof, backend, device, config, bf16, ckpt)


def section_inference(rec, device, backend, prof, min_left_s: float) -> None:
    import torch

    from unroll3d.engine.core import physics_for, reconstruct
    from unroll3d.models import build_variant
    from unroll3d.partition import patch_grid
    from unroll3d.variants import variant_spec

    n = prof["volume"]
    case = f"partition-H, {n}³, patch {'×'.join(map(str, prof['patch']))}, refinement on"
    if rec.left() < min_left_s:
        rec.add(
            "inference",
            case,
            "all",
            "",
            status="skipped",
            note=f"time budget ({rec.left():.0f} s left, needs ~{min_left_s:.0f} s)",
        )
        return
    config = _job_config(prof)
    spec = variant_spec("partition-H")
    sample, x0, lip = _sample(n, prof, backend, device)
    H = _impulse_H(sample.physics, tuple(sample.x.shape[1:]), lip, device, sample.meta["setting"])
    model = build_variant("partition-H", "cbct", config, lipschitz=lip, device=device).eval()
    physics = physics_for(sample, spec, H, lip)
    windows = len(patch_grid((1, n, n, n), prof["patch"]))
    _free(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        est = reconstruct(model, spec, "cbct", config, sample, physics, x0, H, refine=True)
    _sync(device)
    rec.add("inference", case, "time", time.perf_counter() - t0, "s", note=f"{windows} windows")
    if device.type == "cuda":
        rec.add("inference", case, "peak memory", _peak_gb(device), "GB")
    ok = bool(torch.isfinite(est).all()) and tuple(est.shape) == tuple(sample.x.shape)
    rec.add("inference", case, "output finite, right shape", ok, status="ok" if ok else "failed")
    del H, model, physics, est
    _SAMPLES.clear()
    _free(device)


# ----------------------------------------------------------------------------------- driver
#: every section in its order (network, train_loop, profile: :mod:`unroll3d.bench.gpu_network`)
ALL_SECTIONS = ["tests", "projector", "normal_step", "network", "train", "train_mri",
                "train_modes", "train_loop", "profile", "inference"]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unroll3d bench gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (RTK)")
    p.add_argument("--out-dir", type=Path, default=Path("results/benchmarks/gpu"))
    p.add_argument("--budget-s", type=float, default=480.0, help="skip what would not fit")
    p.add_argument("--reference", type=Path, help="RTK reference for the agreement check")
    p.add_argument("--write-reference", type=Path, help="write the RTK reference and exit")
    p.add_argument(
        "--sections",
        nargs="+",
        default=ALL_SECTIONS,
        choices=ALL_SECTIONS,
    )
    return p


SECTIONS = {
    "projector": lambda rec, dev, be, prof, a: section_projector(rec, dev, be, prof, a.reference),
    "normal_step": lambda rec, dev, be, prof, a: section_normal_step(rec, dev, be, prof),
    "train": lambda rec, dev, be, prof, a: section_train(rec, dev, be, prof),
    "train_mri": lambda rec, dev, be, prof, a: section_train_mri(rec, dev, be, prof),
    **network_sections(sys.modules[__name__]),
    "inference": lambda rec, dev, be, prof, a: section_inference(
        rec, dev, be, prof, 5.0 if a.tiny else 150.0
    ),
}


def run(args: argparse.Namespace) -> int:
    """Every section in turn; a failing section is recorded and the next one runs."""
    import torch

    prof = PROFILES["tiny" if args.tiny else "gpu"]
    if args.write_reference:
        write_reference(args.write_reference, prof["agreement_size"], prof["views"])
        return 0
    if not args.tiny and not torch.cuda.is_available():
        build_parser().error("no CUDA device: run on a GPU, or use --tiny for the CPU toy check")
    device = torch.device("cpu" if args.tiny else "cuda")
    backend = "rtk" if args.tiny else "astra"
    rec = Recorder(args.out_dir, args.budget_s, "tiny (CPU)" if args.tiny else "gpu")
    torch.manual_seed(0)
    failures = 0
    for name in ["env", *args.sections]:
        try:
            if name == "env":
                section_env(rec, device, backend)
            elif name == "tests":
                section_tests(rec, args.tiny, min(150.0, rec.left() / 3))
            else:
                SECTIONS[name](rec, device, backend, prof, args)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the rest
            failures += 1
            rec.add(
                name,
                "section",
                "error",
                "",
                status="failed",
                note=f"{type(exc).__name__}: {exc}"[:300],
            )
            traceback.print_exc()
            _free(device)
        rec.write()
    print(f"wrote {rec.out_dir / 'gpu_check.csv'} and {rec.out_dir / 'summary.md'}")
    bad = [r for r in rec.rows if r["status"] == "failed"]
    return 1 if bad or failures else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
