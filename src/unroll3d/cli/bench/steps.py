"""``unroll3d bench steps``: the options of :func:`unroll3d.bench.steps.run_steps`."""

from __future__ import annotations

import argparse

from unroll3d.bench import steps as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import add_config_json, parse_bench_args, schema_default
from unroll3d.cli.common import device_arg


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="volume sizes N (N³)")
    p.add_argument("--views", type=int, default=schema_default("benchmarks.views"))
    p.add_argument("--channels", type=int, nargs=4, default=schema_default("model.channels"))
    p.add_argument("--blocks", type=int, default=schema_default("model.blocks"))
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", required=True, help="CSV path")
    add_config_json(p, "steps")
    return p


def from_config(v: dict) -> dict:
    return {
        "sizes": v["benchmarks.sizes"],
        "views": v["benchmarks.views"],
        "channels": v["model.channels"],
        "blocks": v["model.blocks"],
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_bench_args(build_parser(), argv, "steps", from_config)
    lib.run_steps(a.sizes, a.out, views=a.views, channels=a.channels, blocks=a.blocks,
                  device=a.device, repeats=a.repeats)  # fmt: skip
    return 0
