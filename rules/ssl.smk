# Stage "ssl": SimSiam encoder trained on the train split of the real patches, then every real
# patch embedded once.
#   rules/ssl.smk -> workflow_scripts/train_ssl.py -> sharpgen.ssl, workflow_scripts/embed.py
#   -> sharpgen.embed   (docs/retrieval.md)
# Checkpoints go to CHECKPOINTS/ssl/<hash>/ (not a Snakemake output): a killed run resumes.


rule train_ssl:
    input:
        zarr=R("data/patches.zarr"),
        table=R("data/patches.parquet"),
        code=CODE("train_ssl.py"),
    output:
        encoder=R("ssl/encoder.pt"),
        log_csv=R("ssl/train_log.csv"),
    log:
        LOG("train_ssl"),
    benchmark:
        BENCH("train_ssl")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=int(config["ssl"]["devices"]),  # one per data-parallel process (ssl.devices)
        mem_mb=4000,
        runtime=60,
    params:
        cfg=config["ssl"],
        checkpoint_root=f"{CHECKPOINTS}/ssl",
    script:
        "../workflow_scripts/train_ssl.py"


rule embed:
    input:
        encoder=R("ssl/encoder.pt"),
        zarr=R("data/patches.zarr"),
        table=R("data/patches.parquet"),
        code=CODE("embed.py"),
    output:
        embeddings=R("ssl/embeddings.npz"),
    log:
        LOG("embed"),
    benchmark:
        BENCH("embed")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=config["ssl"],
    script:
        "../workflow_scripts/embed.py"
