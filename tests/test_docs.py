"""The documentation in docs/ stays true to the code: every public name of docs/api.md exists, every
CLI verb it lists is a verb, and every section of docs/paper-notes.md that the code cites exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()
NOTES = (ROOT / "docs" / "paper-notes.md").read_text()

#: where a short name of docs/api.md may live
MODULES = [
    "unroll3d",
    "unroll3d.partition",
    "unroll3d.normal",
    "unroll3d.physics",
    "unroll3d.models",
    "unroll3d.variants",
    "unroll3d.metrics",
]


def _resolve(name: str):
    """The object a name of the API page stands for (``engine.train.TrainJob``, ``sqnorm``...)."""
    if "." in name:
        parts = name.removeprefix("unroll3d.").split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module("unroll3d." + ".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
        raise AssertionError(f"docs/api.md names {name}, which does not import")
    for module in MODULES:
        obj = getattr(importlib.import_module(module), name, None)
        if obj is not None:
            return obj
    raise AssertionError(f"docs/api.md names {name}, found in none of {MODULES}")


def _api_names() -> list[str]:
    """The identifiers in the first column of the API page's Python tables."""
    names = []
    python_part = API.split("## Command line")[0]
    for row in re.findall(r"^\| `(.+?)\|", python_part, flags=re.M):
        for code in re.findall(r"`?([A-Za-z_][\w.]*)(?:\(|`|$)", row):
            names.append(code)
    return names


def test_every_name_on_the_api_page_exists():
    names = _api_names()
    assert len(names) > 40, names  # the tables were read
    for name in names:
        _resolve(name)


def test_the_api_page_lists_every_cli_verb():
    from unroll3d.cli import VERBS

    listed = re.findall(r"^\| `unroll3d ([\w-]+)`", API, flags=re.M)
    assert sorted(listed) == sorted(VERBS)


def test_the_api_page_links_exist():
    for target in re.findall(r"\]\((\.\./[^)#]+)\)", API):
        assert (ROOT / "docs" / target).resolve().exists(), target


def test_cited_sections_of_the_paper_notes_exist():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", NOTES, flags=re.M))
    cited = set()
    for folder in ("src", "tests", "workflow", "config", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".smk", ".yaml", ".md", ".rst") or not path.is_file():
                continue
            for tail in re.findall(
                r"paper-notes\.md``?\s+((?:§[\d.–-]+(?:,\s*)?)+)", path.read_text()
            ):
                cited |= {s.rstrip(".") for s in re.findall(r"§(\d+(?:\.\d+)?)", tail)}
    assert cited, "no citation of docs/paper-notes.md found"
    assert cited <= headings, sorted(cited - headings)


#: citations a reader of the repository cannot follow: the shared design notes that are not in the
#: repository, and internal issue numbers
UNSEEN = re.compile(r"(?<![\w/-])(?:paper|datasets|design|style)\.md|(?<![\w/#-])[Ii]ssues? #?\d+")


def test_code_cites_only_what_is_in_the_repository():
    this = Path(__file__).resolve()
    found = []
    for folder in ("src", "tests", "workflow", "config", "examples", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*"):
            if not path.is_file() or path.resolve() == this or "measured" in path.parts:
                continue
            if path.suffix not in (".py", ".smk", ".yaml", ".yml", ".md", ".rst", ".sh", ".json"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if UNSEEN.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    for name in ("Makefile", "Snakefile"):
        for n, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if UNSEEN.search(line):
                found.append(f"{name}:{n}: {line.strip()}")
    assert not found, (
        "cite docs/paper-notes.md §N for the paper, explain instead of citing an issue number:\n"
        + "\n".join(found)
    )
