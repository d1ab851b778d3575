"""The package's layering: each module imports only its own layer or the ones below, and no two
modules import each other, not even through imports hidden inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unroll3d"

#: top-level name under unroll3d -> layer (a module may import its layer and those below).
LAYERS = {
    "utils": 0,
    "variants": 0,
    "plugins": 0,
    "paths": 0,
    "paper_numbers": 0,
    "config": 1,
    "metrics": 1,
    "physics": 1,
    "devices": 1,
    "data": 2,
    "partition": 2,
    "models": 2,
    "normal": 2,
    "engine": 3,
    "report": 4,
    "bench": 4,
    "manifest": 4,
    "cli": 5,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """unroll3d modules imported anywhere in the file (module level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("unroll3d")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("unroll3d"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for imp in _imports(name, path):
            # resolve "pkg.attr" to the deepest module that exists
            parts = imp.split(".")
            while parts and ".".join(parts) not in mods:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        graph[name] = targets
    return graph


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in _modules()} - {None}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_module_imports_a_layer_above_it():
    bad = []
    for src, targets in _graph().items():
        s = _top(src)
        if s is None:  # unroll3d/__init__: lazy re-exports of the public API
            continue
        for dst in targets:
            d = _top(dst)
            if d is not None and LAYERS[d] > LAYERS[s]:
                bad.append(f"{src} (layer {LAYERS[s]}) imports {dst} (layer {LAYERS[d]})")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_hidden_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    # a package's __init__ may re-export its submodules; a submodule importing its own package
    # back (instead of the sibling module) is then a cycle and is reported
    graph = {m: ts - {"unroll3d"} for m, ts in _graph().items() if m != "unroll3d"}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


@pytest.mark.parametrize("limit", [600])
def test_no_source_file_is_a_monolith(limit):
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > limit
    }
    assert not long, f"files over {limit} lines: {long}"


def _imports_argparse(path: Path) -> bool:
    """Whether the module imports argparse anywhere (module level or inside a function)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "argparse" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_argparse_finder_sees_every_form_of_import(tmp_path):
    for text, found in [
        ("import argparse\n", True),
        ("def f():\n    import argparse as ap\n", True),
        ("def f():\n    from argparse import ArgumentParser\n", True),
        ("import os, argparse.x\n", True),
        ("# import argparse\nx = 'import argparse'\n", False),
        ("import argparsex\n", False),
    ]:
        (tmp_path / "m.py").write_text(text)
        assert _imports_argparse(tmp_path / "m.py") == found, text


def test_argparse_lives_only_in_cli():
    """Only the verbs parse argv: library modules take typed arguments and raise ValueError (or
    their own error types) for a bad value; cli/ turns argv into those arguments."""
    bad = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if p.relative_to(SRC).parts[0] != "cli" and _imports_argparse(p)
    ]
    assert not bad, f"parse options in unroll3d/cli/, not here: {bad}"
    assert any(_imports_argparse(p) for p in (SRC / "cli").rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_crossings(src: Path) -> list[str]:
    """``importer <- module: name`` for each ``_name`` one module of the package under ``src``
    takes from another: ``from m import _name`` (absolute or relative, also inside functions) or
    ``m._name`` on an imported module (dunders aside)."""

    def module_name(p: Path) -> str:
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    mods = {module_name(p): p for p in sorted(src.rglob("*.py"))}
    root = src.name
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        local = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([mod] if mod else []))
                if mod.split(".")[0] != root:
                    continue
                for a in node.names:
                    if f"{mod}.{a.name}" in mods:
                        local[a.asname or a.name] = f"{mod}.{a.name}"
                    if _is_private(a.name) and mod != name:
                        out.append(f"{name} <- {mod}: {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == root:
                        local[a.asname or root] = a.name if a.asname else root
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in local:
                mod = ".".join([local[value.id], *reversed(chain)])
                if mod in mods and mod != name:
                    out.append(f"{name} <- {mod}: {node.attr}")
    return sorted(out)


#: ``importer <- module: name`` crossings that stay, each with its reason (none today).
PRIVATE_CROSSINGS_ALLOWED: dict[str, str] = {}


def test_private_name_finder_sees_every_form(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import _x\n")
    (pkg / "sub" / "a.py").write_text("_x = 1\n__version__ = 2\ndef _own(): return _x\n")
    (pkg / "b.py").write_text(
        "import pkg.sub.a\nimport pkg.sub.a as al\nfrom pkg.sub import a\n"
        "from pkg.sub.a import __version__\n"
        "def f():\n    from .sub.a import _x as y\n"
        "    return pkg.sub.a._x, al._x, a._x, a.__version__, y\n"
    )
    assert _private_crossings(pkg) == [
        "pkg.b <- pkg.sub.a: _x",  # from .sub.a import _x
        "pkg.b <- pkg.sub.a: _x",  # pkg.sub.a._x
        "pkg.b <- pkg.sub.a: _x",  # al._x
        "pkg.b <- pkg.sub.a: _x",  # a._x
        "pkg.sub <- pkg.sub.a: _x",  # the package re-exporting a private name
    ]


def test_no_private_name_crosses_modules():
    """A ``_name`` another module needs is part of its module's interface: give it a public name,
    move it to the module that uses it, or use the public way (tests may still reach in)."""
    found = _private_crossings(SRC)
    assert all(PRIVATE_CROSSINGS_ALLOWED.values()), "give every allowed crossing its reason"
    bad = [c for c in found if c not in PRIVATE_CROSSINGS_ALLOWED]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)
    stale = set(PRIVATE_CROSSINGS_ALLOWED) - set(found)
    assert not stale, f"allowed crossings that no longer occur: {sorted(stale)}"
