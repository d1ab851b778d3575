# Shared Python for the rules: config validation, wildcard values, path conventions, final targets.
# Rules stay thin: they call `unroll3d <verb>` with explicit inputs and outputs.
import json

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks/rules"
RESOURCES = "resources"
CONFIG_JSON = json.dumps(config, sort_keys=True)

# Every rule runs in the project's environment (pins identical to pyproject.toml).
CONDA_ENV = "../../envs/unroll3d.yaml"

# Stage files append the files they want built by `rule all`.
FINAL_TARGETS = []


def settings(task):
    """Wildcard values of the sparse-view / acceleration settings of a task: v30, R5, ..."""
    if task == "cbct":
        return [f"v{n}" for n in config["cbct"]["views"]]
    return [f"R{r:g}" for r in config["mri"]["accelerations"]]


def join_values(values):
    """Space-separated command-line form of a config list."""
    return " ".join(str(v) for v in values)


def final_targets(wildcards):
    return FINAL_TARGETS


wildcard_constraints:
    task="cbct|mri",
    setting=r"v\d+|R[0-9.]+",
    variant="|".join(v.replace("-", r"\-") for v in config["variants"]),
