# sharpgen: SHARP Br magnetograms -> GAN -> latent directions / SimSiam retrieval -> report.
# Run:  snakemake --cores 8 --resources gpu=1 --workflow-profile profiles/default
# Stages, one .smk each under rules/: data, patches, gan, sampling, directions, ssl, retrieval, report.
from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/patches.smk"
include: "rules/gan.smk"
include: "rules/sampling.smk"
include: "rules/directions.smk"
include: "rules/ssl.smk"
include: "rules/retrieval.smk"
include: "rules/invert.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
