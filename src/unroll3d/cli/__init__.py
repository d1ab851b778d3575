"""The ``unroll3d`` command: one verb per pipeline step.

Each verb is implemented by ``main(argv)`` in its own module and imported lazily, so
``unroll3d --help`` is fast and a verb's heavy dependencies load only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from unroll3d import __version__
from unroll3d.utils import check_output_args

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "toy": ("unroll3d.cli.toy", "write toy Walnut/Calgary raw files (real formats, tiny sizes)"),
    "data": ("unroll3d.cli.data", "download, freeze checksums, preprocess, split, FDK check"),
    "fit-normal": ("unroll3d.cli.fit_normal", "fit the diagonal-circulant approximation H of AᵀA"),
    "train": ("unroll3d.cli.train", "train one variant on one task and setting"),
    "evaluate": ("unroll3d.cli.evaluate", "evaluate one variant on one test volume"),
    "report": ("unroll3d.cli.report", "render the paper's tables and figures"),
    "manifest": ("unroll3d.cli.manifest", "write results/manifest.json (hashes, versions, config)"),
    "bench": ("unroll3d.cli.bench", "memory/speed benchmarks (physics, partition, normal step)"),
    "device": ("unroll3d.cli.device", "pick a free GPU for a job and run a command on it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unroll3d",
        description="Efficient unrolled networks for large-scale 3D inverse problems.",
    )
    parser.add_argument("--version", action="version", version=f"unroll3d {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in VERBS:
        parser.parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(VERBS[argv[0]][0])
    try:
        check_output_args(argv[1:])  # an --out under a file fails before the work
        return int(module.main(argv[1:]) or 0)
    except Exception as err:
        if not is_project_error(err):
            raise  # a bug: keep the traceback
        print(f"unroll3d {argv[0]}: error: {err}", file=sys.stderr)
        return 1


def is_project_error(err: BaseException) -> bool:
    """The project's own error types (DataError, ConfigError, NormalFileError, ModelFileError,
    ReportError, ...) carry a message naming the file and the problem: the verbs print that one
    line instead of a traceback. A missing file is reported the same way."""
    return type(err).__module__.startswith("unroll3d.") or isinstance(err, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
