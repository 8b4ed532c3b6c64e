# Stage "sampling": draw latents, generate maps, measure them, compare with the real patches.
#   rules/sampling.smk -> workflow_scripts/sample_latents.py -> sharpgen.sampling   (docs/gan.md)


rule sample_latents:
    input:
        generator=R("gan/generator.pt"),
        zarr=R("data/patches.zarr"),
        table=R("data/patches.parquet"),
        code=CODE("sample_latents.py"),
    output:
        latents=R("samples/latents.parquet"),
        images=directory(R("samples/generated.zarr")),
        quality=R("samples/quality.json"),
    log:
        LOG("sample_latents"),
    benchmark:
        BENCH("sample_latents")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sampling=config["sampling"],
    script:
        "../workflow_scripts/sample_latents.py"
