"""Stage "directions": latent directions of the physical parameters (InterFaceGAN-style),
traversals along them, calibration, and ``sharpgen generate``.

One module per rule (rules/directions.smk -> workflow_scripts/<rule>.py -> here):
:mod:`.boundaries` (fit_boundaries), :mod:`.traverse` (traverse), :mod:`.calibrate` (calibrate);
:mod:`.generate` is the ``sharpgen generate`` command, :mod:`.geometry` the shared pure geometry
(conditional projection, direction keys, the polarity fold), :mod:`.holds` the measured holds of
the conditional directions (run by fit_boundaries) and :mod:`.config` the typed section.

The GAN maps a latent vector ``z`` (shape ``(D,)``, ``D = 100``, ``z ~ N(0, I)``) to a Br image.
For each physical parameter ``p`` (table column names as in :mod:`sharpgen.physics`) we

1. label generated samples by a median split (the paper) or by the top / bottom ``fraction``,
   fit a linear classifier in ``z`` space and keep its unit normal ``n_p`` (shape ``(D,)``)
   -- :func:`train_boundary`, :func:`fit_boundaries`;
2. make *conditional* directions that move ``p`` while holding other parameters: by projecting
   the other normals out of ``n_p`` (the paper, :func:`project_boundary`), or, by default
   (``directions.hold: measured``), as ``n_p - sum_k b_k n_hk`` with ``b`` solved on the generator
   so that the held parameters' measured slopes vanish -- :mod:`.holds`, :func:`combine_hold`;
3. walk ``z + eps * n`` for a grid of ``eps`` from a set of base latents, measure every parameter
   on the generated images and quantify monotonicity and entanglement -- :func:`traverse`,
   :func:`traversal_metrics`;
4. calibrate ``eps`` -> change of the parameter in physical units and invert it to generate an
   image with a requested value -- :func:`fit_calibration`, :func:`solve_requests`,
   :func:`generate_request` (the ``sharpgen generate`` command).

**Polarity folding** (``directions.fold: lead_sign``, the default). A GAN trained on both
polarity orders learns the orientation of the bipole as a *signed* latent coordinate: along one
direction ``u`` (the lead_sign boundary normal) the field grows from one orientation through a
weak region to the reversed one, so unsigned quantities such as TUF or R are *even* functions of
``z.u`` and a single hyperplane cannot separate them (median-split accuracy ~0.5). Folding maps
every latent to the ``z.u >= 0`` half-space by the reflection ``H = I - 2 u u^T``
(:func:`fold_latents`); boundaries of polarity-even parameters (the registry's polarity partners, :mod:`sharpgen.parameters`) are
fitted on folded latents, and a base latent on the other side moves along the reflected normal
``H n`` (:class:`Boundaries`). Without folding (``fold: none``, the paper) every base moves along
``n``.

Parameter values live in two spaces: the *physical* value (as in the tables: fluxes in Mx,
distances in Mm, ``r_value`` in log10 Mx) and the *fit space* in which they are close to linear
in ``eps``: ``log10(value)`` for the parameters the registry marks ``log_fit`` (fluxes) and the
value itself otherwise (:func:`sharpgen.parameters.to_fit_space`). Relative errors of achieved
values are taken on the linear quantity, i.e. on ``10**r_value`` for the log-valued ``r_value``.
"""


from sharpgen.directions.boundaries import (  # noqa: F401
    fit_boundaries,
    fit_polarity_fold,
    file_sha256,
    latents_from_table,
    load_boundaries,
    direction_field,
    hold_arrays,
    load_boundary,
    load_direction_field,
    make_labels,
    regression_direction,
    run_fit_boundaries,
    save_boundaries,
    train_boundary,
)
from sharpgen.directions.calibrate import (  # noqa: F401
    build_calibration,
    evaluate_requests,
    feedback_hold,
    fit_calibration,
    held_correctors,
    refine_held,
    run_calibrate,
    seed_range,
    solve_requests,
)
from sharpgen.directions.config import DirectionsConfig, directions_config  # noqa: F401
from sharpgen.directions.generate import generate_request, run_generate, write_generated_fits  # noqa: F401
from sharpgen.directions.geometry import (  # noqa: F401
    FOLD_PARAMETER,
    Boundaries,
    DirectionError,
    DirectionSpec,
    RequestOutOfRange,
    as_boundaries,
    beyond_bounds,
    combine_hold,
    direction_rows,
    direction_specs,
    direction_title,
    fold_latents,
    folded_values,
    latent_from_seed,
    project_boundary,
    projection_coefficients,
    reflect,
)
from sharpgen.directions.holds import fit_holds, held_residuals, solve_hold  # noqa: F401
from sharpgen.directions.traverse import (  # noqa: F401
    eps_grid,
    generated_std,
    make_strips,
    run_traverse,
    traversal_metrics,
    traverse,
)
