# Stage "patches": every record in the manifest -> one training patch (crop or resize mode),
# written to a Zarr store, with one Parquet row per patch (metadata, split, physical parameters).
#   rules/patches.smk -> workflow_scripts/make_patches.py -> sharpgen.patches
# (the manifest is read, and each record loaded and checked, by sharpgen.data)


rule make_patches:
    input:
        manifest=R("data/records.tsv"),
        code=CODE("make_patches.py"),
    output:
        zarr=directory(R("data/patches.zarr")),
        table=R("data/patches.parquet"),
        summary=R("data/patches_summary.json"),
    log:
        LOG("make_patches"),
    benchmark:
        BENCH("make_patches")
    conda:
        "../envs/data.yaml"
    threads: 2
    params:
        cfg=config["patches"],
    script:
        "../workflow_scripts/make_patches.py"
