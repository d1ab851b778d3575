"""Names shared by the report: its tables and figures, the labels and styles of the variants
(read from the registry, :mod:`unroll3d.variants`), the metric conventions, ReportError."""

from __future__ import annotations

import logging

from unroll3d.variants import TASKS, VARIANTS

__all__ = [
    "FIGURES",
    "SWEEP_FIGURE",
    "TABLES",
    "TASKS",
    "TASK_TITLE",
    "DEFAULT_METRIC_CONVENTION",
    "REPORT_DEFAULTS",
    "ReportError",
    "ablation_label",
    "method_label",
    "short_label",
    "variant_style",
]

log = logging.getLogger("unroll3d.report")

TABLES = ("table1_cbct", "table2_mri", "table_ablation", "table_datastep", "claims")
FIGURES = (
    "fig1_data_vs_network",
    "fig2_partition_schematic",
    "fig_normal_cbct",
    "fig_normal_mri",
    "fig_slices_cbct",
    "fig_slices_mri",
    "fig_psnr_vs_setting",
    "fig_partition_memory",
    "fig7_patch_sweep_cbct",
    "fig8_patch_sweep_mri",
)
SWEEP_FIGURE = {"cbct": "fig7_patch_sweep_cbct", "mri": "fig8_patch_sweep_mri"}
TASK_TITLE = {"cbct": "Walnut-CBCT", "mri": "MC-MRI"}
DEFAULT_METRIC_CONVENTION = {
    "cbct": "PSNR/SSIM on the prior-work crop (slices 100–400, [100:400, 100:400]) clipped at 0, "
    "fixed data range (docs/paper-notes.md §10)",
    "mri": "PSNR/SSIM on magnitude images over the whole volume, data range = ground-truth max "
    "per volume (docs/paper-notes.md §10)",
}
REPORT_DEFAULTS = {
    "qualitative_volume": None,
    "qualitative_setting": None,
    "inset_center": [0.5, 0.5],
    "inset_size": 0.25,
}


class ReportError(RuntimeError):
    """A requested table cell or input file is missing or malformed."""


def method_label(task: str, variant: str) -> str:
    """Table row label (the paper's wording where it has the row); the name if unregistered."""
    spec = VARIANTS.get(variant)
    return spec.label_for(task) if spec else variant


def short_label(task: str, variant: str) -> str:
    """Figure panel / legend label."""
    spec = VARIANTS.get(variant)
    return spec.short_for(task) if spec else variant


def ablation_label(variant: str) -> str:
    """Row label of the ablation table (§6.3)."""
    spec = VARIANTS.get(variant)
    return spec.ablation if spec and spec.ablation else variant


def variant_style(variant: str, default: tuple[str, str] = ("k", "o")) -> tuple[str, str]:
    """(colour, marker) of a variant, shared by every figure."""
    spec = VARIANTS.get(variant)
    return spec.style if spec else default
