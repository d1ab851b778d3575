"""Writing every table (CSV, Markdown, LaTeX) of the report to disk, atomically."""

from __future__ import annotations

from pathlib import Path

from unroll3d.report.claims import build_claims_table
from unroll3d.report.common import TABLES
from unroll3d.report.csvio import write_rows
from unroll3d.report.latex import render_latex
from unroll3d.report.provenance import git_commit
from unroll3d.report.records import EvalRecord
from unroll3d.report.tables import build_datastep_table, build_table, render_markdown
from unroll3d.utils import atomic_path, atomic_write_text

#: Header of the CSV of a table without data.
_EMPTY_COLUMNS = ("table", "metric", "ours", "paper", "delta", "text")


def write_tables(
    cells: dict[tuple[str, str, str], list[EvalRecord]],
    config: dict,
    out_dir: str | Path,
    config_path: str | None = None,
    commit: str | None = None,
    bench_normal: str | Path | None = None,
    bench_partition: str | Path | None = None,
    bench_accuracy: str | Path | list | None = None,
) -> list[Path]:
    """Write every table as CSV (tidy, one row per cell), Markdown and LaTeX; return the paths.

    A table whose task is not in the config (or, for ``table_datastep``, whose benchmark file
    ``bench_normal`` is absent) is written with a one-line "no data" note, so the set of output
    files does not depend on the config. ``claims`` is always written: a claim the run cannot
    measure says so in its row, and a failing H-accuracy claim states the causes measured by
    ``bench_accuracy`` (the ``unroll3d bench accuracy`` CSVs) when given.
    """
    out_dir = Path(out_dir)
    commit = commit or git_commit()
    rendered = []  # every table is built before the first file is replaced: an error keeps the old
    for kind in TABLES:
        if kind == "table_datastep":
            table = build_datastep_table(bench_normal, config, config_path, commit)
            why = f"benchmark file {bench_normal} not available"
        elif kind == "claims":
            table = build_claims_table(
                cells, config, config_path, commit, bench_partition, bench_normal, bench_accuracy
            )
            why = ""
        else:
            table = build_table(kind, cells, config, config_path, commit)
            why = f"{kind} needs a task that configuration {config.get('name')!r} disables"
        if table is None:
            note = f"no data: {why}"
            md, tex = f"_{note}_\n", f"% {note}\n"
            long: list[dict] = []
        else:
            md, tex = render_markdown(table), render_latex(table)
            long = table.long
        rendered.append((kind, md, tex, long))
    written = []
    for kind, md, tex, long in rendered:
        for ext, text in (("md", md), ("tex", tex)):
            atomic_write_text(out_dir / f"{kind}.{ext}", text)
            written.append(out_dir / f"{kind}.{ext}")
        with atomic_path(out_dir / f"{kind}.csv") as tmp:
            write_rows(tmp, long, columns=_EMPTY_COLUMNS)
        written.append(out_dir / f"{kind}.csv")
    return written
