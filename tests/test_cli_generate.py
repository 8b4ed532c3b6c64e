"""`sharpgen` command line conventions (issues 15.3 and 18.6): --version, help on every option,
exit status 1 for runtime errors and 2 for usage errors, one line instead of a traceback, and
`sharpgen generate`'s own failure modes (negative seed, unusable generator, missing output
folder, the hint for an uncalibrated direction)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sharpgen import __version__, cli
from sharpgen import directions as dr
from sharpgen.measure import make_renderer
from sharpgen.physics import PixelScale

D, S = 24, 32


class StandIn(torch.nn.Module):
    """z (B, D) -> (B, 1, S, S): a bipole whose amplitude grows with z.w (so its flux does)."""

    def __init__(self, w):
        super().__init__()
        self.size, self.nz = S, D
        self.unused = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # a device to read
        self.register_buffer("w", torch.tensor(w, dtype=torch.float32))
        yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                                indexing="ij")
        g = lambda x0: torch.exp(-((xx - x0) ** 2 + (yy - S / 2) ** 2) / (2 * 3.0**2))  # noqa: E731
        self.register_buffer("bipole", g(S * 0.35) - g(S * 0.65))

    def forward(self, z):
        amp = 0.5 * torch.exp(0.4 * (z @ self.w))
        return torch.tanh(amp[:, None, None] * self.bipole)[:, None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """generator.pt (placeholder bytes; load_generator is replaced by the stand-in in the tests
    that need a working generator), boundaries.npz with tuf and psep, calibration.json of 'tuf'."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(3)
    w = rng.standard_normal(D)
    w /= np.linalg.norm(w)
    v = rng.standard_normal(D)
    v -= (v @ w) * w
    v /= np.linalg.norm(v)
    G = StandIn(w).eval()
    dr.save_boundaries(d / "boundaries.npz", {"names": np.array(["tuf", "psep"]), "normals": np.stack([w, v])})
    sc = PixelScale.cea(0.03, bin_factor=8)
    ctx = {"clip_gauss": 1000.0, "mode": "crop", "size": S, "pixel_size_mm": sc.size_mm,
           "pixel_area_cm2": sc.area_cm2, "pixel_size_arcsec": sc.size_arcsec}
    render = make_renderer(G, ctx, ["tuf", "psep"], batch_size=64)
    base = rng.standard_normal((6, D))
    df = dr.traverse(render, base, {"tuf": w}, dr.eps_grid(2.0, 9))
    cal = dr.build_calibration(df, {"calibration": {"n_bootstrap": 10}}, ctx, dr.file_sha256(d / "boundaries.npz"))
    assert cal["directions"]["tuf"]["calibrated"]
    (d / "calibration.json").write_text(json.dumps(cal))
    (d / "generator.pt").write_bytes(b"not a torch file")
    lo, hi = cal["directions"]["tuf"]["range"]
    return {"dir": d, "G": G, "request": float(np.sqrt(lo * hi)),
            "common": ["--generator", str(d / "generator.pt"), "--boundaries", str(d / "boundaries.npz"),
                       "--calibration", str(d / "calibration.json")]}


@pytest.fixture
def standin(setup, monkeypatch):
    monkeypatch.setattr("sharpgen.gan.load_generator", lambda path, device="cpu": setup["G"])
    return setup


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(argv)
    _, err = capsys.readouterr()
    return ei.value.code, err


# ------------------------------------------------------------------------------- conventions


def test_version(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.strip() == f"sharpgen {__version__}"


def test_python_dash_m_sharpgen(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sharpgen", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"sharpgen {__version__}"
    proc = subprocess.run([sys.executable, "-m", "sharpgen", "generate", "--tuf", "1e21", "--seed", "-1",
                           "-o", str(tmp_path / "x.fits")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--seed: must be >= 0" in proc.stderr and "Traceback" not in proc.stderr


def _all_actions(parser):
    for action in parser._actions:
        yield parser.prog, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def test_every_option_has_help():
    missing = [f"{prog}: {'/'.join(a.option_strings) or a.dest}" for prog, a in _all_actions(cli.build_parser())
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, missing


def test_verbose_after_the_subcommand_is_accepted(setup, tmp_path, capsys):
    rc, _, err = run(["generate", "-v", "--tuf", "1e21", "-o", str(tmp_path / "x.fits"), *setup["common"],
                      "--calibration", str(tmp_path / "none.json")], capsys)
    assert rc == 1 and f"calibration file {tmp_path / 'none.json'} not found" in err


# ------------------------------------------------------------------------------- generate


def test_negative_seed_is_a_usage_error_not_a_traceback(standin, tmp_path, capsys):
    code, err = usage_error(["generate", "--tuf", str(standin["request"]), "--seed", "-1",
                             "-o", str(tmp_path / "x.fits"), *standin["common"]], capsys)
    assert code == 2 and "argument --seed: must be >= 0, got -1" in err
    assert not (tmp_path / "x.fits").exists()
    with pytest.raises(ValueError, match="seed must be >= 0"):  # library callers get a clear error too
        dr.generate_request(None, None, {}, {"directions": {}}, "tuf", 1.0, seed=-1)


@pytest.mark.parametrize("argv, message", [
    (["--tuf", "nan"], "argument --tuf: must be a finite number"),
    (["--tuf", "1e21", "--tol", "0"], "argument --tol: must be > 0"),
    (["--tuf", "1e21", "--refine-steps", "-2"], "argument --refine-steps: must be >= 0"),
    (["--tuf", "1e21", "--seed", "1.5"], "argument --seed: '1.5' is not an integer"),
])
def test_bad_option_values_are_usage_errors(argv, message, tmp_path, capsys):
    code, err = usage_error(["generate", *argv, "-o", str(tmp_path / "x.fits")], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_unloadable_generator_is_one_line_exit_1(setup, tmp_path, capsys):
    """The real loader on a file that is not generator weights, and on a folder."""
    argv = ["generate", "--tuf", str(setup["request"]), "-o", str(tmp_path / "x.fits"), *setup["common"]]
    rc, out, err = run(argv, capsys)
    assert rc == 1 and out == ""
    assert err.startswith(f"sharpgen generate: error: generator file {setup['dir'] / 'generator.pt'} cannot be "
                          "loaded (on device cpu) as sharpgen generator weights")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    argv[argv.index("--generator") + 1] = str(setup["dir"])
    rc, _, err = run(argv, capsys)
    assert rc == 1 and f"generator file {setup['dir']} is a folder, not a file" in err
    assert not (tmp_path / "x.fits").exists()


def test_missing_output_folder_is_refused_not_created(standin, tmp_path, capsys):
    out = tmp_path / "nonexistent_dir" / "x.fits"
    rc, _, err = run(["generate", "--tuf", str(standin["request"]), "-o", str(out), *standin["common"]], capsys)
    assert rc == 1 and f"output folder {out.parent} does not exist" in err
    assert not out.parent.exists()
    rc, _, err = run(["generate", "--tuf", str(standin["request"]), "-o", str(tmp_path), *standin["common"]], capsys)
    assert rc == 1 and "is a folder" in err
    # the same request into an existing folder works, and the file is a CEA map
    good = tmp_path / "ok.fits"
    rc, out_text, err = run(["generate", "--tuf", str(standin["request"]), "-o", str(good), *standin["common"]],
                            capsys)
    assert rc == 0, err
    assert f"wrote {good}" in out_text
    from astropy.io import fits

    h = fits.getheader(good)
    assert h["CTYPE1"] == "CRLN-CEA" and h["CDELT1"] == pytest.approx(0.24) and h["GENERATR"].endswith("generator.pt")


def test_runtime_errors_exit_1_with_one_line(standin, tmp_path, capsys):
    d = standin["dir"]
    bad = tmp_path / "calibration.json"
    bad.write_text("{not json")
    common = ["--generator", str(d / "generator.pt"), "--boundaries", str(d / "boundaries.npz")]
    rc, _, err = run(["generate", "--tuf", "1e21", "-o", str(tmp_path / "x.fits"), *common,
                      "--calibration", str(bad)], capsys)
    assert rc == 1 and f"calibration file {bad} is not valid JSON" in err and len(err.splitlines()) == 1
    rc, _, err = run(["generate", "--tuf", "1e21", "-o", str(tmp_path / "x.fits"), *common,
                      "--calibration", str(tmp_path / "missing.json")], capsys)
    assert rc == 1 and "calibration file" in err and "not found" in err
    # out of the calibrated range: a request that cannot be served
    rc, _, err = run(["generate", "--tuf", "1e40", "-o", str(tmp_path / "x.fits"), *standin["common"]], capsys)
    assert rc == 1 and "outside the calibrated range" in err and "Traceback" not in err


def test_uncalibrated_r_value_hint_names_directions_parameters(standin, tmp_path, capsys):
    """The boundaries have tuf and psep only: an r_value request needs r_value in
    directions.parameters first (directions.conditional alone cannot make it)."""
    rc, _, err = run(["generate", "--r-value", "4.0", "-o", str(tmp_path / "x.fits"), *standin["common"]], capsys)
    assert rc == 1
    assert "add r_value to directions.parameters" in err and "directions.conditional" not in err
    rc, _, err = run(["generate", "--r-value", "4.0", "--hold", "tuf", "-o", str(tmp_path / "x.fits"),
                      *standin["common"]], capsys)
    assert rc == 1
    assert ("add r_value to directions.parameters (no boundary was fitted for it) and "
            "{target: r_value, hold: [tuf]} to directions.conditional") in err
    # both parameters have boundaries: only the conditional entry is missing
    rc, _, err = run(["generate", "--psep", "20", "--hold", "tuf", "-o", str(tmp_path / "x.fits"),
                      *standin["common"]], capsys)
    assert rc == 1 and "add {target: psep, hold: [tuf]} to directions.conditional" in err
    assert "directions.parameters" not in err


# ------------------------------------------------------------------------------- top-level handler


def test_unexpected_error_is_one_line_and_a_traceback_with_v(monkeypatch, tmp_path, capsys):
    def boom(args):
        raise TypeError("unexpected thing")

    monkeypatch.setattr("sharpgen.directions.generate.run_generate", boom)
    argv = ["generate", "--tuf", "1e21", "-o", str(tmp_path / "x.fits")]
    rc, _, err = run(argv, capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip() == ("sharpgen generate: internal error: TypeError: unexpected thing "
                           "(rerun with -v for the traceback)")
    rc, _, err = run(["-v", *argv], capsys)
    assert rc == 1 and "Traceback (most recent call last)" in err and "TypeError: unexpected thing" in err


def test_retrieve_runtime_and_usage_errors(tmp_path, capsys):
    np.save(tmp_path / "q.npy", np.zeros((S, S), np.float32))
    rc, _, err = run(["retrieve", str(tmp_path / "q.npy"), "--results", str(tmp_path)], capsys)
    assert rc == 1 and "encoder.pt not found" in err and len(err.splitlines()) == 1
    code, err = usage_error(["retrieve", str(tmp_path / "q.npy"), "-k", "0"], capsys)
    assert code == 2 and "argument -k: must be >= 1" in err
