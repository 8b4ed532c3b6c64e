"""Snakemake script for rule synthesize: write the synthetic SHARP-like Br records + manifest."""

from pathlib import Path

from sharpgen.atomic import atomic_path
from sharpgen.logutil import setup_logging
from sharpgen.synthetic import synthesize

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
cfg = sm.params.cfg
out_dir = Path(sm.output.records)
# the records folder is written under a temporary name and renamed, so a crash leaves nothing
with atomic_path(out_dir) as tmp:
    manifest = synthesize(
        tmp,
        n_regions=int(cfg.get("n_regions", 240)),
        frames_per_region=int(cfg.get("frames_per_region", 4)),
        seed=int(cfg.get("seed", 0)),
        cadence_h=float(cfg.get("cadence_h", 6.0)),
        workers=int(sm.threads),
    )
# paths in the manifest point to the final folder, relative to the working directory
manifest["path"] = [str(out_dir / Path(p).name) for p in manifest["path"]]
with atomic_path(sm.output.manifest, suffix=".tsv") as tmp:
    manifest.to_csv(tmp, sep="\t", index=False)
