"""Stage "gan": the generator of SHARP Br patches.

* :mod:`.model` -- the networks (the published ``paper`` pair and the ``stable`` training of the
  same nets), their losses, DiffAugment, loading a trained generator and generating images;
* :mod:`.train` -- the training loop (rules/gan.smk -> workflow_scripts/train_gan.py ->
  :func:`.train.train_gan`), its config, checkpoints and outputs.
"""

from sharpgen.gan.model import (  # noqa: F401
    ARCHITECTURES,
    GanError,
    PaperDiscriminator,
    PaperGenerator,
    StableGenerator,
    build_discriminator,
    build_generator,
    d_loss_fn,
    diff_augment,
    g_loss_fn,
    generate,
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
    read_patch_store,
    save_grid_png,
    train_gan,
    train_step,
    training_flops_per_step,
)
