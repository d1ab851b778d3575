"""``unroll3d device run -- CMD`` / ``unroll3d device count`` (:mod:`unroll3d.devices`): imports
neither torch nor numpy, so the wrapper costs a bare interpreter's start-up."""

from __future__ import annotations

import argparse
import os
import sys

from unroll3d.devices import DEFAULT_LOCK_DIR, acquire_gpu, exec_holding_lock, gpu_ids


def main(argv: list[str] | None = None) -> int:
    """``unroll3d device run -- CMD...``: run CMD with CUDA_VISIBLE_DEVICES set to a free GPU.

    Finds the cards without torch or CUDA (:func:`gpu_ids`), locks one and becomes CMD, so it
    costs a bare interpreter's start-up; CMD does the CUDA work."""
    parser = argparse.ArgumentParser(prog="unroll3d device", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run a command on one free GPU (or the CPU)")
    run.add_argument("--lock-dir", default=str(DEFAULT_LOCK_DIR))
    run.add_argument("--timeout", type=float, default=None)
    run.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("count", help="print the number of CUDA devices a job may be given")
    args = parser.parse_args(argv)
    try:
        ids = gpu_ids()
    except ValueError as err:
        print(f"unroll3d device: {err}", file=sys.stderr)
        return 2
    if args.action == "count":
        print(len(ids))
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after 'run --'")
    env = dict(os.environ)
    if not ids:
        print("unroll3d device: no CUDA device, running on the CPU", file=sys.stderr)
        env["CUDA_VISIBLE_DEVICES"] = ""
        return exec_holding_lock(command, env, None)
    lock = acquire_gpu(len(ids), args.lock_dir, args.timeout)
    env["CUDA_VISIBLE_DEVICES"] = ids[lock.index]
    print(f"unroll3d device: GPU {ids[lock.index]}", file=sys.stderr)
    return exec_holding_lock(command, env, lock)
