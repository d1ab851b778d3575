"""The reviewer manifest ``results/manifest.json`` (verb ``unroll3d manifest``:
:mod:`unroll3d.cli.manifest`).

For every file under the results folder: its sha256, size and the Snakemake rule that made it
(read from ``.snakemake/metadata``, or from a JSON mapping given with ``--rules``). Plus the
sha256 of the input data (``resources/`` by default), the installed software versions, the
CPU/GPU names, the git commit and the config used; when the config lists ``plugins``, the
sha256 of each plugin's source (:func:`unroll3d.plugins.source_digests`). Written atomically.

Hashing raw downloads (hundreds of GB for Walnut-CBCT) is slow, so a previous manifest's hash is
reused for a file whose size and modification time are unchanged (``--no-reuse`` disables it).

Usage::

    unroll3d manifest --results results --config config/smoke.yaml --inputs resources \\
        --out results/manifest.json
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from unroll3d.plugins import source_digests
from unroll3d.utils import atomic_write_json, cpu_name

__all__ = [
    "sha256_file",
    "snakemake_rules",
    "software_versions",
    "hardware",
    "git_info",
    "build_manifest",
    "write_manifest",
]

MANIFEST_VERSION = 1
#: Excluded by default: temporary files of atomic writes, caches, the manifest itself.
DEFAULT_EXCLUDE = (".*", "*/.*", "**/__pycache__/*", "*.tmp")
#: Distributions whose installed versions are recorded (missing ones are recorded as null).
PACKAGES = (
    "unroll3d",
    "torch",
    "torchvision",
    "deepinv",
    "snakemake",
    "itk",
    "itk-rtk",
    "astra-toolbox",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "h5py",
    "tifffile",
    "pooch",
    "pyyaml",
)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _decode_record_path(rel: Path) -> str | None:
    """Invert Snakemake's ``_record_path``: joined parts, '@' continuation markers, base64."""
    parts = [p[1:] if p.startswith("@") else p for p in rel.parts]
    try:
        return base64.urlsafe_b64decode("".join(parts).encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def snakemake_rules(workdir: str | Path = ".") -> dict[str, dict[str, Any]]:
    """Output path (relative to ``workdir``) → metadata record, from ``.snakemake/metadata``.

    Each record keeps ``rule``, ``starttime``, ``endtime`` and ``input`` when Snakemake stored
    them. Returns ``{}`` if the folder does not exist (no Snakemake run here).
    """
    root = Path(workdir) / ".snakemake" / "metadata"
    out: dict[str, dict[str, Any]] = {}
    if not root.is_dir():
        return out
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            target = _decode_record_path(full.relative_to(root))
            if target is None:
                continue
            try:
                rec = json.loads(full.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being written or corrupt: Snakemake ignores these too
            if not isinstance(rec, dict) or rec.get("incomplete"):
                continue
            keep = {
                k: rec.get(k) for k in ("rule", "starttime", "endtime", "input", "log") if k in rec
            }
            out[os.path.normpath(target)] = keep
    # Logs are not outputs, but each record names its job's logs: attribute them too.
    for rec in list(out.values()):
        for logfile in rec.get("log") or []:
            out.setdefault(os.path.normpath(logfile), {"rule": rec.get("rule"), "kind": "log"})
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions(packages: Iterable[str] = PACKAGES) -> dict[str, Any]:
    """Python, the installed distributions, and torch's CUDA/cuDNN builds (no GPU needed)."""
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in packages},
    }
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = (
            torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        )
    except ImportError:
        out["torch_cuda"] = out["cudnn"] = None
    return out


def hardware() -> dict[str, Any]:
    """CPU name and core count; GPU names, memory and driver when CUDA is available."""
    out: dict[str, Any] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "gpus": []}
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out["gpus"].append({"name": p.name, "memory_gb": round(p.total_memory / 1e9, 2)})
    except ImportError:
        pass
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if res.returncode == 0 and res.stdout.strip():
            out["nvidia_driver"] = res.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def git_info(cwd: str | Path = ".") -> dict[str, Any]:
    """Commit, branch and whether tracked files differ from the commit."""

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": None if status is None else bool(status),
        "modified": [] if not status else [line[3:] for line in status.splitlines()],
    }


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def hash_files(
    root: str | Path,
    exclude: Iterable[str] = (),
    previous: dict[str, dict[str, Any]] | None = None,
    prefix: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``{relpath: {sha256, bytes, mtime}}`` for every file under ``root``.

    Keys are ``prefix/relative-path`` (``prefix`` defaults to ``root`` as given). A ``previous``
    entry with the same size and mtime is reused instead of re-hashing.
    """
    root = Path(root)
    prefix = str(root) if prefix is None else prefix
    exclude = list(exclude)
    out = {}
    for path in _walk(root):
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        if root.is_file():
            key = prefix or rel
        else:
            key = f"{prefix}/{rel}" if prefix else rel
        key = os.path.normpath(key)
        if _excluded(rel, exclude) or _excluded(key, exclude):
            continue
        st = path.stat()
        entry = {"bytes": st.st_size, "mtime": round(st.st_mtime, 3)}
        old = (previous or {}).get(key)
        if (
            old
            and old.get("bytes") == entry["bytes"]
            and old.get("mtime") == entry["mtime"]
            and old.get("sha256")
        ):
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = sha256_file(path)
        out[key] = entry
    return out


def _key(path: str | Path, workdir: str | Path) -> str:
    """``path`` relative to ``workdir`` when inside it (as Snakemake names outputs), else as given."""
    path, workdir = Path(path), Path(workdir)
    if path.is_absolute() or workdir != Path("."):
        try:
            return os.path.normpath(path.resolve().relative_to(workdir.resolve()).as_posix())
        except ValueError:
            return os.path.normpath(str(path))
    return os.path.normpath(str(path))


def _load_config(
    paths: str | Path | Iterable[str | Path] | None, resolved: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Config files (path, sha256, values) and, when given, the resolved config actually used."""
    if paths is None and resolved is None:
        return None
    from unroll3d.config import read_yaml

    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = []
    for path in paths or []:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} not found")
        text = path.read_text()
        files.append(
            {
                "path": str(path),
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "values": read_yaml(path),  # a syntax error: one line naming the file
            }
        )
    out: dict[str, Any] = {"files": files}
    if resolved is not None:
        out["resolved"] = resolved
    elif len(files) == 1:
        out["resolved"] = files[0]["values"]
    if files:  # the last file wins in Snakemake; keep its path/values at the top for convenience
        out.update(path=files[-1]["path"], sha256=files[-1]["sha256"], values=files[-1]["values"])
    return out


def build_manifest(
    results: str | Path = "results",
    out: str | Path | None = None,
    config: str | Path | Iterable[str | Path] | None = None,
    config_resolved: dict[str, Any] | None = None,
    inputs: Iterable[str | Path] = ("resources",),
    rules: dict[str, str] | None = None,
    workdir: str | Path = ".",
    include_logs: bool = False,
    exclude: Iterable[str] = (),
    reuse: bool = True,
) -> dict[str, Any]:
    """Assemble the manifest dictionary (see the module docstring).

    :param results: folder whose every file is listed (paths in the manifest keep this prefix).
    :param out: the manifest's own path, excluded from the listing (default ``results/manifest.json``).
    :param config: the workflow config YAML file(s) used (values and sha256 are recorded).
    :param config_resolved: the merged config Snakemake ran with (recorded as ``resolved``).
    :param inputs: input-data folders or files to checksum.
    :param rules: optional ``{path: rule}`` mapping; wins over Snakemake's metadata.
    :param workdir: where ``.snakemake/`` and the git checkout live.
    :param include_logs: also list ``results/logs/``.
    :param exclude: extra glob patterns (relative to ``results`` or with its prefix) to leave out.
    """
    results = Path(results)
    out = Path(out) if out is not None else results / "manifest.json"
    patterns = list(DEFAULT_EXCLUDE) + list(exclude)
    if not include_logs:
        patterns += ["logs/*", "logs/**"]
    previous: dict[str, dict[str, Any]] = {}
    if reuse and out.exists():
        try:
            old = json.loads(out.read_text())
            previous = {**old.get("files", {}), **old.get("inputs", {})}
        except (OSError, json.JSONDecodeError):
            previous = {}
    own = _key(out, workdir)
    files = {
        k: v
        for k, v in hash_files(results, patterns, previous, _key(results, workdir)).items()
        if k != own
    }
    smk = snakemake_rules(workdir)
    rules = {os.path.normpath(k): v for k, v in (rules or {}).items()}
    results_key = _key(results, workdir)
    bench_prefix = f"{results_key}/benchmarks/rules/"
    for key, entry in files.items():
        rec = smk.get(key, {})
        rule = rules.get(key, rec.get("rule"))
        if rec.get("kind"):
            entry["kind"] = rec["kind"]
        if rule is None and key.startswith(bench_prefix):
            # `benchmark:` files are not in Snakemake's records; this workflow names each one
            # like its job's log (results/benchmarks/rules/X.tsv <-> results/logs/X.log).
            stem = key[len(bench_prefix) :].rsplit(".", 1)[0]
            rule = smk.get(os.path.normpath(f"{results_key}/logs/{stem}.log"), {}).get("rule")
            if rule is not None:
                entry["kind"] = "benchmark"
        entry["rule"] = rule
        if rec.get("endtime"):
            entry["made"] = datetime.fromtimestamp(rec["endtime"], UTC).isoformat(
                timespec="seconds"
            )
    input_hashes: dict[str, dict[str, Any]] = {}
    for root in inputs:
        input_hashes.update(hash_files(root, DEFAULT_EXCLUDE, previous, _key(root, workdir)))
    n_unknown = sum(1 for e in files.values() if e["rule"] is None)
    config_record = _load_config(config, config_resolved)
    plugins = ((config_record or {}).get("resolved") or {}).get("plugins")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": git_info(workdir),
        "config": config_record,
        "software": software_versions(),
        "hardware": hardware(),
        "results_root": str(results),
        "summary": {
            "files": len(files),
            "bytes": sum(e["bytes"] for e in files.values()),
            "files_without_rule": n_unknown,
            "inputs": len(input_hashes),
        },
        "files": files,
        "inputs": input_hashes,
    }
    if plugins:  # the user's code the run imported (a .py entry relative to the working dir)
        manifest["plugins"] = source_digests(plugins)
    return manifest


def write_manifest(out: str | Path = "results/manifest.json", **kwargs: Any) -> dict[str, Any]:
    """Build the manifest and write it atomically to ``out``; return it."""
    manifest = build_manifest(out=out, **kwargs)
    atomic_write_json(out, manifest)
    return manifest
