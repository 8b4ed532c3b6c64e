"""Exact nearest-neighbour retrieval of real patches, physical-parameter baselines, evaluation.

* :func:`topk_scores` -- exact top-k of ``Q @ D.T + bias`` by chunked matrix products
  (argpartition per chunk, merge, sort), ties broken towards the lower database index, so the
  result equals a full argsort ``np.lexsort((index, -score))``.
* :func:`topk_cosine` -- cosine top-k (rows l2-normalised), returns (indices, similarities).
* :class:`ParamSpace` / :func:`param_neighbours` -- nearest neighbour in standardised
  physical-parameter space (Euclidean, or Mahalanobis via whitening), :func:`random_match`.
* :func:`correlations`, :func:`run_evaluation` -- query-vs-match Pearson/Spearman and
  augmented self-retrieval rates, as written to results/retrieval/evaluation.json (rule
  evaluate_retrieval).

The embedding store is written by the ssl stage (:mod:`sharpgen.embed`); the interactive
``sharpgen retrieve`` command is :mod:`sharpgen.query`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where the top-k runs, not at module import
    import torch

from sharpgen.embed import EmbeddingStoreError, load_embeddings
from sharpgen.parameters import LOG_VALUED, REQUESTABLE, is_log_fit, to_defined_fit_space
from sharpgen.seeds import int_seed, stream

logger = logging.getLogger(__name__)

#: Parameters whose query-vs-match correlation is reported (paper table): the registry's headline.
EVAL_PARAMETERS = REQUESTABLE


# --------------------------------------------------------------------------------------------
# Exact top-k
# --------------------------------------------------------------------------------------------


def _chunk_topk(scores: "torch.Tensor", k: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Exact top-k per row of ``scores`` (q, m), ties to the lower column: (values, columns),
    both (q, k), unsorted. ``torch.topk`` is exact for the values; the column picked among
    entries tied at the k-th value is arbitrary, so rows where the (k+1)-th value equals the
    k-th are redone with a stable sort (rare with real-valued embeddings)."""
    import torch

    q, m = scores.shape
    if m <= k:
        return scores, torch.arange(m).expand(q, m)
    v, c = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
    tied = torch.nonzero(v[:, k - 1] == v[:, k]).flatten()
    v, c = v[:, :k].clone(), c[:, :k].clone()
    for r in tied.tolist():
        order = torch.sort(-scores[r], stable=True).indices[:k]
        v[r], c[r] = scores[r, order], order
    return v, c


def _merge_topk(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the k best of candidates (s, i) (q, m), sorted by decreasing s then increasing i."""
    o = np.argsort(i, axis=1, kind="stable")
    s, i = np.take_along_axis(s, o, axis=1), np.take_along_axis(i, o, axis=1)
    o = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, o, axis=1), np.take_along_axis(i, o, axis=1)


def topk_scores(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    bias: np.ndarray | None = None,
    subset: np.ndarray | None = None,
    chunk_size: int = 65536,
    query_block: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``score = queries @ database.T (+ bias)`` for every query.

    queries (Q, d), database (N, d) float32 (cast); bias (N,) added per database row; subset:
    database row indices to search instead of all rows. The database is multiplied in chunks of
    ``chunk_size`` rows (torch matmul + ``torch.topk`` per chunk, multi-threaded) and the
    queries in blocks of ``query_block`` (default: about 2**24 scores per block, i.e. 64 MB); the
    per-chunk candidates are merged. Returns ``(indices (Q, k) int64, scores (Q, k) float32)``
    sorted by decreasing score, ties by increasing database index -- identical to a full sort of
    the score matrix. ``k`` larger than the searched database is clipped.
    """
    import torch

    qs = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    db = np.asarray(database)
    if qs.ndim != 2 or db.ndim != 2 or qs.shape[1] != db.shape[1]:
        raise ValueError(f"top-k needs queries (Q, d) and database (N, d) with equal d, got {qs.shape} and {db.shape}")
    rows = np.arange(len(db)) if subset is None else np.unique(np.asarray(subset, dtype=np.int64))
    if len(rows) == 0:
        raise ValueError("top-k: the database (or the selected subset) is empty")
    if k < 1:
        raise ValueError(f"top-k: k must be >= 1, got {k}")
    k = min(int(k), len(rows))
    if query_block is None:
        query_block = max(64, 2**24 // min(chunk_size, len(rows)))
    db_t = torch.from_numpy(np.ascontiguousarray(db, dtype=np.float32))
    bias_t = None if bias is None else torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    chunks = []
    for c0 in range(0, len(rows), chunk_size):
        r = rows[c0:c0 + chunk_size]
        if subset is None:
            chunk = db_t[c0:c0 + len(r)]
            cb = None if bias_t is None else bias_t[c0:c0 + len(r)]
        else:
            rt = torch.from_numpy(r)
            chunk = db_t.index_select(0, rt)
            cb = None if bias_t is None else bias_t.index_select(0, rt)
        chunks.append((r, chunk.T, cb))
    out_i = np.empty((len(qs), k), dtype=np.int64)
    out_s = np.empty((len(qs), k), dtype=np.float32)
    q_t = torch.from_numpy(qs)
    with torch.no_grad():
        for q0 in range(0, len(qs), query_block):
            qb = q_t[q0:q0 + query_block]
            best_s = best_i = None
            for r, chunk_t, cb in chunks:
                s = qb @ chunk_t
                if cb is not None:
                    s += cb
                v, c = _chunk_topk(s, k)
                v, c = v.numpy(), r[c.numpy()]
                if best_s is None:
                    best_s, best_i = v, c
                else:
                    best_s, best_i = np.concatenate([best_s, v], 1), np.concatenate([best_i, c], 1)
            best_s, best_i = _merge_topk(best_s, best_i, k)
            out_s[q0:q0 + len(qb)] = best_s
            out_i[q0:q0 + len(qb)] = best_i
    return out_i, out_s


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def topk_cosine(queries: np.ndarray, database: np.ndarray, k: int = 5, subset: np.ndarray | None = None,
                normalized: bool = False, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k: (indices (Q, k) into ``database``, cosine similarities (Q, k)).

    ``normalized=True`` skips re-normalising (the embedding store is already l2-normalised)."""
    q = np.atleast_2d(queries)
    if not normalized:
        q, database = l2_normalize(q), l2_normalize(database)
    return topk_scores(q, database, k, subset=subset, **kw)


def topk_euclidean(queries: np.ndarray, database: np.ndarray, k: int = 5, subset: np.ndarray | None = None,
                   **kw) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k-NN via ``2 q.x - |x|^2`` scores: (indices (Q, k), distances (Q, k))."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    db = np.asarray(database, dtype=np.float32)
    bias = -np.einsum("ij,ij->i", db, db)
    idx, s = topk_scores(2.0 * q, db, k, bias=bias, subset=subset, **kw)
    qq = np.einsum("ij,ij->i", q, q)[:, None]
    return idx, np.sqrt(np.maximum(qq - s, 0.0)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Physical-parameter baselines
# --------------------------------------------------------------------------------------------


def baseline_features(table: pd.DataFrame, params: Sequence[str]) -> np.ndarray:
    """(N, len(params)) float64 baseline features from a parameter table, in fit space: for the
    registry's log_fit parameters (fluxes) log10(max(|X|, 1 Mx)), so that a zero flux stays
    finite; the value itself otherwise. Non-finite stays NaN."""
    cols = []
    for p in params:
        if p not in table:
            raise KeyError(f"baseline parameter {p!r} is not a column of the table")
        v = table[p].to_numpy(dtype=float)
        cols.append(np.log10(np.maximum(np.abs(v), 1.0)) if is_log_fit(p) else v)
    return np.stack(cols, axis=1)


class ParamSpace:
    """Standardised physical-parameter space fitted on the database rows.

    Non-finite values are replaced by the database median of that parameter; each parameter is
    standardised by the database mean and std (std 0 -> 1). ``metric="mahalanobis"`` also
    whitens with the inverse Cholesky factor of the (ridge-regularised) covariance, so Euclidean
    distance in the transformed space is the Mahalanobis distance.
    """

    def __init__(self, db_features: np.ndarray, metric: str = "euclidean", ridge: float = 1e-6):
        if metric not in ("euclidean", "mahalanobis"):
            raise ValueError(f"parameter-space metric must be euclidean or mahalanobis, got {metric!r}")
        f = np.asarray(db_features, dtype=np.float64)
        self.median = np.nanmedian(np.where(np.isfinite(f), f, np.nan), axis=0)
        self.median = np.where(np.isfinite(self.median), self.median, 0.0)
        f = self._fill(f)
        self.mean = f.mean(axis=0)
        sd = f.std(axis=0)
        self.std = np.where(sd > 0, sd, 1.0)
        self.metric = metric
        self.whiten = np.eye(f.shape[1])
        if metric == "mahalanobis":
            zs = (f - self.mean) / self.std
            cov = np.cov(zs, rowvar=False) + ridge * np.eye(f.shape[1])
            # x^T C^-1 x = |L^-1 x|^2 with C = L L^T
            self.whiten = np.linalg.inv(np.linalg.cholesky(cov)).T

    def _fill(self, f: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(f), f, self.median[None, :])

    def transform(self, features: np.ndarray) -> np.ndarray:
        zs = (self._fill(np.asarray(features, dtype=np.float64)) - self.mean) / self.std
        return (zs @ self.whiten).astype(np.float32)


def param_neighbours(query_features: np.ndarray, db_features: np.ndarray, k: int = 1,
                     metric: str = "euclidean", subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest database rows in standardised parameter space (space fitted on the searched
    rows): (indices (Q, k) into db_features, distances (Q, k))."""
    rows = np.arange(len(db_features)) if subset is None else np.sort(np.asarray(subset))
    space = ParamSpace(np.asarray(db_features)[rows], metric=metric)
    return topk_euclidean(space.transform(query_features), space.transform(db_features), k, subset=rows)


def random_match(n_queries: int, n_database: int | np.ndarray, k: int = 1, seed: int = 0) -> np.ndarray:
    """Seeded random baseline: (n_queries, k) database indices drawn without replacement per
    query; ``n_database`` an int (rows 0..n-1) or an array of allowed row indices."""
    rows = np.arange(n_database) if np.isscalar(n_database) else np.asarray(n_database)
    rng = np.random.default_rng(seed)
    k = min(k, len(rows))
    return np.stack([rows[rng.choice(len(rows), size=k, replace=False)] for _ in range(n_queries)]) \
        if n_queries else np.empty((0, k), dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _pearson_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    from scipy import stats

    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), float("nan"), n
    return float(stats.pearsonr(a[ok], b[ok])[0]), float(stats.spearmanr(a[ok], b[ok])[0]), n


def pearson_ci95(r: float, n: int) -> list[float]:
    """95 % confidence interval of a Pearson ``r`` from ``n`` pairs (Fisher's z: tanh(atanh(r)
    +- 1.96 / sqrt(n - 3))); [NaN, NaN] below 4 pairs or for a NaN ``r``. With few pairs it is
    wide: r = 0.66 from 12 pairs is [0.15, 0.90]."""
    if not np.isfinite(r) or n < 4:
        return [float("nan"), float("nan")]
    z, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1.959964 / np.sqrt(n - 3)
    return [float(np.tanh(z - half)), float(np.tanh(z + half))]


def correlations(query: pd.DataFrame, match: pd.DataFrame, params: Sequence[str] = EVAL_PARAMETERS) -> dict:
    """Query vs match statistics per parameter: ``{param: {...}}`` with

    * ``pearson``, ``pearson_ci95`` (:func:`pearson_ci95`), ``spearman``, ``n``: in fit space
      (log10 for the registry's log_fit fluxes,
      which span ~3 dex: on raw Mx a few large regions would dominate), over the pairs where
      both values are defined -- finite, and for log-valued parameters (r_value) non-zero,
      since JSOC stores "no R" as 0.0 in log space;
    * ``pearson_raw``: Pearson on the physical values as stored, over finite pairs;
    * for log-valued parameters also ``pearson_all`` (every finite pair, zeros included),
      ``zero_agreement`` (fraction of finite pairs where query and match agree on R = 0 vs
      R > 0) and ``n_nonzero``.

    NaN where fewer than 3 pairs exist or a side is constant.
    """
    out = {}
    for p in params:
        if p not in query or p not in match:
            continue
        a = query[p].to_numpy(dtype=float)
        b = match[p].to_numpy(dtype=float)
        # "no R" is not a value: zeros of log-valued parameters stay out of the headline correlation
        fa, fb = to_defined_fit_space(p, a), to_defined_fit_space(p, b)
        pr, sr, n = _pearson_spearman(fa, fb)
        d = {"pearson": pr, "pearson_ci95": pearson_ci95(pr, n), "spearman": sr, "n": n,
             "pearson_raw": _pearson_spearman(a, b)[0]}
        if p in LOG_VALUED:
            fin = np.isfinite(a) & np.isfinite(b)
            d["pearson_all"] = _pearson_spearman(a, b)[0]
            d["zero_agreement"] = float(np.mean((a[fin] == 0) == (b[fin] == 0))) if fin.any() else float("nan")
            d["n_nonzero"] = n
        out[p] = d
    return out


def match_table(query_set: str, method: str, query_ids: np.ndarray, query_params: pd.DataFrame,
                match_rows: np.ndarray, scores: np.ndarray, patch_table: pd.DataFrame,
                params: Sequence[str] = EVAL_PARAMETERS) -> pd.DataFrame:
    """One row per query: query_set, method, query_id, match_row, score, match harpnum/t_rec/
    split, then ``query_<p>`` and ``match_<p>`` for each parameter."""
    m = patch_table.iloc[np.asarray(match_rows)].reset_index(drop=True)
    df = pd.DataFrame({
        "query_set": query_set, "method": method, "query_id": np.asarray(query_ids, dtype=np.int64),
        "match_row": m["row"].to_numpy(dtype=np.int64) if "row" in m else np.asarray(match_rows),
        "score": np.asarray(scores, dtype=float),
    })
    for col in ("harpnum", "t_rec", "split"):
        if col in m:
            df[f"match_{col}"] = m[col].to_numpy()
    for p in params:
        df[f"query_{p}"] = query_params[p].to_numpy(dtype=float) if p in query_params else np.nan
        df[f"match_{p}"] = m[p].to_numpy(dtype=float) if p in m else np.nan
    return df


def retrieve_all_methods(
    q_emb: np.ndarray, q_params: pd.DataFrame, db_emb: np.ndarray, db_table: pd.DataFrame,
    subset: np.ndarray | None, k: int, seed: int, baseline_params: Sequence[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Top-k database rows for every method: ``{"simsiam", "params_euclidean",
    "params_mahalanobis", "random"} -> (indices (Q, k), scores (Q, k))``. Scores: cosine for
    simsiam, minus the standardised distance for the parameter baselines, NaN for random."""
    out = {"simsiam": topk_cosine(q_emb, db_emb, k, subset=subset, normalized=True)}
    qf = baseline_features(q_params, baseline_params)
    dbf = baseline_features(db_table, baseline_params)
    for metric in ("euclidean", "mahalanobis"):
        i, d = param_neighbours(qf, dbf, k, metric=metric, subset=subset)
        out[f"params_{metric}"] = (i, -d)
    rows = np.arange(len(db_table)) if subset is None else np.asarray(subset)
    ri = random_match(len(q_emb), rows, k, seed=seed)
    out["random"] = (ri, np.full(ri.shape, np.nan, dtype=np.float32))
    return out


def self_retrieval_rates(indices: np.ndarray, originals: np.ndarray, ks: Sequence[int] = (1, 5),
                         groups: np.ndarray | None = None) -> dict:
    """Fraction of queries whose original row is among the first k returned (``top<k>``), for
    each k; with ``groups`` (one label per database row, e.g. HARPNUM) also the fraction whose
    first k contain any row of the original's group (``top<k>_same_group``)."""
    indices = np.asarray(indices)
    orig = np.asarray(originals)
    out = {f"top{k}": float(np.mean((indices[:, :k] == orig[:, None]).any(axis=1))) for k in ks}
    if groups is not None:
        groups = np.asarray(groups)
        same = groups[indices] == groups[orig][:, None]
        out.update({f"top{k}_same_group": float(np.mean(same[:, :k].any(axis=1))) for k in ks})
    return out


# --------------------------------------------------------------------------------------------
# Full evaluation (rule evaluate_retrieval)
# --------------------------------------------------------------------------------------------

#: paper (Chatterjee et al. 2025) Pearson of generated query vs SimSiam match, and our targets
PAPER_PEARSON = {"tuf": 0.78, "r_value": 0.73, "psep": 0.28}
TARGET_PEARSON = {"tuf": 0.85, "r_value": 0.80, "psep": 0.50}


def augment_numpy(x: np.ndarray, aug_cfg: Mapping[str, Any] | None, seed: int) -> np.ndarray:
    """Seeded :func:`sharpgen.augment.augment` of (N, S, S) patches -> (N, S, S) float32."""
    import torch

    from sharpgen.augment import AugmentConfig, augment

    gen = torch.Generator()
    gen.manual_seed(int(seed))
    out = np.empty_like(np.asarray(x, dtype=np.float32))
    aug = AugmentConfig.from_config(aug_cfg)
    for i in range(0, len(x), 256):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + 256], dtype=np.float32))[:, None]
        out[i:i + len(xb)] = augment(xb, aug, gen)[:, 0].numpy()
    return out


def _subset(store, split: str) -> np.ndarray | None:
    """Database rows of ``split`` (None = every row, the fast path of the top-k search)."""
    return None if split == "all" else store.rows(split)


def _evaluate_queries(name, q_ids, q_emb, q_params, db_emb, table, subset, k, seed, base_params):
    res = retrieve_all_methods(q_emb, q_params, db_emb, table, subset, k, seed, base_params)
    frames, corr = [], {}
    for method, (idx, score) in res.items():
        frames.append(match_table(name, method, q_ids, q_params, idx[:, 0], score[:, 0], table))
        corr[method] = correlations(q_params.reset_index(drop=True), table.iloc[idx[:, 0]].reset_index(drop=True))
    return res, corr, frames


def run_evaluation(
    encoder_path: str | Path,
    embeddings_path: str | Path,
    patches_zarr: str | Path,
    patches_table: str | Path,
    generated_zarr: str | Path,
    latents_path: str | Path,
    cfg: Mapping[str, Any],
) -> tuple[dict, pd.DataFrame]:
    """The retrieval evaluation (config section ``retrieval``) -> (evaluation dict, matches table).

    1. ``n_generated_queries`` generated images (seeded subset) -> nearest real patch in
       ``database_split`` (headline ``generated``: by default ``heldout`` = val + test, the
       patches neither the GAN nor SimSiam was trained on) and in every patch (``generated_all``)
       by SimSiam cosine, by the physical-parameter oracles (standardised Euclidean and
       Mahalanobis distance on the very parameters that are scored) and at random; query vs
       match statistics per parameter (:func:`correlations`: fit space, r_value zeros apart).
    2. ``n_real_queries`` real ``real_query_split`` patches, augmented (``augment``), parameters
       re-measured on the augmented patch -> nearest ``real_database_split`` patch (``real``) and
       nearest of all (``real_all``); same stats.
    3. The same augmented queries against every patch (which includes the originals): top-1 and
       top-5 rates of retrieving the original.
    4. The memorisation check (:mod:`sharpgen.memorisation`).
    """
    import torch

    from sharpgen.config import section
    from sharpgen.measure import MeasurementContext, measure
    from sharpgen.ssl import embed, load_encoder
    from sharpgen.store import PatchStore, open_group, read_rows

    cfg = section("retrieval", cfg)
    enc, info = load_encoder(encoder_path)
    emb_store = load_embeddings(embeddings_path, encoder_hash=info["hash"])
    store = PatchStore.open(patches_zarr, patches_table)
    base_params = tuple(cfg["baseline_parameters"])
    # only the columns the evaluation reads (not the per-record paths and times of every patch)
    table = store.partial_table(["row", "harpnum", "t_rec", "split", *EVAL_PARAMETERS, *base_params])
    if not np.array_equal(emb_store["row"], np.arange(len(table))):
        raise EmbeddingStoreError(f"embedding store {embeddings_path} rows do not match the patch table {patches_table}")
    db_emb = emb_store["embeddings"]
    size = store.size
    if int(info["meta"].get("size", size)) != size:
        raise ValueError(f"encoder {encoder_path} was trained on {info['meta'].get('size')} px patches, "
                         f"the patch store has {size} px")
    k = int(cfg["k"])
    seed = int(cfg["seed"])
    clip = store.clip_gauss
    threads = torch.get_num_threads()
    frames: list[pd.DataFrame] = []
    out: dict[str, Any] = {"encoder_hash": info["hash"], "n_database": int(len(table)), "k": k,
                           "patch_mode": store.mode, "clip_gauss": clip,
                           "baseline_parameters": list(base_params), "paper_pearson": PAPER_PEARSON,
                           "target_pearson": TARGET_PEARSON, "threads": threads}

    # 1. generated queries: headline against the patches neither network saw, and against all
    gimg = open_group(generated_zarr, "images")["images"]
    if gimg.ndim != 3 or gimg.shape[1:] != (size, size):
        raise ValueError(f"generated images {generated_zarr} have shape {gimg.shape}, expected (N, {size}, {size})")
    lat = pd.read_parquet(latents_path)
    lat = lat[[c for c in lat.columns if c != "z"]]
    if len(lat) != gimg.shape[0]:
        raise ValueError(f"{latents_path} has {len(lat)} rows but {generated_zarr} has {gimg.shape[0]} images")
    n_gen = min(int(cfg["n_generated_queries"]), len(lat))
    sel = np.sort(stream(seed, "retrieval_generated_queries").choice(len(lat), size=n_gen, replace=False))
    q_img = read_rows(gimg, sel)
    q_emb = embed(enc, q_img)
    q_par = lat.iloc[sel].reset_index(drop=True)
    q_ids = q_par["sample"].to_numpy() if "sample" in q_par else sel
    rseed = int_seed(seed, "retrieval_random_baseline")
    for key, db_split in (("generated", str(cfg["database_split"])), ("generated_all", "all")):
        if key == "generated_all" and db_split == cfg["database_split"]:
            continue
        _, corr, fr = _evaluate_queries("generated" if key == "generated" else "generated_all_database",
                                        q_ids, q_emb, q_par, db_emb, table, _subset(store, db_split), k,
                                        rseed, base_params)
        frames += fr
        sims = fr[0]["score"].to_numpy()
        out[key] = {"n_queries": n_gen, "database_split": db_split,
                    "n_database": int(len(table) if db_split == "all" else len(store.rows(db_split))),
                    "correlations": corr,
                    "simsiam_top1_cosine": {"median": float(np.median(sims)), "min": float(sims.min()),
                                            "max": float(sims.max())}}
    out["generated"]["targets_met"] = {p: bool(out["generated"]["correlations"]["simsiam"].get(p, {}).get(
        "pearson", np.nan) >= t) for p, t in TARGET_PEARSON.items()}

    # 2. augmented real queries: headline against another held-out split (HARP-disjoint), and all
    q_split = str(cfg["real_query_split"])
    rows_q = store.rows(q_split)
    n_real = min(int(cfg["n_real_queries"]), len(rows_q))
    rows_q = np.sort(stream(seed, "retrieval_real_queries").choice(rows_q, size=n_real, replace=False))
    xa = augment_numpy(store.read(rows_q), cfg["augment"], int_seed(seed, "retrieval_augment"))
    qa_emb = embed(enc, xa)
    # real patches are measured at their own pixel scale (as in patches.parquet)
    qa_par = measure(xa, MeasurementContext(store.clip_gauss, store.mode, store.size, store.scale(rows_q)))
    qa_par = qa_par.reset_index(drop=True)
    for key, r_db in (("real", str(cfg["real_database_split"])), ("real_all", "all")):
        if key == "real_all" and r_db == cfg["real_database_split"]:
            continue
        _, corr_r, fr = _evaluate_queries(f"real_{q_split}_augmented" + ("" if key == "real" else "_all_database"),
                                          rows_q, qa_emb, qa_par, db_emb, table, _subset(store, r_db), k, rseed,
                                          base_params)
        frames += fr
        out[key] = {"n_queries": n_real, "query_split": q_split, "database_split": r_db, "correlations": corr_r}
    # 3. the same augmented queries against every patch (which includes their originals)
    res_self = retrieve_all_methods(qa_emb, qa_par, db_emb, table, None, max(5, k), rseed, base_params)
    harp = table["harpnum"].to_numpy() if "harpnum" in table else None
    out["self_retrieval"] = {"database_split": "all", "n_queries": n_real, "group": "harpnum",
                             **{m: self_retrieval_rates(i, rows_q, groups=harp) for m, (i, _) in res_self.items()}}
    # the parameters of the augmented query vs those of its own original (augmentation noise)
    out["real"]["augmentation_vs_original"] = correlations(qa_par, table.iloc[rows_q].reset_index(drop=True))

    # 4. memorisation: generated images and held-out patches, each against the training patches
    from sharpgen.memorisation import memorisation_check

    # (the training patches are streamed in blocks; at most memorisation_max_heldout held-out
    # patches, a seeded subset, are the reference distances)
    train_rows = store.rows(str(cfg["train_split"]))
    held_rows = store.rows(str(cfg["database_split"])) if cfg["database_split"] != "all" else store.rows("heldout")
    n_held = int(cfg["memorisation_max_heldout"])
    if len(held_rows) > n_held:
        held_rows = np.sort(stream(seed, "retrieval_memorisation_heldout").choice(held_rows, n_held, replace=False))
    out["memorisation"] = memorisation_check(
        q_img, q_ids, store.iter_read(train_rows), train_rows, store.read(held_rows),
        gen_emb=q_emb, train_emb=db_emb[train_rows], held_emb=db_emb[held_rows], clip_gauss=clip)
    return out, pd.concat(frames, ignore_index=True)


def run_evaluate_retrieval(encoder_path, embeddings_path, patches_zarr, patches_table, generated_zarr,
                           latents_path, cfg: Mapping[str, Any], evaluation_out, matches_out,
                           threads: int | None = None) -> dict:
    """Rule evaluate_retrieval: :func:`run_evaluation` -> evaluation.json + matches.parquet."""
    import json

    import torch

    from sharpgen.atomic import write_json, write_parquet

    if threads:
        torch.set_num_threads(max(1, int(threads)))
    result, matches = run_evaluation(encoder_path, embeddings_path, patches_zarr, patches_table,
                                     generated_zarr, latents_path, cfg)
    write_parquet(matches_out, matches, metadata={"patch_mode": result["patch_mode"],
                                                  "clip_gauss": result["clip_gauss"]})
    write_json(evaluation_out, result)
    for qset in ("generated", "real"):
        for method, corr in result[qset]["correlations"].items():
            logger.info("%s (database %s) %s Pearson, fit space: %s", qset, result[qset]["database_split"],
                        method, json.dumps({p: round(v["pearson"], 3) for p, v in corr.items()}))
    logger.info("memorisation: %s", json.dumps({k: v for k, v in result["memorisation"].items()
                                                if k not in ("closest_pairs", "distances")}))
    return result
