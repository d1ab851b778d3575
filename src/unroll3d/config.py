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
import math
import numbers
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from unroll3d.plugins import load as load_plugins
from unroll3d.variants import VARIANTS, variant_spec

__all__ = [
    "ConfigError", "schema", "validate", "load_config", "section_defaults", "train_settings",
    "evaluate_settings", "job_config", "sweep_job_config", "fit_normal_config", "report_config",
    "check_patch_sizes", "check_values", "read_yaml", "validate_partial", "config_from_json",
    "job_config_from_json", "resolve_patch_size", "volume_shape", "dumps", "JOB_TASK_KEYS",
    "FIT_NORMAL_KEYS", "fill_defaults",
]  # fmt: skip

#: Keys of the task section (``cbct``/``mri``) that training and evaluation read.
JOB_TASK_KEYS = ("K", "patch_size", "stride")
#: Keys of the ``normal`` section that ``unroll3d fit-normal`` reads (with the root ``seed``).
FIT_NORMAL_KEYS = ("steps", "lr", "lr_schedule", "plateau", "eval_every", "floor_rows", "batch",
                   "heldout", "checkpoint_every", "grid")  # fmt: skip


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key."""


@cache
def schema() -> dict:
    """The configuration schema (package data)."""
    import yaml

    text = resources.files("unroll3d").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def fill_defaults(node: dict, value: Any) -> Any:
    """``value`` with the schema's defaults filled in, recursively, for missing object keys."""
    if not isinstance(value, dict) or node.get("type") != "object":
        return value
    out = dict(value)
    for key, sub in node.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(sub, out[key])
    return out


def validate(config: dict) -> dict:
    """A copy of ``config`` with defaults filled, after checking it against the schema and the
    variant registry. Raises :class:`ConfigError` naming the offending key."""
    import jsonschema

    filled = fill_defaults(schema(), config)
    errors = sorted(
        jsonschema.Draft202012Validator(schema()).iter_errors(filled), key=lambda e: list(e.path)
    )
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"config key {where}: {err.message}")
    load_plugins(filled.get("plugins"))  # their variants join the registry before the check
    if unknown := [n for n in filled.get("variants", []) if n not in VARIANTS]:
        raise ConfigError(f"config key variants: unknown variant {unknown[0]!r}; known: "
                          f"{list(VARIANTS)} (your own? list its module under plugins)")  # fmt: skip
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
    check_values(filled)
    return filled


#: volume shapes of the real data sets: Walnut reconstructions 501³; Calgary-Campinas
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


def resolve_patch_size(patch, shape, key: str = "patch_size") -> tuple[int, ...]:
    """The one normaliser of a patch size, against the spatial ``shape`` it tiles: an int (a
    cube) or one entry per axis, each ≥ 1 or ``-1`` / ``None`` for the whole axis (``[12, -1,
    -1]``: an MRI readout slab). Called where a patch enters, the config (once per key) and the
    partition package's entry; anything else is a one-line ConfigError naming ``key``."""

    def size(v):  # an integer (Python or NumPy; not a bool) as an int, else None
        return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else None

    shape = tuple(int(n) for n in shape)
    patch = (patch,) * len(shape) if size(patch) is not None else patch
    if not isinstance(patch, list | tuple) or len(patch) != len(shape):
        raise ConfigError(f"{key}: a patch needs {len(shape)} entries, one per axis; got {patch}")
    out = []
    for p, n in zip(patch, shape, strict=True):
        whole = p is None or size(p) == -1
        if not whole and (size(p) is None or size(p) < 1):
            raise ConfigError(
                f"{key}: patch entry {p!r} is neither a size ≥ 1 nor -1 (the whole axis)"
            )
        out.append(n if whole else size(p))
    if any(p > n for p, n in zip(out, shape, strict=True)):
        raise ConfigError(
            f"{key}: patch {list(patch)} does not fit in volumes of "
            f"{'×'.join(map(str, shape))} voxels"
        )
    return tuple(out)


def check_patch_sizes(config: dict) -> None:
    """Every patch the run would train (``<task>.patch_size`` and the sweep's) must fit in the
    task's volumes; a ConfigError names the key and both shapes (nothing is clamped later).
    Each is normalised here, in place, once for every later reader (-1: the whole axis)."""
    sweep = config.get("sweep") or {}
    for task in config.get("tasks", []):
        shape = volume_shape(config, task)
        section = config.get(task) or {}
        if section.get("patch_size") is not None:
            key = f"config key {task}.patch_size"
            section["patch_size"] = list(resolve_patch_size(section["patch_size"], shape, key))
        if sweep.get("enabled") and sweep.get(task):
            sweep[task] = [
                list(resolve_patch_size(p, shape, f"config key sweep.{task}[{i}]"))
                for i, p in enumerate(sweep[task])
            ]


def read_yaml(path: str | Path) -> Any:
    """The YAML document of ``path``; a one-line ConfigError naming the file (and the line) for
    a missing, unreadable or malformed file."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}:{where} is not valid YAML ({problem})") from None


def load_config(path: str | Path) -> dict:
    """Read a YAML config file, validate it and fill its defaults."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return validate(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def section_defaults(name: str) -> dict:
    """Defaults of one top-level object section (``train``, ``evaluate``, ...) from the schema."""
    node = schema()["properties"][name]
    return fill_defaults(node, {})


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


# ---- values that pass the schema's types but cannot be meant (checked when a config is loaded)

#: projections of one orbit of the real Walnut scans
REAL_FULL_ORBIT = 1200


def _fail(key: str, problem: str) -> None:
    raise ConfigError(f"config key {key}: {problem}")


def _enabled_tasks(config: dict) -> list[str]:
    """The config's tasks, or (a section cut from a config) the task sections it carries."""
    if config.get("tasks"):
        return [t for t in config["tasks"] if isinstance(config.get(t), dict)]
    return [t for t in ("cbct", "mri") if isinstance(config.get(t), dict)]


def _with_defaults(config: dict, name: str) -> dict | None:
    """Section ``name`` with the schema's defaults, or None when the config does not carry it."""
    section = config.get(name)
    return {**section_defaults(name), **section} if isinstance(section, dict) else None


def _task_volumes(section: dict, task: str) -> dict[str, list[str]]:
    splits = section.get("splits") or {}
    return {
        name: [f"walnut{v}" if task == "cbct" else str(v) for v in splits.get(name) or []]
        for name in ("train", "val", "test")
    }


def _check_stride(config: dict, task: str) -> None:
    """Each stride entry ≤ the patch's, for the task's patch and every patch the sweep trains
    (a larger stride leaves voxels between patches that are never reconstructed)."""
    section = config[task]
    stride = section.get("stride")
    if stride is None:
        return
    if len(stride) != 3:
        _fail(f"{task}.stride", f"a stride needs 3 entries (D, H, W); got {stride}")
    patches = [(f"{task}.patch_size", section.get("patch_size"))]
    sweep = config.get("sweep") or {}
    if sweep.get("enabled"):
        patches += [(f"sweep.{task}[{i}]", p) for i, p in enumerate(sweep.get(task) or [])]
    for key, patch in patches:
        fixed = [p if isinstance(p, int) and p >= 1 else None for p in patch or []]
        if any(p is not None and s > p for s, p in zip(stride, fixed, strict=False)):
            _fail(
                f"{task}.stride",
                f"stride {list(stride)} is larger than the patch {list(patch)} of {key} on some "
                "axis (each entry must be ≤ the patch's, or voxels between patches are never "
                "reconstructed)",
            )


def _calib_samples(radius: float, ny: int, nz: int) -> int:
    """Samples of the centred calibration disc on a ny × nz grid (physics.mri._calib_region)."""
    r2, n = float(radius) ** 2, 0
    for ky in range(ny):
        for kz in range(nz):
            n += (ky - ny // 2) ** 2 + (kz - nz // 2) ** 2 <= r2
    return n


def _check_settings(config: dict, task: str) -> None:
    """Settings once each (a repeat is a duplicated table column), CBCT views within the orbit,
    an MRI calibration disc within each acceleration's sample budget."""
    section = config[task]
    key = "cbct.views" if task == "cbct" else "mri.accelerations"
    labels = task_settings(config, task)
    repeated = sorted({s for s in labels if labels.count(s) > 1})
    if repeated:
        _fail(key, f"settings {repeated} appear more than once (each would be a second column)")
    if "source" not in section:  # a section cut from a config: sizes unknown here
        return
    toy = section.get("source") == "toy"
    if task == "cbct" and section.get("views"):
        toy_cfg = {**section_defaults("cbct")["toy"], **(section.get("toy") or {})}
        n_full = int(toy_cfg["n_full"]) if toy else REAL_FULL_ORBIT
        over = [v for v in section["views"] if int(v) > n_full]
        if over:
            _fail(key, f"{over} views out of a full orbit of only {n_full} projections")
    if task == "mri" and section.get("accelerations"):
        _check_mri_sampling(section, toy)


def _check_mri_sampling(section: dict, toy: bool) -> None:
    """Seeded masks: the calibration disc within each acceleration's sample budget, and the
    budget within the acquired kz (``mri.partial_fourier``; R counts over the whole grid). Any
    mask: the acquired kz < ceil(pf·nz) holds the whole calibration disc, which the coil maps
    are estimated from (the k-space centre itself is at nz // 2)."""
    defaults = section_defaults("mri")
    toy_cfg = {**defaults["toy"], **(section.get("toy") or {})}
    ny, nz = (int(s) for s in toy_cfg["shape"][1:]) if toy else REAL_VOLUME_SHAPES["mri"][1:]
    calib = section.get("calib", defaults["calib"])
    pf = section.get("partial_fourier", defaults["partial_fourier"])
    kz_cut = math.ceil(pf * nz)  # as data.mri.preprocess_mri cuts
    seeded = section.get("mask_source") != "challenge"
    for r in section["accelerations"] if seeded else []:
        budget = int(round(ny * nz / float(r)))
        n_calib = _calib_samples(calib, ny, nz)
        if n_calib > budget:
            _fail(
                "mri.calib",
                f"a calibration disc of radius {calib} holds {n_calib} samples, more than "
                f"the {budget} of R={r:g} on the {ny}×{nz} ky–kz grid; use a smaller calib",
            )
        if ny * kz_cut < budget:
            _fail(
                "mri.partial_fourier",
                f"{pf:g} acquires kz < {kz_cut} of {nz}: {ny * kz_cut} ky–kz samples, fewer "
                f"than the {budget} of R={r:g} on the {ny}×{nz} grid; raise it or R",
            )
    edge = nz // 2 + int(calib)  # the disc's last kz
    if kz_cut <= edge:
        _fail(
            "mri.partial_fourier",
            f"{pf:g} acquires kz < {kz_cut} of {nz}, cutting the calibration disc (k-space "
            f"centre {nz // 2} + mri.calib {calib} = kz {edge}) the coil maps are estimated "
            "from; raise it or use a smaller calib",
        )


def _check_splits(config: dict, task: str) -> None:
    section = config[task]
    seen: dict[str, str] = {}
    for name, vols in _task_volumes(section, task).items():
        for v in vols:
            if v in seen:
                _fail(f"{task}.splits", f"volume {v!r} is in both {seen[v]} and {name}")
            seen[v] = name
    normal = config.get("normal") or {}
    ref = (normal.get("reference") or {}).get(task)
    if ref is not None and seen and ref not in seen:
        _fail(f"normal.reference.{task}", f"{ref!r} is not a volume of {task}.splits")


def _check_ranges(config: dict) -> None:
    """Pairs that must come in order, and counts that must fit inside other counts."""
    evaluate = config.get("evaluate") or {}
    crop = evaluate.get("cbct_crop")
    if crop is not None and not crop[0] < crop[1]:
        _fail("evaluate.cbct_crop", f"[lo, hi) must have lo < hi; got {list(crop)}")
    train = _with_defaults(config, "train")
    if train is not None:
        if train["lr_min"] > train["lr"]:
            _fail("train.lr_min", f"{train['lr_min']} is above train.lr {train['lr']}")
        inr = train_object(train, "inr")
        if inr["base_resolution"] > inr["finest_resolution"]:
            _fail(
                "train.inr.base_resolution",
                f"{inr['base_resolution']} is above finest_resolution {inr['finest_resolution']}",
            )
        weights = train.get("dpir_weights")
        if weights and weights != "download" and not train.get("dpir_sha256"):
            _fail("train.dpir_sha256", "required with a hand-placed train.dpir_weights file")
    bench = _with_defaults(config, "benchmarks")
    given = config.get("benchmarks") or {}  # a benchmark's --config-json may hold sizes alone
    if bench is not None and bench.get("enabled") and {"sizes", "patch"} <= set(given):
        if bench["patch"] > max(bench["sizes"]):
            _fail(
                "benchmarks.patch", f"{bench['patch']} is larger than every size {bench['sizes']}"
            )
        floor = {**section_defaults("benchmarks")["normal_floor"], **bench["normal_floor"]}
        if floor["rows"] > floor["size"] ** 3:
            _fail(
                "benchmarks.normal_floor.rows",
                f"{floor['rows']} rows of AᵀA out of a {floor['size']}³ volume "
                f"({floor['size'] ** 3} voxels)",
            )


def _check_sweep(config: dict) -> None:
    sweep = config.get("sweep") or {}
    if not sweep.get("enabled"):
        return
    for task in _enabled_tasks(config):
        patches = [[int(p) if p is not None else -1 for p in q] for q in sweep.get(task) or []]
        for i, p in enumerate(patches):
            if p in patches[:i]:
                _fail(f"sweep.{task}[{i}]", f"patch {p} is listed twice")


def _check_report(config: dict, tasks: list[str]) -> None:
    """A qualitative setting / volume must exist in every task the report draws it for."""
    report = config.get("report") or {}
    setting, volume = report.get("qualitative_setting"), report.get("qualitative_volume")
    for task in tasks:
        section = config[task]
        if setting is not None and ("views" in section or "accelerations" in section):
            if setting not in task_settings(config, task):
                _fail(
                    "report.qualitative_setting",
                    f"{setting!r} is not a setting of {task} ({task_settings(config, task)})",
                )
        test = _task_volumes(section, task)["test"]
        if volume is not None and test and volume not in test:
            _fail("report.qualitative_volume", f"{volume!r} is not a test volume of {task} {test}")


def check_values(config: dict) -> None:
    """Refuse values that pass the schema's types but cannot be meant: strides larger than the
    patch, repeated settings or sweep patches, ranges in the wrong order, counts beyond what
    they count from, volumes named that the splits lack. A ConfigError names the key. Works on
    a whole config and on a section cut from one (``--config-json``): checks whose keys are
    absent are skipped."""
    tasks = _enabled_tasks(config)
    for task in tasks:
        _check_stride(config, task)
        _check_settings(config, task)
        _check_splits(config, task)
    _check_ranges(config)
    _check_sweep(config)
    _check_report(config, tasks)


@cache
def _schema_without_required() -> dict:
    """The schema with every ``required`` list removed: validates a section cut from a config."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "required"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(schema())


def validate_partial(data: Any, where: str) -> None:
    """Check a part of a config (the job section the rules pass as ``--config-json``, or the
    report's) against the schema's types and :func:`check_values`; a ConfigError names
    ``where`` and the key."""
    import jsonschema

    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of config keys, got {type(data).__name__}")
    errors = sorted(
        jsonschema.Draft202012Validator(_schema_without_required()).iter_errors(data),
        key=lambda e: list(e.path),
    )
    if errors:
        key = ".".join(str(p) for p in errors[0].path) or "(top level)"
        raise ConfigError(f"{where}: config key {key}: {errors[0].message}")
    load_plugins(data.get("plugins"))  # a job of a plugin's variant gets the list (plugins_for)
    try:
        check_values(data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def config_from_json(text: str) -> dict:
    """The config part in the JSON text a rule passes as ``--config-json``, checked by
    :func:`validate_partial` (a negative lr stops here, not in torch)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config-json is not valid JSON ({err})") from None
    validate_partial(data, "--config-json")
    return data


def job_config_from_json(text: str, task: str) -> dict:
    """:func:`job_config` of a rule's ``--config-json`` (:func:`config_from_json`)."""
    return job_config(config_from_json(text), task)
