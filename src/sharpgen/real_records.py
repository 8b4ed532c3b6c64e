"""Generated queries against real SHARP records: how far the encoder carries to real data.

The default pipeline trains the GAN and the SimSiam encoder on *synthetic* records, and its
retrieval evaluation (:mod:`sharpgen.retrieval`) matches generated images to synthetic patches.
This module matches the same generated queries to the **real** SHARP Br records of
``../shared/data`` (``sharp/`` and ``sharp_real/``: :data:`REAL_RECORD_GLOBS`):

1. the real records are cut exactly like the patch store (the patch stage's own
   :func:`sharpgen.patches.build_patches` with the store's ``patches`` config: same checks, same
   crop / resize, same parameters), and refused if any of them is synthetic
   (:func:`sharpgen.synthetic_fits.is_synthetic`: synthetic data are never called real);
2. the ``retrieval.n_generated_queries`` generated images (the same seeded selection as
   rule ``evaluate_retrieval``) and the real patches are embedded with the pipeline's encoder;
3. per query the nearest real records by cosine similarity, with their parameters.

There is no target: the numbers say honestly how well a synthetic-trained encoder transfers.
With only ~14 real records every statistic is set against a like-for-like reference: the same
queries matched to random subsets of as many *synthetic* held-out patches (``synthetic_subsets``),
the physical-parameter oracle and random matching over the real records, the top-1 cosine of the
real records to the synthetic store against that of held-out synthetic patches (how far out of
the training distribution the real records lie), and real-to-real retrieval (does a real record
find another time of its own HARP, against chance).

Outputs (rule ``real_records``): ``retrieval/real_records.json`` (:func:`run_real_records`) and
``retrieval/real_records.npz`` (the real patches in store units, for the report figure).
"""

from __future__ import annotations

import glob
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.parameters import REQUESTABLE

logger = logging.getLogger(__name__)

#: the real SHARP Br records of ../shared/data (relative to the project root, as data.local.glob)
REAL_RECORD_GLOBS = ("../shared/data/sharp_real/hmi.sharp_cea_720s.*.Br.fits",
                     "../shared/data/sharp/hmi.sharp_cea_720s.*.Br.fits")
#: random synthetic subsets (as large as the real set) of the like-for-like reference
N_SUBSETS = 50
#: generated queries drawn in the report figure
N_EXAMPLES = 6


def real_record_files(globs: Sequence[str] = REAL_RECORD_GLOBS) -> list[str]:
    """Sorted Br files matching ``globs`` (paths as matched; [] when ../shared/data is absent)."""
    return sorted({f for g in globs for f in glob.glob(g)})


def cut_real_records(paths: Sequence[str], patches_cfg: Mapping[str, Any]):
    """Real Br records -> (patches (N, S, S) float32 in [-1, 1], table, summary), cut by the patch
    stage itself (:func:`sharpgen.patches.build_patches`) with ``patches_cfg`` (the store's
    ``patches`` section): skipped records are in ``summary``. Raises ValueError if a file is a
    synthetic record."""
    from sharpgen.data import local_manifest
    from sharpgen.patches import PatchConfig, build_patches
    from sharpgen.sharp_io import read_sharp
    from sharpgen.synthetic_fits import is_synthetic

    manifest = local_manifest(list(paths))
    for p in manifest["path"]:
        if is_synthetic(read_sharp(p).header):
            raise ValueError(f"{p} is a synthetic record (sharpgen.synthetic): it cannot stand for a real one")
    arr, table, summary = build_patches(manifest, PatchConfig.from_mapping(patches_cfg), progress=False)
    table = table.drop(columns=[c for c in ("split",) if c in table.columns]).reset_index(drop=True)
    return arr, table, summary


def _dist(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"median": None, "p10": None, "p90": None, "n": 0}
    p10, med, p90 = np.percentile(x, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90), "n": int(x.size)}


def real_self_retrieval(emb: np.ndarray, harpnum: np.ndarray) -> dict:
    """Each real record's nearest *other* real record: the fraction of the same HARP (a record
    of another time of its region) among records whose HARP has another record, and the rate a
    random other record would reach (chance)."""
    harpnum = np.asarray(harpnum)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argmax(sim, axis=1)
    n_same = np.array([(harpnum == h).sum() - 1 for h in harpnum])
    has = n_same > 0
    chance = n_same / max(len(harpnum) - 1, 1)
    return {"n_queries": int(has.sum()),
            "same_harp_top1": float(np.mean(harpnum[top][has] == harpnum[has])) if has.any() else None,
            "chance": float(chance[has].mean()) if has.any() else None}


def _corr_methods(q_par: pd.DataFrame, db_table: pd.DataFrame, q_emb, db_emb, rows, seed: int,
                  params: Sequence[str]) -> tuple[dict, dict]:
    """Top-1 over database ``rows``: {method: (indices, scores)} and {method: correlations}."""
    from sharpgen.retrieval import correlations, retrieve_all_methods

    sub = db_table.iloc[rows].reset_index(drop=True)
    res = retrieve_all_methods(q_emb, q_par, db_emb[rows], sub, None, 1, seed, params)
    corr = {m: correlations(q_par, sub.iloc[i[:, 0]].reset_index(drop=True)) for m, (i, _) in res.items()}
    return res, corr


def run_real_records(encoder_path, embeddings_path, patches_zarr, patches_table, generated_zarr,
                     latents_path, real_paths: Sequence[str], patches_cfg: Mapping[str, Any],
                     cfg: Mapping[str, Any]) -> tuple[dict, dict]:
    """The real-record retrieval (``cfg``: the ``retrieval`` section) -> (summary dict for
    real_records.json, arrays for real_records.npz)."""
    from sharpgen.config import section
    from sharpgen.embed import load_embeddings
    from sharpgen.retrieval import topk_cosine
    from sharpgen.seeds import int_seed, stream
    from sharpgen.ssl import embed, load_encoder
    from sharpgen.store import PatchStore, open_group, read_rows

    cfg = section("retrieval", cfg)
    store = PatchStore.open(patches_zarr, patches_table)
    pc = dict(section("patches", patches_cfg))
    for key in ("mode", "size", "bin", "clip_gauss"):
        if key in store.attrs and store.attrs[key] != pc[key]:
            raise ValueError(f"patches.{key} = {pc[key]!r} but the patch store {patches_zarr} was cut with "
                             f"{store.attrs[key]!r}: cut the real records like the store")
    arr, rt, summary = cut_real_records(real_paths, pc)
    n_real = len(rt)
    enc, info = load_encoder(encoder_path)
    db_emb = load_embeddings(embeddings_path, encoder_hash=info["hash"])["embeddings"]
    seed = int(cfg["seed"])
    params = tuple(cfg["baseline_parameters"])

    # the generated queries of evaluate_retrieval (same seeded selection)
    gimg = open_group(generated_zarr, "images")["images"]
    lat = pd.read_parquet(latents_path)
    lat = lat[[c for c in lat.columns if c != "z"]]
    n_gen = min(int(cfg["n_generated_queries"]), len(lat))
    sel = np.sort(stream(seed, "retrieval_generated_queries").choice(len(lat), size=n_gen, replace=False))
    q_img = read_rows(gimg, sel)
    q_par = lat.iloc[sel].reset_index(drop=True)
    q_emb = embed(enc, q_img)
    r_emb = embed(enc, arr)
    rseed = int_seed(seed, "real_records_random")

    # 1. generated -> real records
    k = min(int(cfg["k"]), n_real)
    top_i, top_s = topk_cosine(q_emb, r_emb, k, normalized=True)
    res, corr = _corr_methods(q_par, rt, q_emb, r_emb, np.arange(n_real), rseed, params)
    oracle_top1 = res["params_euclidean"][0][:, 0]
    agree = float(np.mean(top_i[:, 0] == oracle_top1))

    # 2. like-for-like: the same queries against random held-out synthetic subsets of n_real
    table = store.partial_table(["split", "source", *REQUESTABLE, *params])  # not the paths and times
    held_split = "heldout" if "split" in table and table["split"].isin(["val", "test"]).sum() >= n_real else "all"
    held = store.rows(held_split)
    n_sub = min(n_real, len(held))
    rng = stream(seed, "real_records_synthetic_subsets")
    sims, agrees, pear = [], [], {p: [] for p in REQUESTABLE}
    for _ in range(N_SUBSETS):
        rows = np.sort(rng.choice(held, size=n_sub, replace=False))
        r_s, c_s = _corr_methods(q_par, table, q_emb, db_emb, rows, rseed, params)
        sims.append(r_s["simsiam"][1][:, 0])
        agrees.append(np.mean(r_s["simsiam"][0][:, 0] == r_s["params_euclidean"][0][:, 0]))
        for p in pear:
            pear[p].append(c_s["simsiam"].get(p, {}).get("pearson", np.nan))

    # 3. domain gap: real records and held-out synthetic patches, each to the synthetic training set
    train = store.rows(str(cfg["train_split"]))
    real_to_train = topk_cosine(r_emb, db_emb, 1, subset=train, normalized=True)[1][:, 0]
    held_to_train = topk_cosine(db_emb[held], db_emb, 1, subset=train, normalized=True)[1][:, 0]

    n_top1 = np.bincount(top_i[:, 0], minlength=n_real)
    records = rt.assign(n_top1=n_top1, nearest_synthetic_cosine=real_to_train)
    keep_cols = ["harpnum", "t_rec", "noaa", "source", "path", "lon_fwt", "usflux_hdr", "r_value_hdr",
                 *[p for p in REQUESTABLE if p in rt], "n_top1", "nearest_synthetic_cosine"]
    # examples for the figure: queries spread over the generated TUF range (seeded)
    order = np.argsort(q_par["tuf"].to_numpy()) if "tuf" in q_par else np.arange(n_gen)
    ex = order[np.linspace(0, n_gen - 1, min(N_EXAMPLES, n_gen)).round().astype(int)]
    out = {
        "encoder_hash": info["hash"],
        "training_data_source": sorted(table["source"].unique().tolist()) if "source" in table else None,
        "real_globs": list(REAL_RECORD_GLOBS),
        "n_real_files": int(summary["n_records"]), "n_real_records": n_real,
        "skipped": summary["skipped_records"], "n_queries": int(n_gen), "k": k,
        "records": records[[c for c in keep_cols if c in records]].to_dict(orient="records"),
        "cosine": {"generated_to_real_top1": _dist(top_s[:, 0]),
                   "generated_to_synthetic_subset_top1": _dist(np.concatenate(sims)),
                   "real_to_synthetic_train_top1": _dist(real_to_train),
                   "heldout_synthetic_to_train_top1": _dist(held_to_train)},
        "correlations": corr,
        "synthetic_subsets": {"n_subsets": N_SUBSETS, "size": n_sub, "database": held_split,
                              "simsiam_pearson_median": {p: float(np.nanmedian(v)) if np.isfinite(v).any() else None
                                                         for p, v in pear.items()},
                              "oracle_agreement_top1": float(np.mean(agrees))},
        "oracle_agreement_top1": agree, "chance_top1": 1.0 / n_real,
        "hubness": {"max_top1_share": float(n_top1.max() / n_gen), "n_distinct_top1": int((n_top1 > 0).sum())},
        "real_self_retrieval": real_self_retrieval(r_emb, rt["harpnum"].to_numpy()),
        "examples": [{"query": int(q), "sample": int(q_par["sample"].iloc[q]) if "sample" in q_par else int(sel[q]),
                      "matches": [{"record": int(i), "cosine": float(s)} for i, s in zip(top_i[q], top_s[q])],
                      "oracle_match": int(oracle_top1[q]),
                      **{p: float(q_par[p].iloc[q]) for p in REQUESTABLE if p in q_par}} for q in ex],
    }
    arrays = {"real_patches": arr.astype(np.float32), "example_queries": q_img[ex].astype(np.float32),
              "clip_gauss": np.float32(store.clip_gauss)}
    logger.info("real records: %d of %d files cut; generated -> real top-1 cosine median %.3f (synthetic "
                "subsets of the same size: %.3f); SimSiam = oracle top-1 for %.1f %% of queries (chance %.1f %%)",
                n_real, summary["n_records"], out["cosine"]["generated_to_real_top1"]["median"],
                out["cosine"]["generated_to_synthetic_subset_top1"]["median"], 100 * agree, 100 / n_real)
    return out, arrays


def write_outputs(summary: Mapping, arrays: Mapping[str, np.ndarray], json_path, npz_path) -> None:
    """real_records.json and real_records.npz, both atomically."""
    from sharpgen.atomic import atomic_path, write_json

    write_json(json_path, summary)
    with atomic_path(npz_path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
