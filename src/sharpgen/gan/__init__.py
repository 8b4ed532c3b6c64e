"""Stage "gan": the generator of SHARP Br patches.

* :mod:`.layers` -- building blocks shared by the networks (noise maps of a latent, binomial
  low-pass, mapping network, modulated convolution, minibatch-std channel);
* :mod:`.model` -- the networks (the published ``paper`` pair, the ``stable`` training of the
  same nets and the ``mapping`` generator with an intermediate latent W), their losses,
  loading a trained generator and generating images (from z or whitened W codes);
* :mod:`.augment` -- DiffAugment, the discriminator's translation and cutout;
* :mod:`.train` -- the training loop (rules/gan.smk -> workflow_scripts/train_gan.py ->
  :func:`.train.train_gan_stage` -> :func:`.train.train_gan`), its checkpoints and outputs;
* :mod:`.config` -- the ``gan`` config section (:class:`.config.GanConfig`), its checks and hash;
* :mod:`.steps` -- the update steps it runs: adversarial step, lazy R1 and path-length penalties.
"""

from sharpgen.gan.model import (  # noqa: F401
    ARCHITECTURES,
    STABLE_RECIPE,
    GanError,
    MappingGenerator,
    PaperDiscriminator,
    PaperGenerator,
    StableGenerator,
    build_discriminator,
    build_generator,
    d_loss_fn,
    diff_augment,
    g_loss_fn,
    generate,
    latent_codes,
    latent_space,
    load_generator,
    minibatch_std,
)
from sharpgen.gan.train import (  # noqa: F401
    CSV_COLUMNS,
    FORMAT_VERSION,
    CheckpointMismatchError,
    DivergenceError,
    GanConfig,
    PatchStoreError,
    _ema_update,
    check_checkpoint_meta,
    checkpoint_folder,
    list_checkpoints,
    path_length_step,
    r1_step,
    read_patch_store,
    save_grid_png,
    train_gan,
    train_step,
    training_flops_per_step,
)
