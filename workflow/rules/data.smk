# Data stage: toy raw files (smoke) -> checksummed download -> one preprocessed .pt per volume;
# the challenge's mask files (mri.mask_source: challenge) and DPIR's pretrained weights
# (train.dpir_weights: download) are downloaded here too.
# Helpers for other rule files: volumes(task, split) and sample_path(task, volume).
# Raw files: resources/{task}/raw/; toy sources: resources/{task}/toy/ (served on 127.0.0.1 to pooch).

_check_splits()


MRI_ZIP = "train_val_12_channel.zip"


localrules:
    download_walnut,
    download_mri,
    download_mri_mask,
    download_dpir_weights,


rule toy_cbct:
    output:
        zips=expand(f"{RESOURCES}/cbct/toy/Walnut{{n}}.zip", n=_walnut_numbers()),
        registry=f"{RESOURCES}/cbct/toy/registry.csv",
    params:
        outdir=lambda wildcards, output: Path(output[0]).parent,
        walnuts=" ".join(str(n) for n in _walnut_numbers()),
        size=lookup(dpath="cbct/toy/size", within=config, default=24),
        det=" ".join(str(n) for n in lookup(dpath="cbct/toy/det_shape", within=config, default=[30, 24])),
        n_full=lookup(dpath="cbct/toy/n_full", within=config, default=120),
        orbit=config["cbct"]["orbit"],
        voxel=config["cbct"]["voxel_size_mm"],
        seed=config["seed"],
    log:
        f"{LOGS}/toy_cbct/toy_cbct.log",
    benchmark:
        f"{BENCH}/toy_cbct.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d toy cbct --out {params.outdir} --walnuts {params.walnuts} --size {params.size}"
        " --det-shape {params.det} --n-full {params.n_full} --orbit {params.orbit}"
        " --voxel-mm {params.voxel} --seed {params.seed} > {log} 2>&1"


rule toy_mri:
    output:
        zip=f"{RESOURCES}/mri/toy/{MRI_ZIP}",
        registry=f"{RESOURCES}/mri/toy/registry.csv",
    params:
        outdir=lambda wildcards, output: Path(output[0]).parent,
        train=" ".join(volumes("mri", "train") + volumes("mri", "val")),
        val=" ".join(volumes("mri", "test")),
        shape=" ".join(str(n) for n in lookup(dpath="mri/toy/shape", within=config, default=[16, 20, 18])),
        coils=lookup(dpath="mri/toy/coils", within=config, default=4),
        pf=config["mri"]["partial_fourier"],
        seed=config["seed"],
    log:
        f"{LOGS}/toy_mri/toy_mri.log",
    benchmark:
        f"{BENCH}/toy_mri.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d toy mri --out {params.outdir} --train {params.train} --val {params.val}"
        " --shape {params.shape} --coils {params.coils} --partial-fourier {params.pf}"
        " --seed {params.seed} > {log} 2>&1"


rule download_walnut:
    input:
        registry=[f"{RESOURCES}/cbct/toy/registry.csv"] if _toy("cbct") else [],
    output:
        f"{RESOURCES}/cbct/raw/Walnut{{n}}.zip",
    params:
        outdir=lambda wildcards, output: Path(output[0]).parent,
        src=_registry_args("cbct"),
        retries=config["cbct"]["download_retries"],
    wildcard_constraints:
        n=r"\d+",
    log:
        f"{LOGS}/download/Walnut{{n}}.log",
    benchmark:
        f"{BENCH}/download/Walnut{{n}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d data download --task cbct --file Walnut{wildcards.n}.zip --dest {params.outdir}"
        " {params.src} --retries {params.retries} > {log} 2>&1"


rule download_mri:
    input:
        registry=[f"{RESOURCES}/mri/toy/registry.csv"] if _toy("mri") else [],
    output:
        f"{RESOURCES}/mri/raw/{MRI_ZIP}",
    params:
        outdir=lambda wildcards, output: Path(output[0]).parent,
        mri_zip=MRI_ZIP,
        src=_registry_args("mri"),
        retries=config["mri"]["download_retries"],
        tls="--insecure" if config["mri"].get("insecure_tls", False) else "",
    log:
        f"{LOGS}/download/{MRI_ZIP}.log",
    benchmark:
        f"{BENCH}/download/{MRI_ZIP}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d data download --task mri --file {params.mri_zip} --dest {params.outdir}"
        " {params.src} --retries {params.retries} {params.tls} > {log} 2>&1"


rule preprocess_walnut:
    input:
        f"{RESOURCES}/cbct/raw/Walnut{{n}}.zip",
    output:
        f"{RESULTS}/data/cbct/walnut{{n}}.pt",
    params:
        orbit=config["cbct"]["orbit"],
        voxel=config["cbct"]["voxel_size_mm"],
        scale=config["cbct"]["intensity_scale"],
        clip=config["cbct"]["log_clip"],
        views=_stored_views(),
        expect=_expect_shape("cbct"),
    wildcard_constraints:
        n=r"\d+",
    log:
        f"{LOGS}/preprocess/cbct/walnut{{n}}.log",
    benchmark:
        f"{BENCH}/preprocess/cbct/walnut{{n}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    resources:
        mem_mb=16000,
    shell:
        "unroll3d data preprocess cbct --zip {input} --out {output} --volume walnut{wildcards.n}"
        " --orbit {params.orbit} --voxel-mm {params.voxel} --scale {params.scale}"
        " --log-clip {params.clip} {params.views} {params.expect} > {log} 2>&1"


rule download_mri_mask:
    output:
        f"{RESOURCES}/mri/raw/R{{r}}_{{ny}}x{{nz}}.npy",
    wildcard_constraints:
        r=r"\d+",
        ny=r"\d+",
        nz=r"\d+",
    params:
        outdir=lambda wildcards, output: Path(output[0]).parent,
        retries=config["mri"]["download_retries"],
    log:
        f"{LOGS}/download/R{{r}}_{{ny}}x{{nz}}.log",
    benchmark:
        f"{BENCH}/download/R{{r}}_{{ny}}x{{nz}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d data download --task mri --file R{wildcards.r}_{wildcards.ny}x{wildcards.nz}.npy"
        " --dest {params.outdir} --retries {params.retries} > {log} 2>&1"


rule download_dpir_weights:
    output:
        weights=f"{RESOURCES}/weights/{{file}}",
        record=f"{RESOURCES}/weights/{{file}}.sha256",
    wildcard_constraints:
        file=r"[A-Za-z0-9_.-]+(?<!\.sha256)",
    params:
        outdir=lambda wildcards, output: Path(output.weights).parent,
    log:
        f"{LOGS}/download/weights/{{file}}.log",
    benchmark:
        f"{BENCH}/download/weights/{{file}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "unroll3d data download --task weights --file {wildcards.file} --dest {params.outdir}"
        " --retries 3 > {log} 2>&1"


rule preprocess_mri:
    input:
        zip=f"{RESOURCES}/mri/raw/{MRI_ZIP}",
        masks=_challenge_masks(),
    output:
        f"{RESULTS}/data/mri/{{volume}}.pt",
    params:
        pf=config["mri"]["partial_fourier"],
        calib=config["mri"]["calib"],
        conv=config["mri"]["kspace_convention"],
        expect=_expect_shape("mri"),
    wildcard_constraints:
        volume=r"[A-Za-z0-9_]+",
    log:
        f"{LOGS}/preprocess/mri/{{volume}}.log",
    benchmark:
        f"{BENCH}/preprocess/mri/{{volume}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        mem_mb=12000,
    shell:
        "unroll3d data preprocess mri --zip {input.zip} --volume {wildcards.volume} --out {output}"
        " --partial-fourier {params.pf} --calib {params.calib} --convention {params.conv}"
        " --challenge-masks {input.masks} {params.expect} > {log} 2>&1"


rule fdk_check:
    input:
        f"{RESOURCES}/cbct/raw/Walnut{{n}}.zip",
    output:
        f"{RESULTS}/data/cbct/fdk_check/walnut{{n}}.json",
    params:
        orbit=config["cbct"]["orbit"],
        voxel=config["cbct"]["voxel_size_mm"],
        clip=config["cbct"]["log_clip"],
    wildcard_constraints:
        n=r"\d+",
    log:
        f"{LOGS}/fdk_check/walnut{{n}}.log",
    benchmark:
        f"{BENCH}/fdk_check/walnut{{n}}.tsv"
    threads: JOB_THREADS
    conda:
        CONDA_ENV
    resources:
        gpu=1,
        mem_mb=24000,
    shell:
        "unroll3d data fdk-check --zip {input} --orbit {params.orbit} --voxel-mm {params.voxel}"
        " --log-clip {params.clip} --out {output} > {log} 2>&1"

