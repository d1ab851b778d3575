"""The configuration schema (package data ``unroll3d/schemas/config.schema.yaml``), the defaults it
gives each section, and the package's error type."""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "ConfigError", "schema", "fill_defaults", "section_defaults", "train_settings",
    "train_object", "evaluate_settings",
]  # fmt: skip


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
