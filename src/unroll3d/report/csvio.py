"""Small CSV files without pandas: benchmark tables read with numbers typed as pandas would, the
tables' tidy CSV written as ``DataFrame.to_csv(index=False)`` would, and the one column picker
(its error names the file and the expected column)."""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unroll3d.report.common import ReportError

__all__ = ["missing", "pick_column", "read_rows", "write_rows"]


def pick_column(
    columns: Iterable[str], names: Sequence[str], path: str | Path, required: bool = True
) -> str | None:
    """The first of ``names`` among ``columns``; a :class:`ReportError` naming ``path`` and the
    expected column(s) when none is there (``None`` if not ``required``)."""
    columns = list(columns)
    for name in names:
        if name in columns:
            return name
    if required:
        raise ReportError(f"{path}: none of the columns {list(names)} found (has {columns})")
    return None


def _parse(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _typed_column(values: list[Any]) -> list[Any]:
    """Numbers of a column as pandas types them: ints stay ints only when every cell is an int;
    with an empty cell or a float they become floats (empty → NaN); text makes it a text column."""
    present = [v for v in values if v is not None]
    if present and all(_is_number(v) for v in present):
        if all(_is_int(v) for v in present) and len(present) == len(values):
            return values
        return [math.nan if v is None else float(v) for v in values]
    if present and any(isinstance(v, str) for v in present):
        return [None if v is None else str(v) for v in values]
    return values


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, Any]]] | None:
    """``(columns, rows)`` of a CSV with typed cells (empty numeric cell → NaN, empty text cell →
    None); ``None`` when the file does not exist."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            raw = [row for row in reader if row]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: cannot read CSV ({err})") from err
    if header is None:
        return [], []
    for i, row in enumerate(raw, 2):
        if len(row) != len(header):
            raise ReportError(
                f"{path}: cannot read CSV (line {i} has {len(row)} fields, header {len(header)})"
            )
    columns = {h: _typed_column([_parse(row[j]) for row in raw]) for j, h in enumerate(header)}
    for h, values in columns.items():  # an empty cell is missing (NaN); ±inf is never a result
        for i, v in enumerate(values, 2):
            if isinstance(v, float) and math.isinf(v):
                raise ReportError(f"{path}: line {i}, column {h!r} is not a finite number ({v})")
    rows = [{h: columns[h][i] for h in header} for i in range(len(raw))]
    return list(header), rows


def missing(value: Any) -> bool:
    """An empty cell: None or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format_column(values: list[Any]) -> list[str]:
    present = [v for v in values if not missing(v)]
    numeric = bool(present) and all(_is_number(v) for v in present)
    as_float = numeric and (len(present) < len(values) or any(not _is_int(v) for v in present))
    out = []
    for v in values:
        if missing(v):
            out.append("")
        elif as_float or isinstance(v, float):
            out.append(repr(float(v)))
        elif _is_int(v):
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def write_rows(path: str | Path, rows: list[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """Write dict rows as ``pandas.DataFrame(rows).to_csv(path, index=False)`` does: columns in
    order of first appearance (or ``columns`` when there are no rows), None/NaN as empty cells,
    a column of ints with an empty cell written as floats."""
    header: list[str] = [] if rows else list(columns)
    for row in rows:
        header += [k for k in row if k not in header]
    cols = [_format_column([row.get(h) for row in rows]) for h in header]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for i in range(len(rows)):
            writer.writerow([col[i] for col in cols])
