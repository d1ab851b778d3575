# Paper outputs (unroll3d report) and the reviewer artifact (unroll3d manifest).
#   normal_illustration  one small .npz per task × setting with the panels of Figs. 9/10 (the only
#                        step here that applies an operator; a compute rule, separate from plots)
#   tables_figures       Table 1 (CBCT), Table 2 (MRI), the ablation (CSV, Markdown, LaTeX) and
#                        the figures (PNG, PDF), from small files only: re-renders in seconds
#                        (`make paper`, or `unroll3d report --results results --config <yaml>`)
#   manifest             results/manifest.json: sha256 + producing rule of every file under
#                        results/, input checksums, software versions, hardware, commit, config
# Outputs are report() items with captions in workflow/report/, categorised by paper section.
import os

REPORT_TABLES = paths.tables_dir(RESULTS)
REPORT_FIGURES = paths.figures_dir(RESULTS)
ILLUSTRATIONS = paths.illustrations_dir(RESULTS)
REPORT_CONFIG = config.get("report", {})
# The report gets only the keys it reads; the manifest records the whole config (it is the
# reviewer's record of the run, and runs last).
REPORT_CONFIG_JSON = u3config.dumps(u3config.report_config(config))
FULL_CONFIG_JSON = u3config.dumps(config)
# config files named from the repository root (the Snakefile's folder), also under --directory
CONFIG_LABEL = (
    " ".join(os.path.relpath(f, workflow.basedir) for f in workflow.configfiles)
    or "config/config.yaml"
)

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


rule normal_illustration:
    input:
        fit=paths.normal_fit(RESULTS, "{task}", "{setting}"),
        sample=lambda wildcards: sample_path(wildcards.task, normal_reference_volume(wildcards.task)),
    output:
        paths.illustration(RESULTS, "{task}", "{setting}"),
    log:
        f"{LOGS}/normal_illustration/{{task}}/{{setting}}.log",
    benchmark:
        f"{BENCH}/normal_illustration/{{task}}/{{setting}}.tsv"
    threads: 2
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d report normal-illustration --normal {input.fit}"
        " --data {input.sample} --setting {wildcards.setting} --out {output}"
        " --threads {threads} --device auto > {log} 2>&1"


rule tables_figures:
    input:
        unpack(report_bench_inputs),
        evals=report_eval_inputs(),
        illustrations=illustration_targets(),
    output:
        **report_outputs(),
    params:
        results=lambda wildcards, output: Path(output.table1_cbct_md).parents[1],
        tables=lambda wildcards, output: Path(output.table1_cbct_md).parent,
        figures=lambda wildcards, output: Path(output.fig1_data_vs_network_png).parent,
        illustrations=lambda wildcards, input: Path(input.illustrations[0]).parent
        if input.illustrations
        else ILLUSTRATIONS,
        config=REPORT_CONFIG_JSON,
        label=CONFIG_LABEL,
        bench=report_bench_args,
    log:
        f"{LOGS}/report/tables_figures.log",
    benchmark:
        f"{BENCH}/report/tables_figures.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d report --results {params.results} --config-json '{params.config}'"
        " --config-label '{params.label}' --tables {params.tables} --figures {params.figures}"
        " --normal-dir {params.illustrations} {params.bench} > {log} 2>&1"


FINAL_TARGETS.extend(rules.tables_figures.output)

# Everything else the run produces is an input, so the manifest is written last and lists it.
MANIFEST_INPUTS = list(FINAL_TARGETS)


rule manifest:
    input:
        MANIFEST_INPUTS,
    output:
        report(
            f"{RESULTS}/manifest.json",
            caption="../report/manifest.rst",
            category="Reviewer artifact",
        ),
    params:
        results=lambda wildcards, output: Path(output[0]).parent,
        configfiles=CONFIG_LABEL,
        config=FULL_CONFIG_JSON,
        inputs=join_values(REPORT_CONFIG.get("input_checksums", [RESOURCES])),
    log:
        f"{LOGS}/report/manifest.log",
    benchmark:
        f"{BENCH}/report/manifest.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d manifest --results {params.results} --out {output} --config {params.configfiles}"
        " --config-json '{params.config}'"
        " --inputs {params.inputs} --exclude report.html benchmarks/rules/report/manifest.tsv"
        " > {log} 2>&1"


FINAL_TARGETS.extend(rules.manifest.output)

localrules:
    tables_figures,
    manifest,
