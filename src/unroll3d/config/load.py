"""Reading a config: a YAML file validated against the schema and the variant registry with its
defaults filled (:func:`load_config`), or a section cut from one, passed as ``--config-json``
(:func:`config_from_json`)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from unroll3d.config.checks import check_values
from unroll3d.config.defaults import ConfigError, fill_defaults, schema
from unroll3d.config.patches import check_patch_sizes
from unroll3d.config.slices import job_config
from unroll3d.plugins import load as load_plugins
from unroll3d.variants import VARIANTS

__all__ = [
    "validate", "read_yaml", "load_config", "validate_partial", "config_from_json",
    "job_config_from_json",
]  # fmt: skip


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
