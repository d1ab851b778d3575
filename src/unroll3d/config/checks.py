"""Values that pass the schema's types but cannot be meant, refused when a config (or a section
cut from one) is loaded: :func:`check_values`."""

from __future__ import annotations

import math

from unroll3d.config.defaults import ConfigError, section_defaults, train_object
from unroll3d.config.patches import REAL_VOLUME_SHAPES
from unroll3d.config.settings import task_settings

__all__ = ["REAL_FULL_ORBIT", "check_values"]


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
