"""Shared look of every report figure: colours, units and labels from the parameter registry,
Br image drawing, small layout helpers, the table figure, and atomic PNG/PDF saving.

Conventions
-----------
* Magnetograms are passed in Gauss, shape ``(N, S, S)`` (or ``(S, S)``), and drawn with a grey
  colour map centred on 0 G (symmetric ``vmin = -vmax``) with a labelled ``B_r [G]`` colour bar.
* Parameter names are the registry's (:mod:`sharpgen.parameters`): units and which parameters
  are drawn on log axes come from there.
* Randomness (which samples are shown) is driven by an explicit ``seed`` argument.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpgen.atomic import atomic_path  # noqa: E402
from sharpgen.parameters import PARAMETERS, is_log_fit, order  # noqa: E402

BR_CMAP = "gray"


DIV_CMAP = "RdBu_r"


REAL_COLOR = "tab:blue"


GEN_COLOR = "tab:orange"


METHOD_LABELS = {
    "simsiam": "SimSiam",
    "oracle_physical_euclidean": "oracle: physical (Euclidean)",
    "oracle_physical_mahalanobis": "oracle: physical (Mahalanobis)",
    "random": "random",
}


#: retrieval method names in matches.parquet -> names used in the report and metrics.json
RETRIEVAL_METHOD_ALIASES = {"params_euclidean": "oracle_physical_euclidean",
                            "params_mahalanobis": "oracle_physical_mahalanobis"}


def param_unit(name: str) -> str:
    """Unit string of parameter ``name`` from the registry ("" for names it does not know)."""
    info = PARAMETERS.get(name)
    return info.unit if info is not None else ""


def param_label(name: str) -> str:
    """Axis label ``name [unit]``."""
    unit = param_unit(name)
    return f"{name} [{unit}]" if unit else name


def is_log_param(name: str, values: np.ndarray | None = None) -> bool:
    """True for the registry's log_fit parameters (fluxes), drawn on log axes; False when
    ``values`` has no positive finite value (an all-zero column cannot go on a log axis)."""
    if not is_log_fit(name):
        return False
    if values is None:
        return True
    v = np.abs(np.asarray(values, dtype=float))
    return bool(np.any(np.isfinite(v) & (v > 0)))


def canonical_order(names) -> list[str]:
    """Parameter (or direction) names in registry order (the paper's tables: fluxes,
    separations, R); conditional keys right after their target; unknown names last."""
    return order(names)


def method_name(m: str) -> str:
    return RETRIEVAL_METHOD_ALIASES.get(m, m)


def save_figure(fig: Figure, png: str | Path, pdf: str | Path | None = None, dpi: int = 130) -> None:
    """Write ``fig`` to ``png`` (and ``pdf``) atomically, without time stamps, then close it."""
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    if pdf is not None:
        with atomic_path(pdf, suffix=".pdf") as tmp:
            fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None,
                                                     "Producer": None})
    plt.close(fig)


def symmetric_vmax(images: np.ndarray, percentile: float = 99.5, floor: float = 1.0) -> float:
    """Symmetric colour limit [G]: the ``percentile`` of |B_r| over ``images`` (at least ``floor``)."""
    a = np.abs(np.asarray(images, dtype=float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return floor
    return float(max(np.percentile(a, percentile), floor))


def show_br(ax, img_gauss: np.ndarray, vmax: float, extent=None, aspect="equal"):
    """Draw one Br map (S,S) [G] on ``ax`` with a grey map centred on 0 G; returns the image."""
    im = ax.imshow(np.asarray(img_gauss, dtype=float), cmap=BR_CMAP, vmin=-vmax, vmax=vmax,
                   origin="lower", interpolation="nearest", extent=extent, aspect=aspect)
    return im


def br_colorbar(fig: Figure, mappable, ax=None, cax=None, **kw):
    """Labelled Gauss colour bar for a Br image."""
    cb = fig.colorbar(mappable, ax=ax, cax=cax, **kw)
    cb.set_label(r"$B_r$ [G]")
    return cb


def suptitle(fig: Figure, text: str, fontsize: float = 11) -> None:
    """Figure title wrapped to the figure width (never clipped at the edges)."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")),
                 fontsize=fontsize)


def off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def pick(n_total: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = min(n, n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def format_value(param: str, value: float) -> str:
    """Short text for a parameter value with its unit, e.g. ``tuf=3.1e+22 Mx``."""
    if value is None or not np.isfinite(value):
        return f"{param}=nan"
    unit = param_unit(param)
    if abs(value) >= 1e4 or (abs(value) < 1e-2 and value != 0):
        s = f"{value:.2e}"
    else:
        s = f"{value:.3g}"
    return f"{param}={s}" + (f" {unit}" if unit and not unit.startswith("log") else "")


def fig_table(df: pd.DataFrame, title: str, fmt: str = "{:.3f}") -> Figure:
    """Render a small DataFrame (index = row labels) as a table figure."""
    cells = [[fmt.format(v) if isinstance(v, (float, np.floating)) and np.isfinite(v)
              else ("-" if isinstance(v, (float, np.floating)) else str(v)) for v in row]
             for row in df.to_numpy()]
    fig, ax = plt.subplots(figsize=(1.6 + 1.55 * len(df.columns), 0.9 + 0.33 * len(df)),
                           layout="constrained")
    ax.axis("off")
    t = ax.table(cellText=cells, rowLabels=[str(i) for i in df.index],
                 colLabels=[str(c) for c in df.columns], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(9)
    t.scale(1, 1.35)
    ax.set_title(title)
    return fig


#: how each data source is named on figures: synthetic records are never called real
SOURCE_NAMES = {"synthetic": "synthetic SHARP-like", "jsoc": "real SHARP (JSOC)", "local": "real SHARP (local files)"}


def source_name(table: pd.DataFrame | None) -> str:
    """Name of the data source(s) of a patch table (its ``source`` column) for titles:
    'synthetic SHARP-like', 'real SHARP (JSOC)', or a mix such as 'synthetic + real ...'."""
    if table is None or "source" not in table.columns or table.empty:
        return "SHARP (source not recorded)"
    names = [SOURCE_NAMES.get(str(s), str(s)) for s in pd.unique(table["source"].astype(str))]
    return " + ".join(sorted(names))
