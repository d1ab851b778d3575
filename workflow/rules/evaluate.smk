# Evaluation of one trained variant on one test volume (unroll3d evaluate): PSNR / 3D SSIM under
# the task's convention (src/unroll3d/metrics.py), inference time and peak memory, timed training
# micro-steps on the volume, and the training run's own stats. One JSON per
# (task, setting, variant, volume), validated against src/unroll3d/schemas/eval.schema.json,
# plus axial/vertical slices (.npz) for the qualitative figures.

EVAL_BASE = paths.eval_base(RESULTS, "{task}", "{setting}", "{variant}", "{volume}")


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        json=f"{EVAL_BASE}.json",
        slices=f"{EVAL_BASE}.npz",
    params:
        config=job_config_json,
        normal=normal_arg,
    wildcard_constraints:
        volume=r"[^/]+",
    log:
        f"{LOGS}/evaluate/{{task}}/{{setting}}/{{variant}}/{{volume}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{task}}/{{setting}}/{{variant}}/{{volume}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=gpu_for,
    shell:
        "unroll3d device run -- unroll3d evaluate --task {wildcards.task}"
        " --setting {wildcards.setting} --variant {wildcards.variant}"
        " --config-json {params.config:q} --model {input.model} --train-stats {input.stats}"
        " --sample {input.sample} --volume {wildcards.volume} {params.normal}"
        " --out {output.json} --slices {output.slices} --threads {threads} > {log} 2>&1"

