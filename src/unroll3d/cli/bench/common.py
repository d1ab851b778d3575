"""What the benchmarks' parsers share: ``--config-json`` (the config values a workflow rule
passes, :mod:`unroll3d.bench.settings`), the schema's default of an option that mirrors a
config key, and the GPU checks' refusal to run without a GPU unless ``--tiny``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from unroll3d.bench.settings import KEYS, schema_default

__all__ = ["add_config_json", "parse_bench_args", "require_cuda", "schema_default"]


def add_config_json(p: argparse.ArgumentParser, name: str) -> None:
    """``--config-json``: the config values benchmark ``name`` reads, as the rule passes them."""
    p.add_argument(
        "--config-json",
        metavar="JSON",
        help=f"the config values this benchmark reads ({', '.join(KEYS[name])}) as JSON, "
        "validated against the schema; they set the options they mirror (flags still win)",
    )


def parse_bench_args(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    name: str,
    from_config: Callable[[dict[str, Any]], dict[str, Any]],
) -> argparse.Namespace:
    """Parse ``argv``; with ``--config-json``, ``from_config`` maps its values (dotted key ->
    value) to option defaults first, so a flag given too still wins."""
    from unroll3d.bench.settings import bench_values
    from unroll3d.config import ConfigError

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-json")
    known, _ = pre.parse_known_args(argv)
    if known.config_json is not None:
        try:
            defaults = from_config(bench_values(known.config_json, name))
        except ConfigError as err:  # one line naming the key, no traceback
            p.error(str(err))
        p.set_defaults(**defaults)
        for action in p._actions:  # an option the config sets is no longer required
            if action.dest in defaults:
                action.required = False
    return p.parse_args(argv)


def require_cuda(p: argparse.ArgumentParser, tiny: bool) -> None:
    """A usage error when no CUDA device is present, unless ``--tiny`` (the CPU toy check)."""
    import torch

    from unroll3d.bench.gpu_recorder import NO_CUDA

    if not tiny and not torch.cuda.is_available():
        p.error(NO_CUDA)
