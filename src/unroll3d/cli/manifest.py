"""``unroll3d manifest``: write ``results/manifest.json`` (:mod:`unroll3d.manifest`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unroll3d.manifest import write_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="unroll3d manifest",
        description="Write results/manifest.json: sha256 and producing rule of every output, "
        "input checksums, software versions, hardware, git commit, config.",
    )
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--out", default=None, help="manifest path (default: RESULTS/manifest.json)")
    p.add_argument("--config", nargs="*", default=None, help="workflow config YAML file(s) used")
    p.add_argument("--config-json", default=None, help="the resolved config as JSON (Snakemake)")
    p.add_argument(
        "--inputs",
        nargs="*",
        default=["resources"],
        help="input-data folders/files to checksum (default: resources)",
    )
    p.add_argument("--rules", default=None, help="JSON file {path: rule} (wins over .snakemake)")
    p.add_argument("--workdir", default=".", help="folder holding .snakemake/ and the git checkout")
    p.add_argument("--include-logs", action="store_true", help="also list RESULTS/logs/")
    p.add_argument("--exclude", nargs="*", default=[], help="extra glob patterns to leave out")
    p.add_argument("--no-reuse", action="store_true", help="re-hash every file")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.results) / "manifest.json"
    rules = None
    try:
        if args.rules:
            rules = json.loads(Path(args.rules).read_text())
            if not isinstance(rules, dict):
                raise ValueError(f"{args.rules}: expected a JSON object {{path: rule}}")
        m = write_manifest(
            out,
            results=args.results,
            config=args.config,
            config_resolved=json.loads(args.config_json) if args.config_json else None,
            inputs=args.inputs,
            rules=rules,
            workdir=args.workdir,
            include_logs=args.include_logs,
            exclude=args.exclude,
            reuse=not args.no_reuse,
        )
    except (OSError, ValueError) as err:
        print(f"unroll3d manifest: error: {err}", file=sys.stderr)
        return 1
    s = m["summary"]
    print(
        f"wrote {out}: {s['files']} files ({s['bytes'] / 1e6:.1f} MB), "
        f"{s['files_without_rule']} without a known rule, {s['inputs']} input files"
    )
    return 0
