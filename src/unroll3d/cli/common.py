"""Arguments shared by the verbs, defined once: ``--config``/``--config-json``, ``--device``,
``--threads`` and ``--progress``, and the argparse types of a count and a device (the library's
checks :func:`unroll3d.utils.check_count` / :func:`~unroll3d.utils.check_device`, whose
ValueError argparse prints as ``argument --x: <message>``)."""

from __future__ import annotations

import argparse

from unroll3d.utils import check_count, check_device


def positive_int(text: str) -> int:
    """argparse type of a count that must be ≥ 1 (``--threads 0`` is refused, not ignored)."""
    try:
        return check_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device_arg(name: str) -> str:
    """argparse type of ``--device``: a device this machine has (auto, lock, cpu, cuda, cuda:N)."""
    try:
        return check_device(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_config_args(
    p: argparse.ArgumentParser, required: bool = True, cut: str = "unroll3d.config.job_config"
) -> None:
    """``--config`` or ``--config-json`` (one of them; ``required`` says whether one must be
    given); ``cut`` names the function that cuts the job's section, for the help."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--config", help="pipeline config YAML (validated, defaults filled)")
    g.add_argument(
        "--config-json", help=f"the job's config section as JSON text (what the rules pass: {cut})"
    )


def add_runtime_args(p: argparse.ArgumentParser, lock: bool = False) -> None:
    """--device and --threads; ``lock`` adds the device value ``lock`` (pick and lock a free GPU
    in-process with :func:`unroll3d.devices.job_device`, for runs outside `unroll3d device run`)."""
    help_text = "auto (CUDA when available; use under `unroll3d device run`) | cpu | cuda | cuda:N"
    if lock:
        help_text += " | lock (pick and lock a free GPU here)"
    p.add_argument("--device", default="auto", help=help_text)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (≥ 1)")


def add_progress_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show a progress bar (default: only on a terminal; logs get a line per N steps)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="never show one")


def read_job_config(args: argparse.Namespace, task: str, variant: str | None = None) -> dict:
    """The job's config section: from ``--config`` (whole file, validated, then cut to the job's
    keys) or ``--config-json`` (already cut by the workflow; validated against the schema's
    types and values again, defaults filled); for a plugin's ``variant``, with the config's
    ``plugins`` list (:func:`unroll3d.plugins.plugins_for`: the run fingerprint covers them)."""
    from unroll3d.config import ConfigError, config_from_json, job_config, load_config
    from unroll3d.plugins import plugins_for

    try:
        full = load_config(args.config) if args.config else config_from_json(args.config_json)
        return {**job_config(full, task), **plugins_for(full, [variant] if variant else [])}
    except ConfigError as err:  # a clear one-line error naming the key, no traceback
        raise SystemExit(f"unroll3d: {err}") from None


def setup_runtime(args: argparse.Namespace):
    """Apply ``--threads`` and return the ``torch.device`` of ``--device``."""
    import torch

    from unroll3d.engine.device import resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)
