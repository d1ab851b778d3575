# Data-free fit of the diagonal-circulant normal-operator approximation H ≈ AᵀA/‖A‖²
# (unroll3d fit-normal, paper.md §4.5), one job per task × setting, on the GPU the device picker
# hands out. Input: the preprocessed reference training volume, whose operator (geometry / mask /
# coil maps) is the one fitted; the stored operator hash identifies it.
#   CBCT (ours): one fit per view count on the first training walnut of the split; the other
#     walnuts' geometries differ only slightly and reuse it (paper.md §10).
#   MRI (ours, for training): one fit per acceleration on the first training volume with its
#     fixed seeded mask (training draws fresh masks, which no fixed-mask fit matches).
#   normal.reference.{cbct,mri} in the config picks another volume id.
# Outputs: the fit (.pt: λ, m, img_size, grid, scaling = ‖A‖², history, operator hash) and its
# fitting curve (.csv). A resumable checkpoint `<out>.ckpt` sits beside the output while the job
# runs and is picked up when the job is rerun; it is deleted on success.
# Per sample (normal.per_sample, default [mri], paper.md §10): the H variants are evaluated with
# an H fitted to each test volume's own operator (its coil maps and mask), data-free like every
# fit: results/normal/{task}/{setting}/{volume}.pt. Training keeps the setting's fit.
# Downstream rules (train/evaluate of the -H variants) pull these; nothing is appended to
# FINAL_TARGETS here.


NORMAL_PARAMS = dict(
    steps=config["normal"]["steps"],
    lr=config["normal"]["lr"],
    lr_schedule=config["normal"]["lr_schedule"],
    batch=config["normal"]["batch"],
    heldout=config["normal"]["heldout"],
    checkpoint_every=config["normal"]["checkpoint_every"],
    grid=config["normal"]["grid"],
    seed=config["seed"],
)
FIT_NORMAL = (
    "unroll3d device run -- unroll3d fit-normal --input {input}"
    " --setting {wildcards.setting} --out {output.fit} --history {output.history}"
    " --steps {params.steps} --lr {params.lr} --lr-schedule {params.lr_schedule}"
    " --batch {params.batch} --heldout {params.heldout} --seed {params.seed}"
    " --checkpoint-every {params.checkpoint_every} --grid {params.grid}"
    " --threads {threads} --device auto"
    " --no-progress > {log} 2>&1"
)


rule fit_normal:
    input:
        normal_input,
    output:
        fit=paths.normal_fit(RESULTS, "{task}", "{setting}"),
        history=paths.normal_history(RESULTS, "{task}", "{setting}"),
    params:
        **NORMAL_PARAMS,
    log:
        f"{LOGS}/fit_normal/{{task}}/{{setting}}.log",
    benchmark:
        f"{BENCH}/fit_normal/{{task}}/{{setting}}.tsv"
    threads: 2
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
        **NORMAL_PARAMS,
    wildcard_constraints:
        volume=r"[^/]+",
    log:
        f"{LOGS}/fit_normal/{{task}}/{{setting}}/{{volume}}.log",
    benchmark:
        f"{BENCH}/fit_normal/{{task}}/{{setting}}/{{volume}}.tsv"
    threads: 2
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        FIT_NORMAL
