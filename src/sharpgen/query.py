"""``sharpgen retrieve QUERY.fits|.npy -k 5``: the real records nearest to one patch.

The query (a SHARP Br record cut like the patch store, a patch written by ``sharpgen generate``,
or a .npy patch in [-1, 1]) is embedded with the pipeline's SimSiam encoder and matched against
the embedding store by cosine similarity (exact search). The argparse options are in
:mod:`sharpgen.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from sharpgen.embed import EmbeddingStoreError, load_embeddings
from sharpgen.parameters import REQUESTABLE
from sharpgen.retrieval import topk_cosine
from sharpgen.store import split_names

#: columns printed for each retrieved record: the registry's headline parameters
SHOW_PARAMETERS = REQUESTABLE


class QueryError(ValueError):
    """A query file that cannot be turned into a patch of the encoder's size and scale."""


def load_query(path: str | Path, meta: Mapping[str, Any]) -> np.ndarray:
    """Query file -> (S, S) float32 patch in [-1, 1] as the encoder expects.

    ``meta`` is the encoder's metadata (``size``, ``clip_gauss``, ``mode``, ``bin`` of the patch
    store it was trained on). ``.npy``: an (S, S) (or (1, S, S)) array already in [-1, 1].
    ``.fits``: a generated patch written by ``sharpgen generate`` (header CLIPG; (S, S) Br in
    Gauss) or a SHARP Br record, cut with :func:`sharpgen.patch_cut.extract_patch` in the store's
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
    from sharpgen.data import SkipRecord
    from sharpgen.patch_cut import extract_patch
    from sharpgen.patches import PatchConfig
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
    import pyarrow.parquet as pq

    from sharpgen.ssl import embed, load_encoder

    enc, info = load_encoder(encoder_path)
    store = load_embeddings(embeddings_path, encoder_hash=info["hash"])
    n_table = pq.ParquetFile(table_path).metadata.num_rows  # the table is read in Arrow, k rows converted
    if n_table != len(store["row"]):
        raise EmbeddingStoreError(f"embedding store {embeddings_path} has {len(store['row'])} rows, the patch "
                                  f"table {table_path} has {n_table}: re-run `snakemake embed`")
    size = int(info["meta"].get("size", query.shape[-1]))
    if query.shape != (size, size):
        raise QueryError(f"query patch has shape {query.shape}, the encoder expects ({size}, {size})")
    q = embed(enc, query[None])
    subset = None if split == "all" else np.flatnonzero(np.isin(
        pq.read_table(table_path, columns=["split"]).column(0).to_numpy(zero_copy_only=False), split_names(split)))
    if subset is not None and subset.size == 0:
        raise QueryError(f"the patch table {table_path} has no rows of split {split!r}")
    idx, sim = topk_cosine(q, store["embeddings"], k, subset=subset, normalized=True)
    rows = store["row"][idx[0]]
    out = pq.read_table(table_path).take(rows).to_pandas().drop(columns=["row"], errors="ignore")
    out.insert(0, "similarity", sim[0].astype(float))
    out.insert(0, "row", rows)
    out.insert(0, "rank", np.arange(1, len(rows) + 1))
    return out


def run_retrieve(args) -> int:
    """``sharpgen retrieve`` (options: :func:`sharpgen.cli.add_retrieve_parser`). Returns the exit
    status: 0, or 1 with a one-line message on stderr for a query or result file that cannot be
    used (usage errors, e.g. ``-k 0``, are argparse's exit 2)."""
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
    except (QueryError, EmbeddingStoreError, OSError, ValueError) as err:  # runtime errors: exit 1
        print(f"sharpgen retrieve: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
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
