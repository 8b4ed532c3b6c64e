"""``sharpgen explore``: an interactive, offline explorer of the calibrated latent directions.

* :mod:`.session` -- :class:`ExploreSession`: the state and answers (generate, measure, nearest
  real patches, upload + inversion) without HTTP;
* :mod:`.server` -- the standard library's ``http.server`` on 127.0.0.1, serving ``static/``
  (plain HTML + CSS + JavaScript, no build step) and a small JSON API.
"""
