"""``unroll3d bench NAME [options]``: one module here per benchmark of :mod:`unroll3d.bench`
(its parser, from :func:`bench_parser`, and ``main(argv)``, which calls the benchmark's typed
``run_<name>``), imported only when its benchmark runs, so ``unroll3d bench --help`` loads no
torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from unroll3d.bench import BENCHMARKS


def build_parser() -> argparse.ArgumentParser:
    """``unroll3d bench``'s parser: the benchmark's name, then its own options."""
    width = max(map(len, BENCHMARKS)) + 2
    listing = "\n".join(f"  {name:<{width}}{summary}" for name, (_, summary) in BENCHMARKS.items())
    p = argparse.ArgumentParser(
        prog="unroll3d bench",
        description="Memory/speed benchmarks; outputs land in results/benchmarks/.",
        epilog=f"benchmarks:\n{listing}\n\n`unroll3d bench NAME --help` shows a benchmark's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", choices=list(BENCHMARKS), help="benchmark to run")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return p


def bench_parser(lib: ModuleType, raw: bool = False) -> argparse.ArgumentParser:
    """``unroll3d bench NAME``'s parser for benchmark module ``lib`` (NAME: its last name),
    described by the first paragraph of its docstring (``raw``: line breaks kept)."""
    raw_kw = {"formatter_class": argparse.RawDescriptionHelpFormatter} if raw else {}
    return argparse.ArgumentParser(
        prog=f"unroll3d bench {lib.__name__.rsplit('.', 1)[-1]}",
        description=lib.__doc__.split("\n\n")[0],
        **raw_kw,
    )


def main(argv: list[str] | None = None) -> int:
    """``unroll3d bench NAME [options]``: run the benchmark's ``main`` with the options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(f"{__name__}.{argv[0]}")
    return int(module.main(argv[1:]) or 0)
