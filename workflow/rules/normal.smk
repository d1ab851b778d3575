# Data-free fit of the diagonal-circulant normal-operator approximation H ≈ AᵀA/‖A‖²
# (unroll3d fit-normal, paper.md §4.5), one job per task × setting, on the GPU the device picker
# hands out. Input: the preprocessed reference training volume, whose operator (geometry / mask /
# coil maps) is the one fitted; the stored operator hash identifies it.
#   CBCT (ours): one fit per view count on the first training walnut of the split; the other
#     walnuts' geometries differ only slightly and reuse it (paper.md §10).
#   MRI (ours, for the pipeline): one fit per acceleration on the first training volume with its
#     fixed seeded mask. The paper's default is a fit per sample (coil maps differ); MRI "ours"
#     does not use H at all, only the unrolled-H / partition-H ablation rows do.
#   normal.reference.{cbct,mri} in the config picks another volume id.
# Outputs: the fit (.pt: λ, m, img_size, grid, scaling = ‖A‖², history, operator hash) and its
# fitting curve (.csv). A resumable checkpoint `<out>.ckpt` sits beside the output while the job
# runs and is picked up when the job is rerun; it is deleted on success.
# Downstream rules (train/evaluate of the -H variants) pull results/normal/{task}/{setting}.pt;
# nothing is appended to FINAL_TARGETS here.


rule fit_normal:
    input:
        normal_input,
    output:
        fit=paths.normal_fit(RESULTS, "{task}", "{setting}"),
        history=paths.normal_history(RESULTS, "{task}", "{setting}"),
    params:
        steps=config["normal"]["steps"],
        lr=config["normal"]["lr"],
        lr_schedule=config["normal"]["lr_schedule"],
        batch=config["normal"]["batch"],
        heldout=config["normal"]["heldout"],
        checkpoint_every=config["normal"]["checkpoint_every"],
        grid=config["normal"]["grid"],
        seed=config["seed"],
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
        "unroll3d device run -- unroll3d fit-normal --input {input}"
        " --setting {wildcards.setting} --out {output.fit} --history {output.history}"
        " --steps {params.steps} --lr {params.lr} --lr-schedule {params.lr_schedule}"
        " --batch {params.batch} --heldout {params.heldout} --seed {params.seed}"
        " --checkpoint-every {params.checkpoint_every} --grid {params.grid}"
        " --threads {threads} --device auto"
        " --no-progress > {log} 2>&1"
