"""``sharpgen generate``: a patch with a requested parameter value, by a calibrated latent edit.

A base latent comes from ``--seed`` (:func:`latent_from_seed`); it moves along the calibrated
direction of the requested parameter (optionally holding others, with the polarity fold) to the
eps the calibration predicts, refined by secant steps on the measured value
(:func:`generate_request`); the image and its provenance are written as FITS
(:func:`write_generated_fits`) with a Carrington CEA WCS like the SHARP records it imitates, so
``sunpy.map.Map(path)`` and ``sharpgen params`` read it. The argparse options are in
:mod:`sharpgen.cli`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sharpgen.directions.boundaries import file_sha256, load_direction_field
from sharpgen.directions.calibrate import feedback_hold, seed_range, solve_requests
from sharpgen.directions.geometry import (
    Boundaries,
    DirectionError,
    DirectionSpec,
    RequestOutOfRange,
    as_boundaries,
    latent_from_seed,
)
from sharpgen.measure import MeasurementContext, Renderer, make_renderer, space_codes
from sharpgen.parameters import relative_error, to_fit_space, unit_of
from sharpgen.physics import RSUN_REF_M, PixelScale

#: nominal observation of every generated patch (it has none): T_REC of a SHARP record (TAI),
#: and where the Sun's centre was seen from Earth then -- Carrington longitude L0 and latitude
#: B0 of the disk centre (sunpy.coordinates.sun.L0 / B0; tests/test_interop.py checks them). The
#: patch is centred on the central meridian at the equator: (CRVAL1, CRVAL2) = (L0, 0).
NOMINAL_T_REC = "2012.01.01_00:00:00_TAI"
NOMINAL_CRLN_OBS = 117.721158
NOMINAL_CRLT_OBS = -2.947685
#: SHARP CEA pixel: 0.03 heliographic degrees (times the patch store's bin in crop mode)
SHARP_CDELT_DEG = 0.03


class GenerateError(ValueError):
    """``sharpgen generate`` cannot start: an input file is missing or unusable, or the output
    folder does not exist. The message names the file and the problem."""


def generate_request(render: Renderer, G, normals: "Boundaries | Mapping[str, np.ndarray]",
                     calibration: Mapping, target: str, value: float, hold: Sequence[str] = (),
                     seed: int = 0, refine_steps: int = 2, tol: float = 0.02, batch_size: int = 16,
                     hold_steps: int = 0) -> dict:
    """Generate one image whose ``target`` equals ``value`` (physical units of the calibration).

    normals: a :class:`Boundaries` (the direction of a base on the far side of the polarity fold
    is the reflected one) or a plain {name: unit normal (D,)} mapping.
    calibration: the calibration.json dict (keys ``directions``, ``measurement``).
    Raises :class:`DirectionError` for an uncalibrated direction and :class:`RequestOutOfRange`
    (message with the available range) for values outside the calibrated range.
    Returns dict with ``image`` (S, S) float32 in [-1, 1], ``z_base`` (D,), ``z`` (D,), ``eps``,
    ``achieved``, ``rel_error``, ``measured`` (parameter -> value), ``base_measured``, ``key``,
    ``unit``.
    """
    from sharpgen.gan import generate

    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    spec = DirectionSpec(target, tuple(hold))
    mode = calibration.get("measurement", {}).get("mode", "crop")
    unit = unit_of(target, mode)
    field = as_boundaries(normals)
    cal = direction_calibration(calibration, spec, field.normals)
    glo, ghi = cal["range"]
    if not (glo <= value <= ghi):
        raise RequestOutOfRange(
            f"requested {target}={value:g} is outside the calibrated range [{glo:g}, {ghi:g}] {unit} "
            f"of direction {spec.key!r}")
    # the seed's z, mapped to whitened W codes when the boundaries live in W
    z_base = space_codes(G, latent_from_seed(seed, G.nz)[None, :], field.space)[0].astype(np.float32)
    vector = field.per_base(spec, z_base[None, :])[0]
    base_df = render(z_base[None, :])
    y0 = to_fit_space(target, base_df[target].to_numpy(dtype=np.float64))
    lim = field.eps_bounds(spec, z_base[None, :])
    slo, shi = seed_range(cal, float(y0[0]), eps_bounds=lim[0])
    if not (np.isfinite(y0[0]) and slo <= value <= shi):
        raise RequestOutOfRange(
            f"requested {target}={value:g} is outside the range [{slo:g}, {shi:g}] {unit} reachable from "
            f"seed {seed} along {spec.key!r} (calibrated eps in [{cal['eps_min']:g}, {cal['eps_max']:g}]"
            + (f", polarity fold at eps {lim[0][np.isfinite(lim[0])][0]:.3g}" if np.isfinite(lim[0]).any() else "")
            + f", global calibrated range [{glo:g}, {ghi:g}]); try another --seed")

    def render_target(z):
        return render(z)[target].to_numpy(dtype=np.float64)

    res = solve_requests(render_target, z_base[None, :], vector, [value], cal, refine_steps=refine_steps,
                         tol=tol, y0=y0, eps_bounds=lim)
    eps = float(res["eps"][0])
    # feedback hold: re-measure the held parameters and step them back along their own directions
    z, fb = feedback_hold(render, field, calibration["directions"], spec, z_base, vector, value,
                          base_df.iloc[0], eps, tol=tol, steps=hold_steps, eps_bounds=lim[0])
    eps = fb.get("eps", eps)
    z = z.astype(np.float32)
    image = generate(G, z[None, :], batch_size=batch_size, space=field.space)[0]
    measured = render(z[None, :]).iloc[0].to_dict()
    return {
        "key": spec.key, "image": image, "z_base": z_base, "z": z, "eps": eps,
        "achieved": float(measured[target]),
        "rel_error": float(relative_error(target, measured[target], value)),
        "measured": {k: float(v) for k, v in measured.items()},
        "base_measured": {k: float(v) for k, v in base_df.iloc[0].to_dict().items()},
        "unit": unit, "mode": mode, "cal": cal,
        "hold_fit": field.hold_fit(spec),  # measured coefficients or the projection
        "eps_held": fb.get("eps_held", {}), "correctors": fb.get("correctors", {}),
    }


def direction_calibration(calibration: Mapping, spec: DirectionSpec, normals) -> dict:
    """The calibration.json entry of ``spec``; DirectionError naming the calibrated directions
    (and how to add this one) when it is absent, or the reason when its calibration failed."""
    cals = calibration["directions"]
    if spec.key not in cals:
        calibrated = sorted(k for k, c in cals.items() if c.get("calibrated", True))
        raise DirectionError(f"direction {spec.key!r} is not calibrated; calibrated directions: "
                             f"{calibrated} ({uncalibrated_hint(spec, normals)})")
    cal = cals[spec.key]
    if not cal.get("calibrated", True):
        raise DirectionError(f"direction {spec.key!r} could not be calibrated: {cal.get('reason', 'unknown reason')}")
    return cal


def uncalibrated_hint(spec: DirectionSpec, with_boundary) -> str:
    """What to change in the config so that the direction ``spec`` gets calibrated.

    Every parameter of a direction, target and held ones, needs a boundary of its own
    (``directions.parameters``); a direction with held parameters is also listed in
    ``directions.conditional``. ``with_boundary``: the parameters the boundaries file has.
    """
    missing = [p for p in (spec.target, *spec.hold) if p not in with_boundary]
    steps = []
    if missing:
        steps.append(f"add {', '.join(missing)} to directions.parameters (no boundary was fitted "
                     f"for {'it' if len(missing) == 1 else 'them'})")
    if spec.hold:
        steps.append(f"{'' if steps else 'add '}{{target: {spec.target}, hold: [{', '.join(spec.hold)}]}} "
                     "to directions.conditional")
    if not steps:  # boundaries exist, the calibration lacks the direction: it predates them
        return ("the boundaries have it but the calibration does not: rerun the directions stage "
                "(snakemake -R calibrate)")
    return " and ".join(steps) + " in the config, then rerun the pipeline"


def nominal_cea_wcs(measurement: "MeasurementContext | Mapping", size: int) -> tuple[dict, list[str]]:
    """FITS keywords of a Carrington CEA WCS for an S x S generated patch, and comment lines.

    CDELT: in crop mode the SHARP pixel, 0.03 deg x the patch store's ``bin`` (from the
    measurement's pixel side; an explicit ``bin`` in ``measurement`` wins); in resize mode the
    geometric-mean side of the measurement pixel in heliographic degrees, which is *not* a
    physical scale (each record was squeezed to S x S) -- the comments say so. DSUN_OBS and
    RSUN_OBS are chosen so that JSOC's pixel-scale formula (:meth:`PixelScale.from_header`,
    used by ``sharpgen params``) gives back the measurement's pixel side, area and arcsec
    exactly; the observer's Carrington position and the date are nominal (:data:`NOMINAL_T_REC`).
    """
    from astropy.time import Time

    from sharpgen.config import parse_tai

    ctx = measurement if isinstance(measurement, MeasurementContext) else MeasurementContext.from_dict(measurement)
    side_mm, side_arcsec = float(ctx.scale.size_mm), float(ctx.scale.size_arcsec)
    if not (math.isfinite(side_mm) and side_mm > 0 and math.isfinite(side_arcsec) and side_arcsec > 0):
        raise GenerateError(f"measurement pixel scale must be positive: {ctx.to_dict()}")
    deg_mm = RSUN_REF_M * 1e-6 * math.radians(1.0)  # Mm per heliographic degree
    notes = []
    given_bin = measurement.get("bin") if isinstance(measurement, Mapping) else None
    native = PixelScale.cea(SHARP_CDELT_DEG).size_mm
    if ctx.mode == "crop":
        # an explicit bin wins when it agrees with the pixel side (a context built from a
        # PixelScale alone carries the default bin 1 whatever its scale)
        b = int(round(side_mm / native))
        if given_bin and abs(side_mm / (int(given_bin) * native) - 1.0) < 0.01:
            b = int(given_bin)
        if b >= 1 and abs(side_mm / (b * native) - 1.0) < 0.01:
            cdelt = SHARP_CDELT_DEG * b
            notes.append(f"crop mode: SHARP CEA pixels of {SHARP_CDELT_DEG} deg binned {b} x {b}")
        else:  # not a SHARP pixel: the scale the parameters were measured at
            cdelt = side_mm / deg_mm
            notes.append(f"crop mode: pixel side {side_mm:.6g} Mm (not a multiple of the SHARP pixel)")
    else:
        cdelt = side_mm / deg_mm
        notes.append("resize mode: each record was resized to the patch size; the pixel scale is "
                     "NOT physical (pixels are anisotropic); CDELT is the geometric-mean side")
    # invert PixelScale.from_header: side_arcsec = atan(R rad(CDELT) / DSUN) [arcsec],
    # side_mm = side_arcsec * RSUN_REF / RSUN_OBS * 1e-6
    dsun = RSUN_REF_M * math.radians(cdelt) / math.tan(math.radians(side_arcsec / 3600.0))
    rsun_obs = side_arcsec * RSUN_REF_M * 1e-6 / side_mm
    t_rec = NOMINAL_T_REC
    date_obs = Time(parse_tai(t_rec), scale="tai").utc.isot
    centre = (size + 1) / 2.0
    keys = {
        "WCSNAME": ("Carrington Heliographic", "CEA projection as SHARP records"),
        "CTYPE1": ("CRLN-CEA", "Carrington longitude, cylindrical equal area"),
        "CTYPE2": ("CRLT-CEA", "Carrington latitude, cylindrical equal area"),
        "CUNIT1": ("deg", ""), "CUNIT2": ("deg", ""),
        "CDELT1": (cdelt, "[deg/pixel]"), "CDELT2": (cdelt, "[deg/pixel]"),
        "CRPIX1": (centre, "patch centre"), "CRPIX2": (centre, "patch centre"),
        "CRVAL1": (NOMINAL_CRLN_OBS, "[deg] nominal: central meridian at T_REC"),
        "CRVAL2": (0.0, "[deg] nominal: equator"),
        "CROTA2": (0.0, ""),
        "T_REC": (t_rec, "nominal (generated, not observed)"),
        "DATE-OBS": (date_obs, "[UTC] nominal: T_REC in UTC"),
        "CRLN_OBS": (NOMINAL_CRLN_OBS, "[deg] nominal observer: Earth at T_REC"),
        "CRLT_OBS": (NOMINAL_CRLT_OBS, "[deg] nominal observer: Earth at T_REC"),
        "DSUN_OBS": (dsun, "[m] gives the measurement pixel scale"),
        "RSUN_REF": (RSUN_REF_M, "[m] JSOC's solar radius"),
        "RSUN_OBS": (rsun_obs, "[arcsec] gives the measurement pixel scale"),
    }
    return keys, notes


def hold_cards(result: Mapping) -> dict:
    """FITS cards of how a request held its parameters (``sharpgen generate`` and ``edit``):
    HOLDFIT (the direction's measured hold coefficients, or the projection) and EPSHOLD (the
    feedback hold's steps along the held parameters' own directions), from a request result
    with ``hold_fit``, ``eps_held`` and ``correctors``."""
    steps = "; ".join(f"{h} {e:+.4f} along {result['correctors'][h]}" for h, e in result.get("eps_held", {}).items())
    return {"HOLDFIT": (str(result.get("hold_fit", "none")), "direction: measured hold (n_t - b n_h) or projection"),
            "EPSHOLD": (steps or "none", "feedback hold: steps along the held parameters' directions")}


def write_generated_fits(path, result: Mapping, *, seed: int, target: str, value: float, hold: Sequence[str],
                         clip_gauss: float, measurement: "MeasurementContext | Mapping",
                         generator_path: str | None = None) -> None:
    """Write the generated image (Gauss, or image units x clip in resize mode) + provenance to FITS.

    Primary HDU: (S, S) float32 Br = clip_gauss * image, BUNIT ``G``, a Carrington CEA WCS with
    a nominal date and observer (:func:`nominal_cea_wcs`: ``sunpy.map.Map(path)`` is a
    Carrington map at the measurement's pixel scale), TELESCOP/ORIGIN naming sharpgen. Header:
    SEED, ZSHA (sha256 of the float32 z bytes, 16 hex), DIRECTN, TARGET, HOLD, HOLDFIT, EPS, EPSHOLD, REQVAL,
    ACHVAL, RELERR, UNITMODE, UNIT, CLIPG, GENERATR and one ``HIERARCH MEAS <PARAM>`` per
    measured parameter; strings longer than a card are kept whole (CONTINUE cards). Extension
    ``LATENT``: binary table with the columns ``z_base`` and ``z`` (D float32 each).
    """
    from astropy.io import fits

    from sharpgen import __version__
    from sharpgen.atomic import atomic_path

    z = np.asarray(result["z"], dtype=np.float32)
    image = np.asarray(result["image"], dtype=np.float32)
    wcs, notes = nominal_cea_wcs(measurement, image.shape[-1])
    hdr = fits.Header()
    hdr["BUNIT"] = ("G", "Gauss: Br = CLIPG * generator output")
    for key, card in wcs.items():
        hdr[key] = card
    hdr["TELESCOP"] = ("sharpgen", "generated by sharpgen: not an observation")
    hdr["INSTRUME"] = ("sharpgen GAN generator", "")
    hdr["ORIGIN"] = (f"sharpgen {__version__}", "generated, not observed")
    hdr["CONTENT"] = ("Br", "radial field, generated")
    hdr["SEED"] = (int(seed), "z_base = default_rng(SEED).standard_normal(D)")
    hdr["ZSHA"] = (hashlib.sha256(z.tobytes()).hexdigest()[:16], "sha256 of float32 z bytes")
    hdr["DIRECTN"] = (result["key"], "latent direction (target|held)")
    hdr["TARGET"] = (target, "requested parameter")
    hdr["HOLD"] = (",".join(hold) or "none", "held parameters")
    cards = hold_cards(result)
    hdr["HOLDFIT"] = cards["HOLDFIT"]
    hdr["EPS"] = (float(result["eps"]), "z = z_base + EPS * direction (+ EPSHOLD)")
    hdr["EPSHOLD"] = cards["EPSHOLD"]
    hdr["REQVAL"] = (float(value), "requested value")
    hdr["ACHVAL"] = (float(result["achieved"]), "achieved (measured) value")
    hdr["RELERR"] = (float(result["rel_error"]), "relative error |ach-req|/req")
    hdr["UNITMODE"] = (result["mode"], "crop: physical units; resize: image units")
    hdr["UNIT"] = (str(result["unit"]), "unit of REQVAL/ACHVAL")
    hdr["CLIPG"] = (float(clip_gauss), "clip_gauss of the patch store")
    if generator_path:
        hdr["GENERATR"] = (str(Path(generator_path).resolve()), "generator weights")
    for k, v in result["measured"].items():
        hdr[f"HIERARCH MEAS {k.upper()}"] = float(v) if np.isfinite(v) else "nan"
    for line in notes:
        hdr.add_comment(line)
    hdr.add_comment("Generated by sharpgen: T_REC, DATE-OBS and the Carrington position are "
                    "nominal placeholders, not an observation.")
    primary = fits.PrimaryHDU(data=(clip_gauss * image), header=hdr)
    D = z.size
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="z_base", format=f"{D}E", array=np.asarray(result["z_base"], np.float32)[None, :]),
         fits.Column(name="z", format=f"{D}E", array=z[None, :])],
        name="LATENT")
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList([primary, table]).writeto(tmp)


def _first_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).strip().splitlines()[:1]) or str(text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_output_path(path) -> Path:
    """The ``-o`` path of ``sharpgen generate``: its folder must exist (nothing is created
    silently) and it must not be a folder itself. Raises :class:`GenerateError`."""
    out = Path(path)
    if out.is_dir():
        raise GenerateError(f"output {out} is a folder; give a file name such as {out / 'patch.fits'}")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise GenerateError(f"output folder {parent} {what} (create it first, or choose another -o)")
    return out


def read_calibration(path) -> dict:
    """calibration.json -> dict, with the keys ``generate`` needs; :class:`GenerateError` naming
    the file otherwise."""
    try:
        calibration = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise GenerateError(f"calibration file {path} is not valid JSON ({err})") from None
    missing = [k for k in ("directions", "measurement") if not isinstance(calibration, dict) or k not in calibration]
    if missing:
        raise GenerateError(f"calibration file {path} lacks {', '.join(missing)}: not a calibration.json "
                            "of the calibrate rule")
    try:
        MeasurementContext.from_dict(calibration["measurement"])
    except (KeyError, TypeError, ValueError) as err:
        raise GenerateError(f"calibration file {path}: incomplete 'measurement' ({type(err).__name__}: {err})") from None
    return calibration


def run_generate(args) -> int:
    """``sharpgen generate`` (options: :func:`sharpgen.cli.add_generate_parser`). Returns 0; a
    request that cannot be served raises (:class:`GenerateError`, :class:`DirectionError`,
    :class:`sharpgen.gan.GanError`, OSError), which :func:`sharpgen.cli.main` prints as one line
    with exit status 1."""
    from sharpgen.gan import GanError, load_generator
    from sharpgen.parameters import REQUESTABLE

    target = next(n for n in REQUESTABLE if getattr(args, n, None) is not None)
    value = float(getattr(args, target))
    hold = [h.strip() for item in args.hold for h in item.split(",") if h.strip()]
    if args.seed < 0:
        raise GenerateError(f"--seed must be >= 0, got {args.seed}")
    output = check_output_path(args.output)  # before any slow work
    for path, what in ((args.generator, "generator"), (args.boundaries, "boundaries"), (args.calibration, "calibration")):
        p = Path(path)
        if not p.is_file():
            problem = "is a folder, not a file" if p.is_dir() else "not found"
            raise GenerateError(f"{what} file {path} {problem} (run the pipeline or pass --{what})")
    calibration = read_calibration(args.calibration)
    sha = calibration.get("boundaries_sha256")
    if sha and sha != file_sha256(args.boundaries):
        raise GenerateError(f"{args.calibration} was made with other boundaries than {args.boundaries} "
                            "(rerun the directions stage)")
    ctx = MeasurementContext.from_dict(calibration["measurement"])
    try:
        G = load_generator(args.generator, device=args.device)
    except GanError as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        raise GenerateError(f"generator file {args.generator} cannot be loaded (on device {args.device}) as "
                            f"sharpgen generator weights ({type(cause).__name__}: {_first_line(cause)})") from err
    try:
        normals = load_direction_field(args.boundaries)
    except (OSError, ValueError, KeyError) as err:  # not an npz, or one without names/normals
        raise GenerateError(f"boundaries file {args.boundaries} is not a boundaries.npz of the fit_boundaries "
                            f"rule ({type(err).__name__}: {_first_line(err)})") from err
    render = make_renderer(G, ctx, batch_size=16, space=normals.space)  # z, or whitened W codes
    settings = calibration.get("settings", {})
    res = generate_request(
        render, G, normals, calibration, target, value, hold, seed=args.seed,
        refine_steps=args.refine_steps if args.refine_steps is not None else int(settings.get("refine_steps", 2)),
        tol=args.tol if args.tol is not None else float(settings.get("tol", 0.02)),
        hold_steps=int(settings.get("hold_steps", 0)),  # calibration.json of before 2026-12-02: none
    )
    write_generated_fits(output, res, seed=args.seed, target=target, value=value, hold=hold,
                         clip_gauss=ctx.clip_gauss, measurement=calibration["measurement"],
                         generator_path=args.generator)
    print(f"{target}: requested {value:.4g}, achieved {res['achieved']:.4g} {res['unit']} "
          f"(relative error {res['rel_error']:.2%}), eps={res['eps']:.3f} along {res['key']!r}")
    for h in hold:
        print(f"  held {h}: {res['base_measured'][h]:.4g} -> {res['measured'][h]:.4g} {unit_of(h, res['mode'])}")
    print(f"wrote {output}")
    return 0
