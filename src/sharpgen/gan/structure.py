"""A latent space laid out by the physical parameters (``gan.structure``; issue "generator
realism and linear structure"; measured in docs/gan.md).

Without it the parameters are mostly non-linear functions of z and the SVM boundaries of the
directions stage all find the one shared "size" direction (unit normals with cosines ~0.95
whatever the parameters' own correlations). With ``gan.structure: [tuf, psep, r_value]`` the
generator is trained, besides the adversarial loss, to make each listed parameter a monotone
function of one fixed latent axis:

* **axes** ``A`` (K, nz): ``u = z A^T`` (B, K) mixes the first K coordinates of z by the lower
  Cholesky factor of ``C``, the correlation (of the normal scores) of the K parameters among the
  training patches: of their soft proxies (``gan.structure_correlation: proxies``) or of the
  pipeline's own parameters (``parameters``: R = 0 tied, as the directions stage ranks it). So
  ``u_k ~ N(0, 1)``, ``corr(u_i, u_j) = C_ij`` and ``cos(A_i, A_j) = C_ij``: the latent axes
  are as correlated as the parameters are in the real population (a Gaussian copula of the
  real parameters).
* **target** of parameter k for latent z: the real quantile at ``Phi(u_k)`` (``Phi`` the normal
  CDF), i.e. the value with the same rank among the training patches. Hence if G meets the
  targets, the generated marginals equal the real ones and the joint distribution has the real
  rank correlations.
* **loss**: ``weight * mean_k mean_b w_k ((p_k(G(z)) - target_k(z)) / sd_k)^2``, added to the
  generator's adversarial loss; ``sd_k`` the real standard deviation (a unit-free loss), ``w_k``
  the parameter's own factor (``gan.structure_parameter_weights``; 1 unless listed).
* **inversion-line term** (``gan.structure_pil_weight`` > 0, needs ``r_value`` in the list):
  R is 0 for a share ``r_free_share`` of the training patches (no 150 G polarity-inversion line
  on JSOC's ~2 arcsec grid), a tie the soft R proxy cannot see (an R-free patch can meet a
  mid-range soft R target). So a latent whose R target lies above that quantile
  (``Phi(u_R) > r_free_share``) should have an inversion line and one below it none:
  ``pil_weight * mean_b BCE(P(G(z)), Phi(u_R) > r_free_share)``, ``P`` the soft presence
  (:func:`pil_log_presence`, width ``PIL_TAU_GAUSS``).

The parameters are measured on the generator output by differentiable **proxies** (:func:`proxies`,
torch, batched) of the pipeline's definitions (:mod:`sharpgen.physics`, which thresholds at
150 G and is not differentiable): the 150 G masks are sigmoids of width ``tau`` (20 G), the
dilations are max-pools, R's Gaussian is a separable convolution; R is computed on a grid of
block means (``gan.structure_r_grid: mean``) or, as JSOC does, of every second pixel
(``point``). They are computed in patch units (pixels, store values in [-1, 1] times
``clip_gauss``), on the real patches and the generated ones alike, so only their ranks matter.
Their agreement with the pipeline's parameters is tested on real SHARP records
(tests/test_gan_structure.py) and measured in docs/gan.md.

Shapes: images ``(B, 1, S, S)`` float in [-1, 1]; latents ``(B, nz)``; proxies ``(B, K)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sharpgen.parameters import PARAMETER_NAMES, STRONG_GAUSS
from sharpgen.rvalue import R_VALUE_HWIDTH, _r_value_kernel

#: width of the soft 150 G threshold [G] (the default of ``gan.structure_tau_gauss``)
TAU_GAUSS = 20.0
#: R_VALUE proxy: sub-sampling step of the patch (JSOC: ~2 arcsec; the default crop grid is
#: ~1 arcsec per pixel)
R_VALUE_STEP = 2
#: how the R_VALUE proxy sub-samples (``gan.structure_r_grid``): ``mean`` (block means, the
#: default) or ``point`` (every ``R_VALUE_STEP``-th pixel, as JSOC's ``fsample``)
R_GRIDS = ("mean", "point")
#: whose correlation the latent axes take (``gan.structure_correlation``): ``proxies`` (the
#: normal scores of the soft proxies, the default) or ``parameters`` (of the pipeline's own
#: parameters, :func:`sharpgen.physics.compute_parameters`, of the same training patches: the
#: values the directions stage labels and correlates)
CORRELATION_SOURCES = ("proxies", "parameters")
#: r_paper proxy: side of the square dilating each polarity mask (as sharpgen.physics) [px]
R_PAPER_SIDE = 7
_EPS = 1e-6


def _soft_masks(x: torch.Tensor, clip_gauss: float, tau_gauss: float = TAU_GAUSS
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft 150 G polarity masks (B, 1, H, W) in (0, 1) of store-unit images ``x``: sigmoids of
    width ``tau_gauss`` [G] (``gan.structure_tau_gauss``)."""
    t, tau = STRONG_GAUSS / clip_gauss, tau_gauss / clip_gauss
    return torch.sigmoid((x - t) / tau), torch.sigmoid((-x - t) / tau)


def _centroids(x: torch.Tensor, clip_gauss: float, tau_gauss: float = TAU_GAUSS) -> tuple[torch.Tensor, ...]:
    """Flux-weighted centroids (y+, x+, y-, x-), each (B,), of the soft 150 G polarities, in
    units of the patch side (x = column, increasing westward)."""
    pos, neg = _soft_masks(x, clip_gauss, tau_gauss)
    S = x.shape[-1]
    grid = (torch.arange(S, device=x.device, dtype=x.dtype) + 0.5) / S
    wp, wn = F.relu(x) * pos, F.relu(-x) * neg

    def centroid(w):
        tot = w.sum(dim=(1, 2, 3)) + _EPS
        return (w.sum(dim=(1, 3)) @ grid) / tot, (w.sum(dim=(1, 2)) @ grid) / tot  # (y, x)

    return (*centroid(wp), *centroid(wn))


def _psep(x: torch.Tensor, clip_gauss: float, tau_gauss: float = TAU_GAUSS) -> torch.Tensor:
    """Distance of the flux-weighted centroids of the soft 150 G polarities, in units of the
    patch side. (B, 1, S, S) -> (B,)."""
    yp, xp, yn, xn = _centroids(x, clip_gauss, tau_gauss)
    return torch.sqrt((yp - yn).square() + (xp - xn).square() + _EPS)


#: lead_sign proxy: width of the tanh step in the centroids' x difference [fraction of the side]
LEAD_WIDTH = 0.02


def _lead_sign(x: torch.Tensor, clip_gauss: float, tau_gauss: float = TAU_GAUSS) -> torch.Tensor:
    """Soft sign of the leading (western, larger x) polarity: ``tanh((x+ - x-) / 0.02)`` of the
    soft 150 G centroids, +1 when the positive polarity leads. (B, 1, S, S) -> (B,)."""
    _, xp, _, xn = _centroids(x, clip_gauss, tau_gauss)
    return torch.tanh((xp - xn) / LEAD_WIDTH)


def _r_value_weights(pil: torch.Tensor) -> torch.Tensor:
    """R_VALUE's weights: the inversion-line map ``pil`` (B, 1, h, w) convolved with JSOC's
    41-tap Gaussian (separable, zero padding); same shape and dtype."""
    k = torch.tensor(_r_value_kernel(), dtype=pil.dtype, device=pil.device)
    w = F.conv2d(pil, k.view(1, 1, 1, -1), padding=(0, R_VALUE_HWIDTH))
    return F.conv2d(w, k.view(1, 1, -1, 1), padding=(R_VALUE_HWIDTH, 0))


def _r_value(x: torch.Tensor, clip_gauss: float, tau_gauss: float = TAU_GAUSS,
             grid: str = "mean") -> torch.Tensor:
    """Soft Schrijver R as JSOC computes R_VALUE: sub-sampling every ``R_VALUE_STEP`` px (``grid``
    ``mean``: block means; ``point``: the top-left pixel of each block, JSOC's ``fsample``), soft
    150 G masks dilated 3x3 (max-pool), their product (the polarity-inversion-line map) convolved
    with JSOC's Gaussian (sigma 10/2.3548 sub-sampled px), ``log10(1 + sum(weight * |B|[G]))``
    (JSOC: log10 of the sum, 0 below 1). (B, 1, S, S) -> (B,)."""
    if grid not in R_GRIDS:
        raise ValueError(f"R_VALUE proxy grid {grid!r} is not one of {list(R_GRIDS)}")
    if R_VALUE_STEP == 1:
        b = x
    elif grid == "point":
        b = x[:, :, ::R_VALUE_STEP, ::R_VALUE_STEP]
    else:
        b = F.avg_pool2d(x, R_VALUE_STEP)
    pos, neg = _soft_masks(b, clip_gauss, tau_gauss)
    pil = F.max_pool2d(pos, 3, 1, 1) * F.max_pool2d(neg, 3, 1, 1)
    total = (_r_value_weights(pil) * b.abs() * clip_gauss).sum(dim=(1, 2, 3))
    return torch.log10(1.0 + total)


def r_value_exact(x: torch.Tensor, clip_gauss: float) -> torch.Tensor:
    """R_VALUE of the images ``x`` (B, 1, S, S) in store units exactly as the pipeline measures
    it (:func:`sharpgen.rvalue.r_value`, JSOC's computeR) at a sub-sampling step of
    ``R_VALUE_STEP`` px: every 2nd pixel, hard 150 G masks dilated 3x3, the inversion line off
    the map's 1-pixel border (fresize's 0), JSOC's Gaussian, ``log10(sum(weight * int|B|))``
    and 0 where that sum is < 1. In float64, without a gradient. (B, 1, S, S) -> (B,) float64."""
    with torch.no_grad():
        b = x.double()[:, :, ::R_VALUE_STEP, ::R_VALUE_STEP] * clip_gauss
        p1 = (F.max_pool2d((b > STRONG_GAUSS).double(), 3, 1, 1)
              * F.max_pool2d((b < -STRONG_GAUSS).double(), 3, 1, 1))
        p1[..., [0, -1], :] = 0.0
        p1[..., :, [0, -1]] = 0.0
        total = (_r_value_weights(p1) * b.abs().trunc()).sum(dim=(1, 2, 3))
        return torch.where(total >= 1.0, torch.log10(total.clamp_min(1.0)), torch.zeros_like(total))


def _r_paper(x: torch.Tensor, clip_gauss: float, tau_gauss: float = TAU_GAUSS) -> torch.Tensor:
    """Soft paper R: soft 150 G masks dilated by a 7x7 square (max-pool), ``log10`` of the mean
    of |x| where both dilated masks are on. (B, 1, S, S) -> (B,)."""
    pos, neg = _soft_masks(x, clip_gauss, tau_gauss)
    r = R_PAPER_SIDE // 2
    pil = F.max_pool2d(pos, R_PAPER_SIDE, 1, r) * F.max_pool2d(neg, R_PAPER_SIDE, 1, r)
    return torch.log10((pil * x.abs()).mean(dim=(1, 2, 3)) + _EPS)


#: inversion-line presence: width of its soft 150 G threshold [G] (5 G: the soft presence of the
#: 672 default training patches splits them as R = 0 / R > 0 exactly, docs/gan.md)
PIL_TAU_GAUSS = 5.0


def _pil_logits(x: torch.Tensor, clip_gauss: float, tau_gauss: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, 1, h, w) each of the dilated soft 150 G positive and negative masks of width
    ``tau_gauss`` [G] on R_VALUE's grid: the map point-sampled every ``R_VALUE_STEP`` px (JSOC's
    ``fsample``), the logits max-pooled 3x3 (the dilation; sigmoid is monotone)."""
    b = x.float()[:, :, ::R_VALUE_STEP, ::R_VALUE_STEP]
    t, tau = STRONG_GAUSS / clip_gauss, tau_gauss / clip_gauss
    return F.max_pool2d((b - t) / tau, 3, 1, 1), F.max_pool2d((-b - t) / tau, 3, 1, 1)


def has_inversion_line(x: torch.Tensor, clip_gauss: float) -> torch.Tensor:
    """Whether R_VALUE is > 0, i.e. a pixel of R_VALUE's grid has |B| > 150 G of both signs
    within its 3x3 neighbourhood. (B, 1, S, S) store units -> (B,) bool."""
    pos, neg = _pil_logits(x, clip_gauss, 1.0)
    return ((pos > 0) & (neg > 0)).flatten(1).any(dim=1)


def pil_log_presence(x: torch.Tensor, clip_gauss: float, tau_gauss: float = PIL_TAU_GAUSS
                     ) -> torch.Tensor:
    """log of the soft presence P of a 150 G polarity-inversion line as R_VALUE sees it: the
    largest product of the dilated soft masks (:func:`_pil_logits`) over the pixels, in log
    space (logsigmoid) so that far-off pixels keep a gradient. (B, 1, S, S) -> (B,), <= 0."""
    a, c = _pil_logits(x, clip_gauss, tau_gauss)
    return (F.logsigmoid(a) + F.logsigmoid(c)).amax(dim=(1, 2, 3))


def pil_bce(x: torch.Tensor, has_pil: torch.Tensor, clip_gauss: float,
            tau_gauss: float = PIL_TAU_GAUSS) -> torch.Tensor:
    """Binary cross-entropy (B,) of the soft presence P (:func:`pil_log_presence`) of the images
    ``x`` (B, 1, S, S) against the labels ``has_pil`` (B,) bool: ``-log P`` for a line wanted,
    ``-log(1 - P)`` for none, ``1 - P`` per pixel as ``sigmoid(-a) + sigmoid(a) sigmoid(-c)`` in
    log space, so that a strong line (P = 1 in float32) keeps a finite loss and a gradient."""
    a, c = _pil_logits(x, clip_gauss, tau_gauss)
    la, lc = F.logsigmoid(a), F.logsigmoid(c)
    present = (la + lc).amax(dim=(1, 2, 3))
    absent = torch.logaddexp(F.logsigmoid(-a), la + F.logsigmoid(-c)).amin(dim=(1, 2, 3))
    return -torch.where(has_pil, present, absent)


def _log_mean(v: torch.Tensor) -> torch.Tensor:
    return torch.log10(v.mean(dim=(1, 2, 3)) + _EPS)


#: name -> proxy (B, 1, S, S) store units, clip_gauss, tau_gauss -> (B,), in fit space
_PROXIES = {
    "tuf": lambda x, c, t: _log_mean(x.abs()),
    "tpf": lambda x, c, t: _log_mean(F.relu(x)),
    "tnf": lambda x, c, t: _log_mean(F.relu(-x)),
    "psep": _psep,
    "lead_sign": _lead_sign,
    "r_paper": _r_paper,
    "r_value": _r_value,
}
#: parameters with a differentiable proxy (``gan.structure`` may list these), registry order
STRUCTURE_PARAMETERS = tuple(n for n in PARAMETER_NAMES if n in _PROXIES)


def check_names(names, key: str) -> tuple[str, ...]:
    """``names`` as a tuple of parameters with a proxy, each once; ValueError naming the config
    ``key`` (e.g. ``gan.structure``) otherwise."""
    names = tuple(str(n) for n in names)
    unknown = [n for n in names if n not in _PROXIES]
    if unknown:
        raise ValueError(f"{key}: no structure proxy for {unknown}; known: {list(STRUCTURE_PARAMETERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{key} lists a parameter twice: {list(names)}")
    return names


def proxies(x: torch.Tensor, names, clip_gauss: float, tau_gauss: float = TAU_GAUSS,
            r_grid: str = "mean", r_straight_through: bool = False) -> torch.Tensor:
    """Differentiable proxies (B, K) of the parameters ``names`` of the images ``x``
    (B, 1, S, S) in store units (Br / clip_gauss), in fit space: log10 of the fluxes (mean |x|,
    mean of the positive / negative part), psep as a fraction of the patch side, r_value and
    r_paper as :func:`_r_value` / :func:`_r_paper`; ``tau_gauss``: the width of the soft 150 G
    threshold; ``r_grid``: R_VALUE's sub-sampling (:data:`R_GRIDS`); ``r_straight_through``:
    r_value's value is the pipeline's own (:func:`r_value_exact`: hard masks, 0 with no
    inversion line) and its gradient the soft proxy's (a straight-through estimator). Float32
    whatever autocast does."""
    x = x.float()
    unknown = [n for n in names if n not in _PROXIES]
    if unknown:
        raise ValueError(f"no structure proxy for {unknown}; known: {list(STRUCTURE_PARAMETERS)}")

    def r_value(x):
        soft = _r_value(x, clip_gauss, tau_gauss, r_grid)
        if not r_straight_through:
            return soft
        return soft + (r_value_exact(x, clip_gauss).to(soft.dtype) - soft).detach()

    return torch.stack([r_value(x) if n == "r_value" else _PROXIES[n](x, clip_gauss, tau_gauss)
                        for n in names], dim=1)


def normal_scores(v: np.ndarray) -> np.ndarray:
    """Normal scores (N, K) of the columns of ``v`` (average ranks for ties)."""
    from scipy import stats

    ranks = np.column_stack([stats.rankdata(col) for col in v.T])
    return stats.norm.ppf((ranks - 0.5) / v.shape[0])


@dataclass
class LatentStructure:
    """What :func:`fit_structure` derives from the training patches (saved in generator.pt).

    ``names`` (K,), ``axes`` (K, nz): ``u = z axes^T``; ``quantiles`` (K, Q): the real proxy
    values at probabilities ``(i + 0.5) / Q``; ``sd`` (K,): their standard deviations;
    ``correlation`` (K, K): of the normal scores (``axes axes^T``); ``weight``; ``clip_gauss``;
    ``tau_gauss``: the proxies' soft-threshold width [G]; ``r_free_share``: the share of the
    training patches with no inversion line (R = 0; NaN without r_value); ``pil_weight``: the
    inversion-line term's weight (0 = off); ``r_grid``: the R_VALUE proxy's sub-sampling;
    ``correlation_source``: whose correlation ``correlation`` is (:data:`CORRELATION_SOURCES`);
    ``r_straight_through``: R's targets and loss take the pipeline's own R_VALUE as the value
    (:func:`r_value_exact`), the soft proxy's gradient (``gan.structure_r_straight_through``);
    ``parameter_weights`` (K,): each parameter's factor of the loss
    (``gan.structure_parameter_weights``; ones by default).
    """

    names: tuple[str, ...]
    axes: np.ndarray
    quantiles: np.ndarray
    sd: np.ndarray
    correlation: np.ndarray
    weight: float
    clip_gauss: float
    tau_gauss: float = TAU_GAUSS
    r_free_share: float = float("nan")
    pil_weight: float = 0.0
    r_grid: str = "mean"
    correlation_source: str = "proxies"
    r_straight_through: bool = False
    parameter_weights: np.ndarray | None = None  # None: ones

    def __post_init__(self):
        w = np.ones(len(self.names)) if self.parameter_weights is None else np.asarray(self.parameter_weights, float)
        if w.shape != (len(self.names),):
            raise ValueError(f"parameter_weights {w.tolist()} is not one factor per parameter {list(self.names)}")
        self.parameter_weights = w

    def as_dict(self) -> dict:
        return {"names": list(self.names), "axes": self.axes.tolist(),
                "quantiles": self.quantiles.tolist(), "sd": self.sd.tolist(),
                "correlation": self.correlation.tolist(), "weight": self.weight,
                "clip_gauss": self.clip_gauss, "tau_gauss": self.tau_gauss,
                "r_free_share": self.r_free_share, "pil_weight": self.pil_weight,
                "r_grid": self.r_grid, "correlation_source": self.correlation_source,
                "r_straight_through": self.r_straight_through,
                "parameter_weights": self.parameter_weights.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentStructure":
        """From :meth:`as_dict` (as saved in generator.pt); keys a checkpoint from before an
        option lacks take the option's off setting."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("axes", "quantiles", "sd", "correlation"):
            kw[k] = np.asarray(kw[k], dtype=np.float64)
        kw["names"] = tuple(kw["names"])
        return cls(**kw)

    def torch_state(self, device) -> dict:
        """The tensors of the loss on ``device`` (float32)."""
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return {"axes": t(self.axes), "quantiles": t(self.quantiles), "sd": t(self.sd),
                "parameter_weights": t(self.parameter_weights)}


#: quantiles kept per parameter (the interpolation grid of the targets)
N_QUANTILES = 256


def fit_structure(patches: np.ndarray, names, nz: int, weight: float, clip_gauss: float,
                  batch: int = 256, tau_gauss: float = TAU_GAUSS,
                  pil_weight: float = 0.0, r_grid: str = "mean", correlation: str = "proxies",
                  pixel_scale=None, r_straight_through: bool = False,
                  parameter_weights=None) -> LatentStructure:
    """The latent structure of :mod:`sharpgen.gan.structure` from the training ``patches``
    (N, S, S) in [-1, 1]. Deterministic (no randomness). ``correlation``: whose normal-score
    correlation the axes take (:data:`CORRELATION_SOURCES`); ``parameters`` measures the patches
    with :func:`sharpgen.physics.compute_parameters` at ``pixel_scale`` (a
    :class:`sharpgen.physics.PixelScale`: the store's nominal one, the scale generated images are
    measured at). ``r_straight_through``: r_value's quantiles and sd are those of the pipeline's
    own R_VALUE of the patches (:func:`r_value_exact`; R = 0 for those without an inversion
    line), the correlation stays the soft proxies' (or the parameters'). ``parameter_weights``:
    a mapping parameter -> factor of its term in the loss (unlisted: 1). Raises ValueError for
    unknown names, more names than ``nz``, a degenerate parameter (constant over the patches), an
    unknown ``r_grid`` or ``correlation``, ``parameters`` without ``pixel_scale``, an
    inversion-line term (``pil_weight`` > 0) or ``r_straight_through`` without r_value, a factor
    for a parameter not in ``names`` or below 0."""
    names = check_names(names, "gan.structure")
    factors = dict(parameter_weights or {})
    stray = [k for k in factors if k not in names]
    if stray:
        raise ValueError(f"gan.structure_parameter_weights names {stray}, not in gan.structure {list(names)}")
    w = np.array([float(factors.get(n, 1.0)) for n in names])
    if not np.all((w >= 0) & np.isfinite(w)):
        raise ValueError(f"gan.structure_parameter_weights must be >= 0, got {factors}")
    if len(names) > nz:
        raise ValueError(f"gan.structure has {len(names)} parameters, more than gan.nz = {nz}")
    if pil_weight > 0 and "r_value" not in names:
        raise ValueError(f"gan.structure_pil_weight {pil_weight:g} needs r_value in gan.structure "
                         f"(its label is R's latent axis), got {list(names)}")
    if correlation not in CORRELATION_SOURCES:
        raise ValueError(f"gan.structure_correlation {correlation!r} is not one of {list(CORRELATION_SOURCES)}")
    if correlation == "parameters" and pixel_scale is None:
        raise ValueError("gan.structure_correlation parameters needs the patch store's pixel scale "
                         "(the parameters are measured as the generated images are)")
    if r_straight_through and "r_value" not in names:
        raise ValueError(f"gan.structure_r_straight_through needs r_value in gan.structure, got {list(names)}")
    with_r = "r_value" in names  # the share of R = 0 is only needed (and saved) with R
    vals, has_pil, exact = [], [], []
    with torch.no_grad():
        for i in range(0, patches.shape[0], batch):
            x = torch.from_numpy(np.ascontiguousarray(patches[i:i + batch], dtype=np.float32))[:, None]
            vals.append(proxies(x, names, clip_gauss, tau_gauss, r_grid).double().numpy())
            if with_r:
                has_pil.append(has_inversion_line(x, clip_gauss).numpy())
            if r_straight_through:
                exact.append(r_value_exact(x, clip_gauss).numpy())
    vals = np.concatenate(vals)
    loss_vals = vals.copy()  # what the loss compares: the proxies, or R's exact value
    if r_straight_through:
        loss_vals[:, names.index("r_value")] = np.concatenate(exact)
    sd = loss_vals.std(axis=0)
    if not np.all(np.isfinite(vals)) or np.any(sd <= 0):
        bad = [n for n, s in zip(names, sd) if not s > 0]
        raise ValueError(f"gan.structure: parameter(s) {bad} constant or not finite over the "
                         f"{patches.shape[0]} training patches")
    corr = (np.atleast_2d(np.corrcoef(normal_scores(vals), rowvar=False)) if correlation == "proxies"
            else measured_correlation(patches, names, clip_gauss, pixel_scale))
    # a nearly singular C (e.g. tuf with both tpf and tnf) has no stable Cholesky factor
    eig = np.linalg.eigvalsh(corr)
    if eig.min() < 1e-3:
        raise ValueError(f"gan.structure: the parameters {list(names)} are nearly linearly dependent "
                         f"among the training patches (smallest eigenvalue of their correlation "
                         f"{eig.min():.2g}); drop one")
    chol = np.linalg.cholesky(corr)
    axes = np.zeros((len(names), nz))
    axes[:, : len(names)] = chol
    probs = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
    quantiles = np.quantile(loss_vals, probs, axis=0).T  # (K, Q)
    r_free = float(1.0 - np.concatenate(has_pil).mean()) if with_r else float("nan")
    return LatentStructure(names, axes, quantiles, sd, corr, float(weight), float(clip_gauss),
                           float(tau_gauss), r_free, float(pil_weight), str(r_grid), str(correlation),
                           bool(r_straight_through), w)


def measured_correlation(patches: np.ndarray, names, clip_gauss: float, pixel_scale,
                         batch: int = 256) -> np.ndarray:
    """The normal-score correlation (K, K) of the pipeline's parameters ``names`` of ``patches``
    (N, S, S) in [-1, 1], measured as generated images are (:func:`sharpgen.physics.compute_parameters`
    of ``clip_gauss * patch`` at ``pixel_scale``). Each pair over the patches where both are
    finite (psep is NaN without a 150 G polarity), as the directions stage's labelled Spearman;
    ties (R = 0) get their average rank. ValueError naming a pair with fewer than 3 such patches."""
    from sharpgen.physics import compute_parameters

    vals = np.concatenate([
        compute_parameters(np.asarray(patches[i:i + batch], dtype=np.float64) * clip_gauss,
                           pixel_scale)[list(names)].to_numpy()
        for i in range(0, patches.shape[0], batch)])
    corr = np.eye(len(names))
    for i in range(len(names)):
        for j in range(i):
            ok = np.isfinite(vals[:, i]) & np.isfinite(vals[:, j])
            if ok.sum() < 3:
                raise ValueError(f"gan.structure_correlation parameters: {names[j]} and {names[i]} "
                                 f"are both finite on {int(ok.sum())} training patch(es), too few")
            corr[i, j] = corr[j, i] = np.corrcoef(normal_scores(vals[ok][:, [i, j]]), rowvar=False)[0, 1]
    return corr


def targets(z: torch.Tensor, state: dict) -> torch.Tensor:
    """Target proxy values (B, K) of latents ``z`` (B, nz): the real quantile at ``Phi(u)``,
    ``u = z axes^T``, linearly interpolated on the quantile grid."""
    u = z.float() @ state["axes"].T                            # (B, K)
    q = state["quantiles"]                                     # (K, Q), Q = N_QUANTILES >= 2
    Q = q.shape[1]
    pos = (torch.special.ndtr(u) * Q - 0.5).clamp(0, Q - 1)    # fractional grid index
    lo = pos.floor().long().clamp(max=Q - 2)
    k = torch.arange(q.shape[0], device=z.device)
    qlo, qhi = q[k, lo], q[k, lo + 1]                          # (B, K) each
    return qlo + (pos - lo) * (qhi - qlo)


def _squared_errors(images: torch.Tensor, z: torch.Tensor, structure: LatentStructure,
                    state: dict) -> torch.Tensor:
    """``((proxies(images) - targets(z)) / sd)^2`` (B, K): each sample's error per parameter."""
    p = proxies(images, structure.names, structure.clip_gauss, structure.tau_gauss,
                structure.r_grid, structure.r_straight_through)
    return ((p - targets(z, state)) / state["sd"]).square()


def structure_loss(images: torch.Tensor, z: torch.Tensor, structure: LatentStructure,
                   state: dict, scale: float = 1.0) -> torch.Tensor:
    """``scale * weight * mean(w * ((proxies(G(z)) - targets(z)) / sd)^2)`` (``w`` the
    parameters' factors, ``parameter_weights``) for generated ``images``
    (B, 1, S, S) of latents ``z`` (B, nz), plus ``scale * pil_weight * mean(BCE)`` of the
    inversion-line term when its weight is > 0; a scalar tensor (0-d). ``scale``: :func:`fade_in`."""
    loss = (scale * structure.weight) * (_squared_errors(images, z, structure, state)
                                         * state["parameter_weights"]).mean()
    if structure.pil_weight > 0:
        k = structure.names.index("r_value")
        has_pil = torch.special.ndtr(z.float() @ state["axes"][k]) > structure.r_free_share
        bce = pil_bce(images, has_pil, structure.clip_gauss)
        loss = loss + (scale * structure.pil_weight) * bce.mean()
    return loss


@torch.no_grad()
def structure_terms(images: torch.Tensor, z: torch.Tensor, structure: LatentStructure,
                    batch: int = 500) -> np.ndarray:
    """Each parameter's term of the structure loss on generated ``images`` (N, 1, S, S) of
    latents ``z`` (N, nz): ``mean_b ((proxy_k - target_k) / sd_k)^2``, (K,) float64, before the
    factors and the weight (so :func:`structure_loss` without the inversion-line term is
    ``weight * mean_k(parameter_weights_k * terms_k)``). In batches of ``batch``, no gradient."""
    state = structure.torch_state(images.device)
    total = torch.zeros(len(structure.names), dtype=torch.float64)
    for i in range(0, len(images), batch):
        total += _squared_errors(images[i:i + batch], z[i:i + batch], structure, state).sum(dim=0).double().cpu()
    return (total / max(len(images), 1)).numpy()


def fade_in(step: int, start: int, ramp: int) -> float:
    """The share of the structure loss's weight at optimiser step ``step`` (0-based): 0 before
    ``start``, then rising linearly to 1 over ``ramp`` steps (1 from ``start`` on when ``ramp`` is
    0). A function of the step alone, so a resumed run applies the same weights."""
    if step < start:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (step - start + 1) / ramp)


def describe(structure: LatentStructure) -> str:
    """One log line: the parameters and their real correlation."""
    pairs = [f"{a}-{b} {structure.correlation[i, j]:+.2f}"
             for i, a in enumerate(structure.names) for j, b in enumerate(structure.names) if j > i]
    pil = (f"; inversion-line term (weight {structure.pil_weight:g}): R = 0 for "
           f"{structure.r_free_share:.3f} of the training patches" if structure.pil_weight > 0 else "")
    grid = "; R_VALUE proxy on the point grid" if structure.r_grid == "point" else ""
    of = " of the pipeline's parameters" if structure.correlation_source == "parameters" else ""
    if structure.r_straight_through:
        grid += "; R's value the pipeline's R_VALUE (straight-through)"
    if np.any(structure.parameter_weights != 1.0):
        grid += "; per-parameter factors " + ", ".join(
            f"{n} {w:g}" for n, w in zip(structure.names, structure.parameter_weights))
    return (f"latent structure on {list(structure.names)} (weight {structure.weight:g}); real "
            f"normal-score correlations{of}: {', '.join(pairs) or 'n/a'}{pil}{grid}")
