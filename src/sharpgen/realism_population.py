"""The synthetic world against the real SHARP population (JSOC keyword tables).

:mod:`sharpgen.realism` compares synthetic maps with a few real records pixel by pixel; this
module compares the *population*: per synthetic record the quantities JSOC reports, computed by
the code path a real record goes through, against two tables of real keywords in
``../shared/data/keywords/``:

* ``sharp_720s_keywords_flare_dataset.csv`` (``;``-separated): one ``hmi.sharp_720s`` record per
  NOAA region and day, 2010-05..2019-12 (USFLUX, R_VALUE, AREA_ACR, QUALITY, Longitude, ...).
  The headline comparison. Selection: ``QUALITY == 0`` (the patch stage's default
  ``quality_mask``) and ``Longitude <= 60`` deg (the table's longitude is the absolute distance
  from the central meridian, 0-70; our default data keep |lon| <= 60).
* ``sharp_[0-4].csv``: every 96 min of 1,113 NOAA-numbered HARPs, 2010-10..2020-11 (QUALITY <
  65536 upstream). USFLUX there is line-of-sight based, so only R_VALUE (JSOC's, also from the
  line-of-sight field) and AREA (the HARP area, from ``hmi.sharp_cea_720s``) are compared. No
  longitude column: no longitude cut is possible.

Per synthetic record (:func:`synthetic_population`): USFLUX = ``tuf`` of
:func:`sharpgen.physics.compute_parameters` over :func:`sharpgen.sharp_io.sharp_mask` (the
record's ``bitmap`` and ``conf_disambig`` segments: ``sharpgen params --sharp-mask``); R_VALUE =
``r_value`` (JSOC's computeR, unmasked; JSOC runs it on the line-of-sight ``magnetogram``, here
the synthetic Br stands in for it); AREA / AREA_ACR = the HARP (bitmap >= 33) / its active
pixels (34) in micro-hemispheres. Selection: records with a HARP (JSOC only has records of
detected HARPs), a NOAA number (both tables hold NOAA-numbered regions only) and
``|LON_FWT| <= 60``.

Statistics (:func:`compare`): two-sample Kolmogorov-Smirnov distance of log10 USFLUX and of the
non-zero R_VALUEs, the fraction of R_VALUE = 0, per-flux-bin zero fractions and medians, and
the KS *noise floor*: the same distances between the full 720s table and random subsets of it
as large as the synthetic set (as many NOAA regions as synthetic regions, as many records per
region as frames), the best a perfect generator of that size could score.
Targets: KS < 0.10 for both, zero fraction within 0.05 of the 720s table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: where the tables live, relative to the project root (the working directory of the workflow)
KEYWORDS_DIR = "../shared/data/keywords"
TABLE_720S = "sharp_720s_keywords_flare_dataset.csv"
TABLES_LOS = tuple(f"sharp_{i}.csv" for i in range(5))
MAX_ABS_LON_DEG = 60.0       #: longitude cut applied to the 720s table and the synthetic records
KS_TARGET = 0.10             #: target KS distance (log10 USFLUX, non-zero R_VALUE)
ZERO_FRACTION_TOL = 0.05     #: target |zero-R fraction - 720s table's|
FLUX_BINS = (19.5, 20.5, 21.0, 21.5, 22.0, 22.5, 23.0, 23.5)  #: log10 USFLUX bins of by_flux


# --------------------------------------------------------------------------------------------
# real tables
# --------------------------------------------------------------------------------------------
def keyword_tables(folder: str | Path = KEYWORDS_DIR) -> dict:
    """``{"table_720s": path, "tables_los": [paths]}`` of the tables in ``folder`` (paths as
    given, relative ones stay relative), or {} when any of them is missing."""
    folder = Path(folder)
    paths = [folder / TABLE_720S] + [folder / t for t in TABLES_LOS]
    if not all(p.is_file() for p in paths):
        return {}
    return {"table_720s": str(paths[0]), "tables_los": [str(p) for p in paths[1:]]}


def load_720s(path: str | Path, max_abs_lon: float = MAX_ABS_LON_DEG) -> pd.DataFrame:
    """The hmi.sharp_720s keyword table -> columns ``region`` (NOAA_AR), ``usflux`` [Mx],
    ``r_value``, ``area_acr`` [uHem], ``lon`` [deg]; QUALITY == 0 and |lon| <= ``max_abs_lon``."""
    t = pd.read_csv(path, sep=";")
    missing = {"NOAA_AR", "USFLUX", "R_VALUE", "AREA_ACR", "QUALITY", "Longitude"} - set(t.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    keep = (t["QUALITY"] == 0) & (t["Longitude"].abs() <= max_abs_lon) & (t["USFLUX"] > 0)
    t = t[keep]
    return pd.DataFrame({"region": t["NOAA_AR"].to_numpy(), "usflux": t["USFLUX"].to_numpy(float),
                         "r_value": t["R_VALUE"].to_numpy(float), "area_acr": t["AREA_ACR"].to_numpy(float),
                         "lon": t["Longitude"].to_numpy(float)})


def load_los(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The line-of-sight keyword tables -> columns ``region`` (HARPNUM), ``usflux_los`` [Mx],
    ``r_value``, ``area`` [uHem]."""
    t = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    return pd.DataFrame({"region": t["arpnum"].to_numpy(), "usflux_los": t["USFLUX"].to_numpy(float),
                         "r_value": t["R_VALUE"].to_numpy(float), "area": t["AREA"].to_numpy(float)})


# --------------------------------------------------------------------------------------------
# synthetic records
# --------------------------------------------------------------------------------------------
def record_quantities(br_path: str | Path) -> dict:
    """USFLUX, R_VALUE, AREA, AREA_ACR of one SHARP record, real or synthetic, from its Br file
    and its ``bitmap`` / ``conf_disambig`` siblings (the ``sharpgen params --sharp-mask`` path).
    Raises :class:`sharpgen.sharp_io.SharpReadError` when a segment is missing or unreadable."""
    from .harpmask import ACTIVE_IN, QUIET_IN, micro_hemispheres
    from .physics import compute_parameters
    from .sharp_io import SharpReadError, find_segment, header_float, read_sharp, sharp_mask

    rec = read_sharp(br_path)
    mask = sharp_mask(br_path, rec.data.shape)
    if mask is None:
        raise SharpReadError(f"{br_path}: no bitmap / conf_disambig segment beside it")
    p = compute_parameters(rec.data, rec.scale, mask=mask).iloc[0]
    bitmap = read_sharp(find_segment(br_path, "bitmap"), segment_check="bitmap").data
    cdelt = header_float(rec.header, "CDELT1", 0.03)
    n_harp = int(np.count_nonzero(bitmap >= QUIET_IN))
    return {"path": str(br_path), "harpnum": rec.harpnum, "t_rec": rec.t_rec, "noaa": rec.noaa or 0,
            "lon_fwt": header_float(rec.header, "LON_FWT"),
            "usflux": float(p["tuf"]) if mask.any() else 0.0, "r_value": float(p["r_value"]),
            "area": float(micro_hemispheres(n_harp, cdelt)),
            "area_acr": float(micro_hemispheres(np.count_nonzero(bitmap == ACTIVE_IN), cdelt)),
            "has_harp": n_harp > 0, "usflux_hdr": header_float(rec.header, "USFLUX")}


def synthetic_population(paths: Sequence[str | Path], workers: int = 1) -> pd.DataFrame:
    """:func:`record_quantities` of every record (in ``workers`` processes), one row each."""
    paths = [str(p) for p in paths]
    if workers > 1 and len(paths) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(record_quantities, paths, chunksize=8))
    else:
        rows = [record_quantities(p) for p in paths]
    return pd.DataFrame(rows)


def select_synthetic(syn: pd.DataFrame, max_abs_lon: float = MAX_ABS_LON_DEG) -> pd.DataFrame:
    """The synthetic records comparable with the tables: a HARP, a NOAA number, |LON_FWT| cut."""
    keep = syn["has_harp"] & (syn["noaa"] > 0) & (syn["lon_fwt"].abs() <= max_abs_lon) & (syn["usflux"] > 0)
    return syn[keep]


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance (NaN when either sample is empty)."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(stats.ks_2samp(a, b).statistic) if a.size and b.size else float("nan")


def by_flux(usflux, r_value, bins: Sequence[float] = FLUX_BINS) -> list[dict]:
    """Per log10 USFLUX bin: count, fraction of R_VALUE = 0, median non-zero R_VALUE."""
    lu = np.log10(np.asarray(usflux, dtype=np.float64))
    r = np.asarray(r_value, dtype=np.float64)
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (lu > lo) & (lu <= hi)
        nz = r[sel & (r > 0)]
        out.append({"log_usflux": [lo, hi], "n": int(sel.sum()),
                    "zero_fraction": float((r[sel] == 0).mean()) if sel.any() else None,
                    "r_value_median": float(np.median(nz)) if nz.size else None})
    return out


def noise_floor(real: pd.DataFrame, n_regions: int, per_region: int, reps: int = 100,
                seed: int = 0) -> dict:
    """KS distances (log10 USFLUX, non-zero R_VALUE) and zero fractions of random subsets of the
    720s table (``n_regions`` regions, up to ``per_region`` records each) against the whole
    table: their 50th and 95th percentiles (``*_p50``, ``*_p95``)."""
    rng = np.random.default_rng(seed)
    groups = list(real.groupby("region").indices.values())
    n_regions = min(int(n_regions), len(groups))
    lu_all = np.log10(real["usflux"].to_numpy())
    r_all = real["r_value"].to_numpy()
    k_u, k_r, zf = [], [], []
    for _ in range(reps):
        pick = rng.choice(len(groups), n_regions, replace=False)
        rows = np.concatenate([rng.permutation(groups[i])[:per_region] for i in pick])
        k_u.append(ks(lu_all[rows], lu_all))
        rr = r_all[rows]
        k_r.append(ks(rr[rr > 0], r_all[r_all > 0]))
        zf.append(float((rr == 0).mean()))
    out = {}
    for name, v in (("ks_log_usflux", k_u), ("ks_r_value_nonzero", k_r), ("zero_fraction", zf)):
        out[f"{name}_p50"], out[f"{name}_p95"] = (float(x) for x in np.percentile(v, [50, 95]))
    out["reps"], out["n_regions"], out["per_region"] = int(reps), n_regions, int(per_region)
    return out


def compare(real: pd.DataFrame, los: pd.DataFrame | None, syn: pd.DataFrame,
            max_abs_lon: float = MAX_ABS_LON_DEG, seed: int = 0, noise_reps: int = 100) -> dict:
    """Summary numbers (JSON-ready) of the synthetic population ``syn`` (all records:
    :func:`synthetic_population`) against the 720s table ``real`` (:func:`load_720s`) and the
    line-of-sight tables ``los`` (:func:`load_los`, or None)."""
    s = select_synthetic(syn, max_abs_lon)
    if s.empty:
        raise ValueError(f"no synthetic record passes the selection (of {len(syn)}: "
                         f"{int(syn['has_harp'].sum())} with a HARP)")
    s_lu, s_r = np.log10(s["usflux"].to_numpy()), s["r_value"].to_numpy()
    r_lu, r_r = np.log10(real["usflux"].to_numpy()), real["r_value"].to_numpy()
    zero = {"synthetic": float((s_r == 0).mean()), "real_720s": float((r_r == 0).mean())}
    out = {
        "selection": {
            "real_720s": f"QUALITY == 0 and Longitude <= {max_abs_lon:g} deg (absolute distance from "
                         "the central meridian)",
            "real_los": "as published (NOAA-numbered HARPs, QUALITY < 65536); no longitude column, no cut",
            "synthetic": f"records with a HARP (bitmap >= 33), NOAA_AR > 0 and |LON_FWT| <= {max_abs_lon:g} deg",
            "r_value_note": "JSOC computes R_VALUE on the line-of-sight magnetogram; the synthetic "
                            "records have none, their Br stands in for it",
        },
        "n": {"synthetic_records": int(len(syn)), "synthetic_selected": int(len(s)),
              "synthetic_regions": int(s["harpnum"].nunique()),
              "synthetic_without_harp": int((~syn["has_harp"]).sum()),
              "real_720s": int(len(real)), "real_720s_regions": int(real["region"].nunique())},
        "ks": {"log_usflux": ks(s_lu, r_lu),
               "r_value_nonzero": ks(s_r[s_r > 0], r_r[r_r > 0]),
               "area_acr": ks(s["area_acr"], real["area_acr"])},
        "zero_fraction": zero,
        "median": {"log_usflux": {"synthetic": float(np.median(s_lu)), "real_720s": float(np.median(r_lu))},
                   "r_value_nonzero": {"synthetic": float(np.median(s_r[s_r > 0])),
                                       "real_720s": float(np.median(r_r[r_r > 0]))}},
        "by_flux": {"synthetic": by_flux(s["usflux"], s_r), "real_720s": by_flux(real["usflux"], r_r)},
        "targets": {"ks_max": KS_TARGET, "zero_fraction_tol": ZERO_FRACTION_TOL},
    }
    if los is not None:
        l_r = los["r_value"].to_numpy()
        out["n"]["real_los"] = int(len(los))
        out["n"]["real_los_regions"] = int(los["region"].nunique())
        zero["real_los"] = float((l_r == 0).mean())
        out["ks"]["r_value_nonzero_los"] = ks(s_r[s_r > 0], l_r[l_r > 0])
        out["ks"]["area_los"] = ks(s["area"], los["area"])
        out["median"]["r_value_nonzero"]["real_los"] = float(np.median(l_r[l_r > 0]))
    out["pass"] = {"log_usflux": out["ks"]["log_usflux"] < KS_TARGET,
                   "r_value_nonzero": out["ks"]["r_value_nonzero"] < KS_TARGET,
                   "zero_fraction": abs(zero["synthetic"] - zero["real_720s"]) <= ZERO_FRACTION_TOL}
    per_region = int(round(len(s) / max(s["harpnum"].nunique(), 1)))
    out["noise_floor"] = noise_floor(real, s["harpnum"].nunique(), max(per_region, 1), noise_reps, seed)
    return out


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------
SYN_COLOR = "tab:orange"
LOS_COLOR = "0.45"


def population_figure(real: pd.DataFrame, los: pd.DataFrame | None, syn: pd.DataFrame,
                      summary: dict, max_abs_lon: float = MAX_ABS_LON_DEG):
    """Real population vs synthetic (seaborn): log10 USFLUX, non-zero R_VALUE, the R_VALUE = 0
    fraction and median R_VALUE per flux bin, R_VALUE against USFLUX, AREA and AREA_ACR.
    Returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .report.style import REAL_COLOR

    s = select_synthetic(syn, max_abs_lon)
    n_real, n_syn = len(real), len(s)
    lab_real, lab_syn = f"real, hmi.sharp_720s (n={n_real})", f"synthetic (n={n_syn})"
    lab_los = f"real, LOS table (n={len(los)})" if los is not None else ""
    palette = {lab_real: REAL_COLOR, lab_syn: SYN_COLOR, lab_los: LOS_COLOR}
    ks_, zero = summary["ks"], summary["zero_fraction"]
    nf = summary["noise_floor"]

    def long(col, frames):
        return pd.concat([pd.DataFrame({"v": f[col].to_numpy(float), "set": lab}) for lab, f in frames],
                         ignore_index=True)

    with sns.axes_style("ticks"):  # seaborn's look for these axes only, global rcParams untouched
        fig, axes = plt.subplots(2, 3, figsize=(15, 8.6), constrained_layout=True)

    ax = axes[0, 0]
    d = long("usflux", [(lab_real, real), (lab_syn, s)])
    d["v"] = np.log10(d["v"])
    sns.histplot(d, x="v", hue="set", stat="density", common_norm=False, bins=np.arange(19.5, 23.6, 0.1),
                 element="step", fill=True, alpha=0.25, palette=palette, ax=ax)
    ax.set_xlabel("log10 USFLUX [Mx]  (conf_disambig>=70 & bitmap>=30)")
    ax.set_title(f"log10 USFLUX: KS {ks_['log_usflux']:.3f}\n(a real sample of this size: "
                 f"{nf['ks_log_usflux_p50']:.3f}, 95 % < {nf['ks_log_usflux_p95']:.3f})")

    ax = axes[0, 1]
    frames = [(lab_real, real[real.r_value > 0]), (lab_syn, s[s.r_value > 0])]
    if los is not None:
        frames.insert(1, (lab_los, los[los.r_value > 0]))
    d = long("r_value", frames)
    sns.histplot(d, x="v", hue="set", stat="density", common_norm=False, bins=np.arange(1.0, 6.01, 0.1),
                 element="step", fill=False, palette=palette, ax=ax, linewidth=1.4)
    ax.set_xlabel("R_VALUE > 0 [log10 Mx]  (synthetic: on Br, standing in for the LOS field)")
    los_txt = f"; vs LOS table {ks_['r_value_nonzero_los']:.3f}" if "r_value_nonzero_los" in ks_ else ""
    ax.set_title(f"non-zero R_VALUE: KS {ks_['r_value_nonzero']:.3f} vs 720s{los_txt}\n(a real sample "
                 f"of this size: {nf['ks_r_value_nonzero_p50']:.3f}, 95 % < {nf['ks_r_value_nonzero_p95']:.3f})")

    ax = axes[0, 2]
    rows = []
    for lab, key in ((lab_real, "real_720s"), (lab_syn, "synthetic")):
        for b in summary["by_flux"][key]:
            if b["n"] >= 5:
                rows.append({"set": lab, "log_usflux": 0.5 * sum(b["log_usflux"]),
                             "zero_fraction": b["zero_fraction"], "r_median": b["r_value_median"]})
    d = pd.DataFrame(rows)
    sns.lineplot(d, x="log_usflux", y="zero_fraction", hue="set", marker="o", palette=palette, ax=ax)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("log10 USFLUX [Mx] (bin centre)")
    ax.set_ylabel("fraction with R_VALUE = 0")
    los_z = f", LOS table {zero['real_los']:.2f}" if "real_los" in zero else ""
    ax.set_title(f"records with R_VALUE = 0: synthetic {zero['synthetic']:.2f}\nreal: 720s "
                 f"{zero['real_720s']:.2f}{los_z}")

    ax = axes[1, 0]
    rr = real[real.r_value > 0]
    ax.hexbin(np.log10(rr["usflux"]), rr["r_value"], gridsize=40, cmap="Blues", mincnt=1,
              extent=(19.5, 23.5, 1.0, 6.0))
    ss = s[s.r_value > 0]
    ax.scatter(np.log10(ss["usflux"]), ss["r_value"], s=6, color=SYN_COLOR, alpha=0.6, label=lab_syn)
    ax.plot([], [], "s", color=REAL_COLOR, label=f"{lab_real} (density)")
    ax.set_xlim(19.5, 23.5)
    ax.set_ylim(1.0, 6.0)
    ax.set_xlabel("log10 USFLUX [Mx]")
    ax.set_ylabel("R_VALUE > 0")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("R_VALUE against USFLUX\n(non-zero values)")

    ax = axes[1, 1]
    if los is not None:
        d = long("area", [(lab_los, los), (lab_syn, s)])
        d = d[d["v"] > 0]
        d["v"] = np.log10(d["v"])
        sns.histplot(d, x="v", hue="set", stat="density", common_norm=False, bins=40, element="step",
                     fill=True, alpha=0.25, palette=palette, ax=ax)
        ax.set_title(f"HARP area (bitmap >= 33)\nKS {ks_.get('area_los', float('nan')):.3f} vs LOS table")
    else:
        ax.set_axis_off()
    ax.set_xlabel("log10 AREA [micro-hemispheres]")

    ax = axes[1, 2]
    d = long("area_acr", [(lab_real, real), (lab_syn, s)])
    d = d[d["v"] > 0]
    d["v"] = np.log10(d["v"])
    sns.histplot(d, x="v", hue="set", stat="density", common_norm=False, bins=40, element="step",
                 fill=True, alpha=0.25, palette=palette, ax=ax)
    ax.set_xlabel("log10 AREA_ACR [micro-hemispheres]")
    ax.set_title(f"active HARP area (bitmap = 34)\nKS {ks_['area_acr']:.3f} vs 720s")

    fig.suptitle("synthetic SHARP population vs real JSOC keywords "
                 f"(720s table: QUALITY = 0, |lon| <= {max_abs_lon:g} deg; targets KS < {KS_TARGET:g}, "
                 f"|zero fraction difference| <= {ZERO_FRACTION_TOL:g})", fontsize=11)
    for ax in axes.flat:
        leg = ax.get_legend()
        if leg is not None:
            leg.set_title(None)
            for t in leg.get_texts():
                t.set_fontsize(8)
    return fig
