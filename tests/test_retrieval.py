"""Retrieval (sharpgen.retrieval): exact top-k, baselines, embedding store, evaluation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgen import embed as emb
from sharpgen import retrieval as rt
from sharpgen import ssl

from test_ssl import TINY, bipoles


def brute_topk(q, db, k, bias=None, subset=None):
    """Reference: full score matrix, then a full sort by (-score, index)."""
    s = q.astype(np.float32) @ db.astype(np.float32).T
    if bias is not None:
        s = s + bias[None, :].astype(np.float32)
    rows = np.arange(len(db)) if subset is None else np.sort(subset)
    s = s[:, rows]
    idx = np.stack([rows[np.lexsort((rows, -r))[:k]] for r in s])
    return idx, np.take_along_axis(s, np.searchsorted(rows, idx), axis=1)


@pytest.mark.parametrize("chunk", [7, 16, 1000])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_topk_matches_brute_force(chunk, k):
    rng = np.random.default_rng(k * 31 + chunk)
    db = rng.standard_normal((103, 12)).astype(np.float32)
    q = rng.standard_normal((37, 12)).astype(np.float32)
    i, s = rt.topk_scores(q, db, k, chunk_size=chunk, query_block=10)
    ri, rs = brute_topk(q, db, k)
    assert np.array_equal(i, ri) and np.allclose(s, rs, atol=1e-6)
    sub = rng.choice(103, size=40, replace=False)
    i, s = rt.topk_scores(q, db, k, subset=sub, chunk_size=chunk)
    ri, _ = brute_topk(q, db, k, subset=sub)
    assert np.array_equal(i, ri) and set(i.ravel()) <= set(sub)


def test_topk_ties_across_chunk_boundaries():
    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, size=(6, 4)).astype(np.float32)
    db = base[rng.integers(0, 6, size=60)]  # heavy exact ties (small integers: exact products)
    q = rng.integers(-2, 3, size=(25, 4)).astype(np.float32)
    bias = rng.integers(-1, 2, size=60).astype(np.float32)
    for chunk in (1, 4, 7, 60):
        for k in (1, 3, 10, 59, 60, 80):
            i, s = rt.topk_scores(q, db, k, bias=bias, chunk_size=chunk, query_block=4)
            ri, rs = brute_topk(q, db, min(k, 60), bias=bias)
            assert np.array_equal(i, ri), (chunk, k)
            assert np.array_equal(s, rs)
    with pytest.raises(ValueError, match="equal d"):
        rt.topk_scores(q, db[:, :3], 2)
    with pytest.raises(ValueError, match="empty"):
        rt.topk_scores(q, db, 2, subset=np.array([], dtype=int))


def test_cosine_and_euclidean_helpers():
    rng = np.random.default_rng(1)
    db = rng.standard_normal((50, 6)).astype(np.float32)
    q = rng.standard_normal((9, 6)).astype(np.float32)
    i, s = rt.topk_cosine(q, 3 * db, 4)  # scale-invariant
    qn, dn = rt.l2_normalize(q), rt.l2_normalize(db)
    assert np.array_equal(i, brute_topk(qn, dn, 4)[0])
    assert np.allclose(s[:, 0], (qn @ dn.T).max(1), atol=1e-6)
    i, d = rt.topk_euclidean(q, db, 3)
    full = np.linalg.norm(q[:, None] - db[None], axis=2)
    assert np.array_equal(i, np.argsort(full, axis=1)[:, :3])
    assert np.allclose(d, np.sort(full, axis=1)[:, :3], atol=1e-4)


def test_param_baselines_and_random():
    rng = np.random.default_rng(2)
    cov = np.array([[1, 0.9, 0], [0.9, 1, 0], [0, 0, 4]])
    f = rng.multivariate_normal([0, 0, 1], cov, size=300)
    f[3, 1] = np.nan  # non-finite -> database median
    q = rng.multivariate_normal([0, 0, 1], cov, size=20)
    i, d = rt.param_neighbours(q, f, k=2, metric="mahalanobis")
    sp = rt.ParamSpace(f, "mahalanobis")
    z = sp._fill(f)
    zs = (z - sp.mean) / sp.std
    vi = np.linalg.inv(np.cov(zs, rowvar=False) + 1e-6 * np.eye(3))
    dq = (q - sp.mean) / sp.std
    maha = np.sqrt(np.einsum("qnd,de,qne->qn", dq[:, None] - zs[None], vi, dq[:, None] - zs[None]))
    assert np.array_equal(i[:, 0], maha.argmin(1))
    assert np.allclose(d[:, 0], maha.min(1), atol=1e-3)
    ie, _ = rt.param_neighbours(q, f, k=1, metric="euclidean")
    eu = np.linalg.norm(dq[:, None] - zs[None], axis=2)
    assert np.array_equal(ie[:, 0], eu.argmin(1))
    table = pd.DataFrame({"tuf": [1e21, 0.0, np.nan], "psep": [1.0, 2.0, 3.0]})
    feats = rt.baseline_features(table, ("tuf", "psep"))
    assert feats[0, 0] == pytest.approx(21.0) and feats[1, 0] == 0.0 and np.isnan(feats[2, 0])
    with pytest.raises(KeyError, match="r_value"):
        rt.baseline_features(table, ("r_value",))
    a = rt.random_match(10, np.arange(5, 25), k=3, seed=4)
    assert a.shape == (10, 3) and np.array_equal(a, rt.random_match(10, np.arange(5, 25), k=3, seed=4))
    assert a.min() >= 5 and all(len(set(r)) == 3 for r in a)


def test_correlations_and_self_rates():
    q = pd.DataFrame({"tuf": [1.0, 2, 3, 4, np.nan], "psep": [1.0, 1, 1, 1, 1]})
    m = pd.DataFrame({"tuf": [2.0, 4, 6, 9, 1], "psep": [1.0, 2, 3, 4, 5]})
    c = rt.correlations(q, m, ("tuf", "psep", "r_value"))
    assert c["tuf"]["n"] == 4 and c["tuf"]["spearman"] == pytest.approx(1.0) and c["tuf"]["pearson"] > 0.98
    assert np.isnan(c["psep"]["pearson"]) and "r_value" not in c
    lo, hi = c["tuf"]["pearson_ci95"]
    assert -1 < lo < c["tuf"]["pearson"] < hi < 1 and hi - lo > 0.05  # 4 pairs: wide
    rates = rt.self_retrieval_rates(np.array([[3, 1, 2, 0, 5], [9, 8, 7, 6, 4]]), np.array([3, 4]))
    assert rates == {"top1": 0.5, "top5": 1.0}
    harp = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    rates = rt.self_retrieval_rates(np.array([[2, 1], [9, 5]]), np.array([3, 4]), ks=(1, 2), groups=harp)
    assert rates == {"top1": 0.0, "top2": 0.0, "top1_same_group": 0.5, "top2_same_group": 1.0}


def test_pearson_interval_is_fisher_z_and_covers_at_95_percent():
    assert rt.pearson_ci95(0.665, 12) == pytest.approx([0.147, 0.897], abs=1e-3)
    assert all(np.isnan(rt.pearson_ci95(0.5, 3))) and all(np.isnan(rt.pearson_ci95(np.nan, 50)))
    rng = np.random.default_rng(0)  # coverage on bivariate normal samples with rho = 0.6
    cov = [[1.0, 0.6], [0.6, 1.0]]
    hits = []
    for _ in range(400):
        x = rng.multivariate_normal([0, 0], cov, size=15)
        lo, hi = rt.pearson_ci95(float(np.corrcoef(x.T)[0, 1]), 15)
        hits.append(lo <= 0.6 <= hi)
    assert 0.91 <= np.mean(hits) <= 0.99


# ---------------------------------------------------------------------------------------------
# tiny stores: patch store + generated samples + trained encoder + embeddings
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import zarr

    from sharpgen import physics

    d = tmp_path_factory.mktemp("ret")
    x = bipoles(40, 32, seed=5)
    n = len(x)
    scale = physics.PixelScale.cea(0.03, 8)
    table = pd.DataFrame({"row": np.arange(n), "harpnum": 100 + np.arange(n) // 2,
                          "t_rec": [f"2012.01.{1 + i % 28:02d}_00:00:00_TAI" for i in range(n)]})
    table["split"] = np.where(table.harpnum % 5 == 0, "test", np.where(table.harpnum % 5 == 1, "val", "train"))
    table = pd.concat([table, physics.compute_parameters(1000.0 * x.astype(np.float64), scale)], axis=1)
    g = zarr.open_group(str(d / "patches.zarr"), mode="w")
    g.create_array("patches", data=x, chunks=(16, 32, 32))
    for name in ("size_mm", "area_cm2", "size_arcsec"):
        g.create_array(f"pixel_{name}", data=np.full(n, float(getattr(scale, name))))
    g.attrs.update({"clip_gauss": 1000.0, "mode": "crop", "size": 32, "bin": 8, "n": n, "config_hash": "t"})
    table.to_parquet(d / "patches.parquet", index=False)
    gen = np.clip(bipoles(12, 32, seed=6) * 0.9, -1, 1)
    zg = zarr.open_group(str(d / "generated.zarr"), mode="w")
    zg.create_array("images", data=gen)
    lat = physics.compute_parameters(1000.0 * gen.astype(np.float64), scale)
    lat.insert(0, "sample", np.arange(len(gen)))
    lat.to_parquet(d / "latents.parquet", index=False)
    torch.set_num_threads(1)
    model, _ = ssl.train_simsiam(x[table.split.to_numpy() == "train"], TINY, d / "ck")
    digest = ssl.save_encoder(d / "encoder.pt", model, meta={"size": 32, "clip_gauss": 1000.0, "mode": "crop", "bin": 8})
    enc, _ = ssl.load_encoder(d / "encoder.pt")
    emb.save_embeddings(d / "emb.npz", ssl.embed(enc, x), np.arange(n), table.split.to_numpy(), digest)
    return {"dir": d, "x": x, "table": table, "hash": digest}


def test_embedding_store_roundtrip_and_hash_check(tiny, tmp_path):
    st = emb.load_embeddings(tiny["dir"] / "emb.npz", encoder_hash=tiny["hash"])
    assert st["embeddings"].shape == (40, 8) and st["encoder_hash"] == tiny["hash"]
    assert list(st["split"]) == list(tiny["table"].split)
    with pytest.raises(emb.EmbeddingStoreError, match="made with encoder"):
        emb.load_embeddings(tiny["dir"] / "emb.npz", encoder_hash="0" * 16)
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(emb.EmbeddingStoreError, match="not a sharpgen embedding store"):
        emb.load_embeddings(tmp_path / "x.npz")


def test_run_evaluation_tiny(tiny):
    d = tiny["dir"]
    cfg = {"n_generated_queries": 10, "n_real_queries": 6, "k": 3, "seed": 1, "database_split": "all",
           "real_query_split": "test", "real_database_split": "train"}
    res, matches = rt.run_evaluation(d / "encoder.pt", d / "emb.npz", d / "patches.zarr", d / "patches.parquet",
                                     d / "generated.zarr", d / "latents.parquet", cfg)
    json.dumps(res, default=float)
    methods = {"simsiam", "params_euclidean", "params_mahalanobis", "random"}
    assert set(res["generated"]["correlations"]) == methods
    assert res["generated"]["n_queries"] == 10 and res["real"]["n_queries"] == 6
    assert set(res["self_retrieval"]) - {"database_split", "n_queries", "group"} == methods
    assert {"top1", "top5", "top1_same_group", "top5_same_group"} == set(res["self_retrieval"]["simsiam"])
    # generated queries: "all" is the configured database, so no second set; real queries:
    # train (configured) plus the secondary all-patches database
    assert set(matches["method"]) == methods and len(matches) == 4 * (10 + 6 + 6)
    assert {"query_tuf", "match_tuf", "match_row", "match_harpnum", "match_t_rec", "query_id"} <= set(matches)
    real = matches[matches.query_set == "real_test_augmented"]
    assert (real.match_split == "train").all()  # real queries search the configured split only
    mem = res["memorisation"]
    assert set(mem) >= {"pixels_gauss", "simsiam_cosine", "closest_pairs", "distances"}
    assert len(mem["distances"]["pixels_gauss"]["generated"]) == 10
    assert mem["pixels_gauss"]["median_generated"] > 0 and mem["closest_pairs"][0]["rms_gauss"] == pytest.approx(
        min(mem["distances"]["pixels_gauss"]["generated"]))

    # the honest protocol: held-out database as the headline, every patch as the secondary key
    res2, m2 = rt.run_evaluation(d / "encoder.pt", d / "emb.npz", d / "patches.zarr", d / "patches.parquet",
                                 d / "generated.zarr", d / "latents.parquet",
                                 {**cfg, "database_split": "heldout", "real_database_split": "val"})
    assert res2["generated"]["database_split"] == "heldout" and res2["generated_all"]["database_split"] == "all"
    head = m2[(m2.query_set == "generated")]
    assert set(head.match_split) <= {"val", "test"}  # never a training patch
    assert (m2[m2.query_set == "real_test_augmented"].match_split == "val").all()
    assert set(m2.query_set) == {"generated", "generated_all_database", "real_test_augmented",
                                 "real_test_augmented_all_database"}
    # the SimSiam match is the cosine top-1 of the stored embeddings
    st = emb.load_embeddings(d / "emb.npz")
    enc, _ = ssl.load_encoder(d / "encoder.pt")
    import zarr

    gen = zarr.open_group(str(d / "generated.zarr"))["images"][...]
    sim_rows = matches[(matches.query_set == "generated") & (matches.method == "simsiam")]
    q = ssl.embed(enc, gen[sim_rows.query_id.to_numpy()])
    best = (q @ st["embeddings"].T).argmax(1)
    assert np.array_equal(best, sim_rows.match_row.to_numpy())


def test_cli_retrieve(tiny, tmp_path, capsys):
    from sharpgen.cli import main

    d = tiny["dir"]
    common = ["--encoder", str(d / "encoder.pt"), "--embeddings", str(d / "emb.npz"), "--table", str(d / "patches.parquet")]
    np.save(tmp_path / "q.npy", tiny["x"][7])
    assert main(["retrieve", str(tmp_path / "q.npy"), "-k", "3", "--format", "csv", *common]) == 0
    out = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(out["rank"]) == [1, 2, 3] and out["row"][0] == 7 and out["similarity"][0] == pytest.approx(1, abs=1e-5)
    assert {"harpnum", "t_rec", "tuf", "r_value"} <= set(out.columns)
    assert main(["retrieve", str(tmp_path / "q.npy"), "-k", "2", "--split", "test", *common]) == 0
    text = capsys.readouterr().out
    assert "HARPNUM" in text and "train" not in text.split("\n", 2)[2]

    # bad inputs -> exit status 1 (a runtime error; 2 is for usage errors) with a clear message
    big = tiny["x"][7].copy()
    big[3, 3] = 1.5
    np.save(tmp_path / "big.npy", big)
    assert main(["retrieve", str(tmp_path / "big.npy"), *common]) == 1
    assert "outside [-1, 1]" in capsys.readouterr().err
    np.save(tmp_path / "shape.npy", np.zeros((16, 16), np.float32))
    assert main(["retrieve", str(tmp_path / "shape.npy"), *common]) == 1
    assert "expects (32, 32)" in capsys.readouterr().err
    st = emb.load_embeddings(d / "emb.npz")
    emb.save_embeddings(tmp_path / "other.npz", st["embeddings"], st["row"], st["split"], "feedfeedfeedfeed")
    bad = ["--encoder", str(d / "encoder.pt"), "--embeddings", str(tmp_path / "other.npz"), "--table", str(d / "patches.parquet")]
    assert main(["retrieve", str(tmp_path / "q.npy"), *bad]) == 1
    assert "made with encoder feedfeedfeedfeed" in capsys.readouterr().err


def test_cli_retrieve_fits_queries(tiny, tmp_path, capsys):
    from astropy.io import fits

    from sharpgen.cli import main

    d = tiny["dir"]
    common = ["--encoder", str(d / "encoder.pt"), "--embeddings", str(d / "emb.npz"), "--table", str(d / "patches.parquet")]
    hdr = fits.Header()
    hdr["CLIPG"] = 1000.0
    fits.PrimaryHDU(data=1000.0 * tiny["x"][11], header=hdr).writeto(tmp_path / "gen.fits")
    assert main(["retrieve", str(tmp_path / "gen.fits"), "-k", "1", "--format", "json", *common]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got[0]["row"] == 11 and got[0]["similarity"] == pytest.approx(1, abs=1e-5)
    fits.PrimaryHDU(data=np.zeros((5, 5))).writeto(tmp_path / "junk.fits")
    assert main(["retrieve", str(tmp_path / "junk.fits"), *common]) == 1
    assert "junk.fits" in capsys.readouterr().err


def test_cli_retrieve_sharp_record(tiny, shared_data, capsys):
    """A real SHARP Br record (../shared/data) is cut like the store (crop, bin 8 -> 32 px)."""
    from sharpgen.cli import main

    rec = sorted((shared_data / "sharp").glob("*.Br.fits"))[0]
    d = tiny["dir"]
    assert main(["retrieve", str(rec), "-k", "2", "--format", "csv", "--encoder", str(d / "encoder.pt"),
                 "--embeddings", str(d / "emb.npz"), "--table", str(d / "patches.parquet")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("rank,row") and len(out) == 3


def test_simsiam_retrieval_beats_random_on_a_toy_population(tmp_path):
    """Behaviour, not structure: on 160 toy bipoles (random flux, separation, tilt, width) a
    briefly trained SimSiam encoder retrieves matches whose parameters follow the query's far
    better than random matches, on every scored parameter, and finds an augmented patch's
    original among its top 5 far more often than chance (5 / 160)."""
    from sharpgen import physics

    torch.set_num_threads(1)
    x = bipoles(160, 32, seed=11)
    scale = physics.PixelScale.cea(0.03, 8)
    par = physics.compute_parameters(1000.0 * x.astype(np.float64), scale)
    model, _ = ssl.train_simsiam(x[:120], dict(TINY, epochs=6), tmp_path / "ck")
    enc = model.encoder.eval()
    q = bipoles(40, 32, seed=12)
    qp = physics.compute_parameters(1000.0 * q.astype(np.float64), scale)
    e_db, e_q = ssl.embed(enc, x), ssl.embed(enc, q)
    idx, _ = rt.topk_cosine(e_q, e_db, 1, normalized=True)
    ridx = rt.random_match(40, len(x), 1, seed=0)
    sim = rt.correlations(qp, par.iloc[idx[:, 0]].reset_index(drop=True), ("tuf", "psep", "r_value"))
    rnd = rt.correlations(qp, par.iloc[ridx[:, 0]].reset_index(drop=True), ("tuf", "psep", "r_value"))
    for p in ("tuf", "psep", "r_value"):
        assert sim[p]["pearson"] > rnd[p]["pearson"] + 0.3, (p, sim[p], rnd[p])
    assert sim["tuf"]["pearson"] > 0.7
    xa = rt.augment_numpy(x[:40], {"rotation_deg": 20, "translate_px": 2.5, "zoom": [0.9, 1.1]}, seed=3)
    ia, _ = rt.topk_cosine(ssl.embed(enc, xa), e_db, 5, normalized=True)
    rates = rt.self_retrieval_rates(ia, np.arange(40))
    assert rates["top5"] >= 0.4 and rates["top1"] >= 0.1  # chance: 0.031 and 0.006


def test_evaluation_reads_columns_not_the_whole_table(tiny, monkeypatch):
    """run_evaluation never builds the whole patch table (only the columns it reads), and the
    memorisation check compares with at most memorisation_max_heldout held-out patches (a
    seeded subset; all of them when there are fewer), with the same training reference."""
    from sharpgen.store import PatchStore

    def no_table(self):
        raise AssertionError("the whole patch table was loaded")

    monkeypatch.setattr(PatchStore, "table", property(no_table))
    d = tiny["dir"]
    cfg = {"n_generated_queries": 10, "n_real_queries": 6, "k": 3, "seed": 1}
    args = (d / "encoder.pt", d / "emb.npz", d / "patches.zarr", d / "patches.parquet", d / "generated.zarr",
            d / "latents.parquet")
    res, matches = rt.run_evaluation(*args, cfg)
    n_held = int(tiny["table"].split.isin(["val", "test"]).sum())
    mem = res["memorisation"]
    assert mem["pixels_gauss"]["n_heldout"] == n_held > 5
    assert {"match_harpnum", "match_t_rec", "match_split", "query_r_value"} <= set(matches)
    capped, _ = rt.run_evaluation(*args, {**cfg, "memorisation_max_heldout": 5})
    cm = capped["memorisation"]
    assert cm["pixels_gauss"]["n_heldout"] == 5 and cm["simsiam_cosine"]["n_heldout"] == 5
    full_held = np.asarray(mem["distances"]["pixels_gauss"]["heldout"])
    for v in cm["distances"]["pixels_gauss"]["heldout"]:  # a subset of the same distances
        assert np.isclose(full_held, v, rtol=1e-9).any()
    np.testing.assert_allclose(cm["distances"]["pixels_gauss"]["generated"],
                               mem["distances"]["pixels_gauss"]["generated"], rtol=1e-9)
    again, _ = rt.run_evaluation(*args, {**cfg, "memorisation_max_heldout": 5})
    assert again["memorisation"]["distances"] == cm["distances"]
