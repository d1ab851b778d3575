"""The pipeline configuration: load, validate against the schema, fill defaults once, and cut the
sections each job reads.

The schema (``unroll3d/schemas/config.schema.yaml``, package data) is the single source of every
key, its description and its default. The Snakemake workflow validates with it too, and passes
each job only the part of the config that job reads (:func:`job_config`), so editing a report
caption does not rerun training.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from unroll3d.variants import VARIANTS, variant_spec

__all__ = [
    "ConfigError",
    "schema",
    "validate",
    "load_config",
    "section_defaults",
    "train_settings",
    "evaluate_settings",
    "job_config",
    "sweep_job_config",
    "report_config",
    "check_patch_sizes",
    "resolve_patch_size",
    "volume_shape",
    "dumps",
    "JOB_TASK_KEYS",
]

#: Keys of the task section (``cbct``/``mri``) that training and evaluation read.
JOB_TASK_KEYS = ("K", "patch_size", "stride")


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key."""


@cache
def schema() -> dict:
    """The configuration schema (package data)."""
    import yaml

    text = resources.files("unroll3d").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(node: dict, value: Any) -> Any:
    """``value`` with the schema's defaults filled in, recursively, for missing object keys."""
    if not isinstance(value, dict) or node.get("type") != "object":
        return value
    out = dict(value)
    for key, sub in node.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _fill_defaults(sub, out[key])
    return out


def validate(config: dict) -> dict:
    """A copy of ``config`` with defaults filled, after checking it against the schema and the
    variant registry. Raises :class:`ConfigError` naming the offending key."""
    import jsonschema

    filled = _fill_defaults(schema(), config)
    errors = sorted(
        jsonschema.Draft202012Validator(schema()).iter_errors(filled), key=lambda e: list(e.path)
    )
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"config key {where}: {err.message}")
    for name in filled.get("variants", []):
        if name not in VARIANTS:
            raise ConfigError(
                f"config key variants: unknown variant {name!r}; known: {list(VARIANTS)}"
            )
    sweep = filled.get("sweep") or {}
    if sweep.get("variant") is not None:
        spec = VARIANTS.get(sweep["variant"])
        if spec is None or not spec.partition:
            partitioned = [n for n, s in VARIANTS.items() if s.partition and s.learned]
            raise ConfigError(
                f"config key sweep.variant: {sweep['variant']!r} is not a partitioned variant; "
                f"choose one of {partitioned}"
            )
    check_patch_sizes(filled)
    return filled


#: volume shapes of the real data sets (datasets.md): Walnut reconstructions 501³; Calgary-Campinas
#: images (readout, ky, kz) = 256 × 218 × 170.
REAL_VOLUME_SHAPES = {"cbct": (501, 501, 501), "mri": (256, 218, 170)}


def volume_shape(config: dict, task: str) -> tuple[int, int, int]:
    """The (D, H, W) of the task's volumes: the toy size for ``source: toy``, else the data set's."""
    section = config.get(task) or {}
    if section.get("source") == "toy":
        toy = section.get("toy") or section_defaults(task).get("toy") or {}
        if task == "cbct":
            return (int(toy["size"]),) * 3
        return tuple(int(v) for v in toy["shape"])
    return REAL_VOLUME_SHAPES[task]


def resolve_patch_size(patch, shape, key: str = "patch_size") -> list[int]:
    """``patch`` with each ``-1`` / ``None`` entry replaced by the whole axis of ``shape`` (an MRI
    readout slab: ``[12, -1, -1]`` spans the whole ky–kz plane); a ConfigError names ``key`` for
    three entries that are not each ≥ 1 or -1, or that do not fit in ``shape``."""
    shape = [int(n) for n in shape]
    if patch is None or len(patch) != 3:
        raise ConfigError(f"config key {key}: a patch needs 3 entries (D, H, W); got {patch}")
    out = []
    for p, n in zip(patch, shape, strict=True):
        if p is None or (isinstance(p, int) and not isinstance(p, bool) and p == -1):
            out.append(n)
        elif isinstance(p, int) and not isinstance(p, bool) and p >= 1:
            out.append(p)
        else:
            raise ConfigError(
                f"config key {key}: patch entry {p!r} is neither a size ≥ 1 nor -1 (the whole axis)"
            )
    if any(p > n for p, n in zip(out, shape, strict=True)):
        raise ConfigError(
            f"config key {key}: patch {list(patch)} does not fit in volumes of "
            f"{'×'.join(map(str, shape))} voxels"
        )
    return out


def check_patch_sizes(config: dict) -> None:
    """Every patch the run would train (``<task>.patch_size`` and the sweep's) must fit in the
    task's volumes; a ConfigError names the key and both shapes (nothing is clamped later).
    ``-1`` entries (the whole axis) are resolved here, in place, once for every later reader."""
    sweep = config.get("sweep") or {}
    for task in config.get("tasks", []):
        shape = volume_shape(config, task)
        section = config.get(task) or {}
        if section.get("patch_size") is not None:
            section["patch_size"] = resolve_patch_size(
                section["patch_size"], shape, f"{task}.patch_size"
            )
        if sweep.get("enabled") and sweep.get(task):
            sweep[task] = [
                resolve_patch_size(p, shape, f"sweep.{task}[{i}]")
                for i, p in enumerate(sweep[task])
            ]


def load_config(path: str | Path) -> dict:
    """Read a YAML config file, validate it and fill its defaults."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return validate(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def section_defaults(name: str) -> dict:
    """Defaults of one top-level object section (``train``, ``evaluate``, ...) from the schema."""
    node = schema()["properties"][name]
    return _fill_defaults(node, {})


def train_settings(config: dict) -> dict:
    """The ``train`` section with every default filled from the schema."""
    return {**section_defaults("train"), **(config.get("train") or {})}


def train_object(train: dict, key: str) -> dict:
    """An object-valued key of the ``train`` section (``pnp_grid``, ``inr``) with the schema's
    default for every entry left out (sections are merged one level deep only)."""
    return {**section_defaults("train")[key], **(train.get(key) or {})}


def evaluate_settings(config: dict) -> dict:
    """The ``evaluate`` section with every default filled from the schema."""
    return {**section_defaults("evaluate"), **(config.get("evaluate") or {})}


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
        patch = section.get("patch_size") or section_defaults(task)["patch_size"]
        out[task] = {
            key: list(section.get(key, [])),
            "splits": {"test": list((section.get("splits") or {}).get("test", []))},
            "patch_size": [int(p) for p in patch],
        }
    return out


def dumps(config: dict) -> str:
    """Canonical JSON text of a config (sorted keys): what the rules pass as ``--config-json``."""
    return json.dumps(config, sort_keys=True)


#: the ``{setting}`` of a model trained on every setting of its task
SHARED_SETTING = "all"


def task_settings(config: dict, task: str) -> list[str]:
    """Setting names of a task in the config: ``v30``... (CBCT views) or ``R5``... (MRI)."""
    if task == "cbct":
        return [f"v{int(n)}" for n in config.get("cbct", {}).get("views", [])]
    return [f"R{float(r):g}" for r in config.get("mri", {}).get("accelerations", [])]


def shares_settings(config: dict, variant: str) -> bool:
    """Whether one model of ``variant`` serves every setting of a task: learned variants under
    ``train.share_across_settings`` (paper.md §10: one CBCT model for all view counts, one MRI
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
