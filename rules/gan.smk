# Stage "gan": train the generator on the patch store.
#   rules/gan.smk -> workflow_scripts/train_gan.py -> sharpgen.gan   (docs/gan.md)
# Checkpoints go to CHECKPOINTS/gan/<hash>/ (not a Snakemake output), so a killed or crashed
# job resumes from the last checkpoint when rerun.


rule train_gan:
    input:
        zarr=R("data/patches.zarr"),
        table=R("data/patches.parquet"),
        code=CODE("train_gan.py"),
    output:
        generator=R("gan/generator.pt"),
        log_csv=R("gan/train_log.csv"),
        grids=directory(R("gan/samples")),
    log:
        LOG("train_gan"),
    benchmark:
        BENCH("train_gan")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=int(config["gan"]["devices"]),  # one per data-parallel process (gan.devices)
        mem_mb=4000,
        runtime=60,
    params:
        gan=config["gan"],
        checkpoint_root=f"{CHECKPOINTS}/gan",
    script:
        "../workflow_scripts/train_gan.py"
