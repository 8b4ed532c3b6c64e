# Stage "directions": latent directions of the physical parameters (InterFaceGAN-style boundaries),
# traversals along them (monotonicity, entanglement), calibration eps -> physical units.
#   rules/directions.smk -> workflow_scripts/{fit_boundaries,traverse,calibrate}.py
#   -> sharpgen.directions.{boundaries,traverse,calibrate}   (docs/directions.md)


rule fit_boundaries:
    input:
        latents=R("samples/latents.parquet"),
        # directions.hold: measured solves the conditional directions on the generator
        generator=R("gan/generator.pt"),
        zarr=R("data/patches.zarr"),
        code=CODE("fit_boundaries.py"),
    output:
        npz=R("directions/boundaries.npz"),
        json=R("directions/boundaries.json"),
    log:
        LOG("fit_boundaries"),
    benchmark:
        BENCH("fit_boundaries")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        directions=config["directions"],
    script:
        "../workflow_scripts/fit_boundaries.py"


rule traverse:
    input:
        generator=R("gan/generator.pt"),
        boundaries=R("directions/boundaries.npz"),
        latents=R("samples/latents.parquet"),
        zarr=R("data/patches.zarr"),
        code=CODE("traverse.py"),
    output:
        table=R("directions/traversals.parquet"),
        metrics=R("directions/traversal_metrics.json"),
        strips=R("directions/strips.npz"),
    log:
        LOG("traverse"),
    benchmark:
        BENCH("traverse")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        directions=config["directions"],
    script:
        "../workflow_scripts/traverse.py"


rule calibrate:
    input:
        table=R("directions/traversals.parquet"),
        metrics=R("directions/traversal_metrics.json"),
        generator=R("gan/generator.pt"),
        boundaries=R("directions/boundaries.npz"),
        code=CODE("calibrate.py"),
    output:
        calibration=R("directions/calibration.json"),
    log:
        LOG("calibrate"),
    benchmark:
        BENCH("calibrate")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        directions=config["directions"],
    script:
        "../workflow_scripts/calibrate.py"
