# Training of one variant on one task and setting (unroll3d train). Learned variants train on
# the GPU the device picker hands out; fdk/tv write a small "model" file so the DAG is uniform
# (tv: the regularisation weight chosen on the validation volumes).
# Outputs: the model, a per-step CSV (loss, lr, step time, peak memory, validation PSNR) and the
# train stats JSON (peak memory, mean s/step after warm-up, device). A resumable checkpoint
# `<model>.ckpt` sits beside the model and is picked up when the job is rerun.
# CUDA out-of-memory is a result (status "oom" in the model file and the stats), not a failure.
MODELS = f"{RESULTS}/models"
ANALYTICAL_VARIANTS = ("fdk", "adjoint")


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{MODELS}/{{task}}/{{setting}}/{{variant}}.pt",
        csv=f"{MODELS}/{{task}}/{{setting}}/{{variant}}.csv",
        stats=f"{MODELS}/{{task}}/{{setting}}/{{variant}}.json",
    params:
        config=CONFIG_JSON,
        normal=normal_arg,
    log:
        f"{LOGS}/train/{{task}}/{{setting}}/{{variant}}.log",
    benchmark:
        f"{BENCH}/train/{{task}}/{{setting}}/{{variant}}.tsv"
    threads: 2
    conda:
        CONDA_ENV
    resources:
        gpu=lambda wildcards: 0 if wildcards.variant in ANALYTICAL_VARIANTS else 1,
    shell:
        "unroll3d device run -- unroll3d train --task {wildcards.task}"
        " --setting {wildcards.setting} --variant {wildcards.variant}"
        " --config-json '{params.config}' --train {input.train} --val {input.val}"
        " {params.normal} --out {output.model} --csv {output.csv} --stats {output.stats}"
        " --threads {threads} --no-progress > {log} 2>&1"
