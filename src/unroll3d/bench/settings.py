"""The config values each workflow benchmark reads, in one place: the rule passes just these
(:func:`bench_config`, as ``--config-json``) and the verb reads them back validated
(:func:`bench_values`); an option that mirrors one takes the schema's default
(:func:`schema_default`)."""

from __future__ import annotations

import copy
import json
from typing import Any

from unroll3d.config import ConfigError, fill_defaults, schema, validate_partial

#: benchmark -> the dotted config keys its workflow rule reads (and nothing else: a change to
#: any other key reruns none of the benchmark's jobs under ``--rerun-triggers params``)
KEYS: dict[str, tuple[str, ...]] = {
    "steps": ("benchmarks.sizes", "benchmarks.views", "model.channels", "model.blocks"),
    "physics": ("benchmarks.sizes", "benchmarks.views"),
    "partition": (
        "benchmarks.sizes",
        "benchmarks.patch",
        "benchmarks.views",
        "benchmarks.partition_operator",
        "model.channels",
        "model.blocks",
    ),
    "normal": ("benchmarks.sizes", "benchmarks.patch", "benchmarks.views"),
    "normal_floor": (
        "benchmarks.normal_floor.size",
        "benchmarks.views",
        "benchmarks.normal_floor.steps",
        "benchmarks.normal_floor.rows",
        "benchmarks.normal_floor.geometries",
        "seed",
    ),
}


def schema_default(key: str) -> Any:
    """The schema's default of a dotted config key (an object's: its entries' defaults)."""
    node = schema()
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise ConfigError(f"config key {key}: not in the schema") from None
    if node.get("type") == "object":
        return fill_defaults(node, copy.deepcopy(node.get("default", {})))
    if "default" not in node:
        raise ConfigError(f"config key {key}: the schema states no default")
    return copy.deepcopy(node["default"])


def _get(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def bench_config(config: dict, name: str) -> dict:
    """The part of a (validated) config that benchmark ``name``'s rule reads, nested as in the
    config file: what the rule passes as ``--config-json``."""
    out: dict = {}
    for key in KEYS[name]:
        try:
            value = _get(config, key)
        except KeyError:
            value = schema_default(key)
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return out


def bench_values(text: str, name: str) -> dict[str, Any]:
    """Dotted key -> value of benchmark ``name``'s keys from ``--config-json`` text, checked
    against the schema's types and values; a key the text leaves out takes the schema's
    default. A key the benchmark does not read is an error (it would be silently ignored)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config-json is not valid JSON ({err})") from None
    validate_partial(data, "--config-json")
    extra = sorted(set(_leaves(data)) - set(KEYS[name]))
    if extra:
        raise ConfigError(
            f"--config-json: unroll3d bench {name} reads none of {extra}; it reads {list(KEYS[name])}"
        )
    out = {}
    for key in KEYS[name]:
        try:
            out[key] = _get(data, key)
        except KeyError:
            out[key] = schema_default(key)
    return out


def _leaves(data: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the non-object values of a nested config part."""
    out = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        out += _leaves(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return out
