# unroll3d: the reproducible-paper pipeline of "Efficient Unrolled Networks for Large-Scale 3D
# Inverse Problems" (Vo & Tachella, CVPR 2026).
#   GPU box:  snakemake --cores 8 --resources gpu=1
#   toy run:  make smoke   (snakemake --cores 2 --configfile config/smoke.yaml)
from snakemake.utils import min_version

min_version("9.0")


# The paper configuration by default; a --configfile replaces it instead of being merged into it,
# so a key missing from the smoke config is an error rather than silently taken from the paper's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


rule all:
    input:
        get_final_output(),
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/normal.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"
