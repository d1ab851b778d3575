"""Time ``make smoke`` next to a fixed reference workload, on the same machine, in the same run.

The smoke's wall time differs 2× between machines of one kind and more under shared load; the
ratio to a reference workload timed alongside does not. Two references:

* ``import torch`` in a fresh interpreter (what every job pays at start-up), and
* a fixed float32 conv3d loop on one thread (what the jobs' compute costs).

Both run before and after the smoke, and the conv3d loop also every ``--sample-every`` s
during it (the load the jobs met). Writes ``<results>/benchmarks/smoke_time.json``: wall time,
the references, the ratios, and per-rule sums of Snakemake's benchmark files (wall ``s`` and
``cpu_time``) under ``<results>/benchmarks/rules/``.

    python benchmarks/bench_smoke.py -- snakemake --cores 2 --configfile config/smoke.yaml
    python benchmarks/bench_smoke.py --rules-only            # per-rule sums of the last run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CONV_SIZE, CONV_CHANNELS, CONV_ITERS = 32, 8, 20


def time_import_torch(repeats: int = 3) -> list[float]:
    """Wall seconds of ``python -c 'import torch'`` in a fresh interpreter, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - t0)
    return times


def time_conv3d(repeats: int = 3) -> list[float]:
    """Wall seconds of 20 forward+backward passes of one 3×3×3 conv3d (8 → 8 channels) on a 32³
    float32 volume, one thread, seeded; ``repeats`` times (in a fresh interpreter, so the
    caller's threads and imports do not touch it)."""
    code = (
        "import time, torch\n"
        "torch.set_num_threads(1)\n"
        "g = torch.Generator().manual_seed(0)\n"
        f"x = torch.randn(1, {CONV_CHANNELS}, {CONV_SIZE}, {CONV_SIZE}, {CONV_SIZE}, generator=g)\n"
        f"conv = torch.nn.Conv3d({CONV_CHANNELS}, {CONV_CHANNELS}, 3, padding=1)\n"
        f"for _ in range({repeats}):\n"
        "    t0 = time.perf_counter()\n"
        f"    for _ in range({CONV_ITERS}):\n"
        "        conv.zero_grad()\n"
        "        conv(x).square().mean().backward()\n"
        "    print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return [float(line) for line in out.stdout.split()]


def reference(repeats: int = 3) -> dict:
    imports, convs = time_import_torch(repeats), time_conv3d(repeats)
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_1min": os.getloadavg()[0],
        "import_torch_s": imports,
        "conv3d_s": convs,
        "import_torch_median_s": statistics.median(imports),
        "conv3d_median_s": statistics.median(convs),
    }


class Sampler(threading.Thread):
    """Times the conv3d reference once every ``every`` s until stopped."""

    def __init__(self, every: float):
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.samples.append({"t": time.time(), "loadavg_1min": os.getloadavg()[0],
                                 "conv3d_s": time_conv3d(1)[0]})  # fmt: skip

    def stop(self) -> list[dict]:
        self._halt.set()
        self.join()
        return self.samples


def rule_sums(rules_dir: Path) -> dict[str, dict]:
    """Per rule: jobs, and the sums of wall ``s`` and ``cpu_time`` over its benchmark files
    (``<rule>.tsv`` or ``<rule>/**/*.tsv``; the last row of each, Snakemake's last repeat)."""
    sums: dict[str, dict] = {}
    for tsv in sorted(rules_dir.rglob("*.tsv")):
        rel = tsv.relative_to(rules_dir)
        rule = rel.parts[0] if len(rel.parts) > 1 else tsv.stem
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        if not rows:
            continue
        entry = sums.setdefault(rule, {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
        entry["jobs"] += 1
        entry["wall_s"] += float(rows[-1]["s"])
        entry["cpu_s"] += float(rows[-1].get("cpu_time") or 0.0)
    for entry in sums.values():
        entry["wall_s"], entry["cpu_s"] = round(entry["wall_s"], 2), round(entry["cpu_s"], 2)
    return sums


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="the run's results folder")
    p.add_argument("--out", default=None, help="default <results>/benchmarks/smoke_time.json")
    p.add_argument("--sample-every", type=float, default=60.0, help="s between conv3d samples; 0 = none")
    p.add_argument("--label", default="", help="free text stored with the record")
    p.add_argument("--repeats", type=int, default=3, help="reference repeats before and after")
    p.add_argument("--rules-only", action="store_true", help="only the per-rule sums, no run")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the smoke command")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    results = Path(args.results)
    out = Path(args.out) if args.out else results / "benchmarks" / "smoke_time.json"
    record: dict = {"label": args.label, "host": platform.node(), "cpus": os.cpu_count()}
    if not args.rules_only:
        if not command:
            p.error("give the smoke command after --, or --rules-only")
        record["command"] = command
        record["reference_before"] = reference(args.repeats)
        sampler = Sampler(args.sample_every) if args.sample_every > 0 else None
        if sampler:
            sampler.start()
        t0 = time.perf_counter()
        rc = subprocess.run(command).returncode
        record["wall_s"] = round(time.perf_counter() - t0, 2)
        record["returncode"] = rc
        record["samples_during"] = sampler.stop() if sampler else []
        record["reference_after"] = reference(args.repeats)
        conv = [r["conv3d_median_s"] for r in (record["reference_before"], record["reference_after"])]
        conv += [s["conv3d_s"] for s in record["samples_during"]]
        imp = [r["import_torch_median_s"] for r in (record["reference_before"], record["reference_after"])]
        record["conv3d_median_s"] = statistics.median(conv)
        record["import_torch_median_s"] = statistics.median(imp)
        record["wall_over_conv3d"] = round(record["wall_s"] / record["conv3d_median_s"], 1)
        record["wall_over_import_torch"] = round(record["wall_s"] / record["import_torch_median_s"], 1)
    record["rules"] = rule_sums(results / "benchmarks" / "rules")
    record["rules_total"] = {
        k: round(sum(r[k] for r in record["rules"].values()), 2) for k in ("wall_s", "cpu_s")
    }
    write_json(out, record)
    if "wall_s" in record:
        print(
            f"smoke: {record['wall_s']:.0f} s wall (rc {record['returncode']}); reference on this "
            f"machine now: import torch {record['import_torch_median_s']:.2f} s, conv3d loop "
            f"{record['conv3d_median_s']:.2f} s; wall = {record['wall_over_conv3d']:.0f}× conv3d; "
            f"rules sum {record['rules_total']['wall_s']:.0f} s wall, "
            f"{record['rules_total']['cpu_s']:.0f} s CPU; {out}"
        )
        return int(record["returncode"])
    print(json.dumps(record["rules_total"]), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
