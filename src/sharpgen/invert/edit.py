"""Editing real patches: invert, move along a calibrated latent direction, measure, write FITS.

:class:`Editor` holds a trained pipeline (generator, SimSiam encoder, direction field,
calibration, measurement context, a pool of generated samples for the inversion's starting
codes) and is the engine of ``sharpgen edit`` (:func:`run_edit`) and ``sharpgen explore``.

A request is a target value in physical units or a factor of the input's measured value
(``--tuf x1.5``: 1.5 x the TUF of the input patch; for the log-valued r_value the factor applies
to R, i.e. ``+ log10(1.5)``). It is served like ``sharpgen generate`` serves one: the inverted
code ``c*`` moves along the direction of the target (holding the ``--hold`` parameters: the
conditional direction; on the far side of the polarity fold the reflected one) by the eps the
calibration predicts, refined by secant steps on the measured value, never past the calibrated
eps range or the fold. Refused, with the reason and the numbers: an inversion whose relative
pixel error ``||G(c*) - x|| / ||x||`` exceeds ``invert.max_rel_error`` (docs/inversion.md), an
uncalibrated direction, a value outside the calibrated range or outside what ``c*`` can reach.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.directions.geometry import DirectionSpec, RequestOutOfRange
from sharpgen.invert.optimise import (Inversion, InvertSettings, codes_from_z, invert, parameter_match,
                                      render_codes)
from sharpgen.parameters import LOG_VALUED, relative_error, to_fit_space, unit_of

logger = logging.getLogger(__name__)


class EditError(ValueError):
    """An edit that cannot be served: a poor inversion, a missing or unusable input. The message
    names the problem and the numbers."""


#: results_dir-relative inputs of an Editor
RESULT_FILES = {
    "generator": "gan/generator.pt", "boundaries": "directions/boundaries.npz",
    "calibration": "directions/calibration.json", "encoder": "ssl/encoder.pt",
    "latents": "samples/latents.parquet", "generated": "samples/generated.zarr",
}


def parse_request(text: str) -> tuple[str, float]:
    """``"x1.5"`` -> ("factor", 1.5); ``"3e22"`` -> ("value", 3e22). ValueError otherwise."""
    t = str(text).strip()
    kind = "factor" if t[:1] in ("x", "X", "*") else "value"
    try:
        v = float(t[1:] if kind == "factor" else t)
    except ValueError:
        raise ValueError(f"{text!r} is neither a value nor a factor like x1.5") from None
    if not math.isfinite(v) or (kind == "factor" and v <= 0):
        raise ValueError(f"{text!r}: a factor must be a finite number > 0" if kind == "factor"
                         else f"{text!r} is not a finite number")
    return kind, v


def resolve_request(target: str, kind: str, amount: float, current: float) -> float:
    """Physical target value of a request relative to the ``current`` measured value."""
    if kind == "value":
        return float(amount)
    if not np.isfinite(current):
        raise EditError(f"the input's {target} is undefined (NaN): give an absolute value, not a factor")
    if target in LOG_VALUED:  # stored as log10: x factor on the physical quantity
        if current == 0:
            raise EditError(f"the input has no {target} (R = 0): a factor of it is undefined")
        return float(current + math.log10(amount))
    return float(current * amount)


@dataclass
class Editor:
    """A loaded pipeline for inverting and editing patches (see the module docstring)."""

    G: Any
    space: str
    field: Any
    calibration: dict
    ctx: Any
    encoder: Any = None
    encoder_info: dict = field(default_factory=dict)
    settings: InvertSettings = field(default_factory=InvertSettings)
    max_rel_error: float = 0.5
    pool_images: np.ndarray | None = None
    pool_codes: np.ndarray | None = None
    _pool_emb: np.ndarray | None = field(default=None, repr=False)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_results(cls, results: str | Path = "results", *, paths: Mapping[str, Any] | None = None,
                     invert_cfg: Mapping[str, Any] | None = None, device: str = "cpu") -> "Editor":
        """Load everything from a results folder (``paths`` overrides single files, keys of
        :data:`RESULT_FILES`). ``invert_cfg``: the ``invert`` config section (schema defaults
        under it). Missing or unusable files raise :class:`EditError` naming them."""
        from sharpgen.directions.boundaries import file_sha256, load_direction_field
        from sharpgen.directions.generate import read_calibration
        from sharpgen.gan import load_generator
        from sharpgen.invert.stage import init_pool, invert_config
        from sharpgen.measure import MeasurementContext
        from sharpgen.ssl import load_encoder

        p = {k: Path(results) / v for k, v in RESULT_FILES.items()}
        p.update({k: Path(v) for k, v in (paths or {}).items() if v is not None})
        for key in ("generator", "boundaries", "calibration", "encoder"):
            if not p[key].is_file():
                raise EditError(f"{key} file {p[key]} not found (run the pipeline, or pass --results/--{key})")
        cfg = invert_config(invert_cfg)
        calibration = read_calibration(p["calibration"])
        sha = calibration.get("boundaries_sha256")
        if sha and sha != file_sha256(p["boundaries"]):
            raise EditError(f"{p['calibration']} was made with other boundaries than {p['boundaries']} "
                            "(rerun the directions stage)")
        try:
            G = load_generator(p["generator"], device=device)
            field_ = load_direction_field(p["boundaries"])
            encoder, info = load_encoder(p["encoder"], device=device)
        except Exception as err:  # a file of the wrong kind: one clear line
            raise EditError(f"cannot load the pipeline from {results}: {type(err).__name__}: {err}") from err
        from sharpgen.invert.optimise import resolve_space

        # the space the directions were fitted in (boundaries.npz `space`; z for older files)
        space = resolve_space(G, str(getattr(field_, "space", "z") or "z"))
        if field_.dim != (G.w_dim if space == "w" else G.nz):
            raise EditError(f"{p['boundaries']} has {field_.dim}-d directions, the generator's {space} "
                            "space has another dimension (rerun the directions stage)")
        ed = cls(G=G, space=space, field=field_, calibration=calibration,
                 ctx=MeasurementContext.from_dict(calibration["measurement"]), encoder=encoder,
                 encoder_info=info, settings=InvertSettings.from_mapping(cfg),
                 max_rel_error=float(cfg["max_rel_error"]))
        if ed.settings.init == "nearest" and p["latents"].exists() and p["generated"].exists():
            ed.pool_images, ed.pool_codes = init_pool(G, space, p["generated"], p["latents"],
                                                      int(cfg["init_pool"]), ed.settings.seed)
        return ed

    # ---- rendering and measuring ---------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.field.dim)

    def render(self, codes: np.ndarray) -> np.ndarray:
        """codes (N, D) or (D,) -> images (N, S, S) in [-1, 1]."""
        return render_codes(self.G, np.atleast_2d(codes), self.space)

    def measure(self, images: np.ndarray) -> pd.DataFrame:
        from sharpgen.measure import measure

        return measure(np.asarray(images).reshape(-1, self.G.size, self.G.size), self.ctx)

    def render_target(self, target: str):
        return lambda codes: self.measure(self.render(codes))[target].to_numpy(dtype=np.float64)

    def base_from_seed(self, seed: int) -> np.ndarray:
        """The code of ``sharpgen generate --seed``'s base latent (mapped to W codes when the
        generator has a mapping network): (D,) float32."""
        from sharpgen.directions.geometry import latent_from_seed

        if int(seed) < 0:
            raise EditError(f"seed must be >= 0, got {seed}")
        return codes_from_z(self.G, latent_from_seed(int(seed), int(self.G.nz))[None], self.space)[0]

    # ---- inversion ---------------------------------------------------------------------------
    @cached_property
    def match(self):
        """The inversion's parameter match (its scale renders 256 samples: computed once)."""
        return parameter_match(self.G, self.settings, self.space, self.ctx.clip_gauss)

    def invert(self, patch: np.ndarray, progress=None) -> Inversion:
        """Invert one (S, S) patch in [-1, 1]; the restarts start at the codes of the pool samples
        nearest in SimSiam space when a pool is loaded (embedded once), else at random codes."""
        from sharpgen.retrieval import topk_cosine
        from sharpgen.ssl import embed

        x = np.asarray(patch, dtype=np.float32)[None]
        init = None
        if self.pool_images is not None and self.encoder is not None:
            if self._pool_emb is None:
                self._pool_emb = embed(self.encoder, self.pool_images)
            k = min(self.settings.restarts, len(self._pool_emb))
            idx, _ = topk_cosine(embed(self.encoder, x), self._pool_emb, k, normalized=True)
            init = self.pool_codes[idx]
        return invert(self.G, x, encoder=self.encoder, init_codes=init, settings=self.settings,
                      space=self.space, clip_gauss=self.ctx.clip_gauss, match=self.match, progress=progress)

    def check_inversion(self, inv: Inversion, bound: float | None = None) -> None:
        """EditError when the reconstruction is worse than the bound (relative L2 pixel error)."""
        bound = self.max_rel_error if bound is None else float(bound)
        err = float(inv.rel_error[0])
        if not err <= bound:
            raise EditError(
                f"the inversion is too poor to edit: relative pixel error ||G(c*) - x|| / ||x|| = {err:.3f} "
                f"> {bound:.3f} (invert.max_rel_error; docs/inversion.md). The generator cannot reproduce "
                "this patch closely enough for an edit of it to be meaningful (try more --steps/--restarts, "
                "or raise --max-error knowingly)")

    # ---- directions --------------------------------------------------------------------------
    def calibrated(self) -> dict[str, dict]:
        """{direction key: calibration} of every calibrated direction."""
        return {k: c for k, c in self.calibration["directions"].items() if c.get("calibrated", True)}

    def direction(self, target: str, hold: Sequence[str] = ()) -> tuple[DirectionSpec, dict]:
        """(spec, calibration) of ``target`` holding ``hold``; DirectionError when uncalibrated."""
        from sharpgen.directions.generate import direction_calibration

        spec = DirectionSpec(target, tuple(hold))
        return spec, direction_calibration(self.calibration, spec, self.field.normals)

    def reach(self, spec: DirectionSpec, cal: Mapping, code: np.ndarray, y0: float) -> dict:
        """What ``code`` (fit-space target value ``y0``) can reach along ``spec``: eps range
        (calibrated range within the fold), physical value range ((NaN, NaN) when nothing it
        reaches lies in the calibrated range), and the global calibrated range."""
        from sharpgen.directions.calibrate import seed_range

        lim = self.field.eps_bounds(spec, np.asarray(code, np.float64)[None])[0]
        e_lo, e_hi = max(float(cal["eps_min"]), float(lim[0])), min(float(cal["eps_max"]), float(lim[1]))
        lo, hi = seed_range(cal, float(y0), eps_bounds=lim) if np.isfinite(y0) else (np.nan, np.nan)
        glo, ghi = cal["range"]
        both = (max(lo, glo), min(hi, ghi))
        if not both[0] <= both[1]:  # nothing this code reaches is calibrated: an empty range
            both = (np.nan, np.nan)
        return {"eps": (e_lo, e_hi), "fold": lim, "range": both,
                "seed_range": (lo, hi), "global": (float(glo), float(ghi))}

    def solve(self, code: np.ndarray, target: str, hold: Sequence[str], value: float,
              refine_steps: int | None = None, tol: float | None = None) -> dict:
        """Serve one request from ``code`` like ``sharpgen generate`` (calibrated step + secant
        refinement). Raises RequestOutOfRange (with the ranges) when it cannot be reached.
        Returns eps, code, image, measured (dict), base_measured, achieved, rel_error, key."""
        from sharpgen.directions.calibrate import feedback_hold, solve_requests

        spec, cal = self.direction(target, hold)
        settings = self.calibration.get("settings", {})
        refine_steps = int(settings.get("refine_steps", 2)) if refine_steps is None else int(refine_steps)
        hold_steps = int(settings.get("hold_steps", 0))  # calibration.json of before 2026-12-02: none
        tol = float(settings.get("tol", 0.02)) if tol is None else float(tol)
        code = np.asarray(code, np.float32)
        base = self.measure(self.render(code)).iloc[0]
        y0 = float(to_fit_space(target, np.array([base[target]]))[0])
        r = self.reach(spec, cal, code, y0)
        unit = unit_of(target, self.ctx.mode)
        lo, hi = r["range"]
        if np.isfinite(y0) and not lo <= hi:  # an empty range: nothing it reaches is calibrated
            slo, shi = r["seed_range"]
            raise RequestOutOfRange(
                f"this patch cannot be edited along {spec.key!r}: from its {target} = "
                f"{float(base[target]):.4g} {unit} the calibrated steps reach "
                f"[{slo:.4g}, {shi:.4g}] {unit}, which does not overlap the direction's calibrated "
                f"range [{r['global'][0]:.4g}, {r['global'][1]:.4g}] {unit}")
        if not (np.isfinite(y0) and lo <= value <= hi):
            fold = r["fold"][np.isfinite(r["fold"])]
            raise RequestOutOfRange(
                f"requested {target}={value:.4g} is outside the range [{lo:.4g}, {hi:.4g}] {unit} that this patch "
                f"can reach along {spec.key!r} (calibrated range of the direction [{r['global'][0]:.4g}, "
                f"{r['global'][1]:.4g}] {unit}, calibrated eps in [{cal['eps_min']:g}, {cal['eps_max']:g}]"
                + (f", polarity fold at eps {fold[0]:.3g}" if fold.size else "") + ")")
        vector = self.field.per_base(spec, code[None].astype(np.float64))[0]
        res = solve_requests(self.render_target(target), code[None], vector, [value], cal,
                             refine_steps=refine_steps, tol=tol, y0=np.array([y0]), eps_bounds=r["fold"][None])
        eps = float(res["eps"][0])
        if not np.isfinite(eps):
            raise RequestOutOfRange(f"requested {target}={value:.4g} could not be reached along {spec.key!r}")
        # feedback hold: re-measure the held parameters and step them back along their own directions
        new, fb = feedback_hold(lambda z: self.measure(self.render(np.asarray(z, np.float32))), self.field,
                                self.calibration["directions"], spec, code, vector, value, base, eps, tol=tol,
                                steps=hold_steps, eps_bounds=r["fold"])
        eps = fb.get("eps", eps)
        new = new.astype(np.float32)
        image = self.render(new)[0]
        measured = self.measure(image[None]).iloc[0]
        return {"key": spec.key, "eps": eps, "code": new, "image": image, "unit": unit,
                "measured": {k: float(v) for k, v in measured.items()},
                "base_measured": {k: float(v) for k, v in base.items()},
                "achieved": float(measured[target]),
                "rel_error": float(relative_error(target, measured[target], value)), "cal": cal,
                "hold_fit": self.field.hold_fit(spec),
                "eps_held": fb.get("eps_held", {}), "correctors": fb.get("correctors", {})}


# --------------------------------------------------------------------------------------------
# sharpgen edit
# --------------------------------------------------------------------------------------------
def read_input(path: str | Path, meta: Mapping[str, Any]):
    """The FITS file to edit -> (patch (S, S) in [-1, 1], FITS header of the patch grid).

    A SHARP Br record is cut like the patch store (:func:`sharpgen.query.load_query`) and its
    WCS carried through the binning and cropping (:func:`patch_wcs_header`); a patch written by
    ``sharpgen generate`` / ``sharpgen edit`` keeps its own header."""
    from astropy.io import fits

    from sharpgen.query import QueryError, load_query

    path = Path(path)
    try:
        patch = load_query(path, meta)
    except QueryError as err:
        raise EditError(str(err)) from None
    if path.suffix.lower() == ".npy":
        raise EditError(f"{path}: edit needs a FITS file (a .npy patch has no WCS to keep)")
    from sharpgen.sharp_io import read_sharp

    with fits.open(path) as hdul:
        hdr0 = hdul[0].header.copy()
    if "CLIPG" in hdr0 or "ZSHA" in hdr0:  # already a patch: its grid, none of its provenance
        keep = COPY_KEYS + GRID_KEYS
        return patch, fits.Header([c for c in hdr0.cards if c.keyword in keep])
    rec = read_sharp(path, segment_check="Br")
    return patch, patch_wcs_header(rec.header, rec.data, meta)


#: header keys copied from the input record (observation, observer, WCS not tied to the grid)
COPY_KEYS = ("WCSNAME", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2", "CROTA2",
             "DATE-OBS", "T_REC", "T_OBS", "DSUN_OBS", "RSUN_REF", "RSUN_OBS", "CRLN_OBS", "CRLT_OBS",
             "HGLN_OBS", "HGLT_OBS", "CAR_ROT", "OBS_VR", "HARPNUM", "NOAA_AR", "TELESCOP", "INSTRUME",
             "WAVELNTH", "CONTENT", "PC1_1", "PC1_2", "PC2_1", "PC2_2")
#: header keys of the pixel grid (set by :func:`patch_wcs_header` for a cut record)
GRID_KEYS = ("CRPIX1", "CRPIX2", "CDELT1", "CDELT2")


def patch_wcs_header(header, data: np.ndarray, meta: Mapping[str, Any]):
    """FITS header of the (S, S) patch cut from a record (``header``, ``data`` (H, W)): the
    record's observation keys and WCS with CDELT / CRPIX carried through the cut -- crop mode:
    b x b binning (pixel j of the binned map covers record pixels j*b .. j*b + b - 1) and the
    flux-centred window of :func:`sharpgen.patch_cut.crop_window`; resize mode: the resampling
    (pixel k of the patch centred on record pixel (k + 0.5) * n / S - 0.5 per axis)."""
    from astropy.io import fits

    from sharpgen.patch_cut import _window_1d, bin_image, flux_centre

    size, mode = int(meta.get("size")), str(meta.get("mode") or "crop")
    out = fits.Header()
    for k in COPY_KEYS:
        if k in header:
            out[k] = header[k]
    h, w = np.asarray(data).shape
    for ax, n in ((1, w), (2, h)):
        crpix, cdelt = float(header.get(f"CRPIX{ax}", 1.0)), float(header.get(f"CDELT{ax}", 1.0))
        if mode == "resize":
            f = n / size
            out[f"CRPIX{ax}"], out[f"CDELT{ax}"] = (crpix - 0.5) / f + 0.5, cdelt * f
            continue
        b = int(meta.get("bin", 1) or 1)
        binned = bin_image(data, b)
        centre = flux_centre(binned)[2 - ax]  # (row, col): axis 1 is x = col
        src, dst, _ = _window_1d(centre, binned.shape[2 - ax], size)
        out[f"CRPIX{ax}"] = (crpix - (b + 1) / 2.0) / b - (src - dst) + 1.0
        out[f"CDELT{ax}"] = cdelt * b
    return out


def write_edited_fits(path, image: np.ndarray, header, *, clip_gauss: float, info: Mapping[str, Any],
                      before: Mapping[str, float], recon: Mapping[str, float], after: Mapping[str, float],
                      code_base: np.ndarray, code: np.ndarray) -> None:
    """Primary HDU: the edited (S, S) Br in Gauss with the input's WCS and observation keys;
    header EDIT* provenance (``info``) and ``HIERARCH BEFORE|RECON|AFTER <PARAM>`` for every
    measured parameter (input patch, its reconstruction G(c*), the edited patch). Extension
    LATENT: ``code_base`` (c*) and ``code`` (the edited code)."""
    from astropy.io import fits

    from sharpgen import __version__
    from sharpgen.atomic import atomic_path

    hdr = fits.Header()
    hdr["BUNIT"] = ("G", "Gauss: Br = CLIPG * edited image")
    for card in header.cards:
        if card.keyword not in ("COMMENT", "HISTORY", "") and card.keyword not in hdr:
            hdr.append(card)
    hdr["ORIGIN"] = (f"sharpgen {__version__}", "edited by sharpgen edit: not an observation")
    hdr["CLIPG"] = (float(clip_gauss), "clip_gauss of the patch store")
    for key, (value, comment) in info.items():
        hdr[key] = (value, comment)
    for tag, values in (("BEFORE", before), ("RECON", recon), ("AFTER", after)):
        for k, v in values.items():
            hdr[f"HIERARCH {tag} {k.upper()}"] = float(v) if np.isfinite(v) else "nan"
    hdr.add_comment("BEFORE: measured on the input patch; RECON: on its reconstruction G(c*); "
                    "AFTER: on this edited patch (sharpgen.measure at the patch store's scale)")
    d = int(np.size(code))
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="code_base", format=f"{d}E", array=np.asarray(code_base, np.float32)[None, :]),
         fits.Column(name="code", format=f"{d}E", array=np.asarray(code, np.float32)[None, :])], name="LATENT")
    data = (float(clip_gauss) * np.asarray(image, np.float64)).astype(np.float32)
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList([fits.PrimaryHDU(data=data, header=hdr), table]).writeto(tmp)


def run_edit(args) -> int:
    """``sharpgen edit`` (options: :func:`sharpgen.cli.add_edit_parser`)."""
    from sharpgen.directions.generate import check_output_path, hold_cards
    from sharpgen.parameters import REQUESTABLE

    target = next(n for n in REQUESTABLE if getattr(args, n, None) is not None)
    kind, amount = parse_request(getattr(args, target))
    hold = [h.strip() for item in args.hold for h in item.split(",") if h.strip()]
    output = check_output_path(args.output)
    cfg = {k: v for k, v in (("steps", args.steps), ("restarts", args.restarts), ("seed", args.seed),
                             ("max_rel_error", args.max_error)) if v is not None}
    ed = Editor.from_results(args.results, paths={"generator": args.generator, "boundaries": args.boundaries,
                                                  "calibration": args.calibration, "encoder": args.encoder},
                             invert_cfg=cfg, device=args.device)
    spec, _ = ed.direction(target, hold)  # refuse an uncalibrated direction before inverting
    patch, header = read_input(args.input, ed.encoder_info.get("meta", {}))
    before = ed.measure(patch[None]).iloc[0].to_dict()
    value = resolve_request(target, kind, amount, float(before[target]))
    inv = ed.invert(patch)
    ed.check_inversion(inv)
    res = ed.solve(inv.codes[0], target, hold, value, refine_steps=args.refine_steps)
    image = res["image"]
    if args.keep_residual:  # the real detail the generator did not reproduce, added back
        image = np.clip(patch + (image - inv.images[0]), -1.0, 1.0).astype(np.float32)
    after = ed.measure(image[None]).iloc[0].to_dict()
    achieved = float(after[target])
    cards = hold_cards(res)
    info = {"EDITDIR": (res["key"], "latent direction (target|held)"), "TARGET": (target, "edited parameter"),
            "HOLD": (",".join(hold) or "none", "held parameters"),
            "HOLDFIT": cards["HOLDFIT"],
            "REQUEST": (str(getattr(args, target)), "as given (xF: factor of BEFORE)"),
            "REQVAL": (float(value), f"requested value [{res['unit']}]"),
            "ACHVAL": (achieved, "achieved value (AFTER)"),
            "RELERR": (float(relative_error(target, achieved, value)), "relative error of ACHVAL"),
            "EPS": (res["eps"], "code = code_base + EPS * direction (+ EPSHOLD)"),
            "EPSHOLD": cards["EPSHOLD"],
            "SPACE": (ed.space, "latent space"),
            "INVERR": (float(inv.rel_error[0]), "inversion ||G(c*)-x||/||x||"),
            "INVBOUND": (ed.max_rel_error, "largest INVERR accepted"),
            "RESIDUAL": (bool(args.keep_residual), "input - G(c*) added back"),
            "SOURCE": (Path(args.input).name, "edited input file")}
    write_edited_fits(output, image, header, clip_gauss=ed.ctx.clip_gauss, info=info, before=before,
                      recon=res["base_measured"], after=after, code_base=inv.codes[0], code=res["code"])
    unit = res["unit"]
    print(f"inversion: relative pixel error {inv.rel_error[0]:.3f} (bound {ed.max_rel_error:.3f}), "
          f"{target} {before[target]:.4g} -> reconstruction {res['base_measured'][target]:.4g} {unit}")
    print(f"{target}: requested {value:.4g}, achieved {achieved:.4g} {unit} "
          f"(relative error {relative_error(target, achieved, value):.2%}), eps={res['eps']:.3f} along {res['key']!r}")
    for h in hold:
        print(f"  held {h}: {before[h]:.4g} -> {after[h]:.4g} {unit_of(h, ed.ctx.mode)}")
    tol = float(ed.calibration.get("settings", {}).get("tol", 0.02))
    if not relative_error(target, achieved, value) <= max(tol, 0.1):
        print(f"warning: the request was missed by {relative_error(target, achieved, value):.0%}: along "
              f"{res['key']!r} this patch's {target} responds less than the calibration predicts (the edit "
              "is written as achieved; RELERR in the header)", file=sys.stderr)
    print(f"wrote {output}")
    return 0


