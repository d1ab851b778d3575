"""Do two pipeline runs agree apart from timing? (a speed change must not move a number)

Compares every evaluation/model/fit JSON and every table CSV present in both ``results``
folders, leaving out the fields that measure time, memory or the machine, and prints the
fields that differ (with the largest absolute difference) and the files only one run has.

    python benchmarks/compare_runs.py RESULTS_A RESULTS_B [--tol 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

#: field names that measure the run, not the result
VOLATILE = re.compile(
    r"time|_s$|seconds|per_step|speedup|ratio|threads|memory|peak|rss|_gb$|_mb$|device|date|host"
    r"|cpu|path|elapsed|load"
)


def flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _read(path: Path) -> dict[str, object]:
    if path.suffix == ".json":
        return flatten(json.loads(path.read_text()))
    rows = list(csv.DictReader(path.open()))
    return {f"row{i}.{k}": v for i, row in enumerate(rows) for k, v in row.items()}


def compare(a_root: Path, b_root: Path, tol: float = 0.0) -> tuple[list[str], list[str], int]:
    """(differences, files in one run only, files compared)."""
    pattern = ("eval/**/*.json", "models/**/*.json", "tables/**/*.csv", "benchmarks/*.csv")
    files = {p.relative_to(a_root) for g in pattern for p in a_root.glob(g)}
    files |= {p.relative_to(b_root) for g in pattern for p in b_root.glob(g)}
    diffs, lonely, compared = [], [], 0
    for rel in sorted(files):
        a, b = a_root / rel, b_root / rel
        if not (a.exists() and b.exists()):
            lonely.append(f"{rel} only in {'A' if a.exists() else 'B'}")
            continue
        compared += 1
        fa, fb = _read(a), _read(b)
        for key in sorted(set(fa) | set(fb)):
            leaf = key.rsplit(".", 1)[-1]
            if VOLATILE.search(leaf.lower()) or VOLATILE.search(key.lower().split("[")[0]):
                continue
            va, vb = fa.get(key), fb.get(key)
            if va == vb:
                continue
            try:
                gap = abs(float(va) - float(vb))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                diffs.append(f"{rel}: {key}: {va!r} vs {vb!r}")
                continue
            if gap > tol:
                diffs.append(f"{rel}: {key}: {va} vs {vb} (|Δ| {gap:.3g})")
    return diffs, lonely, compared


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, default=0.0, help="largest absolute difference let through")
    args = p.parse_args(argv)
    diffs, lonely, compared = compare(Path(args.a), Path(args.b), args.tol)
    for line in diffs + lonely:
        print(line)
    print(f"{compared} files compared, {len(diffs)} fields differ, {len(lonely)} files in one run only")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
