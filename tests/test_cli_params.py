"""`sharpgen params`: real files, JSON/CSV output, and per-file errors that do not stop the rest."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sharpgen import cli
from sharpgen.physics import PARAMETER_NAMES

R377 = "hmi.sharp_cea_720s.377.20110215_020000_TAI"
R6060 = "hmi.sharp_cea_720s.6060.20151030_000000_TAI"


@pytest.fixture(scope="module")
def sharp_dir(shared_data):
    return shared_data / "sharp"


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_params_json_with_sharp_mask(sharp_dir, capsys):
    rc, out, err = run(["params", str(sharp_dir / f"{R377}.Br.fits"), "--sharp-mask", "--format", "json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc["units"]) == set(PARAMETER_NAMES)
    (rec,) = doc["records"]
    assert rec["harpnum"] == 377 and rec["noaa"] == 11158
    assert rec["tuf"] == pytest.approx(2.71476e22, rel=1e-5)  # USFLUX
    assert rec["r_value"] == pytest.approx(4.861, abs=0.05)


def test_params_table_lists_every_parameter(sharp_dir, capsys):
    rc, out, _ = run(["params", str(sharp_dir / f"{R6060}.Br.fits")], capsys)
    assert rc == 0
    for name in PARAMETER_NAMES:
        assert f"  {name} " in out
    assert "HARP 6060" in out


def test_params_errors_reported_and_others_still_printed(sharp_dir, tmp_path, capsys):
    good = sharp_dir / f"{R6060}.Br.fits"
    data = good.read_bytes()
    trunc = tmp_path / "trunc" / f"{R6060}.Br.fits"
    trunc.parent.mkdir()
    trunc.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt" / f"{R6060}.Br.fits"
    corrupt.parent.mkdir()
    bad = bytearray(data)
    bad[60000:64000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    corrupt.write_bytes(bytes(bad))
    notfits = tmp_path / "notes.fits"
    notfits.write_text("hello\n")
    missing = tmp_path / "missing.fits"
    argv = ["params", str(trunc), str(good), str(corrupt), str(notfits), str(missing), "--format", "csv"]
    rc, out, err = run(argv, capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 4
    for path, word in [(trunc, "truncated"), (corrupt, "FITS"), (notfits, "not a FITS"), (missing, "not found")]:
        (line,) = [ln for ln in lines if str(path) + ":" in ln]
        assert word in line
    df = pd.read_csv(io.StringIO(out))
    assert list(df["file"]) == [str(good)]
    assert list(df.columns[4:]) == list(PARAMETER_NAMES)


def test_params_sharp_mask_needs_siblings(sharp_dir, tmp_path, capsys):
    br = tmp_path / f"{R377}.Br.fits"
    shutil.copy(sharp_dir / f"{R377}.Br.fits", br)
    rc, out, err = run(["params", str(br), "--sharp-mask"], capsys)
    assert rc == 1 and "conf_disambig and bitmap" in err and out == ""
    rc, out, _ = run(["params", str(br)], capsys)
    assert rc == 0 and "r_value" in out


def test_cli_requires_a_command(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([])
    assert ei.value.code == 2
    assert any(name == "params" for name, _ in cli.SUBCOMMANDS)


def test_broken_subcommand_does_not_break_params(sharp_dir, monkeypatch, capsys):
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, ("broken", "sharpgen.no_such_module:register")])
    rc, out, _ = run(["params", str(sharp_dir / f"{R6060}.Br.fits"), "--format", "csv"], capsys)
    assert rc == 0 and "6060" in out
    rc, _, err = run(["broken", "x"], capsys)
    assert rc == 1 and "no_such_module" in err
