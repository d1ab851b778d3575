# Shared Python for the rules: config validation, wildcard values, path conventions, and
# get_final_output() (the default rule's targets, computed from the config alone). It stands alone;
# it uses no name defined in the stage files, which are included after it.
# Rules stay thin: they call `unroll3d <verb>` with explicit inputs and outputs.
import json
import os
import shlex
from pathlib import Path

from snakemake.utils import validate

import unroll3d.config as u3config
from unroll3d import paths
from unroll3d.bench.settings import bench_config
from unroll3d.data.masks import challenge_mask_files
from unroll3d.data.weights import DOWNLOAD as DPIR_DOWNLOAD, weights_file as dpir_weights_file
from unroll3d.plugins import plugins_for, without_empty_plugins
from unroll3d.variants import VARIANTS, needs_H


# The schema is package data (unroll3d/schemas): the library and the workflow validate with the
# same file. The library's check runs first: its error is one line naming the key, and it also
# checks the values' meaning (unroll3d.config.check_values) and the variant registry, after
# importing the config's plugins (unroll3d.plugins), whose variants VARIANTS then holds.
u3config.validate(config)
validate(config, "../../src/unroll3d/schemas/config.schema.yaml")
u3config.check_patch_sizes(config)  # -1 patch entries (the whole axis) resolved once, in place

# CPU threads of the compute jobs (config job_threads; Snakemake lowers it to --cores).
JOB_THREADS = config["job_threads"]

RESULTS = "results"
LOGS = paths.logs_dir(RESULTS)
BENCH = f"{paths.benchmarks_dir(RESULTS)}/rules"
RESOURCES = "resources"

# Every rule runs in the project's environment (pins identical to pyproject.toml).
CONDA_ENV = "../../envs/unroll3d.yaml"

DATA_SPLITS = ("train", "val", "test")
BENCH_CFG = config["benchmarks"]
BENCH_OUT = paths.benchmarks_dir(RESULTS)
# the benchmark rules' CSVs (bench.smk), also read by the report
BENCH_CSV = {
    name: f"{BENCH_OUT}/{name}.csv"
    for name in ("bench_steps", "bench_physics", "bench_partition", "bench_normal", "bench_normal_floor")
}
BENCH_NORMAL_FLOOR_MD = f"{BENCH_OUT}/bench_normal_floor.md"

REPORT_TABLES = paths.tables_dir(RESULTS)
REPORT_FIGURES = paths.figures_dir(RESULTS)
MANIFEST = f"{RESULTS}/manifest.json"
# table -> (caption, category); figure -> (caption, category)
TABLE_ITEMS = {
    "table1_cbct": ("table1_cbct.rst", "Table 1 · Walnut-CBCT (§6.1)"),
    "table2_mri": ("table2_mri.rst", "Table 2 · MC-MRI (§6.2)"),
    "table_ablation": ("table_ablation.rst", "Ablation (§6.3)"),
    "table_datastep": ("table_datastep.rst", "Data-step speed (§6.4)"),
    "claims": ("claims.rst", "Claims · does the paper hold in this run?"),
}
FIGURE_ITEMS = {
    "fig1_data_vs_network": ("fig1_data_vs_network.rst", "Fig. 1 · data step vs network step"),
    "fig2_partition_schematic": ("fig2_partition_schematic.rst", "Fig. 2 · domain partitioning (§4.3)"),
    "fig_normal_cbct": ("fig_normal.rst", "Figs. 9-10 · normal operator H (§4.5)"),
    "fig_normal_mri": ("fig_normal.rst", "Figs. 9-10 · normal operator H (§4.5)"),
    "fig_slices_cbct": ("fig_slices.rst", "Figs. 3-4 · qualitative slices"),
    "fig_slices_mri": ("fig_slices.rst", "Figs. 3-4 · qualitative slices"),
    "fig_psnr_vs_setting": ("fig_psnr_vs_setting.rst", "Tables 1-2 · PSNR vs views / acceleration"),
    "fig_partition_memory": ("fig_partition_memory.rst", "Partitioned memory (§4.3)"),
    "fig7_patch_sweep_cbct": ("fig_patch_sweep.rst", "Figs. 7-8 · patch-size sweep"),
    "fig8_patch_sweep_mri": ("fig_patch_sweep.rst", "Figs. 7-8 · patch-size sweep"),
}


def settings(task):
    """Wildcard values of the sparse-view / acceleration settings of a task: v30, R5, ..."""
    if task == "cbct":
        return [f"v{n}" for n in config["cbct"]["views"]]
    return [f"R{r:g}" for r in config["mri"]["accelerations"]]


def join_values(values):
    """Space-separated command-line form of a config list."""
    return " ".join(str(v) for v in values)


def shell_words(values):
    """Space-separated, shell-quoted form of strings or paths (shlex.quote: a name or path with
    an apostrophe, a space or `$(...)` reaches the command as one literal word). Whole params
    are quoted in the shell lines with Snakemake's `{params.x:q}`, which is shlex.quote too."""
    return " ".join(shlex.quote(str(v)) for v in values)


def bench_config_json(name):
    """The config values benchmark `name` reads (unroll3d.bench.settings.KEYS) as the JSON of its
    --config-json; as params, a change to any other key reruns none of its jobs."""
    return u3config.dumps(bench_config(config, name))


def _job_config(task, variant=None):
    """job_config of the task, plus the plugins list for a job of a plugin's variant
    (unroll3d.plugins.plugins_for: the package's variants' jobs never see it)."""
    return {**u3config.job_config(config, task), **plugins_for(config, [variant] if variant else [])}


def job_config_json(wildcards):
    """The part of the config that train/evaluate read for the job's task (params: a change to
    any other key reruns none of these jobs under --rerun-triggers params)."""
    return u3config.dumps(_job_config(wildcards.task, getattr(wildcards, "variant", None)))


def _training_view(job_cfg):
    """A job config without evaluate.mri_ground_truth: training never reads it (its validation
    and the TV/PnP choice score the coil-combined image it trains on), so switching the MRI
    reference reruns only the evaluations."""
    job_cfg.get("evaluate", {}).pop("mri_ground_truth", None)
    return u3config.dumps(job_cfg)


def train_config_json(wildcards):
    """job_config_json as the train rule gets it (_training_view)."""
    return _training_view(_job_config(wildcards.task, wildcards.variant))


def plugin_files(variants):
    """`{"plugins": [...]}`: the `.py` plugin files a job of `variants` imports (plugins_for), as
    an input, so editing one reruns exactly those jobs (mtime); `{}` for the package's variants.
    A module-name entry has no file here to track."""
    files = [e for e in plugins_for(config, variants).get("plugins", []) if e.endswith(".py")]
    return {"plugins": files} if files else {}


def gpu_for(wildcards):
    """resources: gpu = 1 for the variants that run on a GPU (registry), else 0."""
    return 1 if VARIANTS[wildcards.variant].gpu else 0


wildcard_constraints:
    task="cbct|mri",
    setting=r"v\d+|R[0-9.]+|all",
    variant="|".join(v.replace("-", r"\-") for v in config["variants"]),


# ---- data stage helpers (used by workflow/rules/data.smk) ----


def volumes(task, split):
    """Volume ids of a split: ["walnut3", ...] (cbct) or HDF5 stems (mri); split may be "all"."""
    splits = config[task]["splits"]
    names = DATA_SPLITS if split == "all" else (split,)
    out = []
    for name in names:
        for v in splits.get(name, []):
            out.append(f"walnut{v}" if task == "cbct" else str(v))
    return out


def _check_splits():
    """Stop at DAG time if a volume sits in two splits (test leakage)."""
    for task in config["tasks"]:
        seen = {}
        for name in DATA_SPLITS:
            for v in config[task]["splits"].get(name, []):
                if v in seen:
                    raise ValueError(f"config {task}.splits: volume {v!r} is in both {seen[v]} and {name}")
                seen[v] = name


def sample_path(task, volume):
    """Preprocessed file of one volume (input of fit-normal, train, evaluate)."""
    return paths.sample(RESULTS, task, volume)


def _toy(task):
    return config[task]["source"] == "toy"


def _registry_args(task):
    return f"--registry {RESOURCES}/{task}/toy/registry.csv --serve {RESOURCES}/{task}/toy" if _toy(task) else ""


def _walnut_numbers():
    return sorted({int(v) for s in DATA_SPLITS for v in config["cbct"]["splits"].get(s, [])})


def _stored_views():
    """--views argument: store only the union of the settings' views unless store_all_views."""
    if config["cbct"].get("store_all_views", False):
        return ""
    return "--views " + " ".join(str(v) for v in config["cbct"]["views"])


def _expect_shape(task):
    """--expect-shape (and --expect-coils) of a preprocess job: the toy's sizes from the config,
    else the data set's known layout (Walnut 501³; Calgary-Campinas 256 × 218 × 170/180 × 24)."""
    if not _toy(task):
        return "--expect-shape " + {"cbct": "walnut", "mri": "calgary-campinas"}[task]
    shape = " ".join(str(n) for n in u3config.volume_shape(config, task))
    coils = f" --expect-coils {lookup(dpath='mri/toy/coils', within=config, default=4)}" if task == "mri" else ""
    return f"--expect-shape {shape}{coils}"


def _challenge_masks():
    """The challenge's mask files of every grid size for each acceleration (mask_source
    challenge; a volume uses the file of its own ky×kz size), else none."""
    if config["mri"].get("mask_source", "seeded") != "challenge":
        return []
    names = challenge_mask_files(config["mri"]["accelerations"])  # R without masks: stops here
    return [f"{RESOURCES}/mri/raw/{name}" for name in names]


# ---- normal stage helpers (used by workflow/rules/normal.smk) ----


def normal_reference_volume(task):
    """Volume id whose operator H is fitted to (config normal.reference.<task>, else the first
    training volume)."""
    chosen = config["normal"].get("reference", {}).get(task)
    return chosen if chosen else volumes(task, "train")[0]


def normal_input(wildcards):
    return sample_path(wildcards.task, normal_reference_volume(wildcards.task))


# ---- train stage helpers (used by workflow/rules/train.smk) ----


def normal_for(task, setting, variant, volume=None):
    """The fitted H a variant needs as input ({"normal": path(s)} for the -H variants, else {}):
    a model shared across settings (setting "all") trains with every setting's; an evaluation
    on a per-sample task (normal.per_sample) uses the fit of its own test volume. MRI under
    normal.mri_h mask builds each sample's H from its own mask and takes only m from the
    setting's fit (no per-sample fits); under mask-coils it needs no fit at all."""
    if not needs_H(variant):
        return {}
    mri_h = config["normal"].get("mri_h", "mask") if task == "mri" else "fit"
    if mri_h == "mask-coils":
        return {}
    per_sample = task in config["normal"].get("per_sample", ["mri"]) and mri_h == "fit"
    if volume is not None and per_sample:
        return {"normal": paths.normal_fit_sample(RESULTS, task, setting, volume)}
    sets = u3config.model_settings(config, task, setting)
    return {"normal": [paths.normal_fit(RESULTS, task, s) for s in sets]}


def model_inputs(model_base, task, volume):
    """A trained model (.pt), its training statistics (.json) and one test volume."""
    return {
        "model": f"{model_base}.pt",
        "stats": f"{model_base}.json",
        "sample": sample_path(task, volume),
    }


def training_volumes(task):
    return {
        "train": [sample_path(task, v) for v in volumes(task, "train")],
        "val": [sample_path(task, v) for v in volumes(task, "val")],
    }


def dpir_download():
    """The weights file that train.dpir_weights: download fetches (rule download_dpir_weights),
    else None."""
    t = config.get("train", {})
    if t.get("dpir_weights") != DPIR_DOWNLOAD:
        return None
    return dpir_weights_file(DPIR_DOWNLOAD, t.get("dpir_denoiser", "ram"), f"{RESOURCES}/weights")


def pretrained_weights(variant):
    """DPIR's weights file as an input ({"weights": path}): the downloaded one, or a hand-placed
    one when it exists; absent, the job records "weights not available"."""
    if VARIANTS[variant].kind != "dpir":
        return {}
    downloaded = dpir_download()
    if downloaded:  # with the SHA-256 record the download writes next to it
        return {"weights": downloaded, "weights_record": f"{downloaded}.sha256"}
    path = config.get("train", {}).get("dpir_weights")
    if path and Path(path).is_file():
        return {"weights": path}
    return {}


def train_inputs(wildcards):
    return {
        **training_volumes(wildcards.task),
        **normal_for(wildcards.task, wildcards.setting, wildcards.variant),
        **pretrained_weights(wildcards.variant),
        **plugin_files([wildcards.variant]),
    }


def normal_arg(wildcards, input):
    """`--normal FILE...` for the variants that use the fitted H, else nothing."""
    if "normal" not in input.keys():
        return ""
    normal = input.normal
    return f"--normal {shell_words([normal] if isinstance(normal, str) else normal)}"


def settings_arg(wildcards):
    """`--settings v30 v50 ...` for a model shared across settings (setting "all")."""
    if wildcards.setting != u3config.SHARED_SETTING:
        return ""
    return f"--settings {join_values(u3config.task_settings(config, wildcards.task))}"


# ---- evaluate stage helpers (used by workflow/rules/evaluate.smk) ----


def model_setting(setting, variant):
    """The {setting} of the model evaluated under `setting` ("all" when shared)."""
    return u3config.model_setting(config, variant, setting)


def evaluate_inputs(wildcards):
    setting = model_setting(wildcards.setting, wildcards.variant)
    base = paths.model_base(RESULTS, wildcards.task, setting, wildcards.variant)
    return {
        **model_inputs(base, wildcards.task, wildcards.volume),
        **normal_for(wildcards.task, wildcards.setting, wildcards.variant, wildcards.volume),
        **plugin_files([wildcards.variant]),
    }


def eval_targets():
    return [
        paths.eval_json(RESULTS, task, setting, variant, volume)
        for task in config["tasks"]
        for setting in settings(task)
        for variant in config["variants"]
        for volume in volumes(task, "test")
    ]


# ---- patch-size sweep helpers (used by workflow/rules/sweep.smk; Figs. 7/8) ----

SWEEP = config["sweep"]


def sweep_model_setting(task):
    """The {setting} of the sweep's models: "all" when shared across settings, else the first."""
    return model_setting(settings(task)[0], SWEEP["variant"])


def sweep_trained_patches(task):
    """Sweep patches that need their own model: the main patch reuses the main model."""
    return [
        paths.patch_label(p)
        for p in (SWEEP[task] if SWEEP["enabled"] and task in config["tasks"] else [])
        if not u3config.sweep_reuses_main(config, task, p)
    ]


def _sweep_job_config(wildcards):
    """sweep_job_config at the {patch} wildcard, plus the plugins list for a plugin's variant."""
    patch = paths.parse_patch_label(wildcards.patch)
    out = u3config.sweep_job_config(config, wildcards.task, patch)
    return {**out, **plugins_for(config, [SWEEP["variant"]])}


def sweep_config_json(wildcards):
    """job_config_json with the task's patch size replaced by the {patch} wildcard."""
    return u3config.dumps(_sweep_job_config(wildcards))


def sweep_train_config_json(wildcards):
    """sweep_config_json as the train_sweep rule gets it (_training_view)."""
    return _training_view(_sweep_job_config(wildcards))


def sweep_train_inputs(wildcards):
    return {
        **training_volumes(wildcards.task),
        **normal_for(wildcards.task, wildcards.setting, SWEEP["variant"]),
        **plugin_files([SWEEP["variant"]]),
    }


def sweep_evaluate_inputs(wildcards):
    setting = sweep_model_setting(wildcards.task)
    base = paths.sweep_model_base(RESULTS, wildcards.task, setting, wildcards.patch)
    return {
        **model_inputs(base, wildcards.task, wildcards.volume),
        **normal_for(wildcards.task, wildcards.setting, SWEEP["variant"], wildcards.volume),
        **plugin_files([SWEEP["variant"]]),
    }


def sweep_eval_targets():
    return [
        paths.sweep_eval_json(RESULTS, task, setting, patch, volume)
        for task in config["tasks"]
        for patch in sweep_trained_patches(task)
        for setting in u3config.sweep_settings(config, task)
        for volume in volumes(task, "test")
    ]


# ---- benchmark stage helpers (used by workflow/rules/bench.smk) ----

ACCURACY_VARIANTS = ("partition", "partition-H")


def accuracy_case(task):
    """(setting, volume) the accuracy diagnostic runs on: the task's first of each."""
    return settings(task)[0], volumes(task, "test")[0]


def accuracy_inputs(wildcards):
    setting, volume = accuracy_case(wildcards.task)
    models = {
        v.replace("-", "_"): paths.model_base(
            RESULTS, wildcards.task, model_setting(setting, v), v
        )
        + ".pt"
        for v in ACCURACY_VARIANTS
    }
    return {
        **models,
        "sample": sample_path(wildcards.task, volume),
        **normal_for(wildcards.task, setting, "partition-H", volume),
    }


def accuracy_targets():
    """The diagnostic's CSVs, when benchmarks run and both partitioned variants are trained."""
    if not config["benchmarks"]["enabled"] or not set(ACCURACY_VARIANTS) <= set(config["variants"]):
        return []
    return [f"{paths.benchmarks_dir(RESULTS)}/accuracy/{task}.csv" for task in config["tasks"]]


# ---- report stage helpers (used by workflow/rules/report.smk) ----


def report_eval_inputs():
    """Every requested evaluation JSON and its slices (.npz) (eval_targets() of evaluate.smk),
    and the patch-size sweep's evaluations (sweep.smk)."""
    jsons = eval_targets()
    return jsons + [j[: -len(".json")] + ".npz" for j in jsons] + sweep_eval_targets()


def _report_variants():
    return [*config["variants"], SWEEP["variant"]]


def report_config_json():
    """The keys the report reads (unroll3d.config.report_config), plus the plugins list when a
    listed or swept variant is a plugin's (it reads their labels from the registry)."""
    read = _report_variants()
    return u3config.dumps({**u3config.report_config(config), **plugins_for(config, read)})


def report_plugin_inputs(wildcards):
    """The `.py` plugin files the report imports (plugin_files) when it reads a plugin's variant."""
    return plugin_files(_report_variants())


def manifest_config_json():
    """The whole config as the manifest records it; an empty `plugins` (the schema's default)
    left out, so the manifest job of a run without plugins is the one it was before the key."""
    return u3config.dumps(without_empty_plugins(config))


def report_bench_inputs(wildcards):
    """Benchmark CSVs the figures read (bench.smk), when benchmarks run."""
    if not BENCH_CFG["enabled"]:
        return {}
    out = {name: BENCH_CSV[name] for name in ("bench_steps", "bench_partition", "bench_normal")}
    if accuracy_targets():
        out["bench_accuracy"] = accuracy_targets()
    return out


def report_bench_args(wildcards, input):
    keys = input.keys()
    args = []
    if "bench_steps" in keys:
        args.append(f"--bench-steps {input.bench_steps}")
    if "bench_partition" in keys:
        args.append(f"--bench-partition {input.bench_partition}")
    if "bench_normal" in keys:
        args.append(f"--bench-normal {input.bench_normal}")
    if "bench_accuracy" in keys:
        args.append(f"--bench-accuracy {input.bench_accuracy}")
    return " ".join(args)


def illustration_targets():
    return [
        paths.illustration(RESULTS, task, setting)
        for task in config["tasks"]
        for setting in settings(task)
    ]


def report_outputs():
    """The tables and figures as report() items (the PDF and LaTeX copies as plain outputs)."""
    out = {}
    for name, (caption, category) in TABLE_ITEMS.items():
        for ext in ("md", "csv"):
            out[f"{name}_{ext}"] = report(
                f"{REPORT_TABLES}/{name}.{ext}",
                caption=f"../report/{caption}",
                category=category,
                subcategory="Markdown" if ext == "md" else "CSV (tidy, one row per cell)",
                labels={"table": name, "format": ext},
            )
        out[f"{name}_tex"] = f"{REPORT_TABLES}/{name}.tex"
    for name, (caption, category) in FIGURE_ITEMS.items():
        out[f"{name}_png"] = report(
            f"{REPORT_FIGURES}/{name}.png",
            caption=f"../report/{caption}",
            category=category,
            labels={"figure": name},
        )
        out[f"{name}_pdf"] = f"{REPORT_FIGURES}/{name}.pdf"
    return out


# ---- what `rule all` builds ----


def data_targets():
    """Every preprocessed volume, and the FDK geometry check of the first CBCT test walnut."""
    out = [sample_path(task, v) for task in config["tasks"] for v in volumes(task, "all")]
    if "cbct" in config["tasks"] and volumes("cbct", "test"):
        out.append(f"{RESULTS}/data/cbct/fdk_check/{volumes('cbct', 'test')[0]}.json")
    return out


def bench_targets():
    """The benchmark rules' outputs (bench.smk), when benchmarks run."""
    if not BENCH_CFG["enabled"]:
        return []
    return [*BENCH_CSV.values(), BENCH_NORMAL_FLOOR_MD]


def report_targets():
    """The tables and figures (tables_figures in report.smk), as plain paths."""
    return [str(f) for f in report_outputs().values()]


def get_final_output(manifest=True):
    """Every file `rule all` builds, computed from the config. Without `manifest` it is the
    manifest's own input list: everything else the run produces."""
    out = [
        *data_targets(),
        *eval_targets(),
        *sweep_eval_targets(),
        *accuracy_targets(),
        *bench_targets(),
        *report_targets(),
    ]
    return out + [MANIFEST] if manifest else out
