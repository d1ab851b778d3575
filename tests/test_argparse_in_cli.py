"""Only the verbs parse argv: argparse is imported in ``unroll3d.cli`` alone. Library modules take
typed arguments and raise ValueError (or their own error types) for bad values."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "unroll3d"

#: folders still holding their own parsers while they move to cli/ (none once they have)
MOVING = ("bench",)


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "argparse" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_the_finder_sees_every_form_of_import(tmp_path):
    for text, found in [
        ("import argparse\n", True),
        ("def f():\n    import argparse as ap\n", True),
        ("from argparse import ArgumentParser\n", True),
        ("import os, argparse.x\n", True),
        ("# argparse in a comment\nx = 'import argparse'\n", False),
        ("import argparsex\n", False),
    ]:
        (tmp_path / "m.py").write_text(text)
        assert _imports_argparse(tmp_path / "m.py") == found, text


def test_argparse_is_imported_only_in_cli():
    outside = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if p.relative_to(SRC).parts[0] not in ("cli", *MOVING) and _imports_argparse(p)
    ]
    assert not outside, f"argparse outside unroll3d/cli/: {outside}"
    assert any(_imports_argparse(p) for p in (SRC / "cli").glob("*.py"))
