"""Patch extraction: both modes on real records, bad-input skipping, splits, atomic outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sharpgen.store import PatchStore

from sharpgen import data as D
from sharpgen import patch_cut
from sharpgen import patches as P
from sharpgen import synthetic
from sharpgen.config import SPLIT_DEFAULTS, split_fractions
from sharpgen.physics import PARAMETER_NAMES, compute_parameters
from sharpgen.sharp_io import read_sharp

CFG = {"mode": "crop", "size": 64, "bin": 4, "clip_gauss": 1000.0, "max_nan_fraction": 0.25,
       "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0}}
CONTRACT_COLUMNS = ["row", "source", "path", "harpnum", "t_rec", "noaa", "lon_fwt", "lat_fwt",
                    "pixel_size_mm", "pixel_area_cm2", "nan_fraction", "usflux_hdr", "r_value_hdr", "split"]


def _run(tmp_path, records, cfg, name="out"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    summary = P.make_patches(records, cfg, d / "patches.zarr", d / "patches.parquet",
                             d / "patches_summary.json", progress=False)
    return d, summary


@pytest.fixture(scope="module")
def syn_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return synthetic.synthesize(out, n_regions=8, frames_per_region=2, seed=1, progress=False)


@pytest.fixture(scope="module")
def local_records(shared_data):
    return D.local_manifest(str(shared_data / "sharp" / "hmi.sharp_cea_720s.*.Br.fits"))


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_real_records_both_modes(tmp_path, local_records, mode):
    cfg = {**CFG, "mode": mode, "size": 128, "bin": 2}
    d, summary = _run(tmp_path, local_records, cfg)
    assert summary["n_patches"] == 3 and summary["n_skipped"] == 0
    arr, attrs, scale = _load(d / "patches.zarr")
    table = pd.read_parquet(d / "patches.parquet")
    assert arr.shape == (3, 128, 128) and arr.dtype == np.float32
    assert np.abs(arr).max() <= 1.0 and np.isfinite(arr).all()
    assert attrs["mode"] == mode and attrs["size"] == 128 and attrs["clip_gauss"] == 1000.0 and attrs["n"] == 3
    assert set(CONTRACT_COLUMNS + list(PARAMETER_NAMES)) <= set(table.columns)
    assert list(table.row) == [0, 1, 2]
    by = {(r.harpnum, r.t_rec): r for r in table.itertuples()}
    r377 = by[(377, "2011.02.15_02:00:00_TAI")]
    assert r377.noaa == 11158 and r377.usflux_hdr == pytest.approx(2.71476e22)
    assert np.isnan(r377.r_value_hdr)
    assert r377.lat_fwt == pytest.approx(-20.201988)
    r6060 = by[(6060, "2015.10.30_00:12:00_TAI")]
    assert r6060.noaa == 12441 and r6060.r_value_hdr == pytest.approx(1.995)
    assert set(table.source) == {"local"}
    # a region never in two splits
    assert table.groupby("harpnum").split.nunique().max() == 1
    np.testing.assert_allclose(scale.size_mm, table.pixel_size_mm)
    rec = read_sharp(local_records.path[local_records.harpnum == 377].iloc[0])
    i = int(r377.row)
    if mode == "crop":
        # exact physical scale of a 2x2-binned CEA pixel
        assert scale.area_cm2[i] == pytest.approx(4 * rec.scale.area_cm2, rel=1e-9)
        # 377 (377 x 744) binned to 188 x 372: the 128 window fits, no padding
        assert r377.pad_fraction == 0.0
        # 6060 (200 x 335) binned to 100 x 167: padded in y only
        assert r6060.pad_fraction == pytest.approx(1 - 100 / 128)
    else:
        h, w = rec.data.shape
        assert scale.area_cm2[i] == pytest.approx(rec.scale.area_cm2 * h * w / 128**2, rel=1e-9)
        assert scale.size_mm[i] == pytest.approx(rec.scale.size_mm * np.sqrt(h * w) / 128, rel=1e-9)
        assert "image units" in attrs["parameter_units"]
    # table parameters are those of clip_gauss * stored patch at the stored scale
    params = compute_parameters(1000.0 * arr.astype(np.float64), scale)
    np.testing.assert_allclose(table["tuf"], params["tuf"], rtol=1e-9)
    assert PatchStore.open(d / "patches.zarr").nominal_scale.size_mm == pytest.approx(float(np.median(scale.size_mm)))
    # the bipolar 377 patch carries most of the region's flux, and both polarities
    assert r377.tpf > 0 and r377.tnf > 0 and r377.psep > 10


def test_any_power_of_two_size(tmp_path, syn_records):
    d, summary = _run(tmp_path, syn_records, {**CFG, "size": 32, "bin": 8})
    arr, attrs, scale = _load(d / "patches.zarr")
    assert arr.shape == (16, 32, 32)
    assert summary["splits"]["train"]["patches"] + summary["splits"]["val"]["patches"] + \
        summary["splits"]["test"]["patches"] == 16


def test_outputs_are_reproducible(tmp_path, syn_records):
    d1, _ = _run(tmp_path, syn_records, CFG, "a")
    d2, _ = _run(tmp_path, syn_records, CFG, "b")
    a1, _, _ = _load(d1 / "patches.zarr")
    a2, _, _ = _load(d2 / "patches.zarr")
    assert np.array_equal(a1, a2)
    pd.testing.assert_frame_equal(pd.read_parquet(d1 / "patches.parquet"), pd.read_parquet(d2 / "patches.parquet"))


def test_splits_disjoint_deterministic_and_proportional():
    harps = np.arange(1000, 1100)
    fr = {"train": 0.7, "val": 0.15, "test": 0.15}
    s1 = P.assign_splits(harps, fr, seed=0)
    assert s1 == P.assign_splits(harps[::-1], fr, seed=0)
    assert s1 != P.assign_splits(harps, fr, seed=1)
    counts = pd.Series(s1).value_counts()
    assert counts["train"] == 70 and counts["val"] == 15 and counts["test"] == 15
    assert set(s1) == set(int(h) for h in harps)
    assert set(P.assign_splits([5], fr).values()) == {"train"}


def test_crop_geometry():
    img = np.zeros((40, 60))
    img[30:34, 50:54] = 800.0  # a strong feature near a corner
    win, pad = patch_cut.crop_window(img, 16)
    assert pad == 0.0 and win.shape == (16, 16)
    assert win.sum() == img.sum()  # the feature lies inside the window
    small = np.full((6, 10), 5.0)
    win, pad = patch_cut.crop_window(small, 16)
    assert pad == pytest.approx(1 - 60 / 256) and win.sum() == pytest.approx(small.sum())
    a = np.arange(16.0).reshape(4, 4)
    a[0, 0] = np.nan
    b = patch_cut.bin_image(a, 2)
    assert b[0, 0] == pytest.approx((1 + 4 + 5) / 3) and b[1, 1] == pytest.approx((10 + 11 + 14 + 15) / 4)
    assert np.isnan(patch_cut.bin_image(np.full((4, 4), np.nan), 2)).all()


def test_resize_is_antialiased():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 100, (256, 512))
    out = patch_cut.resize_image(noise, 32)
    # area-like averaging of ~128 pixels shrinks white noise by ~sqrt(128); plain sampling would not
    assert out.std() < 25


def test_resize_matches_torch_antialiased_bilinear():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    for shape in ((200, 335), (377, 744), (20, 24)):
        x = rng.normal(0, 300, shape)
        ref = F.interpolate(torch.from_numpy(x)[None, None], size=(32, 32), mode="bilinear",
                            antialias=True, align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(patch_cut.resize_image(x, 32), ref, atol=1e-6 * 300)


def _bad_inputs(tmp_path, syn_records):
    """Manifest with good synthetic files plus one file of every bad kind."""
    d = tmp_path / "bad"
    d.mkdir()
    good = list(syn_records.path[:3])
    src = good[0]
    raw = open(src, "rb").read()
    rec = read_sharp(src)
    hdr = rec.header
    paths = {}

    def named(harpnum):
        """The good record's header with the identity of the file name it is written under."""
        h = hdr.copy()
        h["HARPNUM"] = harpnum
        h["T_REC"] = "2012.01.01_00:00:00_TAI"
        return h

    def put(name, data: bytes):
        p = d / name
        p.write_bytes(data)
        return str(p)

    paths["unreadable"] = put("hmi.sharp_cea_720s.9001.20120101_000000_TAI.Br.fits", raw[: len(raw) // 2])
    paths["not_fits"] = put("hmi.sharp_cea_720s.9002.20120101_000000_TAI.Br.fits", b"<html>JSOC error</html>" * 50)
    paths["wrong_series"] = put("hmi.sharp_720s.9003.20120101_000000_TAI.Br.fits", raw)
    paths["wrong_segment"] = put("hmi.sharp_cea_720s.9004.20120101_000000_TAI.Bp.fits", raw)
    from astropy.io import fits

    p = d / "hmi.sharp_cea_720s.9005.20120101_000000_TAI.Br.fits"
    fits.PrimaryHDU().writeto(p)
    paths["missing_segment"] = str(p)
    paths["missing"] = str(d / "hmi.sharp_cea_720s.9006.20120101_000000_TAI.Br.fits")
    nan = np.full(rec.data.shape, np.nan)
    p = d / "hmi.sharp_cea_720s.9007.20120101_000000_TAI.Br.fits"
    synthetic.write_sharp_fits(p, nan, named(9007))
    paths["all_nan"] = str(p)
    holes = rec.data.astype(np.float64).copy()
    holes[:, : int(0.8 * holes.shape[1])] = np.nan
    p = d / "hmi.sharp_cea_720s.9008.20120101_000000_TAI.Br.fits"
    synthetic.write_sharp_fits(p, holes, named(9008))
    paths["nan_fraction"] = str(p)
    hq = named(9009)
    hq["QUALITY"] = 0x400
    p = d / "hmi.sharp_cea_720s.9009.20120101_000000_TAI.Br.fits"
    synthetic.write_sharp_fits(p, rec.data.astype(np.float64), hq)
    paths["quality"] = str(p)
    # a good record under another record's name: its header HARPNUM / T_REC contradict the name
    paths["name_mismatch"] = put("hmi.sharp_cea_720s.9010.20120101_000000_TAI.Br.fits", raw)
    rows = [{"path": g, "source": "synthetic", "harpnum": 1, "t_rec": "x"} for g in good]
    rows += [{"path": p, "source": "local", "harpnum": 9000, "t_rec": "x"} for p in paths.values()]
    # the first good record listed a second time: one patch only
    paths["duplicate"] = good[0]
    rows.append({"path": good[0], "source": "synthetic", "harpnum": 1, "t_rec": "x"})
    return pd.DataFrame(rows), paths, good


def test_bad_inputs_are_skipped_with_reasons(tmp_path, syn_records, caplog):
    records, paths, good = _bad_inputs(tmp_path, syn_records)
    cfg = {**CFG, "mode": "resize", "size": 32}
    cfg_crop = {**CFG, "size": 32, "bin": 8}
    for c, name in ((cfg, "r"), (cfg_crop, "c")):
        d, summary = _run(tmp_path, records, c, name)
        assert summary["n_records"] == len(records)
        assert summary["n_patches"] == len(good)
        for reason in paths:
            assert summary["skipped"][reason] == 1, (reason, summary["skipped"])
        on_disk = json.loads((d / "patches_summary.json").read_text())
        assert on_disk["skipped"] == summary["skipped"]
        assert {s["reason"] for s in on_disk["skipped_records"]} == set(paths)
    assert "skipping record" in caplog.text and "wrong_series" in caplog.text


def test_worker_processes_give_the_same_outputs(tmp_path, syn_records, monkeypatch):
    """make_patches with 2 worker processes (records cut in batches of 3, in flight at most 2
    per worker) writes the same store bytes, table and summary as one process, bad records,
    the duplicate and the order of everything included; an error in a worker is raised."""
    records, paths, good = _bad_inputs(tmp_path, syn_records)
    records = pd.concat([records, syn_records.iloc[len(good):]], ignore_index=True)  # more than a few batches
    monkeypatch.setattr(patch_cut, "CUT_BATCH", 3)
    monkeypatch.setattr(patch_cut, "CUT_AHEAD", 2)
    cfg = {**CFG, "size": 32, "bin": 8}
    out = {}
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        summary = P.make_patches(records, cfg, d / "patches.zarr", d / "patches.parquet", d / "s.json",
                                 progress=False, workers=workers)
        summary.pop("seconds")
        out[workers] = (summary, pd.read_parquet(d / "patches.parquet"),
                        {str(f.relative_to(d)): f.read_bytes() for f in sorted((d / "patches.zarr").rglob("*"))
                         if f.is_file()})
    assert out[1][0] == out[2][0]
    assert out[1][0]["n_patches"] == len(syn_records)
    assert all(out[1][0]["skipped"][r] == 1 for r in paths)
    pd.testing.assert_frame_equal(out[1][1], out[2][1])
    assert out[1][2] == out[2][2]
    import dataclasses

    broken = dataclasses.replace(P.PatchConfig.from_mapping(cfg), size=0)  # fails in the cut, not a skip
    with pytest.raises(ZeroDivisionError):
        P.make_patches(records, broken, tmp_path / "b.zarr", tmp_path / "b.parquet", tmp_path / "b.json",
                       progress=False, workers=2)
    assert not list(tmp_path.glob("b.*")) and not list(tmp_path.glob(".b.*"))


def test_zero_usable_records_is_an_error_and_leaves_nothing(tmp_path, syn_records):
    records, paths, good = _bad_inputs(tmp_path, syn_records)
    bad_only = records[~records.path.isin(good)]
    d = tmp_path / "none"
    d.mkdir()
    with pytest.raises(P.PatchError, match="no usable record among 10"):
        P.make_patches(bad_only, CFG, d / "patches.zarr", d / "patches.parquet", d / "s.json", progress=False)
    assert list(d.iterdir()) == []


def test_failure_while_writing_leaves_no_outputs(tmp_path, syn_records, monkeypatch):
    d = tmp_path / "fail"
    d.mkdir()
    real_write = P.write_store

    def broken(path, *a, **k):
        real_write(path, *a, **k)  # the store is complete under its temporary name...
        raise OSError("disk full")  # ...then something fails

    monkeypatch.setattr(P, "write_store", broken)
    with pytest.raises(OSError, match="disk full"):
        P.make_patches(syn_records, CFG, d / "patches.zarr", d / "patches.parquet", d / "s.json", progress=False)
    assert list(d.iterdir()) == []


def test_relative_manifest_paths_resolve_from_root(tmp_path, syn_records):
    root = tmp_path / "root"
    (root / "recs").mkdir(parents=True)
    for p in syn_records.path[:2]:
        shutil.copy(p, root / "recs")
    rel = syn_records.head(2).copy()
    rel["path"] = ["recs/" + p.rsplit("/", 1)[1] for p in rel.path]
    arr, table, summary = P.build_patches(rel, P.PatchConfig.from_mapping(CFG), root=root, progress=False)
    assert summary["n_patches"] == 2 and list(table.path) == list(rel.path)


def _tiny_record(tmp_path, syn_records, shape=(10, 10)):
    """A valid Br record of ``shape`` pixels (a corner of a synthetic one, same header)."""
    src = syn_records.path.iloc[0]
    rec = read_sharp(src)
    data = rec.data.astype(np.float64)
    cy, cx = np.unravel_index(np.nanargmax(np.abs(data)), data.shape)
    y0, x0 = max(cy - shape[0] // 2, 0), max(cx - shape[1] // 2, 0)
    small = data[y0:y0 + shape[0], x0:x0 + shape[1]]
    p = tmp_path / src.rsplit("/", 1)[1]
    synthetic.write_sharp_fits(p, small, rec.header.copy())
    return pd.DataFrame([{"path": str(p), "source": "local", "harpnum": rec.harpnum, "t_rec": rec.t_rec}])


def test_tiny_record_is_skipped_as_too_small(tmp_path, syn_records, caplog):
    """Issue 18: a 10x10-pixel record went into the train split with pad_fraction 0.999."""
    tiny = _tiny_record(tmp_path, syn_records)
    records = pd.concat([syn_records.iloc[2:4], tiny], ignore_index=True)
    cfg = {**CFG, "size": 32, "bin": 2}
    arr, table, summary = P.build_patches(records, P.PatchConfig.from_mapping(cfg), progress=False)
    assert len(table) == 2 and tiny.path[0] not in set(table.path)
    assert summary["skipped"]["too_small"] == 1
    (skip,) = summary["skipped_records"]
    assert skip["reason"] == "too_small" and skip["path"] == tiny.path[0]
    assert "pad_fraction 0.976 > max_pad_fraction 0.8" in skip["message"]
    assert f"skipping record {tiny.path[0]}: too_small" in caplog.text
    # the bound is the config's: allowing all padding keeps the record
    arr, table, summary = P.build_patches(records, P.PatchConfig.from_mapping({**cfg, "max_pad_fraction": 1.0}),
                                          progress=False)
    assert len(table) == 3 and table.pad_fraction.max() == pytest.approx(1 - 25 / 32**2)


def test_default_bound_keeps_every_default_synthetic_record(syn_records):
    """max_pad_fraction 0.8 sits above the largest padding of the synthetic data set (records
    of at least 120 x 160 pixels: 0.707 with the default 128 x 128 window at bin 2)."""
    arr, table, summary = P.build_patches(syn_records, P.PatchConfig.from_mapping(
        {**CFG, "size": 128, "bin": 2}), progress=False)
    assert summary["n_skipped"] == 0
    assert P.PatchConfig.from_mapping({}).max_pad_fraction == 0.8 and table.pad_fraction.max() <= 0.71


@pytest.mark.parametrize("split, message", [
    ({"train": 0.5, "val": 0.5, "test": 0.5}, r"train=0.5, val=0.5, test=0.5\): the fractions sum to 1.5, not 1"),
    ({"train": 0.0, "val": 0.0, "test": 0.0}, r"train must be > 0"),
    ({"train": 0.8}, r"train=0.8, val=0.15, test=0.15\): the fractions sum to 1.1"),  # schema defaults filled in
    ({"train": 1.2, "val": -0.1, "test": -0.1}, r"val=-0.1 is negative; test=-0.1 is negative"),
])
def test_bad_split_fractions_fail_before_any_record_is_read(tmp_path, syn_records, monkeypatch, split, message):
    """Issue 18: 0.5/0.5/0.5 was silently rescaled; all zeros failed only after every record."""
    def no_read(*a, **k):
        raise AssertionError("a record was read")

    monkeypatch.setattr(patch_cut, "load_record", no_read)
    with pytest.raises(ValueError, match=message):
        P.make_patches(syn_records, {**CFG, "split": split}, tmp_path / "z.zarr", tmp_path / "t.parquet",
                       tmp_path / "s.json", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_split_fractions_within_tolerance_pass():
    # within 1e-6 the fractions are taken as given (never rescaled); beyond, an error
    assert split_fractions({"train": 0.6, "val": 0.2, "test": 0.2 + 5e-7}) == \
        {"train": 0.6, "val": 0.2, "test": 0.2 + 5e-7}
    with pytest.raises(ValueError, match="sum to 1.000002"):
        split_fractions({"train": 0.6, "val": 0.2, "test": 0.2 + 2e-6})
    assert split_fractions(None) == SPLIT_DEFAULTS
    assert split_fractions({"train": 1, "val": 0, "test": 0}) == {"train": 1.0, "val": 0.0, "test": 0.0}


def test_limb_record_mostly_nan_is_skipped_in_crop_mode(shared_data):
    """HARP 1422 (LON_FWT 82 deg) is 46 % NaN; its crop window around the flux centre has none,
    but the record is still refused: the NaN bound applies to the record in both modes."""
    path = shared_data / "sharp_real" / "hmi.sharp_cea_720s.1422.20120306_142400_TAI.Br.fits"
    records = pd.DataFrame([{"path": str(path), "source": "local", "harpnum": 1422,
                             "t_rec": "2012.03.06_14:24:00_TAI"}])
    for cfg in ({**CFG, "size": 128, "bin": 2}, {**CFG, "mode": "resize"}):
        with pytest.raises(P.PatchError, match="nan_fraction: 1"):
            P.build_patches(records, P.PatchConfig.from_mapping(cfg), progress=False)
    arr, table, summary = P.build_patches(records, P.PatchConfig.from_mapping(
        {**CFG, "size": 128, "bin": 2, "max_nan_fraction": 0.5}), progress=False)
    assert table.nan_fraction[0] == 0.0  # the window itself has no NaN


def _load(path):
    """(patches (N, S, S) float32, attrs, per-patch PixelScale) through the one store reader."""
    st = PatchStore.open(path)
    return st.read(), st.attrs, st.scale()
