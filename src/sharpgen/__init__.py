"""sharpgen: generate SDO/HMI SHARP Br magnetograms with controlled physical properties and
retrieve the real observations that match them.

Each rule runs one thin script that calls one module (``rules/<stage>.smk`` ->
``workflow_scripts/<rule>.py`` -> module):

* data: ``synthesize`` -> :mod:`.synthetic`, ``ingest_local`` -> :mod:`.data`,
  ``download_jsoc`` -> :mod:`.jsoc`, ``synthetic_realism`` -> :mod:`.realism`
* patches: ``make_patches`` -> :mod:`.patches` (read back through :mod:`.store`)
* gan: ``train_gan`` -> :mod:`.gan` (shared training utilities: :mod:`.training`; several
  devices: :mod:`.distributed`)
* sampling: ``sample_latents`` -> :mod:`.sampling` (measurement: :mod:`.measure`)
* directions: ``fit_boundaries`` / ``traverse`` / ``calibrate`` -> :mod:`.directions`
  (``.boundaries``, ``.traverse``, ``.calibrate``)
* ssl: ``train_ssl`` -> :mod:`.ssl`, ``embed`` -> :mod:`.embed`
* retrieval: ``evaluate_retrieval`` -> :mod:`.retrieval`
* report: ``fig_*`` -> :mod:`.report` (one module per group of figures), ``metrics`` ->
  :mod:`.metrics`

Shared: the parameter registry :mod:`.parameters`, the physics :mod:`.physics` (R_VALUE in
:mod:`.rvalue`), configuration :mod:`.config`, the command line :mod:`.cli` (``generate`` in
:mod:`.directions.generate`, ``retrieve`` in :mod:`.query`).
"""

__version__ = "0.1.0"
