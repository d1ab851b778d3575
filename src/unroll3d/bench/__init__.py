"""Memory and speed benchmarks, one module each, run as ``unroll3d bench <name> ...`` by the
workflow's ``bench_*`` rules (outputs under ``results/benchmarks/``).

Each module exposes a typed ``run_<name>(...)`` (keyword arguments; it writes the outputs and
returns the rows); its options live in :mod:`unroll3d.cli.bench`, which imports a module only
when its benchmark runs, so ``unroll3d bench --help`` loads no torch. The config values the
workflow's benchmark rules pass are in :mod:`unroll3d.bench.settings`. Memory is in GB (10⁹ B)
everywhere: ``peak_memory_gb`` and friends (:mod:`unroll3d.bench.memory`). ``unroll3d bench
<name>`` is each benchmark's one entry point; ``benchmarks/`` holds only what is not a library
benchmark (timing ``make smoke``, comparing two runs) and the dated measurements.
"""

from __future__ import annotations

#: name -> (module, one-line summary)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "steps": ("unroll3d.bench.steps", "Fig. 1: data step vs network step, time and memory"),
    "physics": ("unroll3d.bench.physics", "forward/adjoint time and memory of each operator"),
    "partition": ("unroll3d.bench.partition", "training-step memory: partitioned vs full volume"),
    "normal": ("unroll3d.bench.normal", "§6.4 patch data step: exact S AᵀA Sᵀ vs cropped H"),
    "normal_floor": (
        "unroll3d.bench.normal_floor",
        "error floor of one diagonal-circulant H on cone-beam AᵀA vs the Adam fit",
    ),
    "normal_transfer": (
        "unroll3d.bench.normal_transfer",
        "held-out error of one fitted H on other samples and fresh masks (H per sample?)",
    ),
    "inr": ("unroll3d.bench.inr", "INR[3D] baseline: time, memory and PSNR of one hash-grid fit"),
    "study": (
        "unroll3d.bench.study",
        "make study: accuracy gaps of the ablation against training length and volume size",
    ),
    "cost": ("unroll3d.bench.cost", "estimated GPU hours of a configuration's DAG, per rule"),
    "precision_ab": (
        "unroll3d.bench.precision_ab",
        "accuracy A/B of the network modes: fp32 vs bf16 + channels_last, same training",
    ),
    "gpu_check": (
        "unroll3d.bench.gpu_check",
        "make gpu-check: GPU tests, astra, H vs exact, training and inference memory/speed",
    ),
    "accuracy": (
        "unroll3d.bench.accuracy",
        "where H costs accuracy: exact vs H refinement, H's error on the iterates, α-mixing",
    ),
    "gpu_accuracy": (
        "unroll3d.bench.gpu_accuracy",
        "make gpu-accuracy: H error/gradient ratio at the paper's size, partition vs partition-H",
    ),
}
