# Stage "data": SHARP Br records from one of three sources, listed in one manifest.
#   synthetic -> workflow_scripts/synthesize.py    -> sharpgen.synthetic
#   local     -> workflow_scripts/ingest_local.py  -> sharpgen.data (local_manifest)
#   jsoc      -> workflow_scripts/download_jsoc.py -> sharpgen.jsoc
# Every source writes results/data/records.tsv (one row per Br FITS file); the patch stage
# reads only that manifest (sharpgen.data.read_manifest) and checks every file with
# sharpgen.data.load_record, so the three paths share one ingest.
# LOCAL_BR (rules/common.smk): the files matching data.local.glob (one glob or a list).

SOURCE = config["data"]["source"]
# JSOC keyword tables of the real SHARP population (rule realism_population), relative to the
# working directory like data.local.glob; {} when absent (a clone without ../shared)
from sharpgen.realism_population import KEYWORDS_DIR, keyword_tables  # noqa: E402

KEYWORD_TABLES = keyword_tables(KEYWORDS_DIR)

if SOURCE == "synthetic":

    rule synthesize:
        input:
            code=CODE("synthesize.py"),
        output:
            manifest=R("data/records.tsv"),
            records=directory(R("data/synthetic")),
        log:
            LOG("synthesize"),
        benchmark:
            BENCH("synthesize")
        conda:
            "../envs/data.yaml"
        threads: 2
        params:
            cfg=config["data"]["synthetic"],
        script:
            "../workflow_scripts/synthesize.py"

    # Realism check of the embedded data: synthetic vs the real records of data.local.glob
    # (left out of `all`, with a note, when no real record is available, e.g. a clone without
    # ../shared).
    rule synthetic_realism:
        input:
            manifest=R("data/records.tsv"),
            real=LOCAL_BR,
            code=CODE("synthetic_realism.py"),
        output:
            png=R("figures/synthetic_realism.png"),
            pdf=R("figures/synthetic_realism.pdf"),
            numbers=R("data/synthetic_realism.json"),
        log:
            LOG("synthetic_realism"),
        benchmark:
            BENCH("synthetic_realism")
        conda:
            "../envs/data.yaml"
        threads: 1
        params:
            cfg=config["data"]["synthetic"],
        script:
            "../workflow_scripts/synthetic_realism.py"

    if not LOCAL_BR:
        print(
            f"note: no real SHARP Br file matches data.local.glob; synthetic_realism is not "
            f"part of `all`",
            file=sys.stderr,
        )
    # The synthetic population against the real one: per record JSOC's USFLUX (over the
    # record's bitmap / conf_disambig segments), R_VALUE and AREA vs the JSOC keyword tables of
    # ../shared/data/keywords (sharpgen.realism_population; left out of `all`, with a note, when
    # the tables are absent).
    if KEYWORD_TABLES:

        rule realism_population:
            input:
                **KEYWORD_TABLES,
                manifest=R("data/records.tsv"),
                records=R("data/synthetic"),
                code=CODE("realism_population.py"),
            output:
                png=R("figures/realism_population.png"),
                pdf=R("figures/realism_population.pdf"),
                numbers=R("data/realism_population.json"),
            log:
                LOG("realism_population"),
            benchmark:
                BENCH("realism_population")
            conda:
                "../envs/report.yaml"
            threads: 2
            resources:
                mem_mb=2000,
                runtime=20,
            params:
                cfg=config["data"]["synthetic"],
            script:
                "../workflow_scripts/realism_population.py"

    else:
        print(
            f"note: no JSOC keyword tables in {KEYWORDS_DIR}; realism_population is not part "
            f"of `all`",
            file=sys.stderr,
        )

elif SOURCE == "local":

    rule ingest_local:
        input:
            # the matched files: adding or removing one reruns the ingest
            records=LOCAL_BR,
            code=CODE("ingest_local.py"),
        output:
            manifest=R("data/records.tsv"),
        log:
            LOG("ingest_local"),
        benchmark:
            BENCH("ingest_local")
        conda:
            "../envs/data.yaml"
        threads: 1
        params:
            cfg=config["data"]["local"],
        script:
            "../workflow_scripts/ingest_local.py"

else:

    rule download_jsoc:
        input:
            code=CODE("download_jsoc.py"),
        output:
            manifest=R("data/records.tsv"),
        log:
            LOG("download_jsoc"),
        benchmark:
            BENCH("download_jsoc")
        conda:
            "../envs/data.yaml"
        threads: 1
        resources:
            jsoc_connections=1,
        params:
            # the e-mail stays out of params (Snakemake stores params in .snakemake/metadata);
            # the script reads it from config or JSOC_EMAIL
            cfg={k: v for k, v in config["data"]["jsoc"].items() if k != "email"},
            # downloads land here, outside Snakemake's outputs, so a rerun resumes them
            cache_dir=R("data/jsoc_cache"),
        script:
            "../workflow_scripts/download_jsoc.py"
