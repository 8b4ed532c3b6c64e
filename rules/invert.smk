# Stage "invert": GAN inversion of held-out real patches (latent code whose generated image
# matches the patch), reconstructions measured and compared with the real parameters.
#   rules/invert.smk -> workflow_scripts/invert_real.py -> sharpgen.invert   (docs/inversion.md;
#   interactive use: `sharpgen edit REAL.fits --tuf x1.5 -o edited.fits`, `sharpgen explore`)


rule invert_real:
    input:
        generator=R("gan/generator.pt"),
        encoder=R("ssl/encoder.pt"),
        zarr=R("data/patches.zarr"),
        table=R("data/patches.parquet"),
        generated=R("samples/generated.zarr"),
        latents=R("samples/latents.parquet"),
        code=CODE("invert_real.py"),
    output:
        summary=R("invert/inversion.json"),
        table=R("invert/inversions.parquet"),
        images=R("invert/reconstructions.npz"),
    log:
        LOG("invert_real"),
    benchmark:
        BENCH("invert_real")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=config["invert"],
    script:
        "../workflow_scripts/invert_real.py"
