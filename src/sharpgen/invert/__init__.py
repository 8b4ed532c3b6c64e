"""GAN inversion and editing of real patches (issue 17.1; docs/inversion.md).

* :mod:`.optimise` -- :func:`invert`: the latent code whose generated image matches a real patch
  (pixel + SimSiam feature loss + typical-set prior, batched restarts, nearest-sample starts);
* :mod:`.stage` -- rule ``invert_real`` (rules/invert.smk -> workflow_scripts/invert_real.py):
  held-out patches inverted, reconstructions measured and scored;
* :mod:`.edit` -- ``sharpgen edit REAL.fits --tuf x1.5 --hold r_value -o edited.fits``: invert,
  move along the calibrated direction, write FITS (also the engine of ``sharpgen explore``).
"""

from sharpgen.invert.optimise import (  # noqa: F401
    INIT_MODES,
    SPACES,
    Inversion,
    InversionError,
    InvertSettings,
    code_dim,
    codes_from_z,
    generator_space,
    invert,
    nearest_inits,
    random_inits,
    rel_l2,
    render_codes,
    resolve_space,
)
