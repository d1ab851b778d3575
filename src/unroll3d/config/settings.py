"""Setting labels (``v30``, ``R5``, ``all``): the settings of a task, which model serves which, and
the settings the sweep evaluates."""

from __future__ import annotations

from unroll3d.config.defaults import section_defaults, train_settings
from unroll3d.variants import variant_spec

__all__ = [
    "SHARED_SETTING", "task_settings", "shares_settings", "model_setting", "model_settings",
    "sweep_settings", "sweep_reuses_main",
]  # fmt: skip


#: the ``{setting}`` of a model trained on every setting of its task
SHARED_SETTING = "all"


def task_settings(config: dict, task: str) -> list[str]:
    """Setting names of a task in the config: ``v30``... (CBCT views) or ``R5``... (MRI)."""
    if task == "cbct":
        return [f"v{int(n)}" for n in config.get("cbct", {}).get("views", [])]
    return [f"R{float(r):g}" for r in config.get("mri", {}).get("accelerations", [])]


def shares_settings(config: dict, variant: str) -> bool:
    """Whether one model of ``variant`` serves every setting of a task: learned variants under
    ``train.share_across_settings`` (docs/paper-notes.md §10: one CBCT model for all view counts, one MRI
    model for both accelerations). Methods without weights (FDK, TV, DPIR) are per setting."""
    return variant_spec(variant).learned and bool(train_settings(config)["share_across_settings"])


def model_setting(config: dict, variant: str, setting: str) -> str:
    """The ``{setting}`` of the model that evaluates ``variant`` under ``setting``."""
    return SHARED_SETTING if shares_settings(config, variant) else setting


def model_settings(config: dict, task: str, label: str) -> list[str]:
    """The settings a model with the ``{setting}`` label ``label`` trains on."""
    return task_settings(config, task) if label == SHARED_SETTING else [label]


def sweep_settings(config: dict, task: str) -> list[str]:
    """Settings the Figs. 7/8 sweep evaluates (its PSNR is their mean, as in the paper): every
    setting when its variant shares one model across settings, else the first."""
    variant = (config.get("sweep") or {}).get("variant", "partition-H")
    sets = task_settings(config, task)
    return sets if shares_settings(config, variant) else sets[:1]


def sweep_reuses_main(config: dict, task: str, patch) -> bool:
    """Whether the sweep's ``patch`` is the main model's: the sweep variant is trained at the
    task's patch size by the main run, so that point reuses its model and evaluations."""
    variant = (config.get("sweep") or {}).get("variant", "partition-H")
    main = {**section_defaults(task), **(config.get(task) or {})}["patch_size"]
    return variant in config.get("variants", []) and [int(p) for p in patch] == [
        int(p) for p in main
    ]
