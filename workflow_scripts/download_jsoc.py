"""Snakemake script of rule ``download_jsoc``: JSOC query + export + download -> records.tsv.

Thin wrapper around :func:`sharpgen.jsoc.download_records`. The JSOC e-mail is read here from the
config (``data.jsoc.email``) or the ``JSOC_EMAIL`` environment variable - never from the rule's
params, which Snakemake stores in ``.snakemake/metadata`` - and never logged.
"""


def main(smk) -> None:
    from sharpgen import jsoc
    from sharpgen.logutil import setup_logging

    setup_logging(smk.log[0])
    cfg = dict(smk.params.cfg)
    cfg.pop("email", None)
    email = (smk.config.get("data", {}).get("jsoc", {}) or {}).get("email")
    jsoc.download_records(cfg, smk.params.cache_dir, smk.output.manifest, email=email)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821 - injected by Snakemake
