"""Volume shapes and patch sizes: the (D, H, W) of each task's volumes and the one normaliser of a
patch size against them."""

from __future__ import annotations

import numbers

from unroll3d.config.defaults import ConfigError, section_defaults

__all__ = ["REAL_VOLUME_SHAPES", "volume_shape", "resolve_patch_size", "check_patch_sizes"]

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
