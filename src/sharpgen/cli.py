"""``sharpgen`` command line: one argparse subcommand per feature.

Adding a subcommand (other modules): write ``register(subparsers)`` in your module, which calls
``subparsers.add_parser(NAME, help=...)``, adds its options and ``set_defaults(func=run)`` where
``run(args) -> int`` returns the exit status; then add one ``(NAME, "sharpgen.module:register")``
entry to :data:`SUBCOMMANDS` below. Modules are imported lazily, only when their subcommand is
registered (at parser construction); a subcommand whose module fails to import is still listed
and reports that error when run, so it never breaks the other subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

#: (subcommand name, "module:function" that registers it on the subparsers object)
SUBCOMMANDS: list[tuple[str, str]] = [
    ("params", "sharpgen.cli:register_params"),
    ("generate", "sharpgen.directions:add_generate_parser"),
    ("retrieve", "sharpgen.retrieval:register"),
]


def _resolve(spec: str) -> Callable:
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------
def register_params(subparsers) -> None:
    p = subparsers.add_parser(
        "params",
        help="print the physical parameters of SHARP Br FITS files",
        description=(
            "Compute every sharpgen.physics parameter of each SHARP Br FITS file (RICE-compressed "
            "JSOC exports are fine). Files that cannot be read are reported on stderr, the others "
            "are still printed, and the exit status is 1 if any file failed."
        ),
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.fits", help="SHARP Br segment files")
    p.add_argument(
        "--sharp-mask",
        action="store_true",
        help="restrict the sums to JSOC's mask conf_disambig>=70 & bitmap>=30 (sibling files found "
        "by SHARP naming); a file without them is an error",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument(
        "--segment",
        default="Br",
        help="expected segment name in the file name (default Br; e.g. magnetogram)",
    )
    p.set_defaults(func=run_params)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}"
    return str(v)


def run_params(args) -> int:
    import pandas as pd

    from sharpgen.physics import PARAMETER_NAMES, PARAMETERS, compute_parameters
    from sharpgen.sharp_io import SharpReadError, read_sharp, sharp_mask

    rows = []
    failed = 0
    for path in args.files:
        try:
            rec = read_sharp(path, segment_check=args.segment)
            mask = None
            if args.sharp_mask:
                mask = sharp_mask(path)
                if mask is None:
                    raise SharpReadError(f"{path}: --sharp-mask needs the sibling conf_disambig and bitmap files")
                if mask.shape != rec.data.shape:
                    raise SharpReadError(f"{path}: mask shape {mask.shape} != image shape {rec.data.shape}")
            params = compute_parameters(rec.data, rec.scale, mask=mask).iloc[0]
        except SharpReadError as exc:
            print(f"sharpgen params: error: {' '.join(str(exc).split())}", file=sys.stderr)
            failed += 1
            continue
        row = {"file": str(path), "harpnum": rec.harpnum, "t_rec": rec.t_rec, "noaa": rec.noaa}
        row.update({k: float(params[k]) for k in PARAMETER_NAMES})
        rows.append(row)

    out = sys.stdout
    if args.format == "json":
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        json.dump({"units": {k: PARAMETERS[k].unit for k in PARAMETER_NAMES}, "records": clean}, out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        pd.DataFrame(rows, columns=["file", "harpnum", "t_rec", "noaa", *PARAMETER_NAMES]).to_csv(out, index=False)
    else:
        for r in rows:
            out.write(f"{r['file']}\n  HARP {r['harpnum']}  T_REC {r['t_rec']}  NOAA {r['noaa']}\n")
            for k in PARAMETER_NAMES:
                out.write(f"  {k:<15s} {_fmt(r[k]):>14s}  {PARAMETERS[k].unit}\n")
    out.flush()
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharpgen", description="SHARP magnetogram generation tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, spec in SUBCOMMANDS:
        try:
            _resolve(spec)(sub)
        except Exception as exc:  # keep the other subcommands usable
            _register_broken(sub, name, spec, exc)
    return parser


def _register_broken(subparsers, name: str, spec: str, exc: Exception) -> None:
    """A placeholder subcommand that explains why ``name`` is unavailable (exit status 1)."""
    reason = f"{type(exc).__name__}: {exc}"
    p = subparsers.add_parser(name, help=f"(unavailable: {reason})", add_help=True)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(_args) -> int:
        print(f"sharpgen {name}: unavailable, registering {spec} failed ({reason})", file=sys.stderr)
        return 1

    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
