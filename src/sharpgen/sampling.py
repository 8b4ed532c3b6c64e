"""Latent sampling: draw z ~ N(0, I), generate Br maps, measure them, compare with real patches.

* :func:`draw_latents` — (N, nz) float32 latents from a seeded numpy generator.
* images (N, S, S) float32 in [-1, 1] and their physical parameters come from
  :func:`sharpgen.measure.generate_and_measure` (``clip_gauss * image`` at the patch store's
  pixel scale, exactly how the real patches in patches.parquet were measured).
* :func:`write_latents` / :func:`write_images` — ``latents.parquet`` (``sample``, ``z`` as a
  fixed-size list<float32>[nz], one column per parameter) and ``generated.zarr`` (array
  ``images``).
* :func:`quality_report` — generated vs real distributions: per parameter the Wasserstein
  distance divided by the real standard deviation and the two-sample KS statistic; pixel-value
  histograms; azimuthally averaged power spectra.
* :func:`reference_distances` — the same per-parameter scores for the training split's real
  patches (quality.json ``reference``): the floor a generator of the training data would reach.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
from scipy import stats

from sharpgen.atomic import atomic_path
from sharpgen.imagestats import (
    ORIENTATION_BANDS,
    QUIET_BLOCK_FRACTION,
    QUIET_BLOCK_PX,
    lattice_peaks,
    mean_power_spectrum,
    orientation_ratio,
    quiet_block_share,
)
from sharpgen.parameters import PARAMETER_NAMES, REALISM_TARGETS

logger = logging.getLogger(__name__)

#: the registry's realism targets must keep their normalised Wasserstein distance below this
TARGET_WASSERSTEIN = 0.25


def draw_latents(n: int, nz: int = 100, seed: int = 0) -> np.ndarray:
    """``(n, nz)`` float32 standard-normal latents from ``numpy.random.default_rng(seed)``."""
    if n < 1:
        raise ValueError(f"number of latents must be >= 1, got {n}")
    return np.random.default_rng(seed).standard_normal((n, nz), dtype=np.float32)


def latents_table(z: np.ndarray, params: pd.DataFrame, w: np.ndarray | None = None):
    """pyarrow Table: ``sample`` int64, ``z`` fixed-size list<float32>[nz], optionally ``w``
    (whitened W codes of a mapping generator, list<float32>[w_dim]), parameter columns."""
    import pyarrow as pa

    z = np.ascontiguousarray(z, dtype=np.float32)
    n, nz = z.shape
    if len(params) != n:
        raise ValueError(f"{len(params)} parameter rows for {n} latents")
    cols = {"sample": pa.array(np.arange(n, dtype=np.int64)),
            "z": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel(), type=pa.float32()), nz)}
    if w is not None:
        w = np.ascontiguousarray(w, dtype=np.float32)
        if w.ndim != 2 or w.shape[0] != n:
            raise ValueError(f"W codes {w.shape} do not match {n} latents")
        cols["w"] = pa.FixedSizeListArray.from_arrays(pa.array(w.ravel(), type=pa.float32()), w.shape[1])
    for name in PARAMETER_NAMES:
        cols[name] = pa.array(params[name].to_numpy(dtype=np.float64))
    return pa.table(cols)


def write_latents(path: str | os.PathLike, z: np.ndarray, params: pd.DataFrame,
                  metadata: dict | None = None, w: np.ndarray | None = None) -> None:
    """Write ``latents.parquet`` atomically, with the registry's unit of every parameter column
    and file metadata (:func:`sharpgen.atomic.parquet_metadata`; ``metadata`` adds keys such as
    the patch mode and clip)."""
    import pyarrow.parquet as pq

    from sharpgen.atomic import with_parquet_metadata

    table = with_parquet_metadata(latents_table(z, params, w), metadata)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_latents(path: str | os.PathLike, space: str = "z") -> tuple[np.ndarray, pd.DataFrame]:
    """(latents (N, D) float32, DataFrame with ``sample`` and the parameter columns).

    ``space``: ``"z"`` (default) or ``"w"`` -- the whitened W codes a generator with a mapping
    network wrote (the latent of boundaries fitted in W: ``Boundaries.space``)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if space not in table.column_names:
        raise ValueError(f"{path} has no {space!r} latent column")
    col = table.column(space).combine_chunks()
    dim = col.type.list_size
    codes = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return codes, table.drop([c for c in ("z", "w") if c in table.column_names]).to_pandas()


def write_images(path: str | os.PathLike, images: np.ndarray, attrs: dict | None = None) -> None:
    """``generated.zarr`` (Zarr v3): array ``images`` (N, S, S) float32 in [-1, 1], chunks
    (64, S, S), dimensions ``sample``, ``y``, ``x``. With ``clip_gauss`` in ``attrs`` the array
    carries CF ``scale_factor`` = clip_gauss and ``units`` G, so ``xarray.open_zarr(path)``
    decodes it to Gauss (consolidated metadata: no fallback warning)."""
    import zarr

    from sharpgen.atomic import consolidate_zarr

    images = np.asarray(images, dtype=np.float32)
    n, s, _ = images.shape
    attrs = dict(attrs or {})
    meta = {"long_name": "generated radial magnetic field Br (stored as Br / clip_gauss, in [-1, 1])"}
    if attrs.get("clip_gauss") is not None:
        meta.update(units="G", scale_factor=float(attrs["clip_gauss"]))
    with atomic_path(path) as tmp:
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arr = g.create_array("images", shape=images.shape, dtype="float32",
                             chunks=(min(64, n), s, s), dimension_names=("sample", "y", "x"),
                             attributes=meta)
        arr[...] = images
        g.attrs.update({"n": int(n), "size": int(s), **attrs})
        consolidate_zarr(tmp)


# --------------------------------------------------------------------------------------------
# quality
# --------------------------------------------------------------------------------------------


def _dist_stats(real: np.ndarray, gen: np.ndarray) -> dict:
    real = real[np.isfinite(real)]
    gen = gen[np.isfinite(gen)]
    out = {"n_real": int(real.size), "n_gen": int(gen.size)}
    if real.size < 2 or gen.size < 2:
        return {**out, "wasserstein_norm": None, "ks": None, "ks_pvalue": None}
    std = float(np.std(real))
    w = float(stats.wasserstein_distance(real, gen))
    ks = stats.ks_2samp(real, gen)
    return {**out, "wasserstein": w, "wasserstein_norm": w / std if std > 0 else None,
            "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "real_mean": float(real.mean()), "gen_mean": float(gen.mean()),
            "real_std": std, "gen_std": float(gen.std()),
            "real_median": float(np.median(real)), "gen_median": float(np.median(gen))}


def quality_report(real_params: pd.DataFrame, gen_params: pd.DataFrame, real_images: np.ndarray,
                   gen_images: np.ndarray, clip_gauss: float, real_label: str = "train",
                   max_images: int = 1000, seed: int = 0) -> dict:
    """Generated vs real: per-parameter normalised Wasserstein + KS, pixels, power spectra, and
    the lattice peaks of the axis spectrum (:func:`sharpgen.imagestats.lattice_peaks`).

    ``real_params`` / ``gen_params``: tables with the ``PARAMETER_NAMES`` columns.
    ``real_images`` / ``gen_images``: (N, S, S) in [-1, 1]; at most ``max_images`` of each
    (seeded random subset) enter the pixel and spectrum comparisons. Values in Gauss.
    """
    rng = np.random.default_rng(seed)

    def subset(x):
        if x.shape[0] <= max_images:
            return x
        return x[np.sort(rng.choice(x.shape[0], max_images, replace=False))]

    report: dict = {
        "real": {"split": real_label, "n": int(len(real_params))},
        "generated": {"n": int(len(gen_params))},
        "parameters": {},
    }
    for name in PARAMETER_NAMES:
        if name not in real_params or name not in gen_params:
            continue
        r = real_params[name].to_numpy(dtype=np.float64)
        g = gen_params[name].to_numpy(dtype=np.float64)
        d = _dist_stats(r, g)
        d["nan_frac_real"] = float(np.mean(~np.isfinite(r))) if r.size else None
        d["nan_frac_gen"] = float(np.mean(~np.isfinite(g))) if g.size else None
        report["parameters"][name] = d

    # pixel values [G]
    ri = subset(np.asarray(real_images, dtype=np.float32)) * clip_gauss
    gi = subset(np.asarray(gen_images, dtype=np.float32)) * clip_gauss
    rp, gp = ri.ravel(), gi.ravel()
    nsub = min(rp.size, gp.size, 400_000)
    rs = rng.choice(rp, nsub, replace=False)
    gs = rng.choice(gp, nsub, replace=False)
    edges = np.linspace(-clip_gauss, clip_gauss, 101)
    hr = np.histogram(rp, edges)[0] / rp.size
    hg = np.histogram(gp, edges)[0] / gp.size
    m = 0.5 * (hr + hg)

    def kl(a: np.ndarray) -> float:  # KL(a || m) in bits, over the bins where a > 0
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    px = {
        "wasserstein_norm": float(stats.wasserstein_distance(rs, gs) / np.std(rs)),
        "ks": float(stats.ks_2samp(rs, gs).statistic),
        "js_divergence_bits": 0.5 * kl(hr) + 0.5 * kl(hg),
        "hist_intersection": float(np.minimum(hr, hg).sum()),
        "real_std_gauss": float(rp.std()), "gen_std_gauss": float(gp.std()),
        "real_median_abs_gauss": float(np.median(np.abs(rp))),
        "gen_median_abs_gauss": float(np.median(np.abs(gp))),
        "bin_edges_gauss": edges.tolist(), "hist_real": hr.tolist(), "hist_gen": hg.tolist(),
    }
    for thr in (50, 150, 500):
        px[f"frac_abs_gt_{thr}G"] = {"real": float(np.mean(np.abs(rp) > thr)),
                                     "gen": float(np.mean(np.abs(gp) > thr))}
    report["pixels"] = px

    k, pr = mean_power_spectrum(ri)
    _, pg = mean_power_spectrum(gi)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log10(pg / pr)
    thirds = np.array_split(np.arange(k.size), 3)
    report["power_spectrum"] = {
        "k_cycles_per_pixel": k.tolist(), "real_gauss2": pr.tolist(), "gen_gauss2": pg.tolist(),
        "log10_ratio_rms": float(np.sqrt(np.nanmean(lr ** 2))),
        # the worst bin: |log10(gen/real)| and its wavenumber
        "log10_ratio_max_abs": float(np.nanmax(np.abs(lr))),
        "k_of_max_abs": float(k[int(np.nanargmax(np.abs(lr)))]),
        "log10_ratio_low_k": float(np.nanmean(lr[thirds[0]])),
        "log10_ratio_mid_k": float(np.nanmean(lr[thirds[1]])),
        "log10_ratio_high_k": float(np.nanmean(lr[thirds[2]])),
    }
    # the grid an upsampling generator can leave (dots at 8, 4, 8/3, 2 px): axis-spectrum peaks
    lat_r, lat_g = lattice_peaks(ri), lattice_peaks(gi)
    report["lattice"] = {
        "periods_px": lat_g["periods_px"], "k_cycles_per_pixel": lat_g["k_cycles_per_pixel"],
        "log10_excess_generated": lat_g["log10_excess"], "log10_excess_real": lat_r["log10_excess"],
        "log10_peak_generated": lat_g["log10_peak"], "log10_peak_real": lat_r["log10_peak"],
    }
    texture = _weak_textures(ri, gi)  # once for both views (a low-pass of every image)
    report["orientation"] = _orientation_of(texture, gi.shape[-1])
    report["quiet_blocks"] = _quiet_blocks_of(texture)
    targets = {name: report["parameters"].get(name, {}).get("wasserstein_norm")
               for name in REALISM_TARGETS}
    report["targets"] = {
        "parameters": list(REALISM_TARGETS), "wasserstein_norm_max": TARGET_WASSERSTEIN,
        "wasserstein_norm": targets,
        "pass": all(v is not None and v < TARGET_WASSERSTEIN for v in targets.values()),
    }
    return report


#: |B| [G] under which the low-passed field counts as weak for :func:`weak_field_orientation`
#: (the strong-field threshold of the C2ST's diagnostic views, sharpgen.c2st)
WEAK_FIELD_GAUSS = 150.0


def weak_field_orientation(real_gauss: np.ndarray, gen_gauss: np.ndarray) -> dict:
    """How grid-aligned the weak-field texture is, real and generated: the texture
    (:func:`sharpgen.c2st.weak_texture`: the high-pass of each image, 0 where the low-passed
    field is at or over :data:`WEAK_FIELD_GAUSS` or on a crop's zero padding) and its axis over
    diagonal power (:func:`sharpgen.imagestats.orientation_ratio`) per |k| band, median over the
    images. Both inputs (N, S, S) in Gauss. Returns the bands (fractions of the Nyquist
    wavenumber, and cycles per image), ``axis_over_diagonal_real`` / ``_generated`` (one per
    band) and ``log10_ratio_max_abs``: the largest |log10(generated / real)| over the bands (0
    when the generated texture is as isotropic as the real one; 0.3 is a factor of 2)."""
    return _orientation_of(_weak_textures(real_gauss, gen_gauss), np.shape(gen_gauss)[-1])


def _weak_textures(real_gauss: np.ndarray, gen_gauss: np.ndarray) -> dict:
    """``{"real": (high, weak), "generated": (high, weak)}``: :func:`sharpgen.c2st.weak_texture`
    of each set at :data:`WEAK_FIELD_GAUSS`."""
    from sharpgen.c2st import weak_texture

    return {label: weak_texture(images, WEAK_FIELD_GAUSS)
            for label, images in (("real", real_gauss), ("generated", gen_gauss))}


def _orientation_of(texture: dict, s: int) -> dict:
    """:func:`weak_field_orientation` of :func:`_weak_textures`' output, images of S = ``s`` px."""
    med = {label: np.nanmedian(orientation_ratio(np.where(weak, high, 0.0)), axis=0)
           for label, (high, weak) in texture.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.abs(np.log10(med["generated"] / med["real"]))
    return {
        "bands_nyquist": [list(b) for b in ORIENTATION_BANDS],
        "bands_cycles_per_image": [[lo * s / 2, hi * s / 2] for lo, hi in ORIENTATION_BANDS],
        "axis_over_diagonal_real": [float(v) for v in med["real"]],
        "axis_over_diagonal_generated": [float(v) for v in med["generated"]],
        "log10_ratio_max_abs": float(np.nanmax(dev)) if np.isfinite(dev).any() else None,
    }


#: an image counts as patchy when more than this share of its weak-field blocks is quiet
QUIET_IMAGE_SHARE = 0.05


def weak_field_quiet_blocks(real_gauss: np.ndarray, gen_gauss: np.ndarray) -> dict:
    """Where the weak-field texture is missing, real and generated: per image, the share of its
    :data:`~sharpgen.imagestats.QUIET_BLOCK_PX`-pixel blocks of weak-field texture
    (:func:`sharpgen.c2st.weak_texture`, as :func:`weak_field_orientation`) whose rms is under
    :data:`~sharpgen.imagestats.QUIET_BLOCK_FRACTION` of the image's median block rms
    (:func:`sharpgen.imagestats.quiet_block_share`). Both inputs (N, S, S) in Gauss. Returns
    ``mean_share_real`` / ``_generated`` (mean over the images) and ``patchy_images_real`` /
    ``_generated`` (the share of images with more than :data:`QUIET_IMAGE_SHARE` of their blocks
    quiet), with the block size and fraction. A record's noise is homogeneous (real: ~0); a
    generator that turns its grain off in places leaves grain-free flat patches."""
    return _quiet_blocks_of(_weak_textures(real_gauss, gen_gauss))


def _quiet_blocks_of(texture: dict) -> dict:
    """:func:`weak_field_quiet_blocks` of :func:`_weak_textures`' output."""
    out: dict = {"block_px": QUIET_BLOCK_PX, "fraction_of_median_rms": QUIET_BLOCK_FRACTION,
                 "patchy_over_share": QUIET_IMAGE_SHARE}
    for label in ("real", "generated"):
        share, _ = quiet_block_share(*texture[label])
        ok = np.isfinite(share)
        out[f"mean_share_{label}"] = float(share[ok].mean()) if ok.any() else None
        out[f"patchy_images_{label}"] = float((share[ok] > QUIET_IMAGE_SHARE).mean()) if ok.any() else None
    return out


def reference_distances(real_params: pd.DataFrame, reference_params: pd.DataFrame, label: str) -> dict:
    """The per-parameter scores of real patches that no generator made: ``reference_params`` (the
    training split, what the GAN learns from) scored against ``real_params`` (the split the
    generated samples are scored against) exactly as a generated sample would be
    (:func:`_dist_stats`: W / std of ``real_params``, KS). A generator that reproduced its
    training patches perfectly would score these; differences between the two real splits (few
    independent regions: 72 held-out HARPs on the default) set how low the generated scores can
    meaningfully go. Returns ``{"split": label, "n": N, "wasserstein_norm": {p: w}, "ks": {p: ks}}``.
    """
    out: dict = {"split": label, "n": int(len(reference_params)), "wasserstein_norm": {}, "ks": {}}
    for name in PARAMETER_NAMES:
        if name not in real_params or name not in reference_params:
            continue
        d = _dist_stats(real_params[name].to_numpy(dtype=np.float64),
                        reference_params[name].to_numpy(dtype=np.float64))
        out["wasserstein_norm"][name], out["ks"][name] = d["wasserstein_norm"], d["ks"]
    return out


def run_c2st(store, rows, images: np.ndarray, seed: int = 0, threads: int | None = None) -> dict:
    """The fixed-protocol classifier two-sample test (:func:`sharpgen.c2st.c2st`) of the real
    patches ``rows`` of ``store`` (grouped by HARP: frames of one region share a fold) against
    the generated ``images``. Too few real patches or HARPs for the protocol (tiny test stores)
    give ``accuracy: None`` and the reason instead of an error."""
    from sharpgen.c2st import C2stError, c2st

    rows = np.asarray(rows)
    harps = (store.column("harpnum")[rows] if "harpnum" in store.table_columns
             else np.arange(rows.size))
    try:
        return c2st(store.read(rows), images, real_groups=harps, seed=seed, threads=threads)
    except C2stError as err:
        logger.warning("no C2ST: %s", err)
        return {"accuracy": None, "reason": str(err)}


def run_sampling(generator_path: str | os.PathLike, patches_zarr: str | os.PathLike,
                 patches_table: str | os.PathLike, cfg: dict, *, latents_path, images_path,
                 quality_path, device: str = "cpu", progress: bool = True, threads: int | None = None) -> dict:
    """The ``sample_latents`` stage: latents -> images + parameters -> the three outputs.

    ``cfg`` is the ``sampling`` config section (``n``, ``seed``, ``batch_size``,
    ``real_split``, ``quality_images``; schema defaults fill the rest). Returns the quality report.
    """
    import torch

    from sharpgen.atomic import write_json
    from sharpgen.config import section
    from sharpgen.gan import latent_codes, latent_space, load_generator
    from sharpgen.measure import MeasurementContext, generate_and_measure
    from sharpgen.store import PatchStore

    cfg = section("sampling", cfg)
    if threads:
        torch.set_num_threads(int(threads))
    G = load_generator(generator_path, device=device)
    store = PatchStore.open(patches_zarr, patches_table)
    if store.size != G.size:
        raise ValueError(f"generator {generator_path} makes {G.size}x{G.size} maps but patch "
                         f"store {patches_zarr} holds {store.size}x{store.size}")
    ctx = MeasurementContext.from_store(store)
    z = draw_latents(int(cfg["n"]), G.nz, int(cfg["seed"]))
    images, params = generate_and_measure(G, z, ctx, batch_size=int(cfg["batch_size"]), progress=progress)
    # a generator with a mapping network: its whitened W codes too (where directions are fitted)
    w = latent_codes(G, z) if latent_space(G) == "w" else None
    write_latents(latents_path, z, params, {"patch_mode": ctx.mode, "clip_gauss": ctx.clip_gauss,
                                            "patches_config_hash": store.attrs.get("config_hash"),
                                            "seed": int(cfg["seed"]), "generator": str(generator_path)},
                  w=w)
    write_images(images_path, images, {"clip_gauss": ctx.clip_gauss, "seed": int(cfg["seed"]),
                                       "generator": str(generator_path)})

    split = cfg["real_split"]
    rows = store.rows(split)
    real_params = store.table_rows(rows)
    report = quality_report(real_params, params, store.read(rows), images, ctx.clip_gauss,
                            real_label=split, max_images=int(cfg["quality_images"]), seed=int(cfg["seed"]))
    report["generator"] = {k: v for k, v in G.meta.items() if k in ("arch", "steps", "size",
                                                                   "weights", "config")}
    train = store.rows("train")
    if split != "train" and len(train) > 1:  # the real-vs-real scores: how low the generated can go
        report["reference"] = reference_distances(real_params, store.table_rows(train), "train")
    report["c2st"] = run_c2st(store, rows, images, seed=int(cfg["seed"]), threads=threads)
    report["pixel_scale"] = {"size_mm": ctx.scale.size_mm, "area_cm2": ctx.scale.area_cm2,
                             "size_arcsec": ctx.scale.size_arcsec}
    write_json(quality_path, report)
    t = report["targets"]["wasserstein_norm"]
    logger.info("quality vs real (%s): normalised W %s (pass=%s)", split,
                {k: None if v is None else round(v, 3) for k, v in t.items()}, report["targets"]["pass"])
    return report
