"""``unroll3d report``: render the tables and figures from existing results (seconds), and the
``normal-illustration`` sub-command (:mod:`unroll3d.report`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from unroll3d.cli.common import add_runtime_args, setup_runtime
from unroll3d.config import read_yaml, report_config, validate_partial
from unroll3d.report.common import TASKS, ReportError
from unroll3d.report.figures import write_figures
from unroll3d.report.illustration import normal_illustration
from unroll3d.report.output import write_tables
from unroll3d.report.records import collect_evals
from unroll3d.variants import VARIANTS

log = logging.getLogger("unroll3d.report")


def load_config(path: str | Path) -> dict:
    """Read a workflow config YAML and keep the keys the report reads
    (:func:`unroll3d.config.report_config`). The workflow validates the whole file against the
    schema; here the keys present are checked against it (types and values, none required), so
    a partial config renders too."""
    path = Path(path)
    config = read_yaml(path)
    validate_partial(config, str(path))  # first: it imports the config's plugins
    _check_config(config, path)
    return report_config(config)


def _check_config(config: Any, where: Any) -> None:
    if not isinstance(config, dict):
        raise ReportError(f"{where}: expected a mapping at the top level")
    for key in ("tasks", "variants"):
        if key not in config:
            raise ReportError(f"{where}: missing key {key!r}")
    bad = set(config["tasks"]) - set(TASKS)
    if bad:
        raise ReportError(f"{where}: unknown task(s) {sorted(bad)}; allowed {list(TASKS)}")
    unknown = [v for v in config["variants"] if v not in VARIANTS]
    if unknown:
        raise ReportError(f"{where}: unknown variant(s) {unknown}; registered: {list(VARIANTS)}")


def _main_illustration(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="unroll3d report normal-illustration",
        description="Compute the panels of the normal-operator figure (x, AᵀAx, Hx, λ, m) once.",
    )
    p.add_argument(
        "--normal", required=True, help="fitted H file results/normal/{task}/{setting}.pt"
    )
    p.add_argument(
        "--data", required=True, help="one preprocessed volume results/data/{task}/{volume}.pt"
    )
    p.add_argument("--setting", required=True, help="v30, R5, ...")
    p.add_argument("--out", required=True, help="output .npz")
    add_runtime_args(p)
    args = p.parse_args(argv)
    device = setup_runtime(args)
    normal_illustration(args.normal, args.data, args.setting, args.out, device=device)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``unroll3d report``: render tables and figures from existing results (seconds)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        if argv and argv[0] == "normal-illustration":
            return _main_illustration(argv[1:])
        p = argparse.ArgumentParser(
            prog="unroll3d report",
            description="Render the paper's tables (CSV, Markdown, LaTeX) and figures (PNG, PDF).",
            epilog="Sub-command: `unroll3d report normal-illustration --help`.",
        )
        p.add_argument("--results", default="results", help="results folder (default: results)")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--config", help="workflow config YAML (config/config.yaml)")
        src.add_argument("--config-json", help="the resolved config as JSON (from Snakemake)")
        p.add_argument(
            "--config-label",
            default=None,
            help="how the footnotes name the config (default: its path)",
        )
        p.add_argument("--tables", default=None, help="tables folder (default: RESULTS/tables)")
        p.add_argument("--figures", default=None, help="figures folder (default: RESULTS/figures)")
        p.add_argument("--bench-steps", default=None, help="Fig. 1 benchmark CSV")
        p.add_argument("--bench-partition", default=None, help="partitioned-memory benchmark CSV")
        p.add_argument("--bench-normal", default=None, help="data-step speed benchmark CSV (§6.4)")
        p.add_argument(
            "--bench-accuracy",
            nargs="+",
            default=None,
            help="accuracy diagnostic CSV(s) (default: RESULTS/benchmarks/accuracy/*.csv)",
        )
        p.add_argument("--normal-dir", default=None, help="folder of normal_{task}_{setting}.npz")
        p.add_argument("--only", choices=("tables", "figures"), default=None)
        p.add_argument(
            "--allow-missing",
            action="store_true",
            help="skip missing evaluation files with a warning instead of failing (exploration only)",
        )
        args = p.parse_args(argv)
        results = Path(args.results)
        if args.config_json:
            try:
                config = json.loads(args.config_json)
            except json.JSONDecodeError as err:
                raise ReportError(f"--config-json is not valid JSON ({err})") from err
            validate_partial(config, "--config-json")  # first: it imports the plugins
            _check_config(config, "--config-json")
        else:
            config = load_config(args.config)
        label = args.config_label or args.config
        cells = collect_evals(results, config, allow_missing=args.allow_missing)
        written: list[Path] = []
        if args.only in (None, "tables"):
            bench = results / "benchmarks"
            written += write_tables(
                cells,
                config,
                args.tables or results / "tables",
                label,
                bench_normal=args.bench_normal or bench / "bench_normal.csv",
                bench_partition=args.bench_partition or bench / "bench_partition.csv",
                bench_accuracy=args.bench_accuracy or sorted((bench / "accuracy").glob("*.csv")),
            )
        if args.only in (None, "figures"):
            written += write_figures(
                cells,
                config,
                results,
                args.figures or results / "figures",
                bench_steps=args.bench_steps,
                bench_partition=args.bench_partition,
                normal_dir=args.normal_dir,
            )
    except ReportError as err:
        print(f"unroll3d report: error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
