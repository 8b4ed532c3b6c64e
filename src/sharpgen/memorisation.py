"""Memorisation check: are generated images closer to the training patches than real ones are?

A GAN trained on a few hundred patches can reproduce some of them. For every generated image
the distance to its nearest *training* patch is compared with the same distance for the
*held-out* real patches (which the GAN never saw, so they show how close two independent
active regions of this population typically come). Two spaces:

* pixels: RMS difference in Gauss, ``sqrt(mean((a - b)**2)) * clip_gauss``;
* SimSiam: cosine distance ``1 - cos`` of the l2-normalised embeddings.

Reported per space: the median nearest-training distance of the generated images and of the
held-out patches, their ratio (well below 1 would mean copies), the fraction of generated
images closer to a training patch than *any* held-out patch is, and the fraction closer than
the held-out 5th percentile; plus the closest generated/training pairs for a figure.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _blocks(reference, size: int) -> Iterable[np.ndarray]:
    """An array (M, ...) as consecutive blocks of ``size`` rows; an iterable of blocks as is."""
    if isinstance(reference, np.ndarray):
        return (reference[i: i + size] for i in range(0, len(reference), size))
    return reference


def nearest_pixel_distances(queries: np.ndarray, reference, chunk: int = 512, ref_chunk: int = 1024
                            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query (N, S, S) its nearest reference image by mean squared difference:
    (RMS distance (N,) in the input units, index (N,) into the reference). float64 chunked
    matmuls pick the nearest, whose distance is then computed directly (an exact copy gives 0);
    ties to the lower index, as ``argmin``.

    ``reference``: an array (M, S, S), or an iterable of blocks (m_i, S, S) whose concatenation
    is the reference (e.g. :meth:`sharpgen.store.PatchStore.iter_read`), read once: memory is
    the queries plus one block, whatever M."""
    q32 = np.asarray(queries).reshape(len(queries), -1)
    n, d = q32.shape
    qq = np.empty(n)
    for i in range(0, n, chunk):
        qb = q32[i: i + chunk].astype(np.float64)
        qq[i: i + len(qb)] = np.einsum("ij,ij->i", qb, qb)
    best = np.full(n, np.inf)
    idx = np.zeros(n, dtype=np.int64)
    offset = 0
    for block in _blocks(reference, ref_chunk):
        r = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
        if r.shape[1] != d:
            raise ValueError(f"reference images have {r.shape[1]} pixels, the queries {d}")
        if not len(r):
            continue
        rr = np.einsum("ij,ij->i", r, r)
        for i in range(0, n, chunk):
            qb = q32[i: i + chunk].astype(np.float64)
            d2 = qq[i: i + len(qb), None] + rr[None, :] - 2.0 * qb @ r.T
            j = np.argmin(d2, axis=1)
            # the expansion above cancels catastrophically for near-duplicates (an exact copy
            # came out at ~1e-8 instead of 0, varying with the BLAS kernel): the chosen pair's
            # squared distance is recomputed directly
            dj = np.einsum("ij,ij->i", qb - r[j], qb - r[j])
            better = dj < best[i: i + len(qb)]  # strict: an earlier block wins ties
            best[i: i + len(qb)][better] = dj[better]
            idx[i: i + len(qb)][better] = j[better] + offset
        offset += len(r)
        del block, r  # before the next block is read: one block in memory at a time
    if offset == 0:
        raise ValueError("nearest_pixel_distances: the reference is empty")
    return np.sqrt(np.maximum(best, 0.0) / d), idx


def nearest_cosine_distances(queries: np.ndarray, reference: np.ndarray, ref_chunk: int = 16384
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, d), (M, d) -> (1 - max cosine (N,), index (N,)); ties to the lower index.
    The reference is scored ``ref_chunk`` rows at a time (an (N, ref_chunk) float64 block)."""
    q = np.asarray(queries, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    best = np.full(len(q), -np.inf)
    idx = np.zeros(len(q), dtype=np.int64)
    for lo in range(0, len(reference), ref_chunk):
        r = np.asarray(reference[lo: lo + ref_chunk], dtype=np.float64)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        sim = q @ r.T
        j = np.argmax(sim, axis=1)
        sj = sim[np.arange(len(q)), j]
        better = sj > best
        best[better], idx[better] = sj[better], j[better] + lo
    return 1.0 - best, idx


def compare(d_gen: np.ndarray, d_held: np.ndarray) -> dict:
    """Summary of nearest-training distances of generated (N,) vs held-out (M,) images."""
    mg, mh = float(np.median(d_gen)), float(np.median(d_held))
    return {
        "median_generated": mg,
        "median_heldout": mh,
        "ratio_generated_to_heldout": mg / mh if mh > 0 else float("nan"),
        "frac_generated_closer_than_any_heldout": float(np.mean(d_gen < d_held.min())),
        "frac_generated_below_heldout_p05": float(np.mean(d_gen < np.quantile(d_held, 0.05))),
        "n_generated": int(d_gen.size),
        "n_heldout": int(d_held.size),
    }


def memorisation_check(gen_images: np.ndarray, gen_ids, train_images, train_rows,
                       held_images: np.ndarray, *, gen_emb=None, train_emb=None, held_emb=None,
                       clip_gauss: float = 1.0, n_pairs: int = 6) -> dict:
    """The check on images in store units ([-1, 1]); distances reported in Gauss (pixels) and
    cosine distance (embeddings, when given). ``gen_ids`` / ``train_rows`` label the images in
    the closest pairs (sample ids of latents.parquet, rows of patches.parquet).

    ``train_images``: the training patches (M, S, S), or an iterable of consecutive blocks of
    them in ``train_rows`` order (:meth:`sharpgen.store.PatchStore.iter_read`), streamed once for
    the generated and the held-out images together, so the training set is never in memory."""
    gen_ids, train_rows = np.asarray(gen_ids), np.asarray(train_rows)
    n_gen = len(gen_images)
    queries = np.concatenate([np.asarray(gen_images, dtype=np.float32), np.asarray(held_images, dtype=np.float32)])
    dq, jq = nearest_pixel_distances(queries, train_images)
    dg, jg, dh = dq[:n_gen], jq[:n_gen], dq[n_gen:]
    out = {"pixels_gauss": compare(dg * clip_gauss, dh * clip_gauss)}
    dist = {"pixels_gauss": {"generated": (dg * clip_gauss).tolist(), "heldout": (dh * clip_gauss).tolist()}}
    order = np.argsort(dg)[:n_pairs]
    pairs = [{"generated": int(gen_ids[i]), "train_row": int(train_rows[jg[i]]),
              "rms_gauss": float(dg[i] * clip_gauss)} for i in order]
    if gen_emb is not None and train_emb is not None and held_emb is not None:
        eg, kg = nearest_cosine_distances(gen_emb, train_emb)
        eh, _ = nearest_cosine_distances(held_emb, train_emb)
        out["simsiam_cosine"] = compare(eg, eh)
        dist["simsiam_cosine"] = {"generated": eg.tolist(), "heldout": eh.tolist()}
        for p, i in zip(pairs, order):
            p["cosine_distance"] = float(eg[i])
            p["simsiam_nearest_train_row"] = int(train_rows[kg[i]])
    out["closest_pairs"] = pairs
    out["distances"] = dist
    return out
