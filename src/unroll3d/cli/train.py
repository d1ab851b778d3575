"""``unroll3d train``: train one variant on one task and setting (:func:`unroll3d.engine.train.train`)."""

from __future__ import annotations

import argparse
import json
import sys

from unroll3d.cli.common import (
    add_config_args,
    add_progress_args,
    add_runtime_args,
    positive_int,
    read_job_config,
    setup_runtime,
)
from unroll3d.variants import TASKS, VARIANTS


def add_job_args(p: argparse.ArgumentParser, normals: bool = False) -> None:
    """--task, --setting, --variant, --normal: which job (shared with ``unroll3d evaluate``);
    ``normals``: one H file per setting of a shared model (``unroll3d train``)."""
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--setting", required=True, help="v30, v50, ... (CBCT) or R5, R10 (MRI)")
    p.add_argument(
        "--variant",
        required=True,
        help=f"a registered variant: {', '.join(VARIANTS)}, or one of the config's plugins",
    )
    if normals:
        p.add_argument(
            "--normal",
            nargs="+",
            default=None,
            help="fitted H file(s), one per setting the model trains on (variants that use H)",
        )
    else:
        p.add_argument("--normal", default=None, help="fitted H file (variants that use H)")


def check_variant(name: str) -> None:
    """``--variant`` must be registered once the job's config (and its plugins) is read."""
    if name not in VARIANTS:
        raise SystemExit(
            f"unroll3d: --variant {name!r} is not registered; known: {list(VARIANTS)} (a variant "
            "of a plugin needs the config key plugins naming it)"
        )


def start_job(parser: argparse.ArgumentParser, argv: list[str] | None):
    """``(args, config, device)`` of a ``train`` or ``evaluate`` job: ``argv`` parsed, the job's
    config read (importing its plugins), ``--variant`` checked, ``--threads`` applied."""
    args = parser.parse_args(argv)
    config = read_job_config(args, args.task, args.variant)
    check_variant(args.variant)
    return args, config, setup_runtime(args)


def _one_or_several(values):
    return values[0] if values and len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unroll3d train", description=__doc__.split("\n")[0])
    add_job_args(p, normals=True)
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help="train one model on these settings, one drawn per micro-step "
        "(train.share_across_settings; --setting is then its label, e.g. all)",
    )
    add_config_args(p)
    add_runtime_args(p)
    add_progress_args(p)
    p.add_argument("--train", nargs="+", required=True, help="training volume files")
    p.add_argument("--val", nargs="*", default=[], help="validation volume files")
    p.add_argument("--out", required=True, help="model file (.pt)")
    p.add_argument("--csv", default=None, help="per-step log (default: <out> with .csv)")
    p.add_argument("--stats", default=None, help="train stats JSON (default: <out> with .json)")
    p.add_argument(
        "--log-every", type=positive_int, default=50, help="steps per log line without a bar"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args, config, device = start_job(build_parser(), argv)
    from unroll3d.engine.train import NonFiniteLoss, TrainJob, train
    from unroll3d.normal import NormalFitMismatch

    job = TrainJob(
        task=args.task,
        setting=args.setting,
        variant=args.variant,
        config=config,
        train_paths=args.train,
        val_paths=args.val,
        out=args.out,
        csv_path=args.csv,
        stats_path=args.stats,
        normal_path=_one_or_several(args.normal),
        settings=args.settings,
        device=device,
        progress=args.progress,
        log_every=args.log_every,
    )
    try:
        stats = train(job)
    except (NonFiniteLoss, NormalFitMismatch) as err:
        print(f"unroll3d train: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
