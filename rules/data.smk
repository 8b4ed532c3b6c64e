# Stage "data": SHARP Br records from one of three sources, listed in one manifest.
#   synthetic -> workflow_scripts/synthesize.py   -> sharpgen.synthetic
#   local     -> workflow_scripts/ingest_local.py -> sharpgen.sharp_io
#   jsoc      -> workflow_scripts/download_jsoc.py -> sharpgen.jsoc
# Every source writes results/data/records.tsv (one row per Br FITS file); the patch stage
# reads only that manifest, so the three paths share one ingest.

SOURCE = config["data"]["source"]

if SOURCE == "synthetic":

    rule synthesize:
        output:
            manifest=R("data/records.tsv"),
            records=directory(R("data/synthetic")),
        input:
            code=CODE("synthetic", "sharp_io"),
        params:
            cfg=config["data"]["synthetic"],
        log:
            LOG("synthesize"),
        benchmark:
            BENCH("synthesize")
        threads: 1
        script:
            "../workflow_scripts/synthesize.py"

elif SOURCE == "local":

    rule ingest_local:
        output:
            manifest=R("data/records.tsv"),
        input:
            code=CODE("sharp_io"),
        params:
            cfg=config["data"]["local"],
        log:
            LOG("ingest_local"),
        benchmark:
            BENCH("ingest_local")
        threads: 1
        script:
            "../workflow_scripts/ingest_local.py"

else:

    rule download_jsoc:
        output:
            manifest=R("data/records.tsv"),
        input:
            code=CODE("jsoc", "sharp_io"),
        params:
            cfg=config["data"]["jsoc"],
            # downloads land here, outside Snakemake's outputs, so a rerun resumes them
            cache_dir=R("data/jsoc_cache"),
        log:
            LOG("download_jsoc"),
        benchmark:
            BENCH("download_jsoc")
        threads: 1
        resources:
            jsoc_connections=1,
        script:
            "../workflow_scripts/download_jsoc.py"
