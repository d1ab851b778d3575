# Data-free fit of the diagonal-circulant normal-operator approximation H ≈ AᵀA/‖A‖²
# (unroll3d fit-normal, docs/paper-notes.md §4.5), one job per task × setting, on the GPU the device picker
# hands out. Input: the preprocessed reference training volume, whose operator (geometry / mask /
# coil maps) is the one fitted; the stored operator hash identifies it.
#   CBCT (ours): one fit per view count on the first training walnut of the split; the other
#     walnuts' geometries differ only slightly and reuse it (docs/paper-notes.md §10).
#   MRI (ours, for training): one fit per acceleration on the first training volume with its
#     fixed seeded mask (training draws fresh masks, which no fixed-mask fit matches).
#   normal.reference.{cbct,mri} in the config picks another volume id.
# Outputs: the fit (.pt: λ, m, img_size, grid, scaling = ‖A‖², history, operator hash) and its
# fitting curve (.csv). With normal.lr_schedule plateau (the default) normal.steps is the most the
# fit takes: it stops on the held-out error's plateau; its history records why and where it
# stopped, the final held-out error and, with normal.floor_rows > 0 (CBCT), the error floor of
# this operator and the gap to it (also in the log's last line). A resumable checkpoint
# `<out>.ckpt` sits beside the output while the job runs and is picked up when the job is rerun;
# it is deleted on success.
# Per sample (normal.per_sample, default [mri], docs/paper-notes.md §10): the H variants are evaluated with
# an H fitted to each test volume's own operator (its coil maps and mask), data-free like every
# fit: results/normal/{task}/{setting}/{volume}.pt. Training keeps the setting's fit.
# Downstream rules (train/evaluate of the -H variants) pull these; `rule all` does not name them.


# The fit's settings, the keys of `normal` it reads and seed (unroll3d.config.fit_normal_config),
# reach it as one validated --config-json. As a param, a change to one of them reruns the fits
# (--rerun-triggers params); a change to any other key (normal.reference, per_sample, mri_h) none.
FIT_NORMAL_CONFIG = u3config.dumps(u3config.fit_normal_config(config))
FIT_NORMAL = (
    "unroll3d device run -- unroll3d fit-normal --input {input}"
    " --setting {wildcards.setting} --out {output.fit} --history {output.history}"
    " --config-json {params.config:q} --threads {threads} --device auto"
    " --no-progress > {log} 2>&1"
)


rule fit_normal:
    input:
        normal_input,
    output:
        fit=paths.normal_fit(RESULTS, "{task}", "{setting}"),
        history=paths.normal_history(RESULTS, "{task}", "{setting}"),
    params:
        config=FIT_NORMAL_CONFIG,
    log:
        f"{LOGS}/fit_normal/{{task}}/{{setting}}.log",
    benchmark:
        f"{BENCH}/fit_normal/{{task}}/{{setting}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        FIT_NORMAL


rule fit_normal_sample:
    input:
        lambda wildcards: sample_path(wildcards.task, wildcards.volume),
    output:
        fit=paths.normal_fit_sample(RESULTS, "{task}", "{setting}", "{volume}"),
        history=paths.normal_history_sample(RESULTS, "{task}", "{setting}", "{volume}"),
    params:
        config=FIT_NORMAL_CONFIG,
    wildcard_constraints:
        volume=r"[^/]+",
    log:
        f"{LOGS}/fit_normal/{{task}}/{{setting}}/{{volume}}.log",
    benchmark:
        f"{BENCH}/fit_normal/{{task}}/{{setting}}/{{volume}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        FIT_NORMAL
