"""``unroll3d evaluate``: evaluate one variant on one test volume
(:func:`unroll3d.engine.evaluate.evaluate_volume`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unroll3d.cli.common import add_config_args, add_runtime_args
from unroll3d.cli.train import add_job_args, start_job


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unroll3d evaluate", description=__doc__.split("\n")[0])
    add_job_args(p)
    add_config_args(p)
    add_runtime_args(p)
    p.add_argument("--model", required=True, help="model file written by unroll3d train")
    p.add_argument("--sample", required=True, help="test volume file (results/data/...)")
    p.add_argument("--volume", default=None, help="volume id (default: the file stem)")
    p.add_argument("--train-stats", default=None, help="train stats JSON of the model")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--slices", default=None, help="optional .npz of axial/vertical slices")
    return p


def main(argv: list[str] | None = None) -> int:
    args, config, device = start_job(build_parser(), argv)
    from unroll3d.engine.evaluate import evaluate_volume
    from unroll3d.engine.samples import default_loader
    from unroll3d.normal import NormalFitMismatch
    from unroll3d.utils import atomic_write_json

    sample = default_loader(args.setting, device)(args.sample)
    try:
        result = evaluate_volume(
            args.task,
            args.setting,
            args.variant,
            config,
            args.model,
            sample,
            args.volume or Path(args.sample).stem,
            device,
            normal_path=args.normal,
            train_stats_path=args.train_stats,
            slices_path=args.slices,
        )
    except NormalFitMismatch as err:
        print(f"unroll3d evaluate: {err}", file=sys.stderr)
        return 1
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("status", "psnr", "ssim")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
