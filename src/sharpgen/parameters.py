"""The parameter registry: every physical parameter of a patch, with its unit and how it is used.

:data:`PARAMETERS` (re-exported as ``sharpgen.physics.PARAMETERS``) is the one source for

* the column names of every parameter table (patches.parquet, latents.parquet, traversals,
  matches) and their units (:attr:`ParamInfo.unit`);
* whether a parameter is fitted, calibrated, correlated and plotted as ``log10(value)``
  (:attr:`ParamInfo.log_fit`, the *fit space*: :func:`to_fit_space`);
* its partner under a global polarity reversal B -> -B (:attr:`ParamInfo.partner`: itself for
  polarity-even parameters, TPF <-> TNF, None for parameters that change sign or orientation);
* whether a latent direction is fitted for it and ``sharpgen generate`` accepts it
  (:attr:`ParamInfo.requestable`); these are also the headline parameters of metrics.json.

Every list of parameter names in the code derives from this table (tests/test_parameters.py
greps src/ for literal lists). The physical definitions are in :mod:`sharpgen.physics` and
docs/parameters.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

STRONG_GAUSS = 150.0  #: strong-field / polarity threshold of the paper and of R_VALUE [G]
R_PAPER_DILATION = 7  #: r_paper: side of the square dilating each 150 G polarity mask [px]
ROBUST_SMOOTH_MM = 2.0  #: psep_robust: Gaussian sigma of the smoothing [Mm]
ROBUST_GRID_MM = 1.5  #: psep_robust: the map is first block-averaged to pixels of about this [Mm]
ROBUST_THRESHOLD_GAUSS = 50.0  #: psep_robust: |smoothed B| threshold of a flux cluster [G]


@dataclass(frozen=True)
class ParamInfo:
    """Unit, definition and use of one parameter (one column of every parameter table).

    name: the column name.
    unit: physical unit of the stored value (crop-mode patches; resize mode is in image units).
    description: one-line definition.
    log_fit: fitted / calibrated / correlated / plotted as log10(value) (spans decades).
    log_valued: the stored value already is log10 of a physical quantity (JSOC's R_VALUE), so
        relative errors are taken on 10**value and 0.0 stands for "no R" (JSOC's convention).
    partner: the parameter this one becomes under B -> -B (itself: polarity-even); None when
        it changes sign or orientation (never folded).
    requestable: a latent direction is fitted for it, ``sharpgen generate --<name>`` accepts it,
        and it is a headline parameter of metrics.json.
    distribution: drawn in the real-vs-generated distribution figure.
    realism_target: its generated distribution must match the real one (normalised
        Wasserstein target of the GAN).
    """

    name: str
    unit: str
    description: str
    log_fit: bool = False
    log_valued: bool = False
    partner: str | None = None
    requestable: bool = False
    distribution: bool = False
    realism_target: bool = False

    @property
    def polarity_even(self) -> bool:
        return self.partner == self.name


def _p(name: str, unit: str, description: str, **flags) -> tuple[str, ParamInfo]:
    return name, ParamInfo(name, unit, description, **flags)


#: name -> ParamInfo, in the order of the paper's tables (fluxes, separations, R).
PARAMETERS: dict[str, ParamInfo] = dict([
    _p("tuf", "Mx", "total unsigned flux: sum |B| * pixel area over valid (masked) pixels",
       log_fit=True, partner="tuf", requestable=True, distribution=True, realism_target=True),
    _p("tpf", "Mx", "total positive flux: sum of B > 0 times pixel area",
       log_fit=True, partner="tnf", requestable=True, distribution=True),
    _p("tnf", "Mx", "total negative flux MAGNITUDE (>= 0): -sum of B < 0 times pixel area",
       log_fit=True, partner="tpf", requestable=True, distribution=True),
    _p("net_flux", "Mx", "signed net flux tpf - tnf", distribution=True),
    _p("flux_imbalance", "1", "|net_flux| / tuf (0 balanced, 1 unipolar)", partner="flux_imbalance"),
    _p("usflux_strong", "Mx", f"unsigned flux of pixels with |B| > {STRONG_GAUSS:g} G",
       log_fit=True, partner="usflux_strong"),
    _p("strong_frac", "1", f"fraction of valid pixels with |B| > {STRONG_GAUSS:g} G",
       partner="strong_frac"),
    _p("bmax", "G", "maximum |B| over valid pixels", partner="bmax"),
    _p("psep", "Mm",
       f"polarity separation (paper): distance between the flux-weighted centroids of the "
       f"B > +{STRONG_GAUSS:g} G and B < -{STRONG_GAUSS:g} G pixels; NaN if a polarity is empty",
       partner="psep", requestable=True, distribution=True, realism_target=True),
    _p("psep_robust", "Mm",
       f"robust polarity separation: B smoothed by a Gaussian of sigma {ROBUST_SMOOTH_MM:g} Mm; "
       f"the connected cluster of smoothed B > +{ROBUST_THRESHOLD_GAUSS:g} G (resp. < -"
       f"{ROBUST_THRESHOLD_GAUSS:g} G) carrying the most flux is the dominant positive (negative) "
       "polarity; distance between their |smoothed B|-weighted centroids; NaN if none",
       partner="psep_robust", requestable=True, distribution=True),
    _p("tilt_deg", "deg",
       "tilt of the bipole axis joining the dominant clusters (psep_robust), measured from the "
       "+x (westward) axis towards +y (north), folded into (-90, 90] so that it does not depend "
       "on which polarity leads"),
    _p("lead_sign", "1",
       "sign of the leading (western, larger x) dominant cluster: +1 positive leads, -1 "
       "negative leads, 0 if both centroids share x; NaN if a cluster is missing"),
    _p("r_paper", "Mx",
       f"paper's R: the B > +{STRONG_GAUSS:g} G and B < -{STRONG_GAUSS:g} G masks are each dilated "
       f"by a {R_PAPER_DILATION}x{R_PAPER_DILATION} square; sum of |B| where the dilated masks "
       "overlap, times pixel area",
       log_fit=True, partner="r_paper", requestable=True, distribution=True, realism_target=True),
    _p("r_value", "log10 Mx (JSOC)",
       "Schrijver (2007) R as JSOC computes the R_VALUE keyword (sharp_functions.c, "
       "computeR_sharp): ~2 arcsec sub-sampling, 150 G polarity masks dilated 3x3, overlap "
       "convolved with a Gaussian, log10 of the weighted |B| sum [G]; 0 where the sum < 1",
       log_valued=True, partner="r_value", requestable=True, distribution=True,
       realism_target=True),
])

PARAMETER_NAMES: tuple[str, ...] = tuple(PARAMETERS)
#: parameters with a latent direction, accepted by ``sharpgen generate``; metrics.json headline
REQUESTABLE: tuple[str, ...] = tuple(n for n, i in PARAMETERS.items() if i.requestable)
#: parameters fitted / plotted as log10(value)
LOG_FIT: tuple[str, ...] = tuple(n for n, i in PARAMETERS.items() if i.log_fit)
#: parameters stored as log10 of a physical quantity
LOG_VALUED: tuple[str, ...] = tuple(n for n, i in PARAMETERS.items() if i.log_valued)
#: partner of each parameter under B -> -B (polarity-even ones map to themselves)
POLARITY_PARTNER: dict[str, str] = {n: i.partner for n, i in PARAMETERS.items() if i.partner}
#: parameters of the real-vs-generated distribution figure
DISTRIBUTION: tuple[str, ...] = tuple(n for n, i in PARAMETERS.items() if i.distribution)
#: parameters whose generated distribution must match the real one (GAN realism target)
REALISM_TARGETS: tuple[str, ...] = tuple(n for n, i in PARAMETERS.items() if i.realism_target)


def info(name: str) -> ParamInfo:
    """The :class:`ParamInfo` of ``name``; KeyError naming the known parameters otherwise."""
    try:
        return PARAMETERS[name]
    except KeyError:
        raise KeyError(f"unknown parameter {name!r}; known: {list(PARAMETERS)}") from None


def unit_of(name: str, mode: str = "crop") -> str:
    """Unit string of a parameter; in patches mode 'resize' the values are in image units."""
    if mode == "resize":
        return "image units (patches mode 'resize': not physical)"
    return info(name).unit


def is_log_fit(name: str) -> bool:
    """True for parameters fitted / plotted as log10(value); False for unknown names."""
    i = PARAMETERS.get(name)
    return bool(i and i.log_fit)


def polarity_even(name: str) -> bool:
    """True when ``name`` does not change under B -> -B (TUF, R, separations ...)."""
    return POLARITY_PARTNER.get(name) == name


def order(names: Iterable[str]) -> list[str]:
    """Parameter (or direction ``target|held``) names in registry order, conditional keys right
    after their target, unknown names last (alphabetical)."""
    def key(n):
        target, _, hold = str(n).partition("|")
        i = PARAMETER_NAMES.index(target) if target in PARAMETERS else len(PARAMETER_NAMES)
        return (i, target, hold)

    return sorted(names, key=key)


def to_fit_space(name: str, values) -> np.ndarray:
    """Physical values (any shape) -> fit space: log10 for ``log_fit`` parameters
    (non-positive -> NaN), the value itself otherwise. float64 copy."""
    v = np.asarray(values, dtype=np.float64)
    if is_log_fit(name):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    return v.copy()


def to_defined_fit_space(name: str, values) -> np.ndarray:
    """:func:`to_fit_space`, with JSOC's "no R" (0 of a ``log_valued`` parameter such as
    r_value, not a point of its log scale) as NaN: the values a correlation may use."""
    y = to_fit_space(name, values)
    return np.where(y != 0, y, np.nan) if name in LOG_VALUED else y


def from_fit_space(name: str, y) -> np.ndarray:
    """Inverse of :func:`to_fit_space` (float64)."""
    y = np.asarray(y, dtype=np.float64)
    return 10.0**y if is_log_fit(name) else y.copy()


def relative_error(name: str, achieved, requested) -> np.ndarray:
    """|achieved - requested| / |requested| on the linear quantity (``10**x`` for log-valued
    parameters such as r_value)."""
    a = np.asarray(achieved, dtype=np.float64)
    r = np.asarray(requested, dtype=np.float64)
    if name in LOG_VALUED:
        a, r = 10.0**a, 10.0**r
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(a - r) / np.abs(r)


def fit_space_label(name: str, mode: str = "crop") -> str:
    """Axis label of a parameter in fit space: 'log10 tuf [Mx]' or 'psep [Mm]'."""
    unit = unit_of(name, mode)
    return f"log10 {name} [{unit}]" if is_log_fit(name) else f"{name} [{unit}]"

#: the three parameters the paper reports retrieval correlations for (TUF, PSEP, R): the
#: headline columns of the report's retrieval tables
HEADLINE: tuple[str, ...] = ("tuf", "psep", "r_value")
