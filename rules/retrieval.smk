# Stage "retrieval": generated and augmented real queries -> nearest real patches by SimSiam
# cosine similarity and by physical-parameter baselines; query-vs-match statistics.
#   rules/retrieval.smk -> workflow_scripts/evaluate_retrieval.py -> sharpgen.retrieval
#   (docs/retrieval.md; interactive use: `sharpgen retrieve QUERY.fits|.npy -k 5`)


rule evaluate_retrieval:
    input:
        encoder=R("ssl/encoder.pt"),
        embeddings=R("ssl/embeddings.npz"),
        zarr=R("data/patches.zarr"),
        table=R("data/patches.parquet"),
        generated=R("samples/generated.zarr"),
        latents=R("samples/latents.parquet"),
        code=CODE("evaluate_retrieval.py"),
    output:
        evaluation=R("retrieval/evaluation.json"),
        matches=R("retrieval/matches.parquet"),
    params:
        cfg=config["retrieval"],
    log:
        LOG("evaluate_retrieval"),
    benchmark:
        BENCH("evaluate_retrieval")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow_scripts/evaluate_retrieval.py"

