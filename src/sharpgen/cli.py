"""``sharpgen`` command line: every subcommand's options, in one place.

Each subcommand has an ``add_<name>_parser(subparsers)`` function here; its ``func`` default is
the ``run_*(args) -> int`` function of the module that does the work, imported only when that
subcommand runs (so ``sharpgen params`` never imports torch):

* ``params``   -> :func:`run_params` (below)
* ``generate`` -> :func:`sharpgen.directions.generate.run_generate`
* ``retrieve`` -> :func:`sharpgen.query.run_retrieve`

Exit status: 0 on success, 1 for a runtime error (a missing or unusable file, a request that
cannot be served), 2 for a usage error (argparse: unknown option, invalid value). :func:`main`
prints an expected error -- an OSError or an exception class of sharpgen -- as one line
``sharpgen <command>: error: <message>``; anything else as one ``internal error`` line, with the
traceback under ``-v``. ``python -m sharpgen`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from sharpgen import __version__

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# option types: a bad value is a usage error (exit 2, argparse's message), never a traceback
# --------------------------------------------------------------------------------------------
def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        if v > 2**63 - 1:
            raise argparse.ArgumentTypeError(f"must be < 2**63, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    v = _finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


#: options every subcommand also accepts after its name (``sharpgen generate -v ...``)
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="log at DEBUG level and show the traceback of an error")


def _lazy(module: str, function: str) -> Callable:
    """``args -> int`` that imports ``module`` only when the subcommand runs."""

    def run(args) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------
#: segments `sharpgen params` accepts by default: the radial field and the line-of-sight field
PARAMS_SEGMENTS = ("Br", "magnetogram")
#: JSOC keywords printed beside our values: (column, keyword, unit, what it is)
PARAMS_HEADER_KEYS = (
    ("r_value_hdr", "R_VALUE", "log10 Mx (JSOC)", "JSOC's R_VALUE keyword, computed by JSOC from the magnetogram segment"),
    ("usflux_hdr", "USFLUX", "Mx", "JSOC's USFLUX keyword: Br over conf_disambig>=70 & bitmap>=30"),
)


def register_params(subparsers) -> None:
    p = subparsers.add_parser(
        "params",
        parents=[_COMMON],
        help="print the physical parameters of SHARP Br or magnetogram FITS files",
        description=(
            "Compute every sharpgen.physics parameter of each SHARP Br (radial field) or "
            "magnetogram (line-of-sight field) FITS file (RICE-compressed JSOC exports are fine), "
            "and print them with the segment they were computed from and JSOC's own R_VALUE and "
            "USFLUX keywords of the record (r_value_hdr, usflux_hdr). JSOC computes R_VALUE from "
            "the magnetogram segment with the algorithm of our r_value, so the two agree on a "
            "magnetogram file; on Br they differ (radial vs line-of-sight field). Files that "
            "cannot be read are reported on stderr, the others are still printed, and the exit "
            "status is 1 if any file failed."
        ),
    )
    p.add_argument(
        "files", nargs="+", type=Path, metavar="FILE.fits", help="SHARP Br or magnetogram segment files"
    )
    p.add_argument(
        "--sharp-mask",
        action="store_true",
        help="restrict the sums to JSOC's mask conf_disambig>=70 & bitmap>=30 (sibling files found "
        "by SHARP naming); a file without them is an error (r_value is never masked)",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="output format (default %(default)s)")
    p.add_argument(
        "--segment",
        default=None,
        help=f"segment the files must hold, from the JSOC file name (default: any of "
        f"{', '.join(PARAMS_SEGMENTS)})",
    )
    p.set_defaults(func=run_params)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}"
    return str(v)


def _read_params_record(path: Path, segments: tuple[str, ...]):
    """read_sharp of one file, refusing a JSOC file name whose segment is not in ``segments``."""
    from sharpgen.sharp_io import SharpReadError, parse_name, read_sharp

    name = parse_name(path)
    if name is not None and name["segment"] not in segments and path.is_file():
        expected = " or ".join(repr(s) for s in segments)
        raise SharpReadError(f"{path}: wrong segment {name['segment']!r} (expected {expected})")
    return read_sharp(path, segment_check=None)


def run_params(args) -> int:
    import pandas as pd

    from sharpgen.physics import PARAMETER_NAMES, PARAMETERS, compute_parameters
    from sharpgen.sharp_io import SharpReadError, header_float, sharp_mask

    segments = (args.segment,) if args.segment else PARAMS_SEGMENTS
    hdr_cols = [col for col, *_ in PARAMS_HEADER_KEYS]
    columns = ["file", "harpnum", "t_rec", "noaa", "segment", *PARAMETER_NAMES, *hdr_cols]
    rows = []
    failed = 0
    for path in args.files:
        try:
            rec = _read_params_record(path, segments)
            mask = None
            if args.sharp_mask:
                mask = sharp_mask(path, rec.data.shape)
                if mask is None:
                    raise SharpReadError(f"{path}: --sharp-mask needs the sibling conf_disambig and bitmap files")
            params = compute_parameters(rec.data, rec.scale, mask=mask).iloc[0]
        except SharpReadError as exc:
            print(f"sharpgen params: error: {' '.join(str(exc).split())}", file=sys.stderr)
            failed += 1
            continue
        row = {"file": str(path), "harpnum": rec.harpnum, "t_rec": rec.t_rec, "noaa": rec.noaa,
               "segment": rec.segment or "unknown"}
        row.update({k: float(params[k]) for k in PARAMETER_NAMES})
        row.update({col: header_float(rec.header, key) for col, key, *_ in PARAMS_HEADER_KEYS})
        rows.append(row)

    units = {k: PARAMETERS[k].unit for k in PARAMETER_NAMES}
    units.update({col: unit for col, _, unit, _ in PARAMS_HEADER_KEYS})
    out = sys.stdout
    if args.format == "json":
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        doc = {
            "units": units,
            "header_keywords": {col: what for col, _, _, what in PARAMS_HEADER_KEYS},
            "records": clean,
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        pd.DataFrame(rows, columns=columns).to_csv(out, index=False)
    else:
        for r in rows:
            out.write(
                f"{r['file']}\n  HARP {r['harpnum']}  T_REC {r['t_rec']}  NOAA {r['noaa']}  "
                f"segment {r['segment']} (the values below are computed from it)\n"
            )
            for k in PARAMETER_NAMES:
                out.write(f"  {k:<15s} {_fmt(r[k]):>14s}  {units[k]}\n")
            for col, _, _, what in PARAMS_HEADER_KEYS:
                out.write(f"  {col:<15s} {_fmt(r[col]):>14s}  {units[col]}  ({what})\n")
    out.flush()
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# generate, retrieve
# --------------------------------------------------------------------------------------------
def add_generate_parser(subparsers) -> None:
    """``sharpgen generate`` (runs :func:`sharpgen.directions.generate.run_generate`)."""
    from sharpgen.parameters import PARAMETERS, REQUESTABLE

    p = subparsers.add_parser(
        "generate",
        parents=[_COMMON],
        help="generate a magnetogram with a requested parameter value (latent-direction edit)",
        description="Pick a base latent from --seed, move it along the calibrated direction of the "
        "requested parameter (optionally holding others) and write a FITS file: Br in Gauss with a "
        "Carrington CEA WCS (nominal date and position) and the latent and measurements in the "
        "header. Exit status 1 when the request cannot be served (the message says why).",
    )
    g = p.add_mutually_exclusive_group(required=True)
    for name in REQUESTABLE:  # the registry decides what can be requested
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_finite_float, metavar="VALUE",
                       help=f"requested {name} [{PARAMETERS[name].unit}]")
    p.add_argument("--hold", action="append", default=[], metavar="PARAM",
                   help="parameter(s) to hold (repeat or comma-separate)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="N",
                   help="seed of the base latent, >= 0 (default %(default)s)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.fits",
                   help="output FITS path; its folder must exist")
    p.add_argument("--generator", default="results/gan/generator.pt", help="generator weights (default %(default)s)")
    p.add_argument("--boundaries", default="results/directions/boundaries.npz", help="boundary normals (default %(default)s)")
    p.add_argument("--calibration", default="results/directions/calibration.json", help="calibration (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device for the generator (default %(default)s)")
    p.add_argument("--refine-steps", type=_int_at_least(0), default=None, metavar="N",
                   help="secant refinement steps (default: the calibration's)")
    p.add_argument("--tol", type=_positive_float, default=None, metavar="REL",
                   help="relative tolerance that stops refinement (default: the calibration's)")
    p.set_defaults(func=_lazy("sharpgen.directions.generate", "run_generate"))



def add_retrieve_parser(subparsers) -> None:
    """``sharpgen retrieve`` (runs :func:`sharpgen.query.run_retrieve`)."""
    p = subparsers.add_parser(
        "retrieve",
        parents=[_COMMON],
        help="find the real SHARP records most similar to a patch (SimSiam embeddings)",
        description=(
            "Embed QUERY with the pipeline's trained SimSiam encoder and print the k most similar "
            "real patches (cosine similarity of the l2-normalised embeddings, exact search). QUERY "
            "is a SHARP Br record (.fits, cut like the patch store), a generated patch written by "
            "`sharpgen generate` (.fits), or a .npy (S, S) patch already in [-1, 1]."
        ),
    )
    p.add_argument("query", type=Path, metavar="QUERY.fits|.npy",
                   help="SHARP Br record, `sharpgen generate` output, or (S, S) .npy patch in [-1, 1]")
    p.add_argument("-k", type=_int_at_least(1), default=5, metavar="K",
                   help="number of records to print (default %(default)s)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results_dir of the pipeline (default results)")
    p.add_argument("--encoder", type=Path, default=None, help="encoder file (default RESULTS/ssl/encoder.pt)")
    p.add_argument("--embeddings", type=Path, default=None, help="embedding store (default RESULTS/ssl/embeddings.npz)")
    p.add_argument("--table", type=Path, default=None, help="patch table (default RESULTS/data/patches.parquet)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="search only this split (default %(default)s)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default %(default)s)")
    p.set_defaults(func=_lazy("sharpgen.query", "run_retrieve"))


def add_edit_parser(subparsers) -> None:
    """``sharpgen edit`` (runs :func:`sharpgen.invert.edit.run_edit`)."""
    from sharpgen.parameters import PARAMETERS, REQUESTABLE

    p = subparsers.add_parser(
        "edit",
        parents=[_COMMON],
        help="edit a real patch: invert it into the GAN, move it along a calibrated direction",
        description="Cut REAL.fits like the patch store (a SHARP Br record, or a FITS file written by "
        "sharpgen generate / edit), find the latent code whose generated image matches it (pixel + "
        "SimSiam feature loss + prior), move that code along the calibrated direction of the requested "
        "parameter (optionally holding others) and write the edited patch as FITS with the input's "
        "WCS and the parameters measured before and after. Refused (exit status 1, with the numbers): "
        "an inversion whose relative pixel error exceeds --max-error, an uncalibrated direction, a "
        "value outside the calibrated range or out of reach from this patch.",
    )
    p.add_argument("input", type=Path, metavar="REAL.fits", help="SHARP Br record or sharpgen FITS patch")
    g = p.add_mutually_exclusive_group(required=True)
    for name in REQUESTABLE:
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE|xF",
                       help=f"requested {name} [{PARAMETERS[name].unit}], or xF: F times the input's value")
    p.add_argument("--hold", action="append", default=[], metavar="PARAM",
                   help="parameter(s) to hold (repeat or comma-separate)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.fits", help="output FITS path; its folder must exist")
    p.add_argument("--results", type=Path, default=Path("results"), help="results_dir of the pipeline (default results)")
    for what in ("generator", "boundaries", "calibration", "encoder"):
        p.add_argument(f"--{what}", type=Path, default=None, help=f"{what} file (default: under --results)")
    p.add_argument("--steps", type=_int_at_least(0), default=None, metavar="N", help="inversion steps (default: invert.steps)")
    p.add_argument("--restarts", type=_int_at_least(1), default=None, metavar="N",
                   help="inversion starts (default: invert.restarts)")
    p.add_argument("--seed", type=_int_at_least(0), default=None, metavar="N", help="inversion seed (default: invert.seed)")
    p.add_argument("--max-error", type=_positive_float, default=None, metavar="REL",
                   help="largest relative pixel error ||G(c*) - x|| / ||x|| accepted (default: invert.max_rel_error)")
    p.add_argument("--refine-steps", type=_int_at_least(0), default=None, metavar="N",
                   help="secant refinement steps (default: the calibration's)")
    p.add_argument("--keep-residual", action="store_true",
                   help="add the input's detail the generator did not reproduce (input - G(c*)) back to the edit")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.set_defaults(func=_lazy("sharpgen.invert.edit", "run_edit"))


def add_explore_parser(subparsers) -> None:
    """``sharpgen explore`` (runs :func:`sharpgen.explore.server.run_explore`)."""
    p = subparsers.add_parser(
        "explore",
        parents=[_COMMON],
        help="serve an interactive explorer of the latent directions on http://127.0.0.1",
        description="Serve a page on http://127.0.0.1:PORT/ (this machine only, offline): sliders for every "
        "calibrated direction in physical units, a seed, the generated patch with its measured parameters, the "
        "nearest real patches, and an upload that inverts a FITS patch so the sliders edit it.",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="results_dir of the pipeline (default results)")
    p.add_argument("--port", type=_int_at_least(0), default=8765, help="port on 127.0.0.1; 0 = any free one (default %(default)s)")
    p.add_argument("-k", type=_int_at_least(1), default=5, metavar="K", help="nearest real patches shown (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N",
                   help="torch threads for inverting uploads (default: torch's)")
    p.add_argument("--render-threads", type=_int_at_least(1), default=1, metavar="N",
                   help="torch threads for each view (default %(default)s: one patch is fastest on one thread)")
    p.set_defaults(func=_lazy("sharpgen.explore.server", "run_explore"))


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharpgen", description="SHARP magnetogram generation tools",
        epilog="Exit status: 0 success, 1 runtime error (message on stderr), 2 usage error.")
    parser.add_argument("-V", "--version", action="version", version=f"sharpgen {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level and show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="`sharpgen COMMAND -h` lists the options of a command")
    sub.required = True
    register_params(sub)
    add_generate_parser(sub)
    add_retrieve_parser(sub)
    add_edit_parser(sub)
    add_explore_parser(sub)
    return parser


def expected_error(err: BaseException) -> bool:
    """True for errors a user can fix from the message alone: files (OSError, incl.
    :class:`sharpgen.atomic.DiskFullError`) and sharpgen's own exception classes (bad inputs,
    requests out of range, unusable weights)."""
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] == "sharpgen"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) and len(err.args) == 1:  # str(KeyError) is just the quoted key
        text = f"missing key {err.args[0]!r}"
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the ``sharpgen`` entry point exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    prog = f"sharpgen {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 -- the one place that turns errors into exit status 1
        if expected_error(err):
            logger.debug("traceback of the error below", exc_info=True)
            print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        else:
            if verbose:
                traceback.print_exc(file=sys.stderr)
            hint = "" if verbose else " (rerun with -v for the traceback)"
            print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
