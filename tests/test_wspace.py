"""Directions in whitened W (gan.arch: mapping): sampling writes the codes, boundaries are fitted
there, traversals / calibration requests / `sharpgen generate` draw their bases in z and move in
W, and every path renders the same image for the same seed. Tiny sizes, CPU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgen import directions as dr
from sharpgen import gan, sampling
from sharpgen.measure import MeasurementContext, make_renderer, measure, space_codes
from sharpgen.store import PatchStore
from test_gan import make_patch_store

PARAMS = ["tuf", "tpf", "tnf"]
DIRS = {"parameters": PARAMS, "conditional": [{"target": "tuf", "hold": ["tpf"]}],
        "hold_fit": {"n_base": 4, "max_evaluations": 3},
        "traversal": {"n_base": 3, "n_eps": 5, "batch_size": 64, "device": "cpu"},
        "strips": {"directions": ["tuf", "tuf|tpf"], "n_steps": 3},
        "calibration": {"n_bootstrap": 5, "n_requests": 4, "evaluate": ["tuf", "tuf|tpf"]}}


@pytest.fixture(scope="module")
def wrun(tmp_path_factory):
    """A 4-step mapping GAN on a 32 px store, sampled (200 latents) with W codes."""
    tmp = tmp_path_factory.mktemp("w")
    torch.set_num_threads(1)
    zpath, tpath = make_patch_store(tmp, n=16, size=32)
    patches, attrs = gan.read_patch_store(zpath, tpath, split="train")
    cfg = gan.GanConfig.from_dict({"arch": "mapping", "mapping_channels": [16, 16, 8, 4], "structure": [],
                                   "mapping_layers": 2, "steps": 4, "batch_size": 4, "device": "cpu",
                                   "log_every": 2, "sample_every": 4, "checkpoint_every": 4})
    gan.train_gan(patches, cfg, checkpoint_root=tmp / "ck", generator_path=tmp / "generator.pt",
                  log_csv=tmp / "log.csv", clip_gauss=attrs["clip_gauss"], progress=False)
    out = tmp / "samples"
    sampling.run_sampling(tmp / "generator.pt", zpath, tpath,
                          {"n": 200, "seed": 2, "batch_size": 64, "real_split": "train", "quality_images": 10},
                          latents_path=out / "latents.parquet", images_path=out / "generated.zarr",
                          quality_path=out / "quality.json", progress=False)
    return tmp, zpath, tpath


def test_sampling_writes_whitened_w_codes(wrun):
    tmp, zpath, _ = wrun
    G = gan.load_generator(tmp / "generator.pt")
    z, table = sampling.read_latents(tmp / "samples" / "latents.parquet")
    w, table_w = sampling.read_latents(tmp / "samples" / "latents.parquet", space="w")
    assert w.shape == z.shape == (200, 100) and "w" not in table.columns and "z" not in table_w.columns
    np.testing.assert_allclose(w, gan.latent_codes(G, z), atol=1e-5)
    # the stored parameters are those of the image rendered from the W codes
    ctx = MeasurementContext.from_store(PatchStore.open(zpath))
    again = measure(gan.generate(G, w[:5], space="w"), ctx)
    np.testing.assert_allclose(again["tuf"], table["tuf"][:5], rtol=1e-3)
    # a tiny store: C2ST cannot run; quality.json says why instead of failing
    q = json.loads((tmp / "samples" / "quality.json").read_text())
    assert q["c2st"]["accuracy"] is None and "images per class" in q["c2st"]["reason"]
    # a generator without mapping network has no W
    with pytest.raises(ValueError, match="mapping network"):
        space_codes(gan.build_generator("stable", 32), z[:2], "w")


def test_boundaries_traversal_calibration_in_w(wrun, tmp_path):
    tmp, zpath, _ = wrun
    lat = tmp / "samples" / "latents.parquet"
    gen = {"generator_path": tmp / "generator.pt", "patches_zarr": zpath}
    summary = dr.run_fit_boundaries(lat, DIRS, tmp_path / "b.npz", tmp_path / "b.json", **gen)
    assert summary["latent_space"] == "w"
    field = dr.load_direction_field(tmp_path / "b.npz")
    assert field.space == "w"
    # the measured hold of tuf|tpf walked in W (3 evaluations at most)
    assert 1 <= summary["hold"]["directions"]["tuf|tpf"]["n_evaluations"] <= 3
    # the same latents in z give other normals (and say so)
    sz = dr.run_fit_boundaries(lat, {**DIRS, "space": "z"}, tmp_path / "bz.npz", tmp_path / "bz.json", **gen)
    assert sz["latent_space"] == "z" and dr.load_direction_field(tmp_path / "bz.npz").space == "z"
    corr = summary["parameters"]["_parameter_correlations"]
    assert corr["pearson"]["tuf"]["tuf"] == pytest.approx(1.0)
    assert -1 <= corr["spearman"]["tpf"]["tnf"] <= 1
    # traversal: bases drawn in z, moved in W; eps = 0 renders exactly G(z_base)
    tm = dr.run_traverse(tmp / "generator.pt", tmp_path / "b.npz", lat, zpath, DIRS,
                         tmp_path / "t.parquet", tmp_path / "t.json", strips_out=tmp_path / "s.npz")
    assert tm["latent_space"] == "w"
    df = pd.read_parquet(tmp_path / "t.parquet")
    G = gan.load_generator(tmp / "generator.pt")
    ctx = MeasurementContext.from_store(PatchStore.open(zpath))
    from sharpgen.seeds import stream

    zb = stream(0, "traversal_bases").standard_normal((3, 100))
    at0 = df[(df["direction"] == "tuf") & (df["eps"] == 0)].sort_values("base")
    direct = measure(gan.generate(G, zb.astype(np.float32)), ctx)
    np.testing.assert_allclose(at0["tuf"].to_numpy(), direct["tuf"].to_numpy(), rtol=1e-3)
    with np.load(tmp_path / "s.npz") as s:  # strips: the seed's image at eps = 0 (odd n_steps)
        img0 = s["images"][0, 1]
    z0 = dr.latent_from_seed(0, 100)[None, :]
    np.testing.assert_allclose(img0, gan.generate(G, z0)[0], atol=2e-4)
    # calibration requests draw seeds in z and map them to W
    cal = dr.run_calibrate(tmp_path / "t.parquet", tmp_path / "t.json", tmp / "generator.pt",
                           tmp_path / "b.npz", DIRS, tmp_path / "c.json")
    assert set(cal["evaluation"]) == {"tuf", "tuf|tpf"}
    # `sharpgen generate`'s request: the base is the seed's z in W; the image is G's
    render = make_renderer(G, ctx, batch_size=16, space="w")
    key = "tuf"
    lo, hi = cal["directions"][key]["range"]
    cal_full = json.loads((tmp_path / "c.json").read_text())
    for seed in range(20):
        try:
            res = dr.generate_request(render, G, field, cal_full, "tuf", float(np.sqrt(lo * hi)), seed=seed)
            break
        except dr.RequestOutOfRange:
            continue
    else:
        pytest.skip("no seed reaches the requested value with this 4-step generator")
    np.testing.assert_allclose(res["z_base"], space_codes(G, dr.latent_from_seed(seed, 100)[None, :], "w")[0],
                               atol=1e-5)
    np.testing.assert_allclose(res["image"], gan.generate(G, res["z"][None, :], space="w")[0], atol=1e-6)


def test_w_space_needs_w_codes(tmp_path):
    zpath, tpath = make_patch_store(tmp_path, n=8, size=32)
    patches, _ = gan.read_patch_store(zpath, tpath)
    cfg = gan.GanConfig.from_dict({"arch": "stable", "steps": 1, "batch_size": 2, "device": "cpu",
                                   "structure": []})
    gan.train_gan(patches, cfg, checkpoint_root=tmp_path / "ck", generator_path=tmp_path / "g.pt",
                  log_csv=tmp_path / "l.csv", progress=False)
    out = tmp_path / "s"
    sampling.run_sampling(tmp_path / "g.pt", zpath, tpath, {"n": 40, "seed": 0, "real_split": "train"},
                          latents_path=out / "latents.parquet", images_path=out / "g.zarr",
                          quality_path=out / "q.json", progress=False)
    table = pd.read_parquet(out / "latents.parquet")
    assert "w" not in table.columns
    assert dr.boundaries.resolve_space("auto", table.columns) == "z"
    with pytest.raises(dr.DirectionError, match="no 'w' column"):
        dr.boundaries.resolve_space("w", table.columns)
