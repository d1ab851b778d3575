"""The part of a config each job reads (:func:`job_config`, :func:`fit_normal_config`,
:func:`report_config`), defaults filled, so that editing any other key reruns none of that job;
:func:`dumps` is the JSON text the rules pass as ``--config-json``."""

from __future__ import annotations

import copy
import json

from unroll3d.config.defaults import (
    ConfigError,
    evaluate_settings,
    fill_defaults,
    schema,
    section_defaults,
    train_settings,
)

__all__ = [
    "JOB_TASK_KEYS", "FIT_NORMAL_KEYS", "job_config", "fit_normal_config", "sweep_job_config",
    "report_config", "dumps",
]  # fmt: skip

#: Keys of the task section (``cbct``/``mri``) that training and evaluation read.
JOB_TASK_KEYS = ("K", "patch_size", "stride")
#: Keys of the ``normal`` section that ``unroll3d fit-normal`` reads (with the root ``seed``).
FIT_NORMAL_KEYS = ("steps", "lr", "lr_schedule", "plateau", "eval_every", "floor_rows", "batch",
                   "heldout", "checkpoint_every", "grid")  # fmt: skip


def job_config(config: dict, task: str) -> dict:
    """The part of ``config`` that ``unroll3d train`` / ``unroll3d evaluate`` read for ``task``:
    ``seed``, ``model``, ``train``, ``evaluate``, the task's ``K``, ``patch_size`` and
    ``stride`` and, for MRI, ``normal.mri_h``, defaults filled. Keys outside it (splits, views,
    report, sweep, benchmarks, the config's name) never reach these jobs, so changing them
    reruns none of them."""
    if task not in ("cbct", "mri"):
        raise ConfigError(f"unknown task {task!r}; known: ['cbct', 'mri']")
    task_cfg = {**section_defaults(task), **(config.get(task) or {})}
    model = {**section_defaults("model"), **(config.get("model") or {})}
    out = {
        "seed": int(config.get("seed", 0)),
        "model": model,
        "train": _own_task_keys(train_settings(config), task),
        "evaluate": _own_task_keys(evaluate_settings(config), task),
        task: {k: task_cfg.get(k) for k in JOB_TASK_KEYS},
    }
    if task == "mri":  # which H the MRI H variants use (CBCT jobs never read it)
        normal = {**section_defaults("normal"), **(config.get("normal") or {})}
        out["normal"] = {"mri_h": normal["mri_h"]}
    return out


def _own_task_keys(section: dict, task: str) -> dict:
    """``section`` without the keys meant for the other task (``cbct_crop`` for an MRI job)."""
    others = [t for t in ("cbct", "mri") if t != task]
    return {k: v for k, v in section.items() if not any(k.startswith(f"{o}_") for o in others)}


def fit_normal_config(config: dict) -> dict:
    """The part of ``config`` that ``unroll3d fit-normal`` reads: ``seed`` and the
    :data:`FIT_NORMAL_KEYS` of ``normal``, defaults filled. The other ``normal`` keys choose which
    fits run and where H is used, not how a fit runs, so changing them reruns no fit."""
    normal = fill_defaults(schema()["properties"]["normal"], config.get("normal") or {})
    return {"seed": int(config.get("seed", 0)), "normal": {k: normal[k] for k in FIT_NORMAL_KEYS}}


def sweep_job_config(config: dict, task: str, patch: list[int]) -> dict:
    """:func:`job_config` with the task's patch size replaced (the Figs. 7/8 sweep)."""
    out = job_config(config, task)
    out[task]["patch_size"] = [int(p) for p in patch]
    return out


def report_config(config: dict) -> dict:
    """The part of ``config`` the report (tables and figures) reads: the name, tasks, variants,
    each task's settings, test split and patch size, whether models are shared across settings,
    the sweep, the benchmarks switch and the ``report`` section (the last four decide where the
    sweep's points come from). Other training, model and data keys are left out, so editing
    them does not re-render the report by itself (their effect reaches it through the
    evaluation files)."""
    share = bool(train_settings(config)["share_across_settings"])
    out = {
        "name": config.get("name"),
        "tasks": list(config.get("tasks", [])),
        "variants": list(config.get("variants", [])),
        "train": {"share_across_settings": share},
        "sweep": copy.deepcopy(config.get("sweep") or {}),
        "benchmarks": {"enabled": bool((config.get("benchmarks") or {}).get("enabled", True))},
        "report": copy.deepcopy(config.get("report") or {}),
    }
    for task, key in (("cbct", "views"), ("mri", "accelerations")):
        section = config.get(task) or {}
        patch = {**section_defaults(task), **section}["patch_size"]
        out[task] = {
            key: list(section.get(key, [])),
            "splits": {"test": list((section.get("splits") or {}).get("test", []))},
            "patch_size": [int(p) for p in patch],
        }
    return out


def dumps(config: dict) -> str:
    """Canonical JSON text of a config (sorted keys): what the rules pass as ``--config-json``."""
    return json.dumps(config, sort_keys=True)
