# Training of one variant on one task and setting (unroll3d train). Learned variants train one
# model per task on every setting ({setting} = all, `--settings v30 v50 ...`) under
# train.share_across_settings (the default), else one per setting. They train on
# the GPU the device picker hands out; fdk/tv write a small "model" file so the DAG is uniform
# (tv: the regularisation weight chosen on the validation volumes).
# The job gets only the config keys it reads (job_config_json), so editing a report or sweep key
# reruns no training. Outputs: the model, a per-step CSV (loss, lr, step time, peak memory,
# validation PSNR) and the train stats JSON (peak memory, mean s/step after warm-up, device).
# The checkpoint `<model>.ckpt` is the job's private resume state: it exists only while the job
# is unfinished (deleted on success), and a rerun resumes it only if its fingerprint of every
# input (config section, volumes, H file, code, plugins' source) matches; otherwise it is
# discarded and logged.
# CUDA out-of-memory is a result (status "oom" in the model file and the stats), not a failure.

MODEL_BASE = paths.model_base(RESULTS, "{task}", "{setting}", "{variant}")


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{MODEL_BASE}.pt",
        csv=f"{MODEL_BASE}.csv",
        stats=f"{MODEL_BASE}.json",
    params:
        config=train_config_json,
        normal=normal_arg,
        settings=settings_arg,
    log:
        f"{LOGS}/train/{{task}}/{{setting}}/{{variant}}.log",
    benchmark:
        f"{BENCH}/train/{{task}}/{{setting}}/{{variant}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=gpu_for,
    shell:
        "unroll3d device run -- unroll3d train --task {wildcards.task}"
        " --setting {wildcards.setting} --variant {wildcards.variant}"
        " --config-json {params.config:q} --train {input.train} --val {input.val}"
        " {params.normal} {params.settings} --out {output.model} --csv {output.csv}"
        " --stats {output.stats}"
        " --threads {threads} > {log} 2>&1"
