"""Synthetic SHARP-like Br records: the embedded default data set.

The generator writes each record in the same form as a JSOC ``protocol=fits`` export of the
series ``hmi.sharp_cea_720s`` (:mod:`sharpgen.synthetic_fits`): the ``Br`` segment (RICE_1
tile-compressed int32, ``BSCALE = 0.01``, JSOC keywords in the image header) plus JSOC-like
``bitmap`` and ``conf_disambig`` segments (:mod:`sharpgen.harpmask`), named
``hmi.sharp_cea_720s.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.<segment>.fits``, so the synthetic, local
and JSOC sources all go through the same ingest (:func:`sharpgen.sharp_io.read_sharp`) and the
same keyword code (USFLUX over :func:`sharpgen.sharp_io.sharp_mask`). Headers and identifiers
mark every record as synthetic (HARPNUM > 900,000, ``TELESCOP = 'SYNTHETIC'``).

The images are built from solar physics, not from noise, and the population is validated
against the JSOC keywords of 8,874 real SHARP records (:mod:`sharpgen.realism_population`):

* one catalogue row per HARP (:func:`region_catalogue`): time in cycle 24 (2010.5-2018), a
  butterfly-diagram latitude, a skewed log-normal total unsigned flux in 1e20-1e23 Mx (median
  9e21 Mx, stratified so that a small catalogue follows it), a bipole separation that grows
  with flux (``d ~ 35 Mm (flux/1e22 Mx)^0.35``), Joy's-law tilt (``0.5 |lat|`` with 10-25 deg
  scatter), Hale's law for cycle 24 (leading polarity negative in the north, positive in the
  south; 6 % anti-Hale), a flux imbalance of a few per cent, a delta/complex flag for about
  10 % of the regions (opposite polarities in contact), and an evolutionary ``age`` (0 just
  emerged .. 1 decayed; small regions are mostly seen decayed, large ones spotted, as spots
  decay at a roughly constant area rate);
* rendering (:func:`render_region`): sunspots with an umbra (peak 1.4-2.7 kG) and a penumbral
  plateau (their share of the flux falls with age), fragmented plage drawn as clustered small
  flux elements extending away from the opposite polarity (trailing polarity more dispersed;
  the plage spreads and the polarities drift apart with age), new small bipoles still emerging
  in young and large regions, network patches of one polarity each over the whole field of
  view, flux cancellation where plage or network meets opposite-polarity flux (so that strong
  polarity inversion lines remain only in emerging and delta configurations), and HMI-like
  noise whose level grows toward the limb (white plus a spatially correlated part, as left by
  the CEA remapping);
* several frames per HARP at a fixed cadence: the flux grows (young regions) or decays (old
  ones) slowly, elements random walk, the noise is new each frame, and the observer geometry
  (``DSUN_OBS``, ``RSUN_OBS``, B0, Carrington longitude of disk centre) follows the date.

Everything is vectorised numpy (flux elements are binned with ``np.bincount`` and blurred once),
and the output is fully determined by the seed.

Units: Br in Gauss (= Mx/cm^2), lengths in Mm unless the name says otherwise, fluxes in Mx.
"""

from __future__ import annotations

import logging
import math
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, special

# the record form (constants, identifiers, headers, writers) lives in sharpgen.synthetic_fits;
# re-exported here, the names callers have always used
from .synthetic_fits import (  # noqa: F401
    AU_M,
    BLANK,
    CDELT_DEG,
    RSUN_REF_M,
    SERIES,
    SYNTHETIC_HARPNUM_BASE,
    SYNTHETIC_NOAA_BASE,
    is_synthetic,
    sharp_filename,
    sharp_header,
    t_rec_string,
    write_record,
    write_sharp_fits,
)

logger = logging.getLogger(__name__)

PIX_MM = RSUN_REF_M * math.radians(CDELT_DEG) / 1e6      # 0.3644 Mm per CEA pixel
PIX_AREA_CM2 = (PIX_MM * 1e8) ** 2                        # 1.33e15 cm^2
CARRINGTON_DAY_DEG = 360.0 / 27.2753                      # synodic Carrington rate [deg/day]
TAI_EPOCH = datetime(2010, 1, 1)

# Regional-scale constants (Mm, G, Mx) used by the renderer.
SEP_MM_AT_1E22 = 35.0
SEP_EXPONENT = 0.35
ELEMENT_FLUX_MX = 1.5e18       # median plage element flux
NETWORK_FLUX_MX = 6e17       # median network element flux
NETWORK_DENSITY_PER_MM2 = 0.08
CYCLE24_NORTH_LEADING_SIGN = -1
B_SATURATION_G = 2900.0
NARROW_BLUR_PX = 1.3         # Gaussian sigma of a small flux element (network, plage)
WIDE_BLUR_PX = 3.0           # Gaussian sigma of pores / diffuse plage elements
# Population constants, tuned against the JSOC keyword tables (docs/data.md, "population")
AGE_SPREAD = 1.2             # plage spread of a decayed region (age 1) / a young one, minus 1
AGE_SEP = 0.5                # bipole separation of a decayed region / a young one, minus 1
AGE_FLUX_SLOPE = 0.35        # age ~ U(0,1)^(10^(slope (log10 flux - median))): big regions younger
AGE_SPOT_EXP = 1.5           # spot flux fraction falls as (1 - age)^AGE_SPOT_EXP
EMERGE_RATE = 2.5            # mean number of new bipoles emerging in a young 1e22 Mx region
EMERGE_FLUX_EXP = 0.4        # ... growing as (flux / 1e22 Mx)^EMERGE_FLUX_EXP
NETWORK_MIXED = 0.05         # fraction of network elements opposite to their cluster's polarity
CANCEL_MM = 2.5              # flux cancellation: Gaussian reach [Mm] of opposite-polarity flux
CANCEL_FRACTION = 1.0        # fraction of the opposite flux density cancelled
LOG_FLUX_MEDIAN = 21.97      # log10 of the catalogue flux [Mx]
LOG_FLUX_SIGMA = (0.62, 0.45)  # below / above the median (skewed: many small regions)
PLAGE_INNER = 0.4            # plage spread toward the opposite polarity / away from it
B_PLAGE_G = 250.0            # mean flux density of plage (sets its area)


def plage_spread_mm(flux_mx, age=0.0):
    """Gaussian spread [Mm] of a polarity's plage about its centre for a region of total
    unsigned flux ``flux_mx``: about 30 % of the flux per polarity spread at a mean density of
    :data:`B_PLAGE_G` over an elliptical Gaussian of axes 0.9 x 0.6 times the spread; a region
    of evolutionary ``age`` (0-1) has dispersed over ``1 + AGE_SPREAD age`` times that."""
    a_cm2 = 0.3 * np.asarray(flux_mx, dtype=np.float64) / (2.0 * np.pi * 0.54 * B_PLAGE_G)
    return np.maximum(np.sqrt(a_cm2) / 1e8, 2.0) * (1.0 + AGE_SPREAD * np.asarray(age, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------
def region_catalogue(n_regions: int, seed: int = 0) -> pd.DataFrame:
    """Draw the per-HARP properties of ``n_regions`` synthetic active regions.

    Returns one row per region, ordered by time, with columns: ``harpnum`` (unique, increasing
    with time like the real HARP numbering), ``noaa`` (0 for regions without a NOAA number),
    ``t0`` (datetime of the first frame, on the 720 s grid), ``lat_deg`` (flux-centre latitude),
    ``lon0_deg`` (Stonyhurst longitude at ``t0``), ``flux_mx`` (total unsigned flux),
    ``sep_mm`` (bipole separation), ``tilt_deg`` (Joy's-law tilt, positive = leading polarity
    nearer the equator), ``lead_sign`` (+1/-1), ``imbalance`` (fractional excess of the leading
    polarity), ``delta`` (0 = simple, 1 = intruding opposite spot, 2 = colliding second bipole),
    ``growth_per_day`` (flux e-folding rate) and ``ny``/``nx`` (record shape, pixels).
    """
    if n_regions < 1:
        raise ValueError(f"n_regions must be >= 1, got {n_regions}")
    rng = np.random.default_rng([seed, 0x5A4B])
    n = n_regions
    # time: uniform over cycle 24, rounded to the 12-minute T_REC grid
    t_days = np.sort(rng.uniform(0.5 * 365.25, 8.0 * 365.25, n))
    t_days = np.round(t_days * 120.0) / 120.0
    years = 2010.0 + t_days / 365.25
    # butterfly diagram: |lat| drifts from ~22 deg (2010.5) to ~9 deg (2018)
    abs_lat = np.clip(23.0 - 1.8 * (years - 2010.5) + rng.normal(0.0, 5.0, n), 3.0, 40.0)
    north = rng.random(n) < 0.5
    lat = np.where(north, abs_lat, -abs_lat)
    lon0 = rng.uniform(-60.0, 45.0, n)  # drifts west by ~13 deg/day over the frames
    # flux: log-normal, median ~4e21 Mx, within [1e20, 1e23]
    # (stratified: one draw per n-quantile of the log-normal, in random order, so that even a
    # small catalogue follows the population's distribution instead of a noisy sample of it)
    u = (rng.permutation(n) + rng.random(n)) / n
    z = special.ndtri(u)
    log_flux = np.clip(LOG_FLUX_MEDIAN + z * np.where(z < 0, LOG_FLUX_SIGMA[0], LOG_FLUX_SIGMA[1]), 20.0, 23.0)
    flux = 10.0**log_flux
    sep = SEP_MM_AT_1E22 * (flux / 1e22) ** SEP_EXPONENT * 10.0 ** rng.normal(0.0, 0.12, n)
    # Joy's law, scatter larger for small regions
    tilt_sigma = np.clip(25.0 - 7.0 * (log_flux - 20.5), 10.0, 25.0)
    tilt = 0.5 * abs_lat + rng.normal(0.0, 1.0, n) * tilt_sigma
    # Hale's law for cycle 24, a few per cent anti-Hale
    hale_sign = np.where(north, CYCLE24_NORTH_LEADING_SIGN, -CYCLE24_NORTH_LEADING_SIGN)
    anti_hale = rng.random(n) < 0.06
    lead_sign = np.where(anti_hale, -hale_sign, hale_sign)
    imbalance = np.clip(rng.normal(0.0, 0.08, n), -0.3, 0.3)
    # delta / complex regions, more frequent among large ones (about 17 % overall)
    p_delta = np.clip(0.01 + 0.08 * (log_flux - 20.8), 0.01, 0.2)
    is_delta = rng.random(n) < p_delta
    delta = np.where(is_delta, 1 + (rng.random(n) < 0.5), 0)
    # evolutionary stage: 0 = just emerged (compact, spotted, growing) .. 1 = decayed (no spots,
    # dispersed plage, polarities drifted apart, flux falling)
    # (Gnevyshev-Waldmeier: spots decay at a roughly constant area rate, so large regions stay
    # spotted through a disk passage and small ones are mostly seen decayed)
    age = rng.uniform(0.0, 1.0, n) ** (10.0 ** (AGE_FLUX_SLOPE * (log_flux - LOG_FLUX_MEDIAN)))
    sep = sep * (1.0 + AGE_SEP * age)
    growth = rng.normal(0.15 - 0.3 * age, 0.1, n)
    # record (HARP box) size: bipole extent plus plage spread plus margin
    spread = plage_spread_mm(flux, age)
    half_x = 0.5 * sep * np.abs(np.cos(np.radians(tilt))) + 2.0 * spread + 10.0
    half_y = 0.5 * sep * np.abs(np.sin(np.radians(tilt))) + 1.7 * spread + 8.0
    nx = np.clip(np.round(2 * half_x / PIX_MM * rng.uniform(0.9, 1.15, n)), 160, 760).astype(int)
    ny = np.clip(np.round(2 * half_y / PIX_MM * rng.uniform(0.9, 1.15, n)), 120, 420).astype(int)
    # HARP numbers grow with time like JSOC's (~930 a year from 2010.4), offset into the synthetic
    # range (> SYNTHETIC_HARPNUM_BASE) so that they never collide with a real HARP; likewise NOAA
    harp = np.maximum.accumulate(np.round(1.0 + 930.0 * (years - 2010.4)).astype(int))
    harp = SYNTHETIC_HARPNUM_BASE + harp + np.arange(n)  # strictly increasing, unique
    has_noaa = (flux > 4e20) | (rng.random(n) < 0.3)
    noaa = np.where(has_noaa, SYNTHETIC_NOAA_BASE + np.round(210.0 * (years - 2010.4)).astype(int)
                    + np.arange(n) % 7, 0)
    t0 = [TAI_EPOCH + timedelta(days=float(d)) for d in t_days]
    t0 = [t.replace(second=0, microsecond=0) for t in t0]
    return pd.DataFrame(
        {
            "harpnum": harp,
            "noaa": noaa,
            "t0": t0,
            "lat_deg": lat,
            "lon0_deg": lon0,
            "flux_mx": flux,
            "sep_mm": sep,
            "tilt_deg": tilt,
            "lead_sign": lead_sign.astype(int),
            "imbalance": imbalance,
            "delta": delta.astype(int),
            "age": age,
            "growth_per_day": growth,
            "ny": ny,
            "nx": nx,
        }
    )


# --------------------------------------------------------------------------------------------
# Observer geometry
# --------------------------------------------------------------------------------------------
def observer_geometry(t: datetime) -> dict:
    """Approximate SDO geometry at time ``t``: ``dsun_m``, ``rsun_arcsec``, ``b0_deg``,
    ``crln_obs_deg`` (Carrington longitude of disk centre) and ``car_rot``."""
    doy = (t - datetime(t.year, 1, 1)).total_seconds() / 86400.0
    dsun = AU_M * (1.0 - 0.01671 * math.cos(2.0 * math.pi * (doy - 3.0) / 365.25))
    rsun_arcsec = math.degrees(math.asin(RSUN_REF_M / dsun)) * 3600.0
    b0 = 7.25 * math.sin(2.0 * math.pi * (doy - 159.0) / 365.25)
    # Carrington rotation 2097 began 2010-05-13 ~ 05:00 UT
    days = (t - datetime(2010, 5, 13, 5, 0)).total_seconds() / 86400.0
    rot = days / 27.2753
    car_rot = 2097 + math.floor(rot)
    crln = (360.0 * (1.0 - (rot - math.floor(rot)))) % 360.0
    return {"dsun_m": dsun, "rsun_arcsec": rsun_arcsec, "b0_deg": b0, "crln_obs_deg": crln,
            "car_rot": car_rot}


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _spot_profile_flux_factor(ratio: float = 2.2, pen_frac: float = 0.4) -> float:
    """Flux of a unit-peak spot / (pi r_u^2): Gaussian umbra + super-Gaussian penumbra."""
    return (1.0 - pen_frac) + pen_frac * math.gamma(1.5) * ratio**2


_SPOT_K = _spot_profile_flux_factor()


def _add_spot(img: np.ndarray, x_px: float, y_px: float, flux_mx: float, sign: float,
              b_umbra: float, elong: float = 1.0, angle: float = 0.0) -> None:
    """Add a sunspot (Gaussian umbra of peak ``b_umbra`` G plus a penumbral plateau of 0.4 of
    it out to 2.2 umbral radii) carrying ``flux_mx``, in place, on a local window."""
    ru_cm = math.sqrt(flux_mx / (math.pi * b_umbra * _SPOT_K))
    ru = ru_cm / 1e8 / PIX_MM
    rp = 2.2 * ru
    half = int(math.ceil(3.2 * rp * max(elong, 1.0))) + 2
    ny, nx = img.shape
    x0, x1 = max(int(x_px) - half, 0), min(int(x_px) + half + 1, nx)
    y0, y1 = max(int(y_px) - half, 0), min(int(y_px) + half + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xx - x_px, yy - y_px
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / math.sqrt(elong)
    v = (-dx * s + dy * c) * math.sqrt(elong)
    r2 = u * u + v * v
    prof = 0.6 * np.exp(-r2 / (ru * ru)) + 0.4 * np.exp(-(r2 / (rp * rp)) ** 2)
    img[y0:y1, x0:x1] += sign * b_umbra * prof


def _deposit(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Bin point fluxes [Mx] at pixel positions into an image of flux density [G]."""
    ny, nx = shape
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    out = np.bincount(iy[ok] * nx + ix[ok], weights=flux[ok], minlength=ny * nx)
    return out.reshape(ny, nx) / PIX_AREA_CM2


def _clustered(rng: np.random.Generator, n: int, cx: float, cy: float, sx: float, sy: float,
               n_clusters: int, cluster_sd: float, labels: bool = False):
    """Neyman-Scott clustered positions: ``n`` points around ``n_clusters`` centres drawn from
    a Gaussian of widths (sx, sy) about (cx, cy); points scatter by ``cluster_sd`` (pixels).
    Returns (x, y), plus each point's cluster index when ``labels``."""
    n_clusters = max(int(n_clusters), 1)
    ccx = cx + sx * rng.standard_normal(n_clusters)
    ccy = cy + sy * rng.standard_normal(n_clusters)
    k = rng.integers(0, n_clusters, n)
    out = (ccx[k] + cluster_sd * rng.standard_normal(n), ccy[k] + cluster_sd * rng.standard_normal(n))
    return (*out, k) if labels else out


def _clustered_outward(rng: np.random.Generator, n: int, cx: float, cy: float, ux: float, uy: float,
                       s_out: float, s_in: float, s_perp: float, n_clusters: int,
                       cluster_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Clustered positions of one polarity's plage about its spot (cx, cy): cluster centres
    spread by ``s_out`` along the unit vector (ux, uy) pointing away from the opposite polarity,
    by only ``s_in`` toward it and by ``s_perp`` across the bipole axis (pixels)."""
    n_clusters = max(int(n_clusters), 1)
    t = rng.standard_normal(n_clusters)
    t = np.where(t > 0, t * s_out, t * s_in)
    q = s_perp * rng.standard_normal(n_clusters)
    k = rng.integers(0, n_clusters, n)
    return (cx + (t * ux - q * uy)[k] + cluster_sd * rng.standard_normal(n),
            cy + (t * uy + q * ux)[k] + cluster_sd * rng.standard_normal(n))


@dataclass
class _Elements:
    x: np.ndarray        # pixels
    y: np.ndarray
    flux: np.ndarray     # signed Mx
    wide: np.ndarray     # bool: larger blur (pores, decaying plage)


def _region_layout(reg: pd.Series, rng: np.random.Generator):
    """Spots and flux elements of one region at its first frame, in pixel coordinates."""
    ny, nx = int(reg.ny), int(reg.nx)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    flux = float(reg.flux_mx)
    sep_px = float(reg.sep_mm) / PIX_MM
    north = reg.lat_deg > 0
    g = math.radians(reg.tilt_deg)
    # leading polarity west (+x) and, for positive tilt, nearer the equator
    ey = -1.0 if north else 1.0
    ux, uy = math.cos(g), ey * math.sin(g)
    s_lead = float(reg.lead_sign)
    flux_lead = 0.5 * flux * (1.0 + reg.imbalance)
    flux_trail = 0.5 * flux * (1.0 - reg.imbalance)
    lead = (cx + 0.5 * sep_px * ux, cy + 0.5 * sep_px * uy)
    trail = (cx - 0.5 * sep_px * ux, cy - 0.5 * sep_px * uy)
    logf = math.log10(flux)
    spot_frac = 0.12 + 0.45 / (1.0 + math.exp(-(logf - 21.4) / 0.35))
    spot_frac *= rng.uniform(0.75, 1.2) * (1.0 - float(reg.age)) ** AGE_SPOT_EXP
    b_umbra = float(np.clip(1700.0 + 450.0 * (logf - 21.0) + rng.normal(0, 120), 1400.0, 2700.0))
    spots = []  # (x, y, flux, sign, b_umbra, elong, angle)
    for (px, py), pflux, sign, frac in ((lead, flux_lead, s_lead, spot_frac),
                                        (trail, flux_trail, -s_lead, 0.55 * spot_frac)):
        f_spot = pflux * frac
        if f_spot < 1.5e20:
            continue
        n_sp = 1 + int(rng.random() < 0.5) + int(rng.random() < 0.25 and f_spot > 2e21)
        parts = rng.dirichlet(np.full(n_sp, 2.0)) if n_sp > 1 else np.ones(1)
        parts = np.sort(parts)[::-1]
        for j, part in enumerate(parts):
            rp_main = 2.2 * math.sqrt(f_spot * parts[0] / (math.pi * b_umbra * _SPOT_K)) / 1e8 / PIX_MM
            off = 0.0 if j == 0 else rp_main * rng.uniform(1.3, 2.0) + rng.uniform(0.0, 0.1) * sep_px
            ang = rng.uniform(0, 2 * math.pi)
            bu = b_umbra * (1.0 if j == 0 else rng.uniform(0.75, 0.95))
            spots.append((px + off * math.cos(ang), py + off * math.sin(ang), f_spot * part,
                          sign, bu, rng.uniform(1.0, 1.5), rng.uniform(0, math.pi)))
    # plage: remaining flux in clustered elements; trailing polarity more dispersed
    spread = float(plage_spread_mm(flux, float(reg.age))) / PIX_MM
    xs, ys, fs, ws = [], [], [], []
    for (px, py), pflux, sign, disp, frac, out in ((lead, flux_lead, s_lead, 0.8, spot_frac, 1.0),
                                                   (trail, flux_trail, -s_lead, 1.25, 0.55 * spot_frac, -1.0)):
        f_plage = pflux * (1.0 - frac) if pflux * frac >= 1.5e20 else pflux
        fel = ELEMENT_FLUX_MX * np.exp(0.8 * rng.standard_normal(4096))
        n_el = int(np.clip(f_plage / fel.mean(), 5, 40000))
        fel = ELEMENT_FLUX_MX * np.exp(0.8 * rng.standard_normal(n_el))
        fel *= f_plage / fel.sum()
        # elongated along the bipole axis, extending away from the opposite polarity
        x, y = _clustered_outward(rng, n_el, px, py, out * ux, out * uy, disp * spread * 1.1,
                                  disp * spread * PLAGE_INNER, disp * spread * 0.6,
                                  n_clusters=max(n_el // 25, 3), cluster_sd=2.0 / PIX_MM)
        xs.append(x); ys.append(y); fs.append(sign * fel); ws.append(rng.random(n_el) < 0.4)
    # delta / complex configurations: opposite polarities in contact
    if reg.delta == 1 and spots:
        lx, ly, lf, lsgn, lbu = spots[0][:5]
        f_in = lf * rng.uniform(0.2, 0.5)
        ru_l = math.sqrt(lf / (math.pi * lbu * _SPOT_K)) / 1e8 / PIX_MM
        ru_i = math.sqrt(f_in / (math.pi * lbu * _SPOT_K)) / 1e8 / PIX_MM
        d = 1.25 * (ru_l + ru_i) * 1.6
        ang = rng.uniform(0, 2 * math.pi)
        spots.append((lx + d * math.cos(ang), ly + d * math.sin(ang), f_in, -lsgn,
                      lbu * 0.9, rng.uniform(1.2, 2.0), ang + math.pi / 2))
        # the intruding spot's partner keeps the region roughly balanced
        spots.append((lx + 2.6 * d * math.cos(ang), ly + 2.6 * d * math.sin(ang), 0.8 * f_in, lsgn,
                      lbu * 0.8, 1.2, 0.0))
    elif reg.delta == 2:
        # a second, smaller bipole emerging against the main one, axis anti-aligned
        f2 = flux * rng.uniform(0.1, 0.3)
        s2 = SEP_MM_AT_1E22 * (f2 / 1e22) ** SEP_EXPONENT / PIX_MM * 0.8
        ang = math.atan2(uy, ux) + math.pi + rng.normal(0, 0.5)
        mx, my = lead[0] + rng.normal(0, 0.1) * sep_px, lead[1] + rng.normal(0, 0.1) * sep_px
        bu = b_umbra * 0.9
        for sgn, k in ((-s_lead, 0.5), (s_lead, -0.5)):
            spots.append((mx + k * s2 * math.cos(ang), my + k * s2 * math.sin(ang), 0.6 * f2 / 2,
                          sgn, bu, rng.uniform(1.3, 2.2), ang))
        n2 = int(np.clip(0.4 * f2 / ELEMENT_FLUX_MX, 5, 8000))
        x, y = _clustered(rng, n2, mx, my, 0.5 * s2, 0.5 * s2, max(n2 // 25, 2), 1.5 / PIX_MM)
        side = np.sign((x - mx) * math.cos(ang) + (y - my) * math.sin(ang))
        fel = 0.4 * f2 / n2 * np.exp(0.6 * rng.standard_normal(n2))
        xs.append(x); ys.append(y); fs.append(np.where(side > 0, -s_lead, s_lead) * fel)
        ws.append(np.zeros(n2, bool))
    # continued emergence: new small bipoles between the main polarities, more in large and
    # young regions (not yet cancelled: their polarity inversion lines are strong)
    n_new = rng.poisson(EMERGE_RATE * (flux / 1e22) ** EMERGE_FLUX_EXP * (1.0 - float(reg.age)) ** 1.5)
    for _ in range(n_new):
        fe = min(flux * 10.0 ** rng.normal(-2.1, 0.15), 0.15 * flux)
        de = rng.uniform(2.0, 6.0) / PIX_MM
        t, q = rng.uniform(-0.6, 0.6) * sep_px, rng.normal(0.0, 0.15) * sep_px
        ex, ey_ = cx + t * ux - q * uy, cy + t * uy + q * ux
        ang = math.atan2(uy, ux) + rng.normal(0.0, 0.6)
        ne = int(np.clip(fe / ELEMENT_FLUX_MX, 4, 4000))
        for sgn, k in ((s_lead, 0.5), (-s_lead, -0.5)):
            x, y = _clustered(rng, ne, ex + k * de * math.cos(ang), ey_ + k * de * math.sin(ang),
                              0.3 * de, 0.3 * de, max(ne // 25, 1), 0.6 / PIX_MM)
            xs.append(x); ys.append(y); fs.append(sgn * fe / 2 / ne * np.exp(0.5 * rng.standard_normal(ne)))
            ws.append(np.zeros(ne, bool))
    # network: clustered on the supergranular scale, each cluster (a patch of network) of one
    # polarity with a few per cent of opposite elements; both polarities over the field of view
    area_mm2 = nx * ny * PIX_MM**2
    n_net = int(NETWORK_DENSITY_PER_MM2 * area_mm2)
    n_cl = max(int(area_mm2 / 600.0), 4)
    x, y, k = _clustered(rng, n_net, cx, cy, nx * 0.6, ny * 0.6, n_cl, 4.0 / PIX_MM, labels=True)
    x = np.mod(x, nx); y = np.mod(y, ny)
    fnet = NETWORK_FLUX_MX * np.exp(0.9 * rng.standard_normal(n_net))
    cl_sign = np.where(rng.random(n_cl) < 0.5 + 0.05 * s_lead, 1.0, -1.0)
    fnet *= cl_sign[k] * np.where(rng.random(n_net) < NETWORK_MIXED, -1.0, 1.0)
    xs.append(x); ys.append(y); fs.append(fnet); ws.append(np.zeros(n_net, bool))
    fresh = [np.full(a.size, 2 <= i < len(xs) - 1) for i, a in enumerate(xs)]
    el = _Elements(np.concatenate(xs), np.concatenate(ys), np.concatenate(fs), np.concatenate(ws))
    _cancel(el, np.concatenate(fresh), spots, (ny, nx))
    return spots, el


def _cancel(el: "_Elements", fresh: np.ndarray, spots: list, shape: tuple[int, int]) -> None:
    """Flux cancellation, in place: where plage or network flux sits within ~CANCEL_MM of
    opposite-polarity flux (spots included), the two cancel (submerge) within hours, so the
    weaker side loses ``CANCEL_FRACTION`` of the opposite flux density around it. Spots and
    ``fresh`` (newly emerged) elements are not cancelled: strong-field polarity inversion lines
    stay only in emerging and delta configurations, as observed (R_VALUE = 0 in about 30 % of
    SHARP records)."""
    spot_img = np.zeros(shape)
    for (sx, sy, sf, sgn, bu, elong, ang) in spots:
        _add_spot(spot_img, sx, sy, sf, sgn, bu, elong, ang)
    sig = CANCEL_MM / PIX_MM
    pos = ndimage.gaussian_filter(np.maximum(spot_img, 0.0) + _deposit(shape, el.x, el.y, np.maximum(el.flux, 0.0)),
                                  sig, mode="constant")
    neg = ndimage.gaussian_filter(np.maximum(-spot_img, 0.0) + _deposit(shape, el.x, el.y, np.maximum(-el.flux, 0.0)),
                                  sig, mode="constant")
    iy = np.clip(np.rint(el.y).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip(np.rint(el.x).astype(np.int64), 0, shape[1] - 1)
    own = np.where(el.flux > 0, pos[iy, ix], neg[iy, ix])
    opp = np.where(el.flux > 0, neg[iy, ix], pos[iy, ix])
    keep = np.clip(1.0 - CANCEL_FRACTION * opp / np.maximum(own, 1e-9), 0.0, 1.0)
    el.flux *= np.where(fresh, 1.0, keep)


NOISE_WHITE_G = 7.5
NOISE_CORRELATED = ((1.2, 10.0), (4.0, 12.0))  # (Gaussian sigma [px], rms [G]) at disk centre


def _saturate(img: np.ndarray, b_max: float = B_SATURATION_G, p: float = 6.0) -> np.ndarray:
    """Soft ceiling on |B| where flux concentrations overlap: ``B / (1 + (|B|/b_max)^p)^(1/p)``
    (fields below ~0.7 b_max are almost unchanged; nothing exceeds b_max). Flux tubes cannot be
    compressed beyond roughly equipartition with the photospheric gas pressure (~3-4 kG)."""
    return img / (1.0 + (np.abs(img) / b_max) ** p) ** (1.0 / p)


def _noise(rng: np.random.Generator, shape: tuple[int, int], mu: float) -> np.ndarray:
    """HMI-like Br noise [G]: white plus a correlated part, larger toward the limb
    (Br mixes in the noisier transverse field as mu = cos(heliocentric angle) drops)."""
    level = 1.0 + 1.2 * (1.0 - mu)
    white = NOISE_WHITE_G * level * rng.standard_normal(shape)
    out = white
    for sigma_px, amp in NOISE_CORRELATED:
        corr = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
        out += amp * level / max(corr.std(), 1e-12) * corr
    return out


def render_region(reg: pd.Series, n_frames: int, seed: int, cadence_h: float = 6.0):
    """Render ``n_frames`` Br images of one region.

    Returns a list of ``(data, t_rec, meta)``: ``data`` (ny, nx) float64 Gauss rounded to the
    0.01 G quantum of the FITS files, ``t_rec`` a datetime, ``meta`` a dict with the frame's
    Stonyhurst longitude ``lon_deg`` and observer geometry.
    """
    rng = np.random.default_rng([seed, int(reg.harpnum)])
    spots, el = _region_layout(reg, rng)
    shape = (int(reg.ny), int(reg.nx))
    n_el = el.x.size
    # per-element random walk (pixels) and flux jitter across frames
    step = 0.25 / PIX_MM * math.sqrt(cadence_h)
    walk_x = np.cumsum(step * rng.standard_normal((n_frames, n_el)), axis=0)
    walk_y = np.cumsum(step * rng.standard_normal((n_frames, n_el)), axis=0)
    walk_x[0] = 0.0
    walk_y[0] = 0.0
    jitter = np.exp(np.cumsum(0.05 * rng.standard_normal((n_frames, n_el)), axis=0))
    jitter[0] = 1.0
    out = []
    for k in range(n_frames):
        t = reg.t0 + timedelta(hours=cadence_h * k)
        t_days = cadence_h * k / 24.0
        g = math.exp(float(reg.growth_per_day) * t_days)
        img = np.zeros(shape)
        for (sx, sy, sf, sgn, bu, elong, ang) in spots:
            _add_spot(img, sx, sy, sf * g, sgn, bu, elong, ang)
        x = el.x + walk_x[k]
        y = el.y + walk_y[k]
        f = el.flux * jitter[k] * np.where(np.abs(el.flux) > 2e18, g, 1.0)
        narrow = _deposit(shape, x[~el.wide], y[~el.wide], f[~el.wide])
        wide = _deposit(shape, x[el.wide], y[el.wide], f[el.wide])
        img += ndimage.gaussian_filter(narrow, NARROW_BLUR_PX, mode="constant")
        img += ndimage.gaussian_filter(wide, WIDE_BLUR_PX, mode="constant")
        img = _saturate(img)
        # Stonyhurst longitude: active-latitude rotation ~3 % slower than the Carrington rate
        lon = float(reg.lon0_deg) + 0.97 * CARRINGTON_DAY_DEG * t_days
        geo = observer_geometry(t)
        lat = float(reg.lat_deg)
        mu = (math.cos(math.radians(lat)) * math.cos(math.radians(geo["b0_deg"]))
              * math.cos(math.radians(lon)) + math.sin(math.radians(lat)) * math.sin(math.radians(geo["b0_deg"])))
        img += _noise(rng, shape, max(mu, 0.2))
        data = np.round(img, 2)
        out.append((data, t, {"lon_deg": lon, "mu": mu, **geo}))
    return out


# --------------------------------------------------------------------------------------------
# Files (the JSOC record form: sharpgen.synthetic_fits)
# --------------------------------------------------------------------------------------------
def _write_region(args) -> list[tuple]:
    """Render and write every frame of one catalogue row (a process-pool task)."""
    reg, out_dir, frames_per_region, seed, cadence_h = args
    rows = []
    for data, t, meta in render_region(reg, frames_per_region, seed, cadence_h):
        path = write_record(out_dir, reg, data, t, meta)
        rows.append((str(path.resolve()), "synthetic", int(reg.harpnum), t_rec_string(t)))
    return rows


def synthesize(out_dir: str | Path, n_regions: int = 240, frames_per_region: int = 4,
               seed: int = 0, cadence_h: float = 6.0, progress: bool = True,
               workers: int = 1) -> pd.DataFrame:
    """Write the synthetic data set to ``out_dir`` and return its manifest.

    Returns a DataFrame with the manifest columns ``path`` (absolute), ``source``
    (``synthetic``), ``harpnum``, ``t_rec``; one row per Br file, sorted by HARPNUM then time.
    ``workers`` > 1 renders regions in that many processes; every region has its own seed, so
    the files are identical whatever the number of workers.
    """
    from sharpgen.logutil import track

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cat = region_catalogue(n_regions, seed)
    # tasks are made one region at a time and each region's rows go straight into the columns:
    # what is held grows by the manifest's own rows, not by a catalogue Series per region
    tasks = ((reg, str(out_dir), frames_per_region, seed, cadence_h) for _, reg in cat.iterrows())
    bar = dict(total=len(cat), desc="synthesize", enabled=progress)  # terminal only
    columns: tuple[list, ...] = ([], [], [], [])
    with ExitStack() as stack:
        if workers > 1 and len(cat) > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            results = pool.map(_write_region, tasks, chunksize=4)
        else:
            results = map(_write_region, tasks)
        for res in track(results, **bar):
            for col, values in zip(columns, zip(*res)):
                col.extend(values)
    logger.info("wrote %d synthetic records of %d regions to %s", len(columns[0]), len(cat), out_dir)
    return pd.DataFrame({"path": columns[0], "source": columns[1],
                         "harpnum": np.asarray(columns[2], dtype=np.int64), "t_rec": columns[3]})
