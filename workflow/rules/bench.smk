# Memory/speed micro-benchmarks (paper Fig. 1, the data-step speed-up, partitioned memory).
# Each writes a CSV with the device name in every row; the report rules plot them.
BENCH_OUT = f"{RESULTS}/benchmarks"


rule bench_steps:
    output:
        f"{BENCH_OUT}/bench_steps.csv",
    params:
        sizes=join_values(config["benchmarks"]["sizes"]),
        channels=join_values(config["model"]["channels"]),
        blocks=config["model"]["blocks"],
    log:
        f"{LOGS}/bench_steps.log",
    benchmark:
        f"{BENCH}/bench_steps.tsv"
    threads: 2
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "unroll3d device run -- python benchmarks/bench_steps.py --sizes {params.sizes}"
        " --channels {params.channels} --blocks {params.blocks} --out {output} > {log} 2>&1"


if config["benchmarks"]["enabled"]:
    FINAL_TARGETS.extend(rules.bench_steps.output)
