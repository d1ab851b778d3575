"""``unroll3d bench accuracy``: the options of :func:`unroll3d.bench.accuracy.run_accuracy`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import accuracy as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.common import device_arg, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib, raw=True)
    p.add_argument("--task", required=True, choices=["cbct", "mri"])
    p.add_argument("--setting", required=True, help="v30, R5, ...")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="pipeline config YAML")
    g.add_argument("--config-json", help="the job's config as JSON (what the rules pass)")
    p.add_argument("--partition", required=True, help="model file of the exact-trained variant")
    p.add_argument("--partition-H", dest="partition_H", required=True, help="the H-trained one")
    p.add_argument(
        "--normal", required=True, nargs="+",
        help="fitted H file(s): one per --data file (per-sample fits), or the setting's fit",
    )  # fmt: skip
    p.add_argument("--data", required=True, nargs="+", help="preprocessed test volume(s)")
    p.add_argument("--patches", type=int, default=4, help="seeded patches for H's errors")
    p.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    p.add_argument("--alphas", type=float, nargs="+", default=list(lib.DEFAULT_ALPHAS))
    p.add_argument("--out", required=True, type=Path, help="long-format CSV")
    p.add_argument("--summary", type=Path, default=None, help="Markdown (default: CSV's .md)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    from unroll3d.config import job_config, job_config_from_json, load_config

    a = build_parser().parse_args(argv)
    if a.config:  # a ConfigError names the key (the verb prints it on one line)
        config = job_config(load_config(a.config), a.task)
    else:
        config = job_config_from_json(a.config_json, a.task)
    lib.run_accuracy(
        a.task, a.setting, config, partition=a.partition, partition_H=a.partition_H,
        normal=a.normal, data=a.data, out=a.out, summary_md=a.summary, patches=a.patches,
        seed=config["seed"] if a.seed is None else a.seed, alphas=a.alphas, device=a.device,
        threads=a.threads,
    )  # fmt: skip
    return 0
