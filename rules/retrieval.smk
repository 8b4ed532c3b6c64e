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
    params:
        cfg=config["retrieval"],
    script:
        "../workflow_scripts/evaluate_retrieval.py"


# Generated queries against the real SHARP records of ../shared/data (sharpgen.real_records):
# how far the synthetic-trained encoder carries to real magnetograms. Left out of `all`, with a
# note, when ../shared/data is absent (a clone without it).
from sharpgen.real_records import real_record_files  # noqa: E402

REAL_RECORD_FILES = real_record_files()

if REAL_RECORD_FILES:

    rule real_records:
        input:
            encoder=R("ssl/encoder.pt"),
            embeddings=R("ssl/embeddings.npz"),
            zarr=R("data/patches.zarr"),
            table=R("data/patches.parquet"),
            generated=R("samples/generated.zarr"),
            latents=R("samples/latents.parquet"),
            real=REAL_RECORD_FILES,
            code=CODE("real_records.py"),
        output:
            summary=R("retrieval/real_records.json"),
            patches=R("retrieval/real_records.npz"),
        log:
            LOG("real_records"),
        benchmark:
            BENCH("real_records")
        conda:
            "../envs/torch.yaml"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            cfg=config["retrieval"],
            patches=config["patches"],
        script:
            "../workflow_scripts/real_records.py"

else:
    print(
        "note: no real SHARP Br record in ../shared/data; real_records is not part of `all`",
        file=sys.stderr,
    )
