"""``sharpgen generate``: a patch with a requested parameter value, by a calibrated latent edit.

A base latent comes from ``--seed`` (:func:`latent_from_seed`); it moves along the calibrated
direction of the requested parameter (optionally holding others, with the polarity fold) to the
eps the calibration predicts, refined by secant steps on the measured value
(:func:`generate_request`); the image and its provenance are written as FITS
(:func:`write_generated_fits`). The argparse options are in :mod:`sharpgen.cli`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sharpgen.directions.boundaries import file_sha256, load_direction_field
from sharpgen.directions.calibrate import seed_range, solve_requests
from sharpgen.directions.geometry import (
    Boundaries,
    DirectionError,
    DirectionSpec,
    RequestOutOfRange,
    as_boundaries,
    latent_from_seed,
)
from sharpgen.measure import MeasurementContext, Renderer, make_renderer
from sharpgen.parameters import relative_error, to_fit_space, unit_of


def generate_request(render: Renderer, G, normals: "Boundaries | Mapping[str, np.ndarray]",
                     calibration: Mapping, target: str, value: float, hold: Sequence[str] = (),
                     seed: int = 0, refine_steps: int = 2, tol: float = 0.02, batch_size: int = 16) -> dict:
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

    spec = DirectionSpec(target, tuple(hold))
    cals = calibration["directions"]
    mode = calibration.get("measurement", {}).get("mode", "crop")
    unit = unit_of(target, mode)
    if spec.key not in cals:
        raise DirectionError(
            f"direction {spec.key!r} is not calibrated; calibrated directions: {sorted(cals)} "
            + ("(add {target: %s, hold: %s} to directions.conditional in the config and rerun the "
               "pipeline)" % (target, list(spec.hold)) if spec.hold else
               "(add it to directions.parameters in the config and rerun the pipeline)"))
    cal = cals[spec.key]
    if not cal.get("calibrated", True):
        raise DirectionError(f"direction {spec.key!r} could not be calibrated: {cal.get('reason', 'unknown reason')}")
    glo, ghi = cal["range"]
    if not (glo <= value <= ghi):
        raise RequestOutOfRange(
            f"requested {target}={value:g} is outside the calibrated range [{glo:g}, {ghi:g}] {unit} "
            f"of direction {spec.key!r}")
    field = as_boundaries(normals)
    z_base = latent_from_seed(seed, field.dim)
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
    z = (z_base.astype(np.float64) + eps * vector).astype(np.float32)
    image = generate(G, z[None, :], batch_size=batch_size)[0]
    measured = render(z[None, :]).iloc[0].to_dict()
    return {
        "key": spec.key, "image": image, "z_base": z_base, "z": z, "eps": eps,
        "achieved": float(measured[target]),
        "rel_error": float(relative_error(target, measured[target], value)),
        "measured": {k: float(v) for k, v in measured.items()},
        "base_measured": {k: float(v) for k, v in base_df.iloc[0].to_dict().items()},
        "unit": unit, "mode": mode, "cal": cal,
    }


def write_generated_fits(path, result: Mapping, *, seed: int, target: str, value: float, hold: Sequence[str],
                         clip_gauss: float, generator_path: str | None = None) -> None:
    """Write the generated image (Gauss, or image units x clip in resize mode) + provenance to FITS.

    Primary HDU: (S, S) float32 Br = clip_gauss * image. Header: SEED, ZSHA (sha256 of the float32
    z bytes, 16 hex), DIRECTN, TARGET, HOLD, EPS, REQVAL, ACHVAL, RELERR, UNITMODE and one
    ``HIERARCH MEAS <PARAM>`` per measured parameter. Extension ``LATENT``: binary table with the
    columns ``z_base`` and ``z`` (D float32 each).
    """
    from astropy.io import fits

    from sharpgen.atomic import atomic_path

    z = np.asarray(result["z"], dtype=np.float32)
    hdr = fits.Header()
    hdr["BUNIT"] = ("Gauss", "Br = clip_gauss * generator output")
    hdr["SEED"] = (int(seed), "z_base = default_rng(SEED).standard_normal(D)")
    hdr["ZSHA"] = (hashlib.sha256(z.tobytes()).hexdigest()[:16], "sha256 of float32 z bytes")
    hdr["DIRECTN"] = (result["key"], "latent direction (target|held)")
    hdr["TARGET"] = (target, "requested parameter")
    hdr["HOLD"] = (",".join(hold) or "none", "held parameters (projected out)")
    hdr["EPS"] = (float(result["eps"]), "z = z_base + EPS * direction")
    hdr["REQVAL"] = (float(value), "requested value")
    hdr["ACHVAL"] = (float(result["achieved"]), "achieved (measured) value")
    hdr["RELERR"] = (float(result["rel_error"]), "relative error |ach-req|/req")
    hdr["UNITMODE"] = (result["mode"], "crop: physical units; resize: image units")
    hdr["UNIT"] = (result["unit"][:60], "unit of REQVAL/ACHVAL")
    hdr["CLIPG"] = (float(clip_gauss), "clip_gauss of the patch store")
    if generator_path:
        hdr["GENERATR"] = (str(generator_path)[-60:], "generator weights")
    for k, v in result["measured"].items():
        hdr[f"HIERARCH MEAS {k.upper()}"] = float(v) if np.isfinite(v) else "nan"
    primary = fits.PrimaryHDU(data=(clip_gauss * np.asarray(result["image"], dtype=np.float32)), header=hdr)
    D = z.size
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="z_base", format=f"{D}E", array=np.asarray(result["z_base"], np.float32)[None, :]),
         fits.Column(name="z", format=f"{D}E", array=z[None, :])],
        name="LATENT")
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList([primary, table]).writeto(tmp)


def run_generate(args) -> int:
    """``sharpgen generate`` (options: :func:`sharpgen.cli.add_generate_parser`). Returns the exit
    status: 0, or 1 for a request that cannot be served (the message says why)."""
    import sys

    from sharpgen.gan import load_generator
    from sharpgen.parameters import REQUESTABLE

    target = next(n for n in REQUESTABLE if getattr(args, n, None) is not None)
    value = float(getattr(args, target))
    hold = [h.strip() for item in args.hold for h in item.split(",") if h.strip()]
    for path, what in ((args.generator, "generator"), (args.boundaries, "boundaries"), (args.calibration, "calibration")):
        if not Path(path).exists():
            print(f"sharpgen generate: {what} file {path} not found (run the pipeline or pass --{what})", file=sys.stderr)
            return 2
    calibration = json.loads(Path(args.calibration).read_text())
    sha = calibration.get("boundaries_sha256")
    if sha and sha != file_sha256(args.boundaries):
        print(f"sharpgen generate: {args.calibration} was made with other boundaries than {args.boundaries} "
              "(rerun the directions stage)", file=sys.stderr)
        return 2
    ctx = MeasurementContext.from_dict(calibration["measurement"])
    G = load_generator(args.generator, device=args.device)
    render = make_renderer(G, ctx, batch_size=16)
    normals = load_direction_field(args.boundaries)
    settings = calibration.get("settings", {})
    try:
        res = generate_request(
            render, G, normals, calibration, target, value, hold, seed=args.seed,
            refine_steps=args.refine_steps if args.refine_steps is not None else int(settings.get("refine_steps", 2)),
            tol=args.tol if args.tol is not None else float(settings.get("tol", 0.02)),
        )
    except DirectionError as err:
        print(f"sharpgen generate: {err}", file=sys.stderr)
        return 2
    write_generated_fits(args.output, res, seed=args.seed, target=target, value=value, hold=hold,
                         clip_gauss=ctx.clip_gauss, generator_path=args.generator)
    print(f"{target}: requested {value:.4g}, achieved {res['achieved']:.4g} {res['unit']} "
          f"(relative error {res['rel_error']:.2%}), eps={res['eps']:.3f} along {res['key']!r}")
    for h in hold:
        print(f"  held {h}: {res['base_measured'][h]:.4g} -> {res['measured'][h]:.4g} {unit_of(h, res['mode'])}")
    print(f"wrote {args.output}")
    return 0
