# Figs. 7/8: the partitioned variant `sweep.variant` trained once per patch size (one model for
# every setting when models are shared, else on the first setting) and evaluated under each
# setting the figure averages. The main patch size reuses the main model and its evaluations
# (no job here). Same commands as train.smk / evaluate.smk; only the task's patch_size in the
# config they receive differs ({patch} = D x H x W, e.g. 8x16x16).

SWEEP_MODEL_BASE = paths.sweep_model_base(RESULTS, "{task}", "{setting}", "{patch}")


rule train_sweep:
    input:
        unpack(sweep_train_inputs),
    output:
        model=f"{SWEEP_MODEL_BASE}.pt",
        csv=f"{SWEEP_MODEL_BASE}.csv",
        stats=f"{SWEEP_MODEL_BASE}.json",
    params:
        config=sweep_train_config_json,
        variant=SWEEP["variant"],
        normal=normal_arg,
        settings=settings_arg,
    wildcard_constraints:
        patch=r"\d+x\d+x\d+",
    log:
        f"{LOGS}/train_sweep/{{task}}/{{setting}}/p{{patch}}.log",
    benchmark:
        f"{BENCH}/train_sweep/{{task}}/{{setting}}/p{{patch}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d train --task {wildcards.task}"
        " --setting {wildcards.setting} --variant {params.variant}"
        " --config-json {params.config:q} --train {input.train} --val {input.val}"
        " {params.normal} {params.settings} --out {output.model} --csv {output.csv}"
        " --stats {output.stats}"
        " --threads {threads} > {log} 2>&1"


rule evaluate_sweep:
    input:
        unpack(sweep_evaluate_inputs),
    output:
        json=paths.sweep_eval_json(RESULTS, "{task}", "{setting}", "{patch}", "{volume}"),
    params:
        config=sweep_config_json,
        variant=SWEEP["variant"],
        normal=normal_arg,
    wildcard_constraints:
        patch=r"\d+x\d+x\d+",
        volume=r"[^/]+",
    log:
        f"{LOGS}/evaluate_sweep/{{task}}/{{setting}}/p{{patch}}/{{volume}}.log",
    benchmark:
        f"{BENCH}/evaluate_sweep/{{task}}/{{setting}}/p{{patch}}/{{volume}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d evaluate --task {wildcards.task}"
        " --setting {wildcards.setting} --variant {params.variant}"
        " --config-json {params.config:q} --model {input.model} --train-stats {input.stats}"
        " --sample {input.sample} --volume {wildcards.volume} {params.normal}"
        " --out {output.json} --threads {threads} > {log} 2>&1"

