"""GAN inversion (sharpgen.invert), the invert_real rule, its report figure and metrics, and
``sharpgen edit``.

Unit tests run on small seeded generators (a target made by the generator itself has a known
code); the pipeline tests run the tiny config (tests/configs/tiny.yaml, GAN trained a little
longer so that its directions are calibrated) once per session through Snakemake
(:func:`tiny_pipeline`, shared with tests/test_explore.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import snakeutil as su  # noqa: E402

from sharpgen import gan  # noqa: E402
from sharpgen.invert import (  # noqa: E402
    InversionError,
    InvertSettings,
    codes_from_z,
    invert,
    nearest_inits,
    rel_l2,
    render_codes,
)

S = 32


def _generator(arch="stable", seed=0):
    torch.manual_seed(seed)
    G = gan.build_generator(arch, S, 100).eval()
    if arch == "stable":
        with torch.no_grad():  # a random net is nearly flat: make its output span [-1, 1]
            G.up3.weight.mul_(4.0)
    return G


def _targets(G, n, seed, space="z"):
    z = np.random.default_rng(seed).standard_normal((n, 100)).astype(np.float32)
    codes = codes_from_z(G, z, space)
    return codes, render_codes(G, codes, space)


# --------------------------------------------------------------------------------------------
# the optimisation
# --------------------------------------------------------------------------------------------
def test_inversion_recovers_a_generated_patch_deterministically():
    """A patch the generator made itself is reconstructed far better than by the starting codes,
    the winner is the lowest-objective restart, and a rerun gives identical codes (CPU, seed)."""
    G = _generator()
    _, x = _targets(G, 3, seed=1)
    s = InvertSettings(steps=60, restarts=2, lr=0.05, feature_weight=0.0, prior_weight=0.01, init="random", seed=3)
    start = rel_l2(render_codes(G, _start_codes(G, 3, s)), x)
    inv = invert(G, x, settings=s)
    assert inv.codes.shape == (3, 100) and inv.images.shape == (3, S, S)
    assert np.all(inv.rel_error < 0.5 * start), (inv.rel_error, start)
    assert np.all(inv.rel_error < 0.5), inv.rel_error
    np.testing.assert_allclose(inv.rel_error, rel_l2(render_codes(G, inv.codes), x), rtol=1e-4)
    np.testing.assert_array_equal(inv.restart, np.argmin(inv.objective_per_restart, axis=1))
    again = invert(G, x, settings=s)
    np.testing.assert_array_equal(again.codes, inv.codes)


def _start_codes(G, n, s):
    from sharpgen.invert import random_inits

    return random_inits(G, n, s.restarts, "z", s.seed)[:, 0]


def test_prior_keeps_codes_on_the_typical_shell():
    """Without the prior a pure pixel fit may leave |c|^2 / D = 1; a strong prior pulls it back."""
    G = _generator()
    _, x = _targets(G, 2, seed=5)
    far = np.full((2, 1, 100), 1.5, np.float32)  # |c|^2/D = 2.25: off the shell
    weak = invert(G, x, init_codes=far, settings=InvertSettings(steps=50, restarts=1, prior_weight=0.0,
                                                                feature_weight=0.0))
    strong = invert(G, x, init_codes=far, settings=InvertSettings(steps=50, restarts=1, prior_weight=10.0,
                                                                  feature_weight=0.0))
    assert np.all(np.abs(strong.prior - 1.0) < 0.2), strong.prior
    assert np.all(np.abs(weak.prior - 1.0) > np.abs(strong.prior - 1.0))


def test_feature_loss_uses_the_encoder():
    """With an encoder the objective includes the SimSiam cosine (reported per patch)."""
    from sharpgen.ssl import Encoder

    torch.manual_seed(0)
    enc = Encoder(4, [1, 1], 16, 8).eval()
    G = _generator()
    _, x = _targets(G, 2, seed=2)
    inv = invert(G, x, encoder=enc, settings=InvertSettings(steps=10, restarts=1, feature_weight=1.0))
    assert np.all((inv.feature_cos > 0.5) & (inv.feature_cos <= 1.0 + 1e-6))
    assert all(p.requires_grad for p in enc.parameters())  # left as it was found
    plain = invert(G, x, settings=InvertSettings(steps=10, restarts=1))
    assert np.isnan(plain.feature_cos).all()


def test_nearest_inits_find_the_pool_sample_itself():
    from sharpgen.ssl import Encoder

    torch.manual_seed(0)
    enc = Encoder(4, [1, 1], 16, 8).eval()
    G = _generator()
    codes, pool = _targets(G, 12, seed=4)
    init, idx = nearest_inits(enc, pool[[7, 2]], pool, codes, k=3)
    assert init.shape == (2, 3, 100)
    np.testing.assert_array_equal(idx[:, 0], [7, 2])
    np.testing.assert_array_equal(init[:, 0], codes[[7, 2]])


def test_inversion_in_w_space_of_a_mapping_generator():
    """A generator with a mapping network is inverted in its whitened W codes."""
    if "mapping" not in gan.ARCHITECTURES:
        pytest.skip("this sharpgen has no mapping-network generator (gan.arch: mapping)")
    G = _generator("mapping")
    from sharpgen.invert import resolve_space

    assert resolve_space(G, "auto") == "w"
    codes, x = _targets(G, 2, seed=6, space="w")
    inv = invert(G, x, settings=InvertSettings(steps=60, restarts=1, feature_weight=0.0, init="random"))
    assert inv.space == "w" and inv.codes.shape == (2, G.w_dim)
    start = rel_l2(render_codes(G, codes_from_z(G, np.zeros((2, 100), np.float32) + 0.1, "w"), "w"), x)
    assert np.all(inv.rel_error < start)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 16, 16), np.float32), "shape"),
    (np.full((1, S, S), 3.0, np.float32), "in \\[-1, 1\\]"),
    (np.full((1, S, S), np.nan, np.float32), "NaN"),
])
def test_bad_patches_are_refused(bad, message):
    with pytest.raises(InversionError, match=message):
        invert(_generator(), bad, settings=InvertSettings(steps=1))


def test_bad_settings_are_refused():
    with pytest.raises(InversionError, match="init"):
        InvertSettings.from_mapping({"init": "median"})
    with pytest.raises(InversionError, match="space"):
        invert(_generator(), np.zeros((1, S, S), np.float32), space="v")


def test_parameter_match_brings_the_reconstruction_to_the_patch_parameters():
    """With match_parameters the reconstruction's standardised proxies come much closer to the
    target's than with pixels alone (same starts and steps); the reported match_error is that
    distance; the settings record the parameters and their scale; the term needs clip_gauss."""
    from sharpgen.invert.optimise import parameter_match

    G = _generator()
    _, x = _targets(G, 4, seed=7)
    base = dict(steps=30, restarts=1, feature_weight=0.0, pixel_weight=0.1, init="random", seed=2)
    s_on = InvertSettings(**base, match_parameters=("tuf", "psep", "r_paper"), match_weight=1.0)
    off = invert(G, x, settings=InvertSettings(**base))
    on = invert(G, x, settings=s_on, clip_gauss=1000.0)
    m = parameter_match(G, s_on, "z", 1000.0)
    target = m.values(torch.from_numpy(x)[:, None])

    def err(images):
        with torch.no_grad():
            return (m.values(torch.from_numpy(images)[:, None]) - target).square().mean(1).numpy()

    assert np.isnan(off.match_error).all() and off.settings["match_scale"] is None
    np.testing.assert_allclose(on.match_error, err(on.images), rtol=1e-4, atol=1e-7)
    print("match error with / without the term:", err(on.images).mean(), err(off.images).mean())
    assert err(on.images).mean() < 0.5 * err(off.images).mean()
    assert on.settings["match_parameters"] == ["tuf", "psep", "r_paper"] and len(on.settings["match_scale"]) == 3
    again = invert(G, x, settings=s_on, clip_gauss=1000.0)
    np.testing.assert_array_equal(again.codes, on.codes)
    with pytest.raises(InversionError, match="clip_gauss"):
        invert(G, x, settings=s_on)
    for bad in ({"match_parameters": ["tuf", "nope"]}, {"match_parameters": ["tuf", "tuf"]},
                {"match_weight": -1.0}):
        with pytest.raises(InversionError):
            InvertSettings.from_mapping(bad)
    assert InvertSettings.from_mapping({"match_parameters": ["psep"]}).match_parameters == ("psep",)


# --------------------------------------------------------------------------------------------
# requests and the patch WCS
# --------------------------------------------------------------------------------------------
def test_parse_and_resolve_requests():
    from sharpgen.invert.edit import EditError, parse_request, resolve_request

    assert parse_request("x1.5") == ("factor", 1.5) and parse_request("3e22") == ("value", 3e22)
    for bad in ("x0", "x-2", "abc", "nan"):
        with pytest.raises(ValueError):
            parse_request(bad)
    assert resolve_request("tuf", "factor", 1.5, 2e22) == pytest.approx(3e22)
    assert resolve_request("r_value", "factor", 10.0, 3.0) == pytest.approx(4.0)  # x10 on R = +1 in log10
    with pytest.raises(EditError, match="R = 0"):
        resolve_request("r_value", "factor", 2.0, 0.0)


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_patch_wcs_follows_the_cut(mode):
    """World coordinates of patch pixels equal those of the record pixels they were made from."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from sharpgen.invert.edit import patch_wcs_header

    h, w, b, size = 90, 140, 2, 32
    data = np.zeros((h, w))
    data[50:56, 100:108], data[40:44, 20:26] = 800.0, -700.0  # off-centre flux: an uneven window
    hdr = fits.Header({"CTYPE1": "CRLN-CEA", "CTYPE2": "CRLT-CEA", "CUNIT1": "deg", "CUNIT2": "deg",
                       "CRPIX1": 70.5, "CRPIX2": 45.5, "CRVAL1": 120.0, "CRVAL2": -12.0, "CDELT1": 0.03,
                       "CDELT2": 0.03, "DATE-OBS": "2012-01-01T00:00:00"})
    out = patch_wcs_header(hdr, data, {"size": size, "mode": mode, "bin": b})
    rec, pat = WCS(hdr), WCS(out)
    if mode == "crop":
        from sharpgen.patch_cut import bin_image, crop_window

        binned = bin_image(data, b)
        window, _ = crop_window(binned, size)
        k = np.argwhere(window == binned.max())[0]            # a patch pixel of the positive blob
        j = np.argwhere(binned == binned.max())[0]            # the same binned pixel
        rec_xy = (j[1] * b + (b - 1) / 2, j[0] * b + (b - 1) / 2)  # its record-pixel centre (0-based)
    else:
        k = np.array([10, 20])
        rec_xy = ((k[1] + 0.5) * w / size - 0.5, (k[0] + 0.5) * h / size - 0.5)
    np.testing.assert_allclose(pat.pixel_to_world_values(k[1], k[0]), rec.pixel_to_world_values(*rec_xy), atol=1e-9)


# --------------------------------------------------------------------------------------------
# the tiny pipeline (Snakemake), shared with test_explore.py
# --------------------------------------------------------------------------------------------
#: what the tests need built: the invert_real outputs and its figure, the calibration, embeddings
TINY_TARGETS = ("results/invert/inversion.json", "results/figures/inversion.png",
                "results/directions/calibration.json", "results/ssl/embeddings.npz")
#: the tiny config with a GAN trained long enough that TUF follows its calibrated direction, more
#: samples for the boundaries, and a conditional direction that is not degenerate (with the tiny
#: sample, tuf and tpf get the same median-split labels, so tuf|tpf has nothing left to move).
#: The generator stays the one this was tuned with (transposed, no grain): 60 steps of the
#: default `blur` + `signed` at 32 px make one polarity only (tnf = 0 in all 256 samples,
#: measured 2026-12-01), and tuf|tnf needs both. Likewise without the padding window of the
#: 2026-12-02 default (`padding: matched`, `augment_translation_fill: reflect`): with it the
#: edit of a real record missed its TUF request by 8 % (the secant refinement's 2 steps, on a
#: 60-step head that has not learned which latents to pad). The default generator's own tests
#: are in tests/test_gan.py, and tests/test_workflow.py runs the whole DAG with it.
TINY_OVERLAY = """\
gan: {steps: 60, upsample: transposed, speckle: none, padding: none, augment_translation_fill: zero}
sampling: {n: 256}
directions:
  conditional: [{target: tuf, hold: [tnf]}]
  strips: {directions: [tuf, "tuf|tnf"]}
  calibration: {evaluate: [tuf, "tuf|tnf"]}
"""
_BUILT: dict = {}


def build_tiny_pipeline(tmp_path_factory) -> Path:
    """Build (once per test process) a copy of the workflow with the tiny config + TINY_OVERLAY
    up to TINY_TARGETS; -> its folder. tests/test_explore.py uses the same build."""
    if "work" in _BUILT:
        return _BUILT["work"]
    if "error" in _BUILT:
        pytest.fail(_BUILT["error"])
    work = su.copy_workflow(tmp_path_factory.mktemp("invert_wf"))
    (work / "overlay.yaml").write_text(TINY_OVERLAY)
    t0 = time.monotonic()
    proc = su.run_snakemake(work, "--cores", "2", "--resources", "gpu=1", "--configfile",
                            "tests/configs/tiny.yaml", "overlay.yaml", "--", *TINY_TARGETS, timeout=1500)
    if proc.returncode != 0:
        _BUILT["error"] = "tiny pipeline failed:\n" + proc.stdout[-3000:] + proc.stderr[-5000:]
        pytest.fail(_BUILT["error"])
    print(f"tiny pipeline up to invert_real: {time.monotonic() - t0:.0f} s")
    _BUILT["work"] = work
    return work


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory)


@pytest.mark.slow
def test_invert_real_outputs(tiny_pipeline):
    res = tiny_pipeline / "results"
    summary = json.loads((res / "invert" / "inversion.json").read_text())
    table = pd.read_parquet(res / "invert" / "inversions.parquet")
    with np.load(res / "invert" / "reconstructions.npz") as f:
        real, rec, rows = f["real"], f["reconstruction"], f["row"]
    n = summary["n_patches"]
    assert len(table) == n == len(real) == len(rec) and 3 <= n <= 6
    patches = pd.read_parquet(res / "data" / "patches.parquet")
    assert set(patches.loc[rows, "split"]) <= {"val", "test"}  # held out from both networks
    np.testing.assert_array_equal(table["row"], rows)
    np.testing.assert_allclose(table["real_tuf"], patches.loc[rows, "tuf"])
    # the reconstruction's parameters are those of the stored image, measured like generated ones
    from sharpgen.measure import MeasurementContext, measure
    from sharpgen.store import PatchStore

    ctx = MeasurementContext.from_store(PatchStore.open(res / "data" / "patches.zarr"))
    np.testing.assert_allclose(measure(rec, ctx)["tuf"], table["rec_tuf"], rtol=1e-12)
    np.testing.assert_allclose(table["rel_error"], rel_l2(rec, real), rtol=1e-4)
    for p in ("tuf", "r_value", "psep"):
        assert "pearson" in summary["correlations"][p]
    assert set(summary["targets"]) == {"tuf_pearson_ge_0.90", "r_value_pearson_ge_0.70", "psep_pearson_ge_0.60"}
    assert (res / "benchmarks" / "invert_real.tsv").exists() and (res / "logs" / "invert_real.log").exists()
    assert (res / "figures" / "inversion.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_inversion_metrics_section(tiny_pipeline):
    from sharpgen import metrics

    summary = json.loads((tiny_pipeline / "results" / "invert" / "inversion.json").read_text())
    m = metrics.build_metrics(inversion=summary, timings={"invert_real": 1.0})
    assert m["inversion"]["n_patches"] == summary["n_patches"]
    assert set(m["inversion"]["pearson"]) >= {"tuf", "r_value", "psep"}
    schema = metrics.load_schema()
    metrics.validate_metrics(m, schema, stages=["inversion", "timing"])
    del m["inversion"]["pearson"]
    with pytest.raises(ValueError, match="inversion"):
        metrics.validate_metrics(m, schema, stages=["inversion", "timing"])


@pytest.mark.slow
def test_inversion_figure_shows_pairs_and_scatter(tiny_pipeline):
    from sharpgen import report

    res = tiny_pipeline / "results" / "invert"
    fig = report.build("inversion", {"reconstructions": res / "reconstructions.npz",
                                     "inversions": res / "inversions.parquet", "inversion": res / "inversion.json"},
                       {"seed": 0, "dpi": 50})
    n = min(6, json.loads((res / "inversion.json").read_text())["n_patches"])
    assert sum(len(ax.get_images()) for ax in fig.axes) == 2 * n
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any(t.startswith("tuf [matched]\nPearson r") for t in titles) and any("both R > 0" in t for t in titles)
    # the default matches tuf, psep, r_value: r_paper is drawn as the independent check
    assert any(t.startswith("r_paper [not matched]") for t in titles)
    assert "parameters matched: tuf, psep, r_value" in " ".join(fig._suptitle.get_text().split())  # (wrapped)


def generated_fits(work: Path, out: Path) -> Path:
    """A patch written by `sharpgen generate` on the tiny pipeline (the calibrated range's
    geometric middle; the first seed of 0..19 that reaches it)."""
    cal = json.loads((work / "results" / "directions" / "calibration.json").read_text())["directions"]["tuf"]
    value = float(np.sqrt(cal["range"][0] * cal["range"][1]))
    for seed in range(20):
        proc = subprocess.run([sys.executable, "-m", "sharpgen", "generate", "--tuf", f"{value:.6g}", "--seed",
                               str(seed), "-o", str(out)], cwd=work, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return out
        assert "try another --seed" in proc.stderr, proc.stdout + proc.stderr
    pytest.fail(f"no seed of 0..19 reaches tuf={value:.4g}: {proc.stderr}")


def _edit(work, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sharpgen", "edit", *map(str, args)], cwd=work,
                          capture_output=True, text=True, timeout=timeout)


def _a_record(work, quantile: float = 0.5) -> Path:
    """A held-out synthetic SHARP Br record of the tiny pipeline (FITS, like a JSOC file), at
    this quantile of TUF."""
    patches = pd.read_parquet(work / "results" / "data" / "patches.parquet")
    held = patches[patches["split"].isin(["val", "test"])]
    return work / held.sort_values("tuf").iloc[int(quantile * (len(held) - 1))]["path"]


def _reachable(work, src, *args) -> tuple[float, float] | None:
    """The TUF range ``sharpgen edit`` says ``src`` can reach (from its refusal of x1000); None
    when it says no calibrated TUF is reachable from this record."""
    import re

    proc = _edit(work, src, "--tuf", "x1000", *args, "-o", Path(str(src)).with_suffix(".never.fits"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    if "this patch cannot be edited along 'tuf'" in proc.stderr:  # a clear refusal, no range
        assert "does not overlap the direction's calibrated range" in proc.stderr, proc.stderr
        return None
    m = re.search(r"outside the range \[([-+.e0-9]+), ([-+.e0-9]+)\] Mx that this patch can reach", proc.stderr)
    assert m, proc.stderr
    lo, hi = float(m.group(1)), float(m.group(2))
    assert lo < hi, proc.stderr
    return lo, hi


def _editable_records(work, *args, n: int = 3):
    """Records of the tiny pipeline from which a calibrated TUF range is reachable, with that
    range: of the ``n`` records whose TUF is nearest the middle of the direction's calibrated range
    (geometric mean), nearest first. The tiny config's 60-step GAN moves TUF little along its
    direction (measured: 0.03 dex per unit eps), so most records cannot reach the calibrated range."""
    lo, hi = _calibration(work)["directions"]["tuf"]["range"]
    patches = pd.read_parquet(work / "results" / "data" / "patches.parquet")
    dist = (np.log10(patches["tuf"]) - 0.5 * np.log10(lo * hi)).abs()
    for i in dist.sort_values().index[:n]:
        src = work / patches.loc[i, "path"]
        reach = _reachable(work, src, *args)
        if reach is not None:
            yield src, reach


def _calibration(work) -> dict:
    return json.loads((work / "results" / "directions" / "calibration.json").read_text())


def _within_calibration_error(achieved, requested, cal) -> bool:
    """|log10(achieved / requested)| within one residual sigma of the calibration (fit space), or
    the refinement tolerance (2%) when that is looser."""
    return abs(np.log10(achieved / requested)) <= max(cal["resid_sigma"], np.log10(1.02)) + 1e-9


@pytest.mark.slow
def test_edit_a_real_record_keeps_its_wcs_and_reaches_the_request(tiny_pipeline, tmp_path):
    """sharpgen edit on a SHARP Br record: a FITS file sunpy opens as a Carrington map with the
    record's WCS carried through the cut, before/recon/after parameters in the header, and the
    measured TUF of the written patch equal to the request within the calibration's error."""
    sunpy_map = pytest.importorskip("sunpy.map")
    from astropy.io import fits

    from sharpgen.measure import MeasurementContext, measure

    work = tiny_pipeline
    cal = _calibration(work)
    # The reachable range is predicted from the calibrated slope; on the tiny 60-step GAN some
    # records' TUF responds far less along the direction than the calibration predicts (seen on
    # an AMD-trained tiny GAN: 15 % short at the eps limit). Such a miss must be reported, never
    # silent; the edit must reach the request on a record that responds (5 candidates).
    missed = []
    for src, (lo, hi) in _editable_records(work, "--max-error", "5", n=5):  # a 60-step GAN reconstructs poorly
        value = lo + 0.7 * (hi - lo)
        out = tmp_path / f"edited_{len(missed)}.fits"
        proc = _edit(work, src, "--tuf", f"{value:.6g}", "--max-error", "5", "-o", out)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if "the request was missed" not in proc.stderr:
            break
        assert "responds less than the calibration predicts" in proc.stderr, proc.stderr
        assert fits.getheader(out)["RELERR"] > 0.02, proc.stderr
        missed.append((src.name, fits.getheader(out)["RELERR"]))
    else:
        raise AssertionError(f"the edit missed its request on every candidate record: {missed}")
    assert "wrote" in proc.stdout and "inversion: relative pixel error" in proc.stdout
    m = sunpy_map.Map(out)
    assert m.data.shape == (S, S) and m.coordinate_frame.name == "heliographic_carrington"
    with fits.open(src) as h:
        rec_hdr = next(x.header for x in h if x.data is not None)
    assert m.meta["cdelt1"] == pytest.approx(rec_hdr["CDELT1"] * 8)  # tiny config: bin 8
    assert m.meta["harpnum"] == rec_hdr["HARPNUM"] and m.meta["t_rec"] == rec_hdr["T_REC"]
    hdr = fits.getheader(out)
    assert hdr["REQVAL"] == pytest.approx(value, rel=1e-5) and hdr["EDITDIR"] == "tuf"
    ctx = MeasurementContext.from_dict(cal["measurement"])
    remeasured = measure(fits.getdata(out)[None] / hdr["CLIPG"], ctx)["tuf"].iloc[0]
    assert remeasured == pytest.approx(hdr["AFTER TUF"], rel=1e-5)
    assert _within_calibration_error(hdr["AFTER TUF"], value, cal["directions"]["tuf"]), (hdr["AFTER TUF"], value)
    assert hdr["BEFORE TUF"] > 0 and hdr["RECON TUF"] > 0 and hdr["INVERR"] <= 5


@pytest.mark.slow
def test_edit_by_a_factor_holding_a_parameter(tiny_pipeline, tmp_path):
    """`--tuf xF --hold tnf` on a generated patch (well inverted: the default bound holds): the
    request is F x the input's TUF, reached within the calibration's error."""
    sunpy_map = pytest.importorskip("sunpy.map")
    from astropy.io import fits

    work = tiny_pipeline
    src = generated_fits(work, tmp_path / "generated.fits")
    before = fits.getheader(src)["MEAS TUF"]  # measured by sharpgen generate, like edit's BEFORE
    reach = _reachable(work, src, "--hold", "tnf")
    assert reach is not None, "a generated patch lies in the calibrated range"
    lo, hi = reach
    factor = round((lo + 0.6 * (hi - lo)) / before, 4)  # a factor this patch can reach
    out = tmp_path / "edited.fits"
    proc = _edit(work, src, "--tuf", f"x{factor}", "--hold", "tnf", "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "held tnf" in proc.stdout
    hdr = fits.getheader(out)
    assert hdr["EDITDIR"] == "tuf|tnf" and hdr["INVERR"] <= hdr["INVBOUND"] == pytest.approx(0.9)
    # the direction's hold as fit_boundaries solved it (directions.hold: measured, the default)
    hold = json.loads((work / "results" / "directions" / "boundaries.json").read_text())["hold"]["directions"]
    rec = hold["tuf|tnf"]
    assert hdr["HOLDFIT"] == ("measured b=" + ",".join(f"{b:.4g}" for b in rec["coefficients"])
                              if rec["method"] == "measured" else "projection")
    # the feedback hold (calibration.hold_steps) corrected tnf along its own calibrated direction
    assert hdr["EPSHOLD"].startswith("tnf ") and hdr["EPSHOLD"].endswith(" along tnf")
    assert hdr["BEFORE TUF"] == pytest.approx(before, rel=1e-6)
    assert hdr["REQVAL"] == pytest.approx(factor * hdr["BEFORE TUF"], rel=1e-6)
    cal = _calibration(work)["directions"]["tuf|tnf"]
    assert _within_calibration_error(hdr["AFTER TUF"], hdr["REQVAL"], cal), (hdr["AFTER TUF"], hdr["REQVAL"])
    assert sunpy_map.Map(out).data.shape == (S, S)
    np.testing.assert_array_equal(fits.getdata(out, "LATENT")["code_base"].shape, (1, 100))


@pytest.mark.slow
def test_edit_refuses_poor_inversions_and_unreachable_values(tiny_pipeline, tmp_path):
    work = tiny_pipeline
    src = _a_record(work)
    poor = _edit(work, src, "--tuf", "x1.1", "--max-error", "0.001", "-o", tmp_path / "a.fits")
    assert poor.returncode == 1 and "inversion is too poor to edit" in poor.stderr and "0.001" in poor.stderr
    far = _edit(work, src, "--tuf", "x1000", "--max-error", "5", "-o", tmp_path / "b.fits")
    assert far.returncode == 1 and "calibrated range" in far.stderr, far.stderr
    assert "outside the range" in far.stderr or "cannot be edited along 'tuf'" in far.stderr
    uncal = _edit(work, src, "--psep", "x1.1", "-o", tmp_path / "c.fits")
    assert uncal.returncode == 1 and "not calibrated" in uncal.stderr
    notfits = tmp_path / "x.fits"
    notfits.write_text("hello")
    bad = _edit(work, notfits, "--tuf", "x1.1", "-o", tmp_path / "d.fits")
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert not any((tmp_path / f).exists() for f in ("a.fits", "b.fits", "c.fits", "d.fits"))
