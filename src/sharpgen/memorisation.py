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

import numpy as np


def nearest_pixel_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 512
                            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query (N, S, S) its nearest reference (M, S, S) by mean squared difference:
    (RMS distance (N,) in the input units, index (N,) into reference). Exact, chunked matmuls."""
    q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    r = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    rr = np.einsum("ij,ij->i", r, r)
    dist = np.empty(len(q))
    idx = np.empty(len(q), dtype=np.int64)
    for i in range(0, len(q), chunk):
        qb = q[i: i + chunk]
        d2 = np.einsum("ij,ij->i", qb, qb)[:, None] + rr[None, :] - 2.0 * qb @ r.T
        j = np.argmin(d2, axis=1)
        idx[i: i + len(qb)] = j
        dist[i: i + len(qb)] = np.sqrt(np.maximum(d2[np.arange(len(qb)), j], 0.0) / q.shape[1])
    return dist, idx


def nearest_cosine_distances(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """l2-normalised embeddings (N, d), (M, d) -> (1 - max cosine (N,), index (N,))."""
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = q @ r.T
    j = np.argmax(sim, axis=1)
    return 1.0 - sim[np.arange(len(q)), j], j


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


def memorisation_check(gen_images: np.ndarray, gen_ids, train_images: np.ndarray, train_rows,
                       held_images: np.ndarray, *, gen_emb=None, train_emb=None, held_emb=None,
                       clip_gauss: float = 1.0, n_pairs: int = 6) -> dict:
    """The check on images in store units ([-1, 1]); distances reported in Gauss (pixels) and
    cosine distance (embeddings, when given). ``gen_ids`` / ``train_rows`` label the images in
    the closest pairs (sample ids of latents.parquet, rows of patches.parquet)."""
    gen_ids, train_rows = np.asarray(gen_ids), np.asarray(train_rows)
    dg, jg = nearest_pixel_distances(gen_images, train_images)
    dh, _ = nearest_pixel_distances(held_images, train_images)
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
