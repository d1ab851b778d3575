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

import traceback
from collections.abc import Sequence
from pathlib import Path

from unroll3d.bench.gpu_env import section_env, section_tests
from unroll3d.bench.gpu_inference import section_inference
from unroll3d.bench.gpu_network import network_sections
from unroll3d.bench.gpu_projector import section_projector, write_reference
from unroll3d.bench.gpu_recorder import Recorder, free, mode_device, profiles
from unroll3d.bench.gpu_train import section_normal_step, section_train, section_train_mri

#: sizes of each mode. ``train_sizes``: full-volume unrolled until OOM; ``patch``: the paper's
#: CBCT patch (config/config.yaml); ``model``: DRUNet widths/blocks and K.
PROFILES = profiles(  # each size: (gpu, tiny)
    projector_sizes=([128, 501], [16]),
    views=(30, 6),
    agreement_size=(32, 12),
    volume=(501, 24),
    normal_patch=(128, 12),
    train_sizes=([64, 96, 128, 160, 192, 224, 256], [12, 16]),
    patch=([8, 384, 384], [4, 12, 12]),
    channels=([64, 128, 256, 512], [4, 8, 8, 8]),
    blocks=(4, 1),
    K=(3, 2),
    steps=(2, 1),
    repeats=(3, 1),
    mri_shape=([256, 218, 170], [8, 12, 10]),
    mri_coils=(12, 2),
    mri_R=(5, 2),
    mri_K=(5, 2),
    mri_patch=([8, 128, 128], [4, 8, 8]),
)


#: every section in its order (network, train_loop, profile: :mod:`unroll3d.bench.gpu_network`)
ALL_SECTIONS = ["tests", "projector", "normal_step", "network", "train", "train_mri",
                "train_modes", "train_loop", "profile", "inference"]  # fmt: skip


#: section -> f(rec, device, backend, profile, tiny, reference)
SECTIONS = {
    "projector": lambda rec, dev, be, prof, tiny, ref: section_projector(rec, dev, be, prof, ref),
    "normal_step": lambda rec, dev, be, prof, tiny, ref: section_normal_step(rec, dev, be, prof),
    "train": lambda rec, dev, be, prof, tiny, ref: section_train(rec, dev, be, prof),
    "train_mri": lambda rec, dev, be, prof, tiny, ref: section_train_mri(rec, dev, be, prof),
    **network_sections(),
    "inference": lambda rec, dev, be, prof, tiny, ref: section_inference(
        rec, dev, be, prof, 5.0 if tiny else 150.0
    ),
}


def run_gpu_check(
    *,
    tiny: bool = False,
    out_dir: str | Path,
    budget_s: float,
    reference: str | Path | None = None,
    sections: Sequence[str] = ALL_SECTIONS,
) -> int:
    """Every section in turn (``env`` first); a failing section is recorded and the next one
    runs. ``tiny``: toy sizes on the CPU (RTK). Returns 1 when a row or a section failed."""
    import torch

    prof = PROFILES["tiny" if tiny else "gpu"]
    device = mode_device(tiny)
    backend = "rtk" if tiny else "astra"
    reference = Path(reference) if reference is not None else None
    rec = Recorder(Path(out_dir), budget_s, "tiny (CPU)" if tiny else "gpu")
    torch.manual_seed(0)
    failures = 0
    for name in ["env", *sections]:
        try:
            if name == "env":
                section_env(rec, device, backend)
            elif name == "tests":
                section_tests(rec, tiny, min(150.0, rec.left() / 3))
            else:
                SECTIONS[name](rec, device, backend, prof, tiny, reference)
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
            free(device)
        rec.write()
    print(f"wrote {rec.out_dir / 'gpu_check.csv'} and {rec.out_dir / 'summary.md'}")
    bad = [r for r in rec.rows if r["status"] == "failed"]
    return 1 if bad or failures else 0


def write_agreement_reference(path: str | Path, tiny: bool) -> None:
    """The RTK reference of the agreement check, at the profile's size and views."""
    prof = PROFILES["tiny" if tiny else "gpu"]
    write_reference(Path(path), prof["agreement_size"], prof["views"])
