# Paper outputs (unroll3d report) and the reviewer artifact (unroll3d manifest).
#   normal_illustration  one small .npz per task × setting with the panels of Figs. 9/10 (the only
#                        step here that applies an operator; a compute rule, separate from plots)
#   tables_figures       Table 1 (CBCT), Table 2 (MRI), the ablation (CSV, Markdown, LaTeX) and
#                        the figures (PNG, PDF), from small files only: re-renders in seconds
#                        (`make paper`, or `unroll3d report --results results --config <yaml>`)
#   manifest             results/manifest.json: sha256 + producing rule of every file under
#                        results/, input checksums, software versions, hardware, commit, config
# Outputs are report() items with captions in workflow/report/, categorised by paper section.
ILLUSTRATIONS = paths.illustrations_dir(RESULTS)
REPORT_CONFIG = config.get("report", {})
# The report gets only the keys it reads; the manifest records the whole config (it is the
# reviewer's record of the run, and runs last).
REPORT_CONFIG_JSON = report_config_json()
FULL_CONFIG_JSON = manifest_config_json()
# config files named from the repository root (the Snakefile's folder), also under --directory
CONFIG_FILES = [os.path.relpath(f, workflow.basedir) for f in workflow.configfiles] or [
    "config/config.yaml"
]
CONFIG_LABEL = " ".join(CONFIG_FILES)
# the same files as a job opens them: from the working directory (--directory) the jobs run in
CONFIG_PATHS = [os.path.relpath(f) for f in workflow.configfiles] or CONFIG_FILES


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
    threads: JOB_THREADS
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
        unpack(report_plugin_inputs),
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
        "unroll3d report --results {params.results} --config-json {params.config:q}"
        " --config-label {params.label:q} --tables {params.tables} --figures {params.figures}"
        " --normal-dir {params.illustrations} {params.bench} > {log} 2>&1"



# Everything else the run produces is an input, so the manifest is written last and lists it.
rule manifest:
    input:
        get_final_output(manifest=False),
    output:
        report(
            MANIFEST,
            caption="../report/manifest.rst",
            category="Reviewer artifact",
        ),
    params:
        results=lambda wildcards, output: Path(output[0]).parent,
        configfiles=CONFIG_PATHS,
        config=FULL_CONFIG_JSON,
        inputs=REPORT_CONFIG.get("input_checksums", [RESOURCES]),
    log:
        f"{LOGS}/report/manifest.log",
    benchmark:
        f"{BENCH}/report/manifest.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d manifest --results {params.results} --out {output} --config {params.configfiles:q}"
        " --config-json {params.config:q}"
        " --inputs {params.inputs:q} --exclude report.html benchmarks/rules/report/manifest.tsv"
        " > {log} 2>&1"


localrules:
    tables_figures,
    manifest,
