"""Exact nearest-neighbour retrieval of real patches, physical-parameter baselines, evaluation.

* :func:`topk_scores` -- exact top-k of ``Q @ D.T + bias`` by chunked matrix products
  (argpartition per chunk, merge, sort), ties broken towards the lower database index, so the
  result equals a full argsort ``np.lexsort((index, -score))``.
* :func:`topk_cosine` -- cosine top-k (rows l2-normalised), returns (indices, similarities).
* :class:`ParamSpace` / :func:`param_neighbours` -- nearest neighbour in standardised
  physical-parameter space (Euclidean, or Mahalanobis via whitening), :func:`random_match`.
* :func:`correlations`, :func:`evaluate_retrieval` -- query-vs-match Pearson/Spearman and
  augmented self-retrieval rates, as written to results/retrieval/evaluation.json.
* :func:`save_embeddings` / :func:`load_embeddings` -- the embedding store
  (results/ssl/embeddings.npz: row ids, split, l2-normalised embeddings, the encoder's hash).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.atomic import atomic_path

logger = logging.getLogger(__name__)

#: Physical-parameter baseline space (documented in docs/retrieval.md): log10 of the three fluxes
#: (they span orders of magnitude), the two polarity separations (Mm) and r_value (already log10).
BASELINE_PARAMETERS = ("log_tuf", "log_tpf", "log_tnf", "psep", "psep_robust", "r_value")
#: Parameters whose query-vs-match correlation is reported (paper table).
EVAL_PARAMETERS = ("tuf", "tpf", "tnf", "psep", "psep_robust", "r_paper", "r_value")


class EmbeddingStoreError(ValueError):
    """An embedding store that does not fit the encoder or the patch table."""


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


def baseline_features(table: pd.DataFrame, params: Sequence[str] = BASELINE_PARAMETERS) -> np.ndarray:
    """(N, len(params)) float64 baseline features from a parameter table. ``log_X`` means
    log10(max(|X|, 1 Mx)) of column X; other names are used as they are. Non-finite stays NaN."""
    cols = []
    for p in params:
        if p.startswith("log_"):
            name = p[4:]
            if name not in table:
                raise KeyError(f"baseline parameter {p!r} needs column {name!r}, not in the table")
            cols.append(np.log10(np.maximum(np.abs(table[name].to_numpy(dtype=float)), 1.0)))
        else:
            if p not in table:
                raise KeyError(f"baseline parameter {p!r} is not a column of the table")
            cols.append(table[p].to_numpy(dtype=float))
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
# Embedding store
# --------------------------------------------------------------------------------------------


def save_embeddings(path: str | Path, embeddings: np.ndarray, rows: np.ndarray, splits: Sequence[str],
                    encoder_hash: str) -> None:
    """Write the embedding store (.npz) atomically: ``embeddings`` (N, d) float32 l2-normalised,
    ``row`` (N,) int64 patch-table row ids, ``split`` (N,) str, ``encoder_hash`` str."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(rows) or len(rows) != len(splits):
        raise ValueError(f"embedding store: inconsistent shapes {emb.shape}, {len(rows)} rows, {len(splits)} splits")
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, embeddings=emb, row=np.asarray(rows, dtype=np.int64),
                     split=np.asarray([str(s) for s in splits], dtype=str), encoder_hash=np.asarray(str(encoder_hash)))


def load_embeddings(path: str | Path, encoder_hash: str | None = None) -> dict:
    """Read the embedding store -> dict(embeddings, row, split, encoder_hash). If
    ``encoder_hash`` is given and differs, raise :class:`EmbeddingStoreError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embedding store not found: {path} (run `snakemake embed`)")
    with np.load(path, allow_pickle=False) as z:
        missing = {"embeddings", "row", "split", "encoder_hash"} - set(z.files)
        if missing:
            raise EmbeddingStoreError(f"{path} is not a sharpgen embedding store (missing {sorted(missing)})")
        out = {k: z[k] for k in ("embeddings", "row", "split")}
        out["encoder_hash"] = str(z["encoder_hash"])
    if encoder_hash is not None and out["encoder_hash"] != encoder_hash:
        raise EmbeddingStoreError(
            f"embedding store {path} was made with encoder {out['encoder_hash']}, but the encoder "
            f"in use is {encoder_hash}: re-run `snakemake embed` (or pass the matching files)")
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def correlations(query: pd.DataFrame, match: pd.DataFrame, params: Sequence[str] = EVAL_PARAMETERS) -> dict:
    """Pearson and Spearman correlation of query vs match per parameter, over rows where both
    are finite: ``{param: {"pearson", "spearman", "n"}}`` (NaN when fewer than 3 pairs or
    constant)."""
    from scipy import stats

    out = {}
    for p in params:
        if p not in query or p not in match:
            continue
        a = query[p].to_numpy(dtype=float)
        b = match[p].to_numpy(dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        n = int(ok.sum())
        if n < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
            out[p] = {"pearson": float("nan"), "spearman": float("nan"), "n": n}
            continue
        out[p] = {"pearson": float(stats.pearsonr(a[ok], b[ok])[0]),
                  "spearman": float(stats.spearmanr(a[ok], b[ok])[0]), "n": n}
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
    subset: np.ndarray | None, k: int, seed: int, baseline_params: Sequence[str] = BASELINE_PARAMETERS,
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
# Stores (patch store, generated samples)
# --------------------------------------------------------------------------------------------


def open_patch_store(zarr_path: str | Path, table_path: str | Path | None = None):
    """Open the patch store lazily -> (zarr array ``patches`` (N, S, S), attrs dict, table or
    None). Checks that the table has one row per patch, in order (``row == 0..N-1``)."""
    import zarr

    zarr_path = Path(zarr_path)
    if not zarr_path.exists():
        raise FileNotFoundError(f"patch store not found: {zarr_path}")
    g = zarr.open_group(str(zarr_path), mode="r")
    if "patches" not in g:
        raise ValueError(f"patch store {zarr_path} has no 'patches' array")
    arr = g["patches"]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"patch store {zarr_path}: 'patches' has shape {arr.shape}, expected (N, S, S)")
    table = None
    if table_path is not None:
        table = pd.read_parquet(table_path)
        if len(table) != arr.shape[0] or ("row" in table and not np.array_equal(table["row"].to_numpy(), np.arange(len(table)))):
            raise ValueError(f"patch table {table_path} ({len(table)} rows) does not match patch store "
                             f"{zarr_path} ({arr.shape[0]} patches, rows 0..N-1 in order)")
    return arr, dict(g.attrs), table


def read_rows(arr, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of a zarr (N, S, S) array as float32 (all when ``rows`` is None)."""
    if rows is None:
        return np.asarray(arr[...], dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.empty((0,) + tuple(arr.shape[1:]), dtype=np.float32)
    order = np.argsort(rows)
    data = np.asarray(arr.get_orthogonal_selection((rows[order], slice(None), slice(None))), dtype=np.float32)
    out = np.empty_like(data)
    out[order] = data
    return out


def store_scale(zarr_path: str | Path, rows: np.ndarray):
    """physics.PixelScale of the patches ``rows`` from the store's per-patch scale arrays."""
    import zarr

    from sharpgen.physics import PixelScale

    g = zarr.open_group(str(zarr_path), mode="r")
    vals = []
    for name in ("pixel_size_mm", "pixel_area_cm2", "pixel_size_arcsec"):
        if name not in g:
            raise ValueError(f"patch store {zarr_path} has no '{name}' array")
        vals.append(np.asarray(g[name][...], dtype=np.float64)[rows])
    return PixelScale(*vals)


def split_rows(table: pd.DataFrame, split: str) -> np.ndarray | None:
    """Row indices of ``split`` ("all" -> None = every row); error naming the split if empty."""
    if split == "all":
        return None
    if "split" not in table:
        raise ValueError("the patch table has no 'split' column")
    rows = np.flatnonzero(table["split"].to_numpy() == split)
    if len(rows) == 0:
        raise ValueError(f"the patch table has no rows with split == {split!r}")
    return rows


# --------------------------------------------------------------------------------------------
# Full evaluation (rule evaluate_retrieval)
# --------------------------------------------------------------------------------------------

#: paper (Chatterjee et al. 2025) Pearson of generated query vs SimSiam match, and our targets
PAPER_PEARSON = {"tuf": 0.78, "r_value": 0.73, "psep": 0.28}
TARGET_PEARSON = {"tuf": 0.85, "r_value": 0.80, "psep": 0.50}


def augment_numpy(x: np.ndarray, aug_cfg: Mapping[str, Any] | None, seed: int) -> np.ndarray:
    """Seeded :func:`sharpgen.ssl.augment` of (N, S, S) patches -> (N, S, S) float32."""
    import torch

    from sharpgen.ssl import AugmentConfig, augment

    gen = torch.Generator()
    gen.manual_seed(int(seed))
    out = np.empty_like(np.asarray(x, dtype=np.float32))
    aug = AugmentConfig.from_config(aug_cfg)
    for i in range(0, len(x), 256):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + 256], dtype=np.float32))[:, None]
        out[i:i + len(xb)] = augment(xb, aug, gen)[:, 0].numpy()
    return out


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
       ``database_split`` by SimSiam cosine, by standardised-parameter Euclidean and
       Mahalanobis distance, and at random; Pearson/Spearman of query vs match parameters.
    2. ``n_real_queries`` real ``real_query_split`` patches, augmented (``augment``), parameters
       re-measured on the augmented patch -> nearest ``real_database_split`` patch; same stats.
    3. The same augmented queries against every patch (which includes the originals): top-1 and
       top-5 rates of retrieving the original.
    """
    import torch
    import zarr

    from sharpgen import physics
    from sharpgen.ssl import embed, load_encoder

    enc, info = load_encoder(encoder_path)
    store = load_embeddings(embeddings_path, encoder_hash=info["hash"])
    arr, attrs, table = open_patch_store(patches_zarr, patches_table)
    if not np.array_equal(store["row"], np.arange(len(table))):
        raise EmbeddingStoreError(f"embedding store {embeddings_path} rows do not match the patch table {patches_table}")
    db_emb = store["embeddings"]
    size = int(arr.shape[1])
    if int(info["meta"].get("size", size)) != size:
        raise ValueError(f"encoder {encoder_path} was trained on {info['meta'].get('size')} px patches, "
                         f"the patch store has {size} px")
    k = int(cfg.get("k", 5))
    seed = int(cfg.get("seed", 0))
    base_params = tuple(cfg.get("baseline_parameters", BASELINE_PARAMETERS))
    clip = float(attrs.get("clip_gauss", 1000.0))
    threads = torch.get_num_threads()
    frames: list[pd.DataFrame] = []
    out: dict[str, Any] = {"encoder_hash": info["hash"], "n_database": int(len(table)), "k": k,
                           "baseline_parameters": list(base_params), "paper_pearson": PAPER_PEARSON,
                           "target_pearson": TARGET_PEARSON, "threads": threads}

    # 1. generated queries
    gimg = zarr.open_group(str(generated_zarr), mode="r")["images"]
    if gimg.ndim != 3 or gimg.shape[1:] != (size, size):
        raise ValueError(f"generated images {generated_zarr} have shape {gimg.shape}, expected (N, {size}, {size})")
    lat = pd.read_parquet(latents_path)
    lat = lat[[c for c in lat.columns if c != "z"]]
    if len(lat) != gimg.shape[0]:
        raise ValueError(f"{latents_path} has {len(lat)} rows but {generated_zarr} has {gimg.shape[0]} images")
    n_gen = min(int(cfg.get("n_generated_queries", 1000)), len(lat))
    sel = np.sort(np.random.default_rng(seed).choice(len(lat), size=n_gen, replace=False))
    q_img = read_rows(gimg, sel)
    q_emb = embed(enc, q_img)
    q_par = lat.iloc[sel].reset_index(drop=True)
    q_ids = q_par["sample"].to_numpy() if "sample" in q_par else sel
    db_split = str(cfg.get("database_split", "all"))
    _, corr, fr = _evaluate_queries("generated", q_ids, q_emb, q_par, db_emb, table,
                                    split_rows(table, db_split), k, seed, base_params)
    frames += fr
    out["generated"] = {"n_queries": n_gen, "database_split": db_split, "correlations": corr}
    sims = fr[0]["score"].to_numpy()
    out["generated"]["simsiam_top1_cosine"] = {"median": float(np.median(sims)), "min": float(sims.min()),
                                               "max": float(sims.max())}
    out["generated"]["targets_met"] = {p: bool(corr["simsiam"].get(p, {}).get("pearson", np.nan) >= t)
                                       for p, t in TARGET_PEARSON.items()}

    # 2. + 3. augmented real queries
    q_split = str(cfg.get("real_query_split", "test"))
    rows_q = split_rows(table, q_split)
    rows_q = np.arange(len(table)) if rows_q is None else rows_q
    n_real = min(int(cfg.get("n_real_queries", 500)), len(rows_q))
    rows_q = np.sort(np.random.default_rng(seed + 1).choice(rows_q, size=n_real, replace=False))
    xa = augment_numpy(read_rows(arr, rows_q), cfg.get("augment"), seed + 2)
    qa_emb = embed(enc, xa)
    qa_par = physics.compute_parameters(clip * xa.astype(np.float64), store_scale(patches_zarr, rows_q))
    qa_par = qa_par.reset_index(drop=True)
    r_db = str(cfg.get("real_database_split", "train"))
    _, corr_r, fr = _evaluate_queries(f"real_{q_split}_augmented", rows_q, qa_emb, qa_par, db_emb, table,
                                      split_rows(table, r_db), k, seed, base_params)
    frames += fr
    out["real"] = {"n_queries": n_real, "query_split": q_split, "database_split": r_db, "correlations": corr_r}
    res_self = retrieve_all_methods(qa_emb, qa_par, db_emb, table, None, max(5, k), seed, base_params)
    harp = table["harpnum"].to_numpy() if "harpnum" in table else None
    out["self_retrieval"] = {"database_split": "all", "n_queries": n_real, "group": "harpnum",
                             **{m: self_retrieval_rates(i, rows_q, groups=harp) for m, (i, _) in res_self.items()}}
    # the parameters of the augmented query vs those of its own original (augmentation noise)
    out["real"]["augmentation_vs_original"] = correlations(qa_par, table.iloc[rows_q].reset_index(drop=True))
    return out, pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Interactive retrieval: `sharpgen retrieve QUERY.fits|.npy -k 5`
# --------------------------------------------------------------------------------------------

#: columns printed for each retrieved record
SHOW_PARAMETERS = ("tuf", "tpf", "tnf", "psep", "psep_robust", "r_paper", "r_value")


class QueryError(ValueError):
    """A query file that cannot be turned into a patch of the encoder's size and scale."""


def load_query(path: str | Path, meta: Mapping[str, Any]) -> np.ndarray:
    """Query file -> (S, S) float32 patch in [-1, 1] as the encoder expects.

    ``meta`` is the encoder's metadata (``size``, ``clip_gauss``, ``mode``, ``bin`` of the patch
    store it was trained on). ``.npy``: an (S, S) (or (1, S, S)) array already in [-1, 1].
    ``.fits``: a generated patch written by ``sharpgen generate`` (header CLIPG; (S, S) Br in
    Gauss) or a SHARP Br record, cut with :func:`sharpgen.patches.extract_patch` in the store's
    mode. Raises :class:`QueryError` naming the file and the problem.
    """
    path = Path(path)
    size = int(meta.get("size", 0))
    clip = float(meta.get("clip_gauss", 1000.0))
    if not path.exists():
        raise QueryError(f"query file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as err:
            raise QueryError(f"{path}: cannot read as a .npy array ({err})") from None
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        if x.shape != (size, size):
            raise QueryError(f"{path}: query patch has shape {x.shape}, the encoder expects ({size}, {size})")
        if not np.isfinite(x).all():
            raise QueryError(f"{path}: query patch contains NaN/inf (store patches have NaN -> 0)")
        if np.abs(x).max() > 1.0 + 1e-6:
            raise QueryError(f"{path}: query values span [{x.min():.4g}, {x.max():.4g}], outside [-1, 1]: a "
                             f".npy query must be Br / clip_gauss (clip_gauss = {clip:g} G), as in the patch store")
        return x
    if suffix not in (".fits", ".fit", ".fts", ".fits.gz"):
        raise QueryError(f"{path}: unsupported query type {suffix!r} (use .fits or .npy)")
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            hdr0 = hdul[0].header
            generated = "CLIPG" in hdr0 or "ZSHA" in hdr0
            data0 = None if hdul[0].data is None else np.asarray(hdul[0].data, dtype=np.float64)
    except Exception as err:
        raise QueryError(f"{path}: not a readable FITS file ({err})") from None
    if generated:
        if data0 is None or data0.shape != (size, size):
            raise QueryError(f"{path}: generated patch has shape {None if data0 is None else data0.shape}, "
                             f"the encoder expects ({size}, {size})")
        g_clip = float(hdr0.get("CLIPG", clip))
        return (np.clip(np.nan_to_num(data0), -g_clip, g_clip) / g_clip).astype(np.float32)
    from sharpgen.patches import PatchConfig, SkipRecord, extract_patch
    from sharpgen.sharp_io import SharpReadError, read_sharp

    try:
        rec = read_sharp(path, segment_check="Br")
    except SharpReadError as err:
        raise QueryError(f"{path}: neither a sharpgen generated patch (no CLIPG header) nor a readable "
                         f"SHARP Br record: {err}") from None
    pc = PatchConfig.from_mapping({"mode": meta.get("mode") or "crop", "size": size,
                                   "bin": int(meta.get("bin", 1) or 1), "clip_gauss": clip})
    try:
        patch, _, _, _ = extract_patch(rec.data, rec.scale, rec.header, pc)
    except SkipRecord as err:
        raise QueryError(f"{path}: cannot cut a patch from the record: {err}") from None
    return (np.clip(np.nan_to_num(patch), -clip, clip) / clip).astype(np.float32)


def retrieve(query: np.ndarray, encoder_path: str | Path, embeddings_path: str | Path,
             table_path: str | Path, k: int = 5, split: str = "all") -> pd.DataFrame:
    """Top-k real records for one (S, S) query patch in [-1, 1]: the k patch-table rows, best
    first, with ``rank`` (1..k), ``row`` and ``similarity`` (cosine) prepended. Raises
    :class:`EmbeddingStoreError` if the store was made by another encoder or for another table."""
    from sharpgen.ssl import embed, load_encoder

    enc, info = load_encoder(encoder_path)
    store = load_embeddings(embeddings_path, encoder_hash=info["hash"])
    table = pd.read_parquet(table_path)
    if len(table) != len(store["row"]):
        raise EmbeddingStoreError(f"embedding store {embeddings_path} has {len(store['row'])} rows, the patch "
                                  f"table {table_path} has {len(table)}: re-run `snakemake embed`")
    size = int(info["meta"].get("size", query.shape[-1]))
    if query.shape != (size, size):
        raise QueryError(f"query patch has shape {query.shape}, the encoder expects ({size}, {size})")
    q = embed(enc, query[None])
    idx, sim = topk_cosine(q, store["embeddings"], k, subset=split_rows(table, split), normalized=True)
    rows = store["row"][idx[0]]
    out = table.iloc[rows].reset_index(drop=True).drop(columns=["row"], errors="ignore")
    out.insert(0, "similarity", sim[0].astype(float))
    out.insert(0, "row", rows)
    out.insert(0, "rank", np.arange(1, len(rows) + 1))
    return out


def register(subparsers) -> None:
    """Register ``sharpgen retrieve`` (see :mod:`sharpgen.cli`)."""
    p = subparsers.add_parser(
        "retrieve",
        help="find the real SHARP records most similar to a patch (SimSiam embeddings)",
        description=(
            "Embed QUERY with the pipeline's trained SimSiam encoder and print the k most similar "
            "real patches (cosine similarity of the l2-normalised embeddings, exact search). QUERY "
            "is a SHARP Br record (.fits, cut like the patch store), a generated patch written by "
            "`sharpgen generate` (.fits), or a .npy (S, S) patch already in [-1, 1]."
        ),
    )
    p.add_argument("query", type=Path, metavar="QUERY.fits|.npy")
    p.add_argument("-k", type=int, default=5, help="number of records to print (default 5)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results_dir of the pipeline (default results)")
    p.add_argument("--encoder", type=Path, default=None, help="encoder file (default RESULTS/ssl/encoder.pt)")
    p.add_argument("--embeddings", type=Path, default=None, help="embedding store (default RESULTS/ssl/embeddings.npz)")
    p.add_argument("--table", type=Path, default=None, help="patch table (default RESULTS/data/patches.parquet)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all", help="search only this split")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.set_defaults(func=run_retrieve)


def run_retrieve(args) -> int:
    import sys

    from sharpgen.ssl import load_encoder

    enc_path = args.encoder or args.results / "ssl" / "encoder.pt"
    emb_path = args.embeddings or args.results / "ssl" / "embeddings.npz"
    tab_path = args.table or args.results / "data" / "patches.parquet"
    try:
        if args.k < 1:
            raise QueryError(f"-k must be >= 1, got {args.k}")
        for p in (enc_path, emb_path, tab_path):
            if not Path(p).exists():
                raise FileNotFoundError(f"{p} not found (run the pipeline, or pass --results/--encoder/--embeddings/--table)")
        _, info = load_encoder(enc_path)
        query = load_query(args.query, info["meta"])
        res = retrieve(query, enc_path, emb_path, tab_path, k=args.k, split=args.split)
    except (QueryError, EmbeddingStoreError, FileNotFoundError, ValueError) as err:
        print(f"sharpgen retrieve: error: {err}", file=sys.stderr)
        return 2
    cols = ["rank", "row", "harpnum", "t_rec", "split", "similarity"] + [p for p in SHOW_PARAMETERS if p in res]
    cols = [c for c in cols if c in res]
    res = res[cols]
    if args.format == "csv":
        res.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        sys.stdout.write(res.to_json(orient="records", indent=2) + "\n")
    else:
        from sharpgen.physics import PARAMETERS

        print(f"query {args.query}  (encoder {info['hash']}, {len(res)} nearest of split {args.split})")
        head = f"{'rank':>4} {'row':>6} {'HARPNUM':>7} {'T_REC':<24} {'split':<5} {'sim':>6}"
        units = {p: PARAMETERS[p].unit for p in SHOW_PARAMETERS if p in PARAMETERS}
        head += "".join(f" {p + ' [' + units.get(p, '') + ']':>20}" for p in cols[6:])
        print(head)
        for r in res.itertuples(index=False):
            d = r._asdict()
            line = (f"{d['rank']:>4} {d['row']:>6} {str(d.get('harpnum', '')):>7} {str(d.get('t_rec', '')):<24} "
                    f"{str(d.get('split', '')):<5} {d['similarity']:6.3f}")
            line += "".join(f" {d[p]:20.4g}" for p in cols[6:])
            print(line)
    return 0
