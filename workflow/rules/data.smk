# Data stage: toy raw files (smoke) -> checksummed download -> one preprocessed .pt per volume.
# Helpers for other rule files: volumes(task, split) and sample_path(task, volume).
# Raw files: resources/{task}/raw/; toy sources: resources/{task}/toy/ (served on 127.0.0.1 to pooch).

DATA_SPLITS = ("train", "val", "test")


def volumes(task, split):
    """Volume ids of a split: ["walnut3", ...] (cbct) or HDF5 stems (mri); split may be "all"."""
    splits = config[task]["splits"]
    names = DATA_SPLITS if split == "all" else (split,)
    out = []
    for name in names:
        for v in splits.get(name, []):
            out.append(f"walnut{v}" if task == "cbct" else str(v))
    return out


def _check_splits():
    """Stop at DAG time if a volume sits in two splits (test leakage)."""
    for task in config["tasks"]:
        seen = {}
        for name in DATA_SPLITS:
            for v in config[task]["splits"].get(name, []):
                if v in seen:
                    raise ValueError(f"config {task}.splits: volume {v!r} is in both {seen[v]} and {name}")
                seen[v] = name


_check_splits()


def sample_path(task, volume):
    """Preprocessed file of one volume (input of fit-normal, train, evaluate)."""
    return f"{RESULTS}/data/{task}/{volume}.pt"


def _toy(task):
    return config[task]["source"] == "toy"


def _registry_args(task):
    return f"--registry {RESOURCES}/{task}/toy/registry.csv --serve {RESOURCES}/{task}/toy" if _toy(task) else ""


def _walnut_numbers():
    return sorted({int(v) for s in DATA_SPLITS for v in config["cbct"]["splits"].get(s, [])})


MRI_ZIP = "train_val_12_channel.zip"


def _stored_views():
    """--views argument: store only the union of the settings' views unless store_all_views."""
    if config["cbct"].get("store_all_views", False):
        return ""
    return "--views " + " ".join(str(v) for v in config["cbct"]["views"])


localrules:
    download_walnut,
    download_mri,
    download_mri_mask,


rule toy_cbct:
    output:
        zips=expand(RESOURCES + "/cbct/toy/Walnut{n}.zip", n=_walnut_numbers()),
        registry=f"{RESOURCES}/cbct/toy/registry.csv",
    params:
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
    shell:
        "unroll3d toy cbct --out {RESOURCES}/cbct/toy --walnuts {params.walnuts} --size {params.size}"
        " --det-shape {params.det} --n-full {params.n_full} --orbit {params.orbit}"
        " --voxel-mm {params.voxel} --seed {params.seed} > {log} 2>&1"


rule toy_mri:
    output:
        zip=f"{RESOURCES}/mri/toy/{MRI_ZIP}",
        registry=f"{RESOURCES}/mri/toy/registry.csv",
    params:
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
    shell:
        "unroll3d toy mri --out {RESOURCES}/mri/toy --train {params.train} --val {params.val}"
        " --shape {params.shape} --coils {params.coils} --partial-fourier {params.pf}"
        " --seed {params.seed} > {log} 2>&1"


rule download_walnut:
    input:
        registry=[f"{RESOURCES}/cbct/toy/registry.csv"] if _toy("cbct") else [],
    output:
        f"{RESOURCES}/cbct/raw/Walnut{{n}}.zip",
    params:
        src=_registry_args("cbct"),
        retries=config["cbct"]["download_retries"],
    wildcard_constraints:
        n=r"\d+",
    log:
        f"{LOGS}/download/Walnut{{n}}.log",
    benchmark:
        f"{BENCH}/download/Walnut{{n}}.tsv"
    threads: 1
    shell:
        "unroll3d data download --task cbct --file Walnut{wildcards.n}.zip --dest {RESOURCES}/cbct/raw"
        " {params.src} --retries {params.retries} > {log} 2>&1"


rule download_mri:
    input:
        registry=[f"{RESOURCES}/mri/toy/registry.csv"] if _toy("mri") else [],
    output:
        f"{RESOURCES}/mri/raw/{MRI_ZIP}",
    params:
        src=_registry_args("mri"),
        retries=config["mri"]["download_retries"],
        tls="--insecure" if config["mri"].get("insecure_tls", False) else "",
    log:
        f"{LOGS}/download/{MRI_ZIP}.log",
    benchmark:
        f"{BENCH}/download/{MRI_ZIP}.tsv"
    threads: 1
    shell:
        "unroll3d data download --task mri --file {MRI_ZIP} --dest {RESOURCES}/mri/raw"
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
    wildcard_constraints:
        n=r"\d+",
    log:
        f"{LOGS}/preprocess/cbct/walnut{{n}}.log",
    benchmark:
        f"{BENCH}/preprocess/cbct/walnut{{n}}.tsv"
    threads: 1
    resources:
        mem_mb=16000,
    shell:
        "unroll3d data preprocess cbct --zip {input} --out {output} --volume walnut{wildcards.n}"
        " --orbit {params.orbit} --voxel-mm {params.voxel} --scale {params.scale}"
        " --log-clip {params.clip} > {log} 2>&1"


def _challenge_masks():
    if config["mri"].get("mask_source", "seeded") != "challenge":
        return []
    return [f"{RESOURCES}/mri/raw/R{r:g}_218x170.npy" for r in config["mri"]["accelerations"]]


rule download_mri_mask:
    output:
        f"{RESOURCES}/mri/raw/R{{r}}_218x{{nz}}.npy",
    wildcard_constraints:
        r=r"\d+",
        nz=r"\d+",
    log:
        f"{LOGS}/download/R{{r}}_218x{{nz}}.log",
    benchmark:
        f"{BENCH}/download/R{{r}}_218x{{nz}}.tsv"
    threads: 1
    shell:
        "unroll3d data download --task mri --file R{wildcards.r}_218x{wildcards.nz}.npy"
        " --dest {RESOURCES}/mri/raw > {log} 2>&1"


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
    wildcard_constraints:
        volume=r"[A-Za-z0-9_]+",
    log:
        f"{LOGS}/preprocess/mri/{{volume}}.log",
    benchmark:
        f"{BENCH}/preprocess/mri/{{volume}}.tsv"
    threads: 2
    resources:
        mem_mb=12000,
    shell:
        "unroll3d data preprocess mri --zip {input.zip} --volume {wildcards.volume} --out {output}"
        " --partial-fourier {params.pf} --calib {params.calib} --convention {params.conv}"
        " --challenge-masks {input.masks} > {log} 2>&1"


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
    threads: 2
    resources:
        gpu=1,
        mem_mb=24000,
    shell:
        "unroll3d data fdk-check --zip {input} --orbit {params.orbit} --voxel-mm {params.voxel}"
        " --log-clip {params.clip} --out {output} > {log} 2>&1"


for _task in config["tasks"]:
    FINAL_TARGETS.extend(sample_path(_task, v) for v in volumes(_task, "all"))
if "cbct" in config["tasks"]:
    _t = volumes("cbct", "test")
    if _t:
        FINAL_TARGETS.append(f"{RESULTS}/data/cbct/fdk_check/{_t[0]}.json")
