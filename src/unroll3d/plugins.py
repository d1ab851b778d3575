"""A user's own methods without editing the package: the modules named by the config key
``plugins``, imported before variant names are checked.

A plugin registers its variants (:func:`unroll3d.variants.register`) and the builders of any new
kind (``unroll3d.models.BUILDERS``) when imported. An entry ending in ``.py`` is a file, its
path relative to the working directory (where ``snakemake`` or ``unroll3d`` runs; an absolute
path works too); any other entry is a dotted module name that Python can import (installed, or
on ``PYTHONPATH``). :func:`load` imports each entry once per process; config validation, the
workflow and the ``train``/``evaluate``/``report`` jobs all go through it. :func:`source_digests`
gives the sha256 of each entry's source (the training fingerprint and the manifest record it).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from unroll3d.variants import BUILTIN_VARIANTS, VARIANTS

__all__ = ["PluginError", "load", "plugins_for", "without_empty_plugins", "source_file", "source_digests"]


class PluginError(ValueError):
    """A plugin that cannot be imported, registers no variant, or registers a taken name."""


#: entry key (module name, or the file's resolved path) -> the variants its import registered
_LOADED: dict[str, tuple[str, ...]] = {}


def _is_file(entry: str) -> bool:
    return entry.endswith(".py")


def _import_file(entry: str, path: Path) -> None:
    if not path.is_file():
        raise PluginError(
            f"config key plugins: {entry!r}: no file {path} (a .py entry is a path relative to "
            f"the working directory {Path.cwd()})"
        )
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = "unroll3d_plugin_" + re.sub(r"\W", "_", path.stem) + f"_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look a class's module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def _import(entry: str) -> tuple[str, ...]:
    """Import one entry; the variant names it registered (a failure registers none)."""
    before = list(VARIANTS)
    preloaded = not _is_file(entry) and entry in sys.modules
    try:
        if _is_file(entry):
            _import_file(entry, Path(entry).resolve())
        else:
            importlib.import_module(entry)
    except PluginError:
        raise
    except Exception as err:
        for name in set(VARIANTS) - set(before):  # undo a half-done import: a retry can clash
            del VARIANTS[name]
        first = (str(err).splitlines() or [""])[0]
        if isinstance(err, ValueError) and "already registered" in first:
            raise PluginError(f"config key plugins: {entry!r}: {first}") from None
        hint = ""
        missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
        if missing and (entry == missing or entry.startswith(f"{missing}.")):
            hint = "; a module name must be importable (installed or on PYTHONPATH), a file ends in .py"
        raise PluginError(
            f"config key plugins: {entry!r} cannot be imported ({type(err).__name__}: {first}){hint}"
        ) from None
    added = tuple(n for n in VARIANTS if n not in before)
    if not added and not preloaded:  # a module imported before cannot show what it registered
        raise PluginError(
            f"config key plugins: {entry!r} registered no variant (a plugin calls "
            "unroll3d.variants.register when imported)"
        )
    return added


def load(entries: Iterable[str] | None) -> list[str]:
    """Import each plugin entry once per process (a repeat is a no-op); the variant names the
    entries registered. A :class:`PluginError` names the entry and the problem in one line."""
    names: list[str] = []
    for entry in entries or []:
        if not isinstance(entry, str) or not entry.strip():
            raise PluginError(f"config key plugins: {entry!r} is not a module name or a .py path")
        key = str(Path(entry).resolve()) if _is_file(entry) else entry
        if key not in _LOADED:
            _LOADED[key] = _import(entry)
        names += _LOADED[key]
    return names


def plugins_for(config: dict, variants: Iterable[str]) -> dict:
    """``{"plugins": [...]}`` (the config's whole list) for a job that reads one of ``variants``
    not from the package, else ``{}``: jobs of the package's variants never carry the key, so
    changing ``plugins`` reruns only the jobs of the plugins' variants (and the report)."""
    entries = list(config.get("plugins") or [])
    if entries and any(v not in BUILTIN_VARIANTS for v in variants):
        return {"plugins": entries}
    return {}


def without_empty_plugins(config: dict) -> dict:
    """``config`` without its ``plugins`` key when the list is empty (the schema's default), so a
    run without plugins keeps the run fingerprint and manifest command it had before the key."""
    return {k: v for k, v in config.items() if k != "plugins" or v}


def source_file(entry: str) -> Path | None:
    """The file a plugin entry's code is read from: a ``.py`` entry's path (resolved against the
    working directory), a module name's ``__file__`` (a package: its ``__init__.py``), found
    without running the module; None for a module that has no source file or cannot be found."""
    if _is_file(entry):
        return Path(entry).resolve()
    try:
        spec = importlib.util.find_spec(entry)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return Path(spec.origin)


def source_digests(entries: Iterable[str] | None) -> dict[str, dict]:
    """``{entry: {"file", "sha256", "bytes"}}`` of each plugin entry's source file
    (:func:`source_file`; a ``.py`` entry's ``file`` as given; all None when there is no file
    to read)."""
    out: dict[str, dict] = {}
    for entry in entries or []:
        path = source_file(entry)
        try:
            data = path.read_bytes() if path is not None else None
        except OSError:
            data = None
        if data is None:
            out[entry] = {"file": None, "sha256": None, "bytes": None}
        else:
            digest = hashlib.sha256(data).hexdigest()
            file = entry if _is_file(entry) else str(path)
            out[entry] = {"file": file, "sha256": digest, "bytes": len(data)}
    return out
