"""Stage "ssl", rule ``embed``: every real patch -> its l2-normalised SimSiam embedding.

rules/ssl.smk (embed) -> workflow_scripts/embed.py -> here. The embedding store
(results/ssl/embeddings.npz) holds the row ids of the patch table, their split, the embeddings
and the hash of the encoder that made them (:func:`save_embeddings`, :func:`load_embeddings`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from sharpgen.atomic import atomic_path

logger = logging.getLogger(__name__)


class EmbeddingStoreError(ValueError):
    """An embedding store that does not fit the encoder or the patch table."""


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
                     split=np.asarray(splits, dtype=str), encoder_hash=np.asarray(str(encoder_hash)))


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




def run_embed(encoder_path, patches_zarr, patches_table, embeddings_out, batch_size: int = 256,
              threads: int | None = None, device: str = "auto") -> np.ndarray:
    """Rule embed: embed every patch of the store (in chunks) -> embeddings.npz; returns (N, d)."""
    from sharpgen.ssl import embed, load_encoder
    from sharpgen.store import PatchStore
    from sharpgen.training import setup_device

    device = setup_device(device, key="ssl.device", threads=threads, log=logger)
    enc, info = load_encoder(encoder_path, device=device)
    store = PatchStore.open(patches_zarr, patches_table)
    if int(info["meta"].get("size", store.size)) != store.size:
        raise ValueError(f"encoder {encoder_path} expects {info['meta']['size']} px patches, "
                         f"the store {patches_zarr} has {store.size} px")
    # the store is read ``chunk`` patches at a time (128 MB of 128x128 float32 at most) and each
    # chunk's embeddings go straight into the (N, d) result: memory is the embedding matrix plus
    # one chunk, whatever N
    chunk = max(batch_size, 2048)
    emb = None
    for i in range(0, store.n, chunk):
        e = embed(enc, store.read(np.arange(i, min(i + chunk, store.n))), batch_size=batch_size)
        if emb is None:
            emb = np.empty((store.n, e.shape[1]), dtype=np.float32)
        emb[i : i + len(e)] = e
    save_embeddings(embeddings_out, emb, np.arange(store.n), store.split_labels(),
                    info["hash"])
    logger.info("embedded %d patches (dim %d) with encoder %s -> %s", *emb.shape, info["hash"], embeddings_out)
    return emb
