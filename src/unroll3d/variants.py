"""The variant registry: the one place that says what each method of the tables is.

A variant is a name (``partition-H``, ``tv``, ...) plus everything the rest of the code needs to
know about it: how it reconstructs (``kind``), whether it trains on patches (``partition``),
whether its data step uses the fitted H (``use_H``), whether it has weights (``learned``),
whether its jobs want a GPU (``gpu``), and how tables and figures name and draw it.

This module imports nothing heavy (no torch), so the Snakemake rules, the report and the
library all read the same registry. Adding a variant means one :func:`register` call here and
its model code in :mod:`unroll3d.models` (a builder in ``BUILDERS`` for a new kind), or the same
two in a module of your own named by the config key ``plugins`` (:mod:`unroll3d.plugins`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "VariantSpec",
    "VARIANTS",
    "BUILTIN_VARIANTS",
    "TASKS",
    "register",
    "variant_spec",
    "ablation_variants",
    "needs_H",
]

#: The two tasks of the paper.
TASKS = ("cbct", "mri")


@dataclass(frozen=True)
class VariantSpec:
    """What a variant name means.

    :param str name: the registry key and the ``{variant}`` wildcard.
    :param str kind: ``unrolled``, ``postproc``, ``pnp``, ``inr``, ``dpir``, ``tv``,
        ``analytical`` or ``adjoint``.
    :param bool partition: trained on patches / inferred through ``PartitionedReconstructor``.
    :param bool use_H: the data step uses the fitted diagonal-circulant ``H``.
    :param bool learned: has trainable weights.
    :param bool gpu: its train/evaluate jobs take one GPU (``resources: gpu=1``).
    :param dict label: table row label per task (the paper's wording where it has the row).
    :param dict short: figure panel / legend label per task.
    :param str | None ablation: row label in the ablation table (§6.3), None if not in it.
    :param tuple style: (colour, marker) shared by every figure.
    :param int net_dim: the DRUNet's dimension: 3 (on volumes) or 2 (slice by slice).
    :param bool anchored_H: the patch data step is H anchored at the patch's initial iterate a,
        ``S AᵀA Sᵀ a + s H (x − a)`` (ours, beyond the paper; partitioned variants only).
    """

    name: str
    kind: str
    partition: bool
    use_H: bool
    learned: bool
    gpu: bool = True
    label: dict[str, str] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)
    ablation: str | None = None
    style: tuple[str, str] = ("k", "o")
    net_dim: int = 3
    anchored_H: bool = False

    def label_for(self, task: str) -> str:
        return self.label.get(task, self.name)

    def short_for(self, task: str) -> str:
        return self.short.get(task, self.name)


#: name -> spec, in table order.
VARIANTS: dict[str, VariantSpec] = {}


def register(spec: VariantSpec) -> VariantSpec:
    """Add ``spec`` to :data:`VARIANTS` (a clear error on a duplicate name). Its ``kind`` must
    have a builder in :data:`unroll3d.models.BUILDERS` (checked when a model is built)."""
    if spec.name in VARIANTS:
        raise ValueError(f"variant {spec.name!r} is already registered")
    VARIANTS[spec.name] = spec
    return spec


def _both(text: str) -> dict[str, str]:
    return dict.fromkeys(TASKS, text)


register(VariantSpec(
    "fdk", "analytical", False, False, False, gpu=False,
    label={"cbct": "FDK (analytical)", "mri": "Zero-filled RSS"},
    short={"cbct": "FDK", "mri": "Zero-filled RSS"},
    style=("#7f7f7f", "v"),
))  # fmt: skip
register(VariantSpec(
    "adjoint", "adjoint", False, False, False, gpu=False,
    label={"cbct": "Adjoint Aᵀy", "mri": "Zero-filled (Aᴴy)"},
    short={"cbct": "Aᵀy", "mri": "Zero-filled"},
    style=("#bcbd22", "v"),
))  # fmt: skip
register(VariantSpec(
    "tv", "tv", False, False, False,
    label=_both("TV (variational)"), short=_both("TV"), style=("#8c564b", "^"),
))  # fmt: skip
register(VariantSpec(
    "inr", "inr", False, False, False,
    label=_both("INR[3D]"), short=_both("INR"), style=("#8c6d31", "h"),
))  # fmt: skip
register(VariantSpec(
    "pnp", "pnp", True, False, True,
    label=_both("PnP-αPGD[3D]"), short=_both("PnP-αPGD"), style=("#9467bd", "P"),
))  # fmt: skip
register(VariantSpec(
    "dpir", "dpir", False, False, False,
    label=_both("DPIR[RAM]"), short=_both("DPIR"), style=("#e377c2", "X"),
))  # fmt: skip
register(VariantSpec(
    "postproc", "postproc", True, False, True,
    label=_both("DRUNet[3D] (post-processing)"), short=_both("Post-proc. 3D"),
    style=("#1f77b4", "s"),
))  # fmt: skip
register(VariantSpec(
    "postproc2d", "postproc", True, False, True,
    label=_both("DRUNet[2D] (post-processing)"), short=_both("Post-proc. 2D"),
    style=("#17becf", "p"), net_dim=2,
))  # fmt: skip
register(VariantSpec(
    "unrolled", "unrolled", False, False, True,
    label=_both("Unrolled[3D] (standard)"), short=_both("Unrolled"),
    ablation="Unrolled[3D] (no partitioning, exact operator)", style=("#2ca02c", "D"),
))  # fmt: skip
register(VariantSpec(
    "unrolled-H", "unrolled", False, True, True,
    label=_both("Unrolled[3D] + H"), short=_both("Unrolled + H"),
    ablation="+ Approx only", style=("#98df8a", "d"),
))  # fmt: skip
register(VariantSpec(
    "partition", "unrolled", True, False, True,
    label={"cbct": "Unrolled[3D] + partition (exact)",
           "mri": "Unrolled[3D] + partition (paper: ours)"},
    short={"cbct": "Partition", "mri": "Partition*"},
    ablation="+ Partitioning only", style=("#ff7f0e", "o"),
))  # fmt: skip
register(VariantSpec(
    "partition-H", "unrolled", True, True, True,
    label={"cbct": "Unrolled[3D] + partition + H (paper: ours)",
           "mri": "Unrolled[3D] + partition + H"},
    short={"cbct": "Partition + H*", "mri": "Partition + H"},
    ablation="+ Partitioning + Approx", style=("#d62728", "*"),
))  # fmt: skip

register(VariantSpec(
    "partition-Ha", "unrolled", True, True, True,
    label=_both("Unrolled[3D] + partition + anchored H (ours, beyond the paper)"),
    short=_both("Partition + anchored H"), style=("#e6550d", "*"), anchored_H=True,
))  # fmt: skip

#: the package's own variants (a plugin's are registered after this line has run)
BUILTIN_VARIANTS = frozenset(VARIANTS)


def variant_spec(name: str) -> VariantSpec:
    """The :class:`VariantSpec` of ``name``; a clear error lists the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}") from None


def needs_H(name: str) -> bool:
    """Whether the variant's jobs need the fitted normal operator as an input."""
    return variant_spec(name).use_H


def ablation_variants() -> list[str]:
    """The ablation table's rows (§6.3), in registry order."""
    return [name for name, spec in VARIANTS.items() if spec.ablation is not None]
