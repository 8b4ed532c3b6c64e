"""Report figures of the retrieval: queries with their matches, query-vs-match scatter.
Each ``fig_*`` draws from arrays; the ``build_*`` next to it reads the pipeline outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpgen.parameters import HEADLINE, REQUESTABLE, polarity_even  # noqa: E402
from sharpgen.report.style import (  # noqa: E402
    source_name,
    GEN_COLOR,
    METHOD_LABELS,
    REAL_COLOR,
    br_colorbar,
    is_log_param,
    method_name,
    off,
    param_label,
    pick,
    show_br,
    suptitle,
    symmetric_vmax,
)
from sharpgen.store import PatchStore, read_images  # noqa: E402

#: parameters of the scatter figure: the headline ones that do not depend on the polarity order
SCATTER_PARAMETERS = tuple(p for p in REQUESTABLE if polarity_even(p))


def read_matches(path, query_set: str | None) -> pd.DataFrame:
    """matches.parquet restricted to one query set (if the column exists), method names
    normalised to simsiam / oracle_physical_euclidean / oracle_physical_mahalanobis / random."""
    df = pd.read_parquet(path)
    if query_set and "query_set" in df.columns:
        if not (df["query_set"] == query_set).any():
            raise ValueError(f"{path}: no matches for query set {query_set!r} "
                             f"(has {sorted(df['query_set'].unique())})")
        df = df[df["query_set"] == query_set]
    df = df.assign(method=df["method"].map(method_name))
    if "rank" in df.columns:
        df = df[df["rank"] == df["rank"].min()]
    return df


def fig_retrieval_examples(queries_gauss: np.ndarray, matches_gauss: Mapping[str, np.ndarray],
                           match_labels: Mapping[str, Sequence[str]],
                           query_labels: Sequence[str] | None = None,
                           db_name: str = "real SHARP") -> Figure:
    """Generated queries (first column) and the record each method retrieves for them from the
    database (``db_name`` names its source: synthetic data is never called real).

    queries_gauss: (Q, S, S) [G]; matches_gauss: {method: (Q, S, S) [G]}; match_labels: {method:
    Q strings, e.g. "HARP 377\\n2011.02.15_00:00"}. One colour scale for the whole figure.
    """
    methods = list(matches_gauss)
    q = len(queries_gauss)
    cols = 1 + len(methods)
    vmax = symmetric_vmax(np.concatenate([queries_gauss.ravel()] +
                                         [np.asarray(m).ravel() for m in matches_gauss.values()]))
    fig, axes = plt.subplots(q, cols, figsize=(2.15 * cols + 0.9, 2.3 * q + 0.4),
                             layout="constrained", squeeze=False)
    im = None
    for i in range(q):
        im = show_br(axes[i, 0], queries_gauss[i], vmax)
        axes[i, 0].set_xlabel(query_labels[i] if query_labels is not None else f"query {i}",
                              fontsize=7)
        for j, m in enumerate(methods, start=1):
            show_br(axes[i, j], matches_gauss[m][i], vmax)
            axes[i, j].set_xlabel(match_labels[m][i], fontsize=7)
    for ax in axes.ravel():
        off(ax)
    axes[0, 0].set_title("generated query", fontsize=9)
    for j, m in enumerate(methods, start=1):
        axes[0, j].set_title(METHOD_LABELS.get(m, m), fontsize=9)
    br_colorbar(fig, im, ax=axes, shrink=0.4, aspect=30)
    suptitle(fig, f"Retrieval: nearest {db_name} patch to a generated query")
    return fig


def build_retrieval_examples(inp: Mapping, cfg: Mapping) -> Figure:
    """Generated queries with their SimSiam / physical matches (inputs: matches, patches, table,
    generated)."""
    rc = cfg["retrieval"]
    qset = rc.get("query_set", "generated")
    df = read_matches(inp["matches"], qset)
    methods = [m for m in ("simsiam", "oracle_physical_euclidean", "oracle_physical_mahalanobis")
               if (df["method"] == m).any()]
    common = set(df["query_id"])
    for m in methods:
        common &= set(df.loc[df["method"] == m, "query_id"])
    qids = np.array(sorted(common))
    qids = qids[pick(len(qids), int(rc["n_examples"]), int(cfg["seed"]))]
    store = PatchStore.open(inp["patches"], inp["table"])
    clip = np.float32(store.clip_gauss)
    if qset == "generated":
        queries = read_images(inp["generated"], qids) * clip
        qlabels = [f"generated #{q}" for q in qids]
    else:  # real query set: query_id is a patch-table row
        queries = store.read(qids, gauss=True)
        t = pd.read_parquet(inp["table"], columns=["row", "harpnum", "t_rec"]).set_index("row")
        qlabels = [f"query HARP {int(t.loc[q, 'harpnum'])}\n{t.loc[q, 't_rec']}" for q in qids]
    matches, labels = {}, {}
    for m in methods:
        d = df[df["method"] == m].drop_duplicates("query_id").set_index("query_id").loc[qids]
        matches[m] = store.read(d["match_row"].to_numpy(), gauss=True)
        labels[m] = [f"HARP {int(h)}\n{t}" for h, t in zip(d["match_harpnum"], d["match_t_rec"])]
    table = store.partial_table(["source"])
    split = "+".join(sorted(map(str, df["match_split"].unique()))) if "match_split" in df and len(df) else ""
    return fig_retrieval_examples(queries, matches, labels, qlabels,
                                  db_name=f"{source_name(table)}" + (f" ({split} split)" if split else ""))


def matches_long(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Wide matches table (query_<p>, match_<p>) -> long (method, parameter, query, match)."""
    parts = []
    for p in params:
        if f"query_{p}" in df.columns and f"match_{p}" in df.columns:
            parts.append(pd.DataFrame({"method": df["method"].to_numpy(), "parameter": p,
                                       "query": df[f"query_{p}"].to_numpy(float),
                                       "match": df[f"match_{p}"].to_numpy(float)}))
    if not parts:
        raise ValueError("matches table has no query_<p>/match_<p> columns")
    return pd.concat(parts, ignore_index=True)


def fig_retrieval_scatter(pairs: pd.DataFrame, params: Sequence[str], methods: Sequence[str],
                          n_bins: int = 25, reference: Mapping[str, float] | None = None,
                          reference_label: str = "paper") -> Figure:
    """2-D histograms of query vs matched parameter value, one row per parameter, one column per
    retrieval method, with Pearson r and Spearman rho in each panel.

    pairs: long table with columns ``method``, ``parameter``, ``query``, ``match`` (physical units).
    Flux-like parameters are shown as log10 |value|. The numbers in each panel are those of
    retrieval/evaluation.json (:func:`sharpgen.retrieval.correlations`): Pearson r in fit space
    (log10 fluxes) over pairs where both are defined -- for r_value both non-zero, with the
    R = 0 agreement and the all-pairs r beside it -- and Spearman rho. ``reference``: optional
    {param: Pearson r} (e.g. the paper's SimSiam values, on the paper's own protocol) written in
    the first column.
    """
    from sharpgen.retrieval import correlations

    params = [p for p in params if (pairs["parameter"] == p).any()]
    methods = [m for m in methods if (pairs["method"] == m).any()]
    fig, axes = plt.subplots(len(params), len(methods),
                             figsize=(2.75 * len(methods) + 0.6, 2.55 * len(params) + 0.4),
                             layout="constrained", squeeze=False)
    for i, p in enumerate(params):
        sub = pairs[pairs["parameter"] == p]
        allv = np.concatenate([sub["query"].to_numpy(float), sub["match"].to_numpy(float)])
        log = is_log_param(p, allv)

        def tr(a, _log=log):
            if not _log:
                return a
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(a > 0, np.log10(np.where(a > 0, a, 1.0)), np.nan)

        tv = tr(allv)
        tv = tv[np.isfinite(tv)]
        lo, hi = np.percentile(tv, [1, 99]) if tv.size else (0, 1)
        hi = hi if hi > lo else lo + 1
        edges = np.linspace(lo, hi, n_bins + 1)
        for j, m in enumerate(methods):
            ax = axes[i, j]
            d = sub[sub["method"] == m]
            xr, yr = d["query"].to_numpy(float), d["match"].to_numpy(float)
            ok = np.isfinite(xr) & np.isfinite(yr)
            xr, yr = xr[ok], yr[ok]
            x, y = tr(xr), tr(yr)
            drawn = np.isfinite(x) & np.isfinite(y)
            ax.hist2d(x[drawn], y[drawn], bins=[edges, edges], cmap="Blues", cmin=1,
                      rasterized=True)
            ax.plot([lo, hi], [lo, hi], color="crimson", lw=0.9, ls="--")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            c = correlations(pd.DataFrame({p: xr}), pd.DataFrame({p: yr}), [p])[p]
            if np.isfinite(c["pearson"]):
                txt = f"r = {c['pearson']:.2f}\n" + r"$\rho$ = " + f"{c['spearman']:.2f}\nn = {c['n']}"
            else:
                txt = f"n = {c['n']}"
            if "zero_agreement" in c:
                txt += f"\n(both R > 0)\nR = 0 agreement {c['zero_agreement']:.0%}\nall pairs r = {c['pearson_all']:.2f}"
            n_off = int(np.sum(~(np.isfinite(x) & np.isfinite(y))))
            if n_off:
                txt += f"\n{n_off} pairs <= 0 not drawn"
            if j == 0 and reference and p in reference:
                txt += f"\n{reference_label} r = {reference[p]:.2f}"
            ax.text(0.04, 0.96, txt, transform=ax.transAxes, va="top", fontsize=7.5,
                    bbox=dict(fc="white", ec="0.7", alpha=0.85))
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(METHOD_LABELS.get(m, m), fontsize=9)
            lab = ("log10 " if log else "") + param_label(p)
            if j == 0:
                ax.set_ylabel(f"match {lab}", fontsize=7.5)
            ax.set_xlabel(f"query {lab}", fontsize=7.5)
    suptitle(fig, "Query vs retrieved-match parameters")
    return fig


def build_retrieval_scatter(inp: Mapping, cfg: Mapping) -> Figure:
    """Query vs match per parameter and method (inputs: matches)."""
    qset = cfg["retrieval"]["query_set"]
    df = read_matches(inp["matches"], qset)
    params = SCATTER_PARAMETERS
    ref = None
    if inp.get("evaluation") and qset == "generated":
        import json

        ref = json.loads(Path(inp["evaluation"]).read_text()).get("paper_pearson")
    fig = fig_retrieval_scatter(matches_long(df, params), params,
                                ["simsiam", "oracle_physical_euclidean", "oracle_physical_mahalanobis", "random"],
                                reference=ref, reference_label="paper (SimSiam)")
    suptitle(fig, f"Query ({qset}) vs retrieved-match parameters")
    return fig

def fig_memorisation(distances: Mapping[str, Mapping[str, Sequence[float]]], summary: Mapping[str, Mapping],
                     gen_gauss: np.ndarray, train_gauss: np.ndarray, pair_labels: Sequence[str]) -> Figure:
    """Memorisation check: per space, histograms of the nearest-training-patch distance of the
    generated images and of the held-out real patches; below, the closest generated/training
    pairs (generated on top, its nearest training patch underneath).

    distances: {space: {"generated": [...], "heldout": [...]}}; summary: {space: compare(...)};
    gen_gauss / train_gauss: (K, S, S) [G] the closest pairs; pair_labels: K strings.
    """
    spaces = [s for s in ("pixels_gauss", "simsiam_cosine") if s in distances]
    titles = {"pixels_gauss": "pixel RMS difference [G]", "simsiam_cosine": "SimSiam cosine distance"}
    k = len(gen_gauss)
    ncols = max(k, 2 * len(spaces))
    fig = plt.figure(figsize=(1.7 * ncols + 0.6, 7.4), layout="constrained")
    gs = fig.add_gridspec(3, ncols, height_ratios=[1.3, 1, 1])
    span = ncols // max(len(spaces), 1)
    for i, space in enumerate(spaces):
        ax = fig.add_subplot(gs[0, i * span:(i + 1) * span])
        g = np.asarray(distances[space]["generated"], float)
        h = np.asarray(distances[space]["heldout"], float)
        bins = np.linspace(0, max(g.max(), h.max()) * 1.02, 30)
        ax.hist(h, bins=bins, weights=np.full(h.size, 1 / h.size), alpha=0.5, color=REAL_COLOR,
                label=f"held-out real (n={h.size})")
        ax.hist(g, bins=bins, weights=np.full(g.size, 1 / g.size), histtype="step", lw=1.6,
                color=GEN_COLOR, label=f"generated (n={g.size})")
        sm = summary.get(space, {})
        ax.set_title(f"nearest training patch: {titles[space]}\nratio of medians gen/held-out "
                     f"{sm.get('ratio_generated_to_heldout', float('nan')):.2f}; closer than any held-out: "
                     f"{sm.get('frac_generated_closer_than_any_heldout', float('nan')):.1%}", fontsize=8.5)
        ax.set_xlabel(titles[space])
        ax.set_ylabel("fraction")
        ax.legend(fontsize=7)
    vmax = symmetric_vmax(np.concatenate([np.ravel(gen_gauss), np.ravel(train_gauss)]))
    im = None
    for j in range(k):
        for row, imgs, lab in ((1, gen_gauss, "generated"), (2, train_gauss, "nearest training")):
            ax = fig.add_subplot(gs[row, j])
            im = show_br(ax, imgs[j], vmax)
            off(ax)
            ax.set_xlabel(f"{lab}\n{pair_labels[j]}" if row == 2 else lab, fontsize=7)
    if im is not None:
        br_colorbar(fig, im, ax=fig.axes[-1], shrink=0.8)
    suptitle(fig, "Memorisation check: generated images vs the GAN's training patches, against "
                  "held-out real patches as the reference")
    return fig


def build_memorisation(inp: Mapping, cfg: Mapping) -> Figure:
    """Memorisation check (inputs: evaluation, patches, generated)."""
    ev = json.loads(Path(inp["evaluation"]).read_text())
    mem = ev.get("memorisation")
    if not mem:
        raise ValueError(f"{inp['evaluation']} has no memorisation check")
    store = PatchStore.open(inp["patches"])
    pairs = mem["closest_pairs"]
    gen = read_images(inp["generated"], [p["generated"] for p in pairs]) * np.float32(store.clip_gauss)
    train = store.read([p["train_row"] for p in pairs], gauss=True)
    labels = [f"#{p['generated']} vs row {p['train_row']}\n{p['rms_gauss']:.0f} G RMS" for p in pairs]
    return fig_memorisation(mem["distances"], {k: v for k, v in mem.items() if isinstance(v, dict) and "median_generated" in v},
                            gen, train, labels)


# --------------------------------------------------------------------------------------------
# generated queries against the real SHARP records of ../shared/data (rule real_records)
# --------------------------------------------------------------------------------------------
def fig_real_records(summary: Mapping, real_gauss: np.ndarray, queries_gauss: np.ndarray) -> Figure:
    """Generated queries (top row) with their two nearest real SHARP records (cosine of the
    SimSiam embeddings, below), the top-1 cosine distributions against like-for-like
    references, and query vs top-1 real record log10 TUF (SimSiam and the physical oracle).

    ``summary``: real_records.json (:mod:`sharpgen.real_records`); ``real_gauss``: the real
    patches (N, S, S) [G]; ``queries_gauss``: the example queries (E, S, S) [G], in the order
    of ``summary["examples"]``.
    """
    examples = summary["examples"]
    recs = summary["records"]
    n_ex = max(len(examples), 1)
    n_match = min(2, max((len(e["matches"]) for e in examples), default=0))
    fig = plt.figure(figsize=(max(1.9 * n_ex + 1.2, 13.0), 1.9 * (1 + n_match) + 4.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.9 * (1 + n_match), 4.0])
    axes = top.subplots(1 + n_match, n_ex, squeeze=False)
    vmax = symmetric_vmax(np.concatenate([queries_gauss.reshape(-1), real_gauss.reshape(-1)]))
    im = None
    for ax in axes.flat:
        off(ax)
    for j, e in enumerate(examples):
        im = show_br(axes[0, j], queries_gauss[j], vmax)
        axes[0, j].set_title(f"generated #{e['sample']}\nTUF {e.get('tuf', np.nan):.2g} Mx", fontsize=8)
        for r, m in enumerate(e["matches"][:n_match]):
            rec = recs[m["record"]]
            show_br(axes[1 + r, j], real_gauss[m["record"]], vmax)
            axes[1 + r, j].set_title(f"#{r + 1}: HARP {rec['harpnum']}, cos {m['cosine']:.3f}\n"
                                     f"{str(rec['t_rec'])[:16]}, TUF {rec.get('tuf', np.nan):.2g}", fontsize=7)
    axes[0, 0].set_ylabel("query", fontsize=8)
    for r in range(n_match):
        axes[1 + r, 0].set_ylabel(f"real match #{r + 1}", fontsize=8)
    if im is not None:
        br_colorbar(top, im, ax=axes, shrink=0.8)
    ax_cos, ax_tab = bottom.subplots(1, 2, width_ratios=[1.1, 1.0])

    cos = summary["cosine"]
    ax = ax_cos
    labels = {"generated_to_real_top1": f"generated -> {summary['n_real_records']} real records",
              "generated_to_synthetic_subset_top1": f"generated -> {summary['synthetic_subsets']['size']} "
                                                    "held-out synthetic (random subsets)",
              "real_to_synthetic_train_top1": "real records -> synthetic training set",
              "heldout_synthetic_to_train_top1": "held-out synthetic -> synthetic training set"}
    for y, (key, lab) in enumerate(labels.items()):
        d = cos.get(key, {})
        if d.get("median") is None:
            continue
        color = REAL_COLOR if key.startswith("real") or key == "generated_to_real_top1" else GEN_COLOR
        ax.errorbar(d["median"], y, xerr=[[d["median"] - d["p10"]], [d["p90"] - d["median"]]], fmt="o",
                    color=color, capsize=4)
        ax.text(d["median"], y + 0.22, f"{d['median']:.3f}", ha="center", fontsize=8)
    ax.set_yticks(range(len(labels)), list(labels.values()), fontsize=8)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 cosine similarity (median, 10-90 %)")
    ax.set_title("nearest-neighbour similarity: real records against like-for-like synthetic references",
                 fontsize=9)

    ax = ax_tab
    corr = summary.get("correlations", {})
    rows = []
    for method, key in (("SimSiam", "simsiam"), ("physical oracle", "params_euclidean"), ("random", "random")):
        c = corr.get(key, {})
        rows.append([method] + [c.get(p, {}).get("pearson") for p in HEADLINE])
    sub = summary["synthetic_subsets"]["simsiam_pearson_median"]
    rows.append(["SimSiam, synthetic subsets"] + [sub.get(p) for p in HEADLINE])
    cells = [[r[0]] + [("-" if v is None or not np.isfinite(v) else f"{v:.2f}") for v in r[1:]] for r in rows]
    ax.axis("off")
    t = ax.table(cellText=cells, colLabels=["query vs top-1 Pearson", "log TUF", "PSEP", "R_VALUE"],
                 loc="upper center", cellLoc="center", colWidths=[0.4, 0.2, 0.2, 0.2])
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1, 1.3)
    ss = summary["real_self_retrieval"]
    lines = [f"SimSiam top-1 = oracle top-1: {summary['oracle_agreement_top1']:.2f} "
             f"(synthetic subsets {summary['synthetic_subsets']['oracle_agreement_top1']:.2f}, "
             f"chance {summary['chance_top1']:.2f})",
             f"most frequent top-1 record: {summary['hubness']['max_top1_share']:.0%} of queries; "
             f"{summary['hubness']['n_distinct_top1']} of {summary['n_real_records']} records ever top-1"]
    if ss.get("same_harp_top1") is not None:
        lines.append(f"real -> other real records: same HARP at top-1 {ss['same_harp_top1']:.2f} "
                     f"(chance {ss['chance']:.2f}, {ss['n_queries']} records)")
    ax.text(0.5, 0.12, "\n".join(lines), ha="center", va="bottom", fontsize=8, transform=ax.transAxes)
    suptitle(fig, f"{summary['n_queries']} generated queries against {summary['n_real_records']} real SHARP "
                  f"Br records (../shared/data), SimSiam encoder trained on "
                  f"{', '.join(summary.get('training_data_source') or ['?'])} patches", fontsize=10)
    return fig


def build_real_records(inp: Mapping, cfg: Mapping) -> Figure:
    summary = json.loads(Path(inp["summary"]).read_text())
    with np.load(inp["real_patches"]) as z:
        clip = float(z["clip_gauss"])
        real = z["real_patches"] * clip
        queries = z["example_queries"] * clip
    return fig_real_records(summary, real, queries)
