# Memory/speed micro-benchmarks: paper Fig. 1 (data step vs network step), the operators'
# cost (physics), partitioned vs full-volume training memory, and the patch data step with
# exact ÃᵀÃ vs H (§6.4). Each writes a CSV with the device name in every row; the report plots
# them. On a GPU box each job locks one card through `unroll3d device run`.
# Paths (BENCH_OUT, BENCH_CSV) are in common.smk, which the report shares. Each rule passes the
# config values its benchmark reads as --config-json (bench_config_json, unroll3d.bench.settings).


rule bench_steps:
    output:
        BENCH_CSV["bench_steps"],
    params:
        config=bench_config_json("steps"),
    log:
        f"{LOGS}/bench/bench_steps.log",
    benchmark:
        f"{BENCH}/bench_steps.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d bench steps --config-json {params.config:q}"
        " --out {output} > {log} 2>&1"


rule bench_physics:
    output:
        BENCH_CSV["bench_physics"],
    params:
        config=bench_config_json("physics"),
    log:
        f"{LOGS}/bench/bench_physics.log",
    benchmark:
        f"{BENCH}/bench_physics.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d bench physics --config-json {params.config:q}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule bench_partition:
    output:
        BENCH_CSV["bench_partition"],
    params:
        config=bench_config_json("partition"),
    log:
        f"{LOGS}/bench/bench_partition.log",
    benchmark:
        f"{BENCH}/bench_partition.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d bench partition --config-json {params.config:q}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule bench_normal:
    output:
        BENCH_CSV["bench_normal"],
    params:
        config=bench_config_json("normal"),
    log:
        f"{LOGS}/bench/bench_normal.log",
    benchmark:
        f"{BENCH}/bench_normal.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d bench normal --config-json {params.config:q}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule bench_normal_floor:
    # How far one diagonal-circulant H can go on small cone-beam operators: the best H from
    # exact rows of AᵀA versus the Adam fit (CPU, RTK: no GPU needed at these sizes).
    output:
        csv=BENCH_CSV["bench_normal_floor"],
        md=report(
            BENCH_NORMAL_FLOOR_MD,
            caption="../report/bench_normal_floor.rst",
            category="Normal operator H (§4.5)",
        ),
    params:
        config=bench_config_json("normal_floor"),
    log:
        f"{LOGS}/bench/bench_normal_floor.log",
    benchmark:
        f"{BENCH}/bench_normal_floor.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    shell:
        "unroll3d bench normal_floor --config-json {params.config:q}"
        " --threads {threads} --out {output.csv} > {log} 2>&1"


# Where H costs accuracy: the trained partition and partition-H models of each task on
# the first test volume of the task's first setting: first pass / exact / H refinement PSNR of
# both, H's error against the exact patch gradient along the refinement iterates, and the
# α-mixing curve. The claims table states these numbers when the H-accuracy claim fails.
# Helpers (accuracy_case, accuracy_inputs, accuracy_targets) are in common.smk.
rule bench_accuracy:
    input:
        unpack(accuracy_inputs),
    output:
        csv=f"{BENCH_OUT}/accuracy/{{task}}.csv",
        md=f"{BENCH_OUT}/accuracy/{{task}}.md",
    params:
        config=job_config_json,
        setting=lambda wildcards: accuracy_case(wildcards.task)[0],
    log:
        f"{LOGS}/bench/bench_accuracy_{{task}}.log",
    benchmark:
        f"{BENCH}/bench_accuracy_{{task}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- unroll3d bench accuracy --task {wildcards.task}"
        " --setting {params.setting} --config-json {params.config:q}"
        " --partition {input.partition} --partition-H {input.partition_H}"
        " --normal {input.normal} --data {input.sample} --patches 4"
        " --out {output.csv} --summary {output.md} --threads {threads} > {log} 2>&1"

