"""Are two results trees the same, apart from what legitimately differs? (a refactor's check)

    python benchmarks/compare_results.py RESULTS_A RESULTS_B [--list-ignored]

Every file under either tree is compared, and every difference is printed (file, row/key, the two
values); exit 1 on any difference or a file that only one tree has, 0 when they agree, 2 on bad
arguments. Nothing is compared with a tolerance: a number is equal or it differs.

How each kind is compared:

- ``.md``/``.tex`` tables: line by line; table rows cell by cell, the cells of cost columns
  (header matches :data:`COST_HEADER`) and of cost claims (:data:`COST_CLAIM`: the ``Measured``,
  ``Verdict`` and ``Why`` cells) left out. Other lines (titles, notes) must be equal once a commit
  hash is replaced by ``<commit>``.
- ``.csv``: row by row, cell by cell, the columns of :data:`VOLATILE` left out everywhere; in the
  long-format tables (a ``metric`` column) the rows of :data:`COST_METRICS` compare all but
  ``ours``/``delta``/``text``; in ``claims.csv`` cost claims leave out ``measured``/``verdict``/``why``.
- ``.json``, ``.pt`` (loaded with torch, every tensor with ``torch.equal``): key by key, the keys
  of :data:`VOLATILE` left out wherever they sit.
- ``.npz``: array by array, bit-exact (``numpy.array_equal`` on equal dtypes and shapes).
- ``.pdf``: bytes, once ``/CreationDate``/``/ModDate`` are removed; ``.png``: every chunk but the
  text/time ones (``tEXt``, ``zTXt``, ``iTXt``, ``tIME``), i.e. the pixels and their encoding.
- Anything else: bytes.

Left out whole (:data:`IGNORED_FILES`): Snakemake's per-job benchmark TSVs, the logs, the smoke
timing, the HTML report, the manifest, and the figures that plot measured time or memory.
``--list-ignored`` prints each rule with its reason.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import re
import struct
import sys
from pathlib import Path

#: whole files not compared, glob (relative to the results root) -> why
IGNORED_FILES = {
    "benchmarks/rules/**": "Snakemake's `benchmark:` TSVs: wall time, CPU time, RSS of each job",
    "benchmarks/smoke_time.json": "wall time of the smoke run and of its reference workload",
    "logs/**": "job logs: progress lines with step times, paths, warnings",
    "report.html": "Snakemake's report: embeds the run's dates, timings and every file again",
    "manifest.json": "sha256 of every file (timing files included), the commit, versions, host: "
    "the files it lists are compared themselves",
    "figures/fig1_data_vs_network.*": "plots measured time of the data step vs the network",
    "figures/fig_partition_memory.*": "plots measured peak memory against the volume size",
    "figures/fig7_patch_sweep_cbct.*": "plots measured memory/time against the patch size",
    "figures/fig8_patch_sweep_mri.*": "plots measured memory/time against the patch size",
}

#: JSON/.pt keys and CSV columns not compared, wherever they appear -> why
VOLATILE = {
    # time
    "inference_time_s": "wall time",
    "step_time_s": "wall time",
    "step_time_mean_s": "wall time",
    "time_s": "wall time (benchmarks)",
    "time_min_s": "wall time (benchmarks)",
    "s_per_step": "wall time (bench_normal)",
    "it_per_s": "speed (bench_normal)",
    "speedup_H_vs_exact": "ratio of two wall times (bench_normal)",
    "seconds_floor": "wall time (bench_normal_floor)",
    "seconds_fit": "wall time (bench_normal_floor)",
    "time_utc": "date of the run",
    "seconds": "wall time (H fit history)",
    "floor_note": "a note that quotes the wall time of the error-floor measurement (H fit)",
    # memory
    "peak_memory_gb": "measured memory",
    "inference_peak_memory_gb": "measured memory",
    "peak_rss_gb": "measured memory",
    "peak_rss_growth_gb": "measured memory",
    "base_memory_gb": "measured memory (bench_partition)",
    "step_memory_gb": "measured memory (bench_partition)",
    "image_memory_gb": "measured memory (bench_partition)",
    "op_memory_gb": "measured memory (bench_partition)",
    "cuda_free_drop_gb": "measured memory (bench_physics)",
    "ratio_peak": "ratio of two measured memories (bench_partition)",
    "ratio_step": "ratio of two measured memories (bench_partition)",
    # machine
    "device": "hardware name (CPU/GPU model)",
    "device_name": "hardware name",
    "host": "host name",
    "threads": "torch threads of the benchmark process",
    "input_sha256": "sha256 of the raw input files: the toy generator's zips carry their write "
    "time (real downloads are checked against frozen checksums instead)",
}

#: rows of the long-format tables whose measured values are costs: (metric) -> why
COST_METRICS = {
    "train_peak_mem_gb": "measured training memory",
    "train_step_s": "measured s per micro-step",
    "infer_time_s": "measured inference time",
    "infer_peak_mem_gb": "measured inference memory",
    "exact_it_s": "measured speed of the exact data step",
    "H_it_s": "measured speed of the H data step",
    "speedup": "ratio of two measured speeds",
}
#: columns of a cost row that carry the measured value
COST_ROW_COLUMNS = ("ours", "delta", "text")

#: Markdown/LaTeX table headers of cost columns (VRAM/RSS, s/step, it/s, speed-up, time)
COST_HEADER = re.compile(r"VRAM|RSS|s/step|it/s|Speed-up|time|memory", re.IGNORECASE)
#: claims about memory or speed: their measured value, verdict and reason follow the timings
COST_CLAIM = re.compile(r"memory|faster", re.IGNORECASE)
CLAIM_COST_COLUMNS = ("measured", "verdict", "why")
#: a commit hash in a note ("commit d2494fe3c77c"): a refactor's run has another by design
COMMIT = re.compile(r"(commit )[0-9a-f]{7,40}")
#: the claims' tally ("9 hold, 2 do not"): it counts the verdicts of the cost claims too (each
#: other verdict is compared in its own row)
CLAIM_COUNTS = re.compile(r"\d+ hold, \d+ do not")
#: PDF info dates (matplotlib writes the time of the save)
PDF_DATES = re.compile(rb"/(CreationDate|ModDate) \(D:[^)]*\)")
#: PNG chunks that hold text or a time, not the image
PNG_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME"}


def ignored_reason(rel: str) -> str | None:
    """Why the file ``rel`` (POSIX, relative to the root) is not compared, or None."""
    for pattern, why in IGNORED_FILES.items():
        if fnmatch.fnmatch(rel, pattern):
            return why
    return None


# ------------------------------------------------------------------------------------- text


def _normal_text(line: str) -> str:
    return CLAIM_COUNTS.sub("<n> hold, <n> do not", COMMIT.sub(r"\1<commit>", line))


def _table_cells(line: str, latex: bool) -> list[str] | None:
    """The cells of a Markdown (``| a | b |``) or LaTeX (``a & b \\\\``) table row, else None."""
    s = line.strip()
    if latex:
        if " & " not in s or not s.endswith("\\\\"):
            return None
        return [c.strip() for c in s[:-2].split(" & ")]
    if not (s.startswith("|") and s.endswith("|")):
        return None
    return [c.strip() for c in s[1:-1].split("|")]


def compare_table_text(a: str, b: str, latex: bool) -> list[str]:
    """Differences of two Markdown/LaTeX table files (see the module docstring)."""
    la, lb = a.splitlines(), b.splitlines()
    if len(la) != len(lb):
        return [f"{len(la)} lines vs {len(lb)}"]
    out, header, claims = [], None, False
    for n, (x, y) in enumerate(zip(la, lb, strict=True), 1):
        if not x.strip() or "\\end{tabular}" in x:  # a table ends: the next row is a header
            header = None
        ca, cb = _table_cells(x, latex), _table_cells(y, latex)
        separator = ca is not None and all(re.fullmatch(r":?-+:?", c) for c in ca)
        if ca is None or cb is None or len(ca) != len(cb) or separator:
            if _normal_text(x) != _normal_text(y):
                out.append(f"line {n}: {x!r} vs {y!r}")
            continue
        if header is None or len(header) != len(ca):  # the first row of a table is its header
            header, claims = ca, bool(ca) and ca[0] == "Claim"
            if ca != cb:
                out.append(f"line {n} (header): {x!r} vs {y!r}")
            continue
        cost_row = claims and bool(COST_CLAIM.search(ca[0]))
        for col, u, v in zip(header, ca, cb, strict=True):
            if u == v or COST_HEADER.search(col):
                continue
            if cost_row and col.lower().split()[0] in ("measured", "verdict", "why"):
                continue
            out.append(f"line {n}, row {ca[0]!r}, column {col!r}: {u!r} vs {v!r}")
    return out


# -------------------------------------------------------------------------------------- csv


def compare_csv(a: str, b: str, name: str) -> list[str]:
    """Differences of two CSV files, cell by cell (see the module docstring)."""
    ra, rb = list(csv.reader(io.StringIO(a))), list(csv.reader(io.StringIO(b)))
    if not ra or not rb or ra[0] != rb[0]:
        return [f"header {ra[:1]} vs {rb[:1]}"]
    if len(ra) != len(rb):
        return [f"{len(ra) - 1} rows vs {len(rb) - 1}"]
    head, out = ra[0], []
    metric = head.index("metric") if "metric" in head else None
    claim = head.index("claim") if name == "claims.csv" and "claim" in head else None
    for i, (x, y) in enumerate(zip(ra[1:], rb[1:], strict=True), 1):
        skip = {c for c in head if c in VOLATILE}
        if metric is not None and x[metric] in COST_METRICS:
            skip.update(COST_ROW_COLUMNS)
        if claim is not None and COST_CLAIM.search(x[claim]):
            skip.update(CLAIM_COST_COLUMNS)
        for col, u, v in zip(head, x, y, strict=True):
            if u != v and col not in skip and _normal_text(u) != _normal_text(v):
                out.append(f"row {i} ({', '.join(x[:3])}), column {col!r}: {u!r} vs {v!r}")
    return out


# ----------------------------------------------------------------------------- json and .pt


def compare_values(a, b, where: str = "") -> list[str]:
    """Differences of two nested values (dicts, lists, scalars, tensors, arrays), the keys of
    :data:`VOLATILE` left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k in VOLATILE:
                continue
            at = f"{where}.{k}" if where else str(k)
            if k not in a or k not in b:
                out.append(f"{at}: only in {'A' if k in a else 'B'}")
            else:
                out += compare_values(a[k], b[k], at)
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in compare_values(x, y, f"{where}[{i}]")]
    if hasattr(a, "shape") and hasattr(b, "shape"):  # torch tensors, numpy arrays
        return [] if _arrays_equal(a, b) else [f"{where}: arrays differ ({_array_gap(a, b)})"]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # both NaN
        return []
    if type(a) is not type(b) or a != b:
        if isinstance(a, str) and isinstance(b, str) and _normal_text(a) == _normal_text(b):
            return []
        return [f"{where}: {a!r} vs {b!r}"]
    return []


def _arrays_equal(a, b) -> bool:
    import numpy as np

    if type(a) is not type(b) or tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        return False
    if hasattr(a, "detach"):  # torch: bit for bit, NaNs in the same places
        import torch

        if torch.equal(a, b):
            return True
        nan_a, nan_b = a.isnan(), b.isnan()  # NaNs in the same places, the rest equal
        return bool(nan_a.any()) and torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _array_gap(a, b) -> str:
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        return f"{a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    try:
        import numpy as np

        x = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
        y = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.float64)
        return f"max |Δ| {float(np.nanmax(np.abs(x - y))):.3g}"
    except (TypeError, ValueError):
        return "values"


def _load_pt(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _load_npz(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------- figures


def png_image_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG file but its text/time ones; a file that is not a PNG: one chunk."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return [(b"?", data)]
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind not in PNG_TEXT_CHUNKS:
            out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


# ------------------------------------------------------------------------------------- trees


def compare_file(a: Path, b: Path, rel: str) -> list[str]:
    """Differences of one file present in both trees (an empty list: the same)."""
    ba, bb = a.read_bytes(), b.read_bytes()
    if ba == bb:
        return []
    suffix = a.suffix.lower()
    if suffix in (".md", ".tex"):
        return compare_table_text(ba.decode(), bb.decode(), latex=suffix == ".tex")
    if suffix == ".csv":
        return compare_csv(ba.decode(), bb.decode(), a.name)
    if suffix == ".json":
        return compare_values(json.loads(ba), json.loads(bb))
    if suffix == ".npz":
        return compare_values(_load_npz(a), _load_npz(b))
    if suffix == ".pt":
        return compare_values(_load_pt(a), _load_pt(b))
    if suffix == ".pdf":
        same = PDF_DATES.sub(b"", ba) == PDF_DATES.sub(b"", bb)
        return [] if same else ["PDF content differs (dates aside)"]
    if suffix == ".png":
        return [] if png_image_chunks(ba) == png_image_chunks(bb) else ["PNG image differs"]
    return [f"bytes differ ({len(ba)} vs {len(bb)} bytes)"]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def compare_trees(a_root: Path, b_root: Path) -> tuple[list[str], int, int]:
    """(difference lines, files compared, files left out by :data:`IGNORED_FILES`)."""
    diffs, compared, ignored = [], 0, 0
    for rel in sorted(_files(a_root) | _files(b_root)):
        if ignored_reason(rel):
            ignored += 1
            continue
        a, b = a_root / rel, b_root / rel
        if not (a.is_file() and b.is_file()):
            diffs.append(f"{rel}: only in {'A' if a.is_file() else 'B'}")
            continue
        compared += 1
        try:
            found = compare_file(a, b, rel)
        except Exception as err:  # unreadable (truncated, not UTF-8, a class torch cannot load)
            found = [f"cannot be compared: {type(err).__name__}: {err}"]
        diffs += [f"{rel}: {d}" for d in found]
    return diffs, compared, ignored


def ignored_rules() -> str:
    """The rules of what is left out, with their reasons (``--list-ignored``)."""
    lines = ["Files left out:"]
    lines += [f"  {g}: {why}" for g, why in IGNORED_FILES.items()]
    lines.append("Keys (JSON, .pt) and CSV columns left out wherever they appear:")
    lines += [f"  {k}: {why}" for k, why in VOLATILE.items()]
    lines.append(f"Long-format table rows of these metrics compare all but {COST_ROW_COLUMNS}:")
    lines += [f"  {k}: {why}" for k, why in COST_METRICS.items()]
    lines.append(f"Markdown/LaTeX columns whose header matches /{COST_HEADER.pattern}/ (costs)")
    lines.append(
        f"Claims matching /{COST_CLAIM.pattern}/: {CLAIM_COST_COLUMNS} left out (they follow timings)"
    )
    lines.append(
        "Text: 'commit <hash>' compared as 'commit <commit>' (a refactor has another commit); "
        "'N hold, M do not' as '<n> hold, <n> do not' (the tally counts the cost claims)"
    )
    lines.append("PDF: /CreationDate and /ModDate; PNG: tEXt, zTXt, iTXt and tIME chunks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="results tree A (e.g. the run before a refactor)")
    p.add_argument("b", type=Path, help="results tree B (the run after)")
    p.add_argument("--list-ignored", action="store_true", help="print what is left out, and why")
    args = p.parse_args(argv)
    if args.list_ignored:
        print(ignored_rules())
    for root in (args.a, args.b):
        if not root.is_dir():
            print(f"compare_results: {root} is not a directory", file=sys.stderr)
            return 2
    diffs, compared, ignored = compare_trees(args.a, args.b)
    for line in diffs:
        print(line)
    verdict = "identical" if not diffs else f"{len(diffs)} differences"
    print(f"{compared} files compared, {ignored} left out by rule: {verdict}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
