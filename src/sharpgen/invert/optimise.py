"""GAN inversion: the latent code whose generated image matches a real patch.

For real patches ``x`` (N, S, S) in [-1, 1] (Br / clip_gauss, as in the patch store) find codes
``c*`` (N, D) minimising, per patch,

    pixel_weight * mean((G(c) - x)^2)                      pixel loss (store units)
  + feature_weight * (1 - cos(f(G(c)), f(x)))              SimSiam feature loss (f: the encoder's
                                                            projector output, as ``Encoder.embed``)
  + prior_weight * (|c|^2 / D - 1)^2                       typical-set prior
  + match_weight * mean_k ((p_k(G(c)) - p_k(x)) / s_k)^2   parameter match (``match_parameters``)

The parameter-match term asks the reconstruction for the real patch's own physical parameters
(tuf, psep, r_value by default), measured by the differentiable proxies of
:mod:`sharpgen.gan.structure` (rank agreement with :mod:`sharpgen.physics` >= 0.95 on real SHARP
windows); ``s_k`` is the spread (std) of proxy k over ``MATCH_SCALE_SAMPLES`` seeded samples of the
generator, so the term is unit-free. Pixels and SimSiam features alone leave r_value (flux near
strong-field polarity inversion lines) nearly unconstrained: a reconstruction can be close in
pixels yet have no strong PIL (docs/inversion.md has the numbers). A parameter named here is
fitted, so its real-vs-reconstruction Pearson is partly by construction: inversion.json lists the
matched parameters, and the parameters left out (r_paper, tpf, tnf, ...) are the independent check.

The prior keeps ``c*`` on the shell where N(0, I) puts its mass (``|c|^2 / D`` concentrates at 1
in D = 100 dimensions), which is where the latent directions were fitted and calibrated; the
negative log-likelihood ``|c|^2 / 2`` would instead pull codes towards the atypical origin.

Every patch is optimised from ``restarts`` starting codes at once (one batch of N x R codes,
Adam with a cosine learning-rate decay); the restart with the lowest final objective wins.
Starting codes are the codes of the R generated samples nearest to the patch in SimSiam space
(:func:`nearest_inits`, from ``generated.zarr`` + ``latents.parquet``) or seeded N(0, I) draws.
On the CPU the result is deterministic for a given seed and thread count.

**Latent space.** A generator with a mapping network (``G.latent_space == "w"``: ``G.codes``
z -> whitened W codes, ``G.from_codes`` codes -> image) is inverted in whitened W, the space its
latent directions are fitted in; any other generator in z. :func:`resolve_space` decides.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from sharpgen import warmup

logger = logging.getLogger(__name__)

SPACES = ("auto", "z", "w")
INIT_MODES = ("nearest", "random")
#: generated samples whose proxy spread scales the parameter-match term
MATCH_SCALE_SAMPLES = 256


class InversionError(ValueError):
    """Inputs that cannot be inverted (shape, range, latent space); the message says which."""


# --------------------------------------------------------------------------------------------
# latent spaces
# --------------------------------------------------------------------------------------------
def generator_space(G) -> str:
    """``"w"`` for a generator with a mapping network (whitened W codes), else ``"z"``."""
    return str(getattr(G, "latent_space", "z"))


def resolve_space(G, space: str = "auto") -> str:
    """The code space to work in: ``auto`` -> :func:`generator_space`; ``w`` needs a generator
    with ``codes`` / ``from_codes`` (InversionError otherwise)."""
    if space not in SPACES:
        raise InversionError(f"latent space must be one of {list(SPACES)}, got {space!r}")
    if space == "auto":
        return generator_space(G)
    if space == "w" and not (hasattr(G, "from_codes") and hasattr(G, "codes")):
        raise InversionError("latent space 'w' needs a generator with a mapping network (gan.arch: mapping)")
    return space


def code_dim(G, space: str) -> int:
    return int(G.w_dim if space == "w" else G.nz)


def synthesis(G, space: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """codes (B, D) -> images (B, 1, S, S) in [-1, 1], differentiable."""
    return G.from_codes if space == "w" else G


def device_of(module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def codes_from_z(G, z: np.ndarray, space: str = "z", batch_size: int = 1024) -> np.ndarray:
    """z (N, nz) -> codes (N, D) float32 of ``space`` (z itself, or whitened W codes)."""
    z = np.asarray(z, dtype=np.float32)
    if space != "w":
        return z.copy()
    dev = device_of(G)
    out = np.empty((len(z), code_dim(G, space)), dtype=np.float32)
    for i in range(0, len(z), batch_size):
        out[i:i + batch_size] = warmup.call(G.codes, torch.from_numpy(z[i:i + batch_size]).to(dev),
                                        ("codes", id(G))).float().cpu().numpy()
    return out


@torch.no_grad()
def render_codes(G, codes: np.ndarray, space: str = "z", batch_size: int = 64) -> np.ndarray:
    """codes (N, D) -> images (N, S, S) float32 in [-1, 1]."""
    codes = np.atleast_2d(np.asarray(codes, dtype=np.float32))
    net, dev = synthesis(G, space), device_of(G)
    out = np.empty((len(codes), G.size, G.size), dtype=np.float32)
    for i in range(0, len(codes), batch_size):
        out[i:i + batch_size] = warmup.call(net, torch.from_numpy(codes[i:i + batch_size]).to(dev),
                                        ("render", id(G), space))[:, 0].float().cpu().numpy()
    return out


def check_targets(targets: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) or (S, S) float patches in [-1, 1] -> (N, S, S) float32; InversionError else."""
    x = np.asarray(targets, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (size, size):
        raise InversionError(f"patches to invert must have shape (N, {size}, {size}) like the generator's "
                             f"output, got {x.shape}")
    if not np.isfinite(x).all():
        raise InversionError("patches to invert contain NaN/inf (store patches have NaN -> 0)")
    if x.size and np.abs(x).max() > 1.0 + 1e-6:
        raise InversionError(f"patches to invert span [{x.min():.3g}, {x.max():.3g}]: they must be "
                             "Br / clip_gauss in [-1, 1], as in the patch store")
    return x


# --------------------------------------------------------------------------------------------
# settings and result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InvertSettings:
    """How to optimise (the optimisation keys of the ``invert`` config section)."""

    steps: int = 150
    restarts: int = 4
    lr: float = 0.05
    pixel_weight: float = 1.0
    feature_weight: float = 0.1
    prior_weight: float = 0.01
    init: str = "nearest"
    batch_size: int = 64
    seed: int = 0
    match_parameters: tuple[str, ...] = ()
    match_weight: float = 0.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "InvertSettings":
        from sharpgen.gan.structure import check_names

        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in cfg.items() if k in names}
        if "match_parameters" in kw:
            try:
                kw["match_parameters"] = check_names(kw["match_parameters"], "invert.match_parameters")
            except ValueError as err:
                raise InversionError(str(err)) from None
        s = cls(**kw)
        if s.steps < 0 or s.restarts < 1 or s.lr <= 0 or s.batch_size < 1:
            raise InversionError(f"invalid inversion settings: {s}")
        if min(s.pixel_weight, s.feature_weight, s.prior_weight, s.match_weight) < 0:
            raise InversionError(f"inversion loss weights must be >= 0: {s}")
        if s.init not in INIT_MODES:
            raise InversionError(f"invert.init must be one of {list(INIT_MODES)}, got {s.init!r}")
        return s


@dataclass
class Inversion:
    """Result for N patches: ``codes`` (N, D) float32 in ``space``, ``images`` (N, S, S) the
    reconstructions, per patch ``pixel_mse`` (store units^2), ``rel_error`` (||G(c) - x|| /
    ||x||, L2 over pixels), ``feature_cos`` (cosine of the SimSiam embeddings; NaN without an
    encoder), ``prior`` (|c|^2 / D), ``objective``, ``restart`` (index of the winning start),
    ``objective_per_restart`` (N, R); ``match_error`` (mean squared standardised proxy error of the
    matched parameters; NaN without them); ``seconds`` of optimisation."""

    codes: np.ndarray
    images: np.ndarray
    pixel_mse: np.ndarray
    rel_error: np.ndarray
    feature_cos: np.ndarray
    prior: np.ndarray
    objective: np.ndarray
    restart: np.ndarray
    objective_per_restart: np.ndarray
    space: str
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    match_error: np.ndarray | None = None

    def rms_gauss(self, clip_gauss: float) -> np.ndarray:
        """Per-patch RMS pixel difference in Gauss."""
        return np.sqrt(self.pixel_mse) * float(clip_gauss)


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per image (N, S, S) -> (N,); inf for an empty (all-zero) b."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num, den = np.linalg.norm(a - b, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)


# --------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------
def nearest_inits(encoder, targets: np.ndarray, pool_images: np.ndarray, pool_codes: np.ndarray,
                  k: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The codes of the ``k`` pool samples nearest to each target in SimSiam space.

    targets (N, S, S), pool_images (M, S, S) in [-1, 1], pool_codes (M, D) -> (codes (N, k, D),
    pool indices (N, k)), best first (exact cosine top-k, ties to the lower index)."""
    from sharpgen.retrieval import topk_cosine
    from sharpgen.ssl import embed

    if len(pool_images) != len(pool_codes) or len(pool_images) == 0:
        raise InversionError(f"initialisation pool: {len(pool_images)} images for {len(pool_codes)} codes")
    k = min(int(k), len(pool_images))
    q = embed(encoder, targets, batch_size=batch_size)
    db = embed(encoder, pool_images, batch_size=batch_size)
    idx, _ = topk_cosine(q, db, k, normalized=True)
    return np.asarray(pool_codes, dtype=np.float32)[idx], idx


def random_inits(G, n: int, restarts: int, space: str, seed: int) -> np.ndarray:
    """(n, restarts, D) seeded starting codes: N(0, I) z mapped to ``space``."""
    from sharpgen.seeds import stream

    z = stream(seed, "inversion_restarts").standard_normal((n * restarts, int(G.nz))).astype(np.float32)
    return codes_from_z(G, z, space).reshape(n, restarts, -1)


# --------------------------------------------------------------------------------------------
# optimisation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParameterMatch:
    """The parameter-match term: proxies of ``names`` at ``clip_gauss``, scaled by ``scale`` (K,)."""

    names: tuple[str, ...]
    scale: torch.Tensor
    clip_gauss: float

    def values(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> standardised proxies (B, K)."""
        from sharpgen.gan.structure import proxies

        return proxies(images, self.names, self.clip_gauss) / self.scale


@torch.no_grad()
def parameter_match(G, s: InvertSettings, space: str, clip_gauss: float | None) -> ParameterMatch | None:
    """The :class:`ParameterMatch` of settings ``s`` (None when no parameter is matched): the
    proxies' std over ``MATCH_SCALE_SAMPLES`` seeded generated images (G in eval mode) is the
    scale."""
    from sharpgen.gan.structure import proxies
    from sharpgen.seeds import stream

    if not s.match_parameters or s.match_weight <= 0:
        return None
    if clip_gauss is None or not clip_gauss > 0:
        raise InversionError("matching parameters needs the patches' clip_gauss (Gauss per store unit)")
    z = stream(s.seed, "inversion_match_scale").standard_normal((MATCH_SCALE_SAMPLES, int(G.nz)))
    codes = codes_from_z(G, z.astype(np.float32), space)
    net, dev = synthesis(G, space), device_of(G)
    with _frozen(G):
        vals = torch.cat([proxies(warmup.call(net, torch.from_numpy(codes[i:i + 64]).to(dev), ("match", id(G), space)),
                                  s.match_parameters, clip_gauss) for i in range(0, len(codes), 64)])
    scale = vals.std(0)
    if not torch.isfinite(scale).all() or (scale <= 0).any():
        raise InversionError(f"the generator's spread of {list(s.match_parameters)} is {scale.tolist()}: "
                             "cannot scale the parameter match (a collapsed generator?)")
    return ParameterMatch(tuple(s.match_parameters), scale, float(clip_gauss))


def _objective(net, encoder, c, x, fx, px, match: ParameterMatch | None, s: InvertSettings):
    """Per-sample (images, pixel mse, 1 - cos, |c|^2/D, parameter-match error, total) for codes
    c (B, D), targets x, their features fx and standardised proxies px (B, K)."""
    img = net(c)
    pix = (img - x).square().flatten(1).mean(1)
    if encoder is not None and s.feature_weight > 0:
        feat = 1.0 - F.cosine_similarity(encoder(img), fx, dim=1)
    else:
        feat = torch.zeros_like(pix)
    shell = c.square().mean(1)
    prior = (shell - 1.0).square()
    total = s.pixel_weight * pix + s.feature_weight * feat + s.prior_weight * prior
    if match is not None:
        par = (match.values(img) - px).square().mean(1)
        total = total + s.match_weight * par
    else:
        par = torch.full_like(pix, float("nan"))
    return img, pix, feat, shell, par, total


def optimise_codes(G, x: torch.Tensor, init: torch.Tensor, encoder, s: InvertSettings, space: str,
                   match: ParameterMatch | None = None):
    """Adam on codes ``init`` (B, D) towards targets x (B, 1, S, S); cosine lr decay to 5%.
    Returns (codes (B, D), images, pixel mse, feature 1-cos, |c|^2/D, match error, objective),
    detached."""
    net = synthesis(G, space)

    def targets_and_objective(c):  # the target features, one objective and its gradient
        with torch.no_grad():
            fx = encoder(x) if encoder is not None and s.feature_weight > 0 else None
            px = match.values(x) if match is not None else None
        if c is not None:
            _objective(net, encoder, c, x, fx, px, match, s)[-1].sum().backward()
        return fx, px

    if x.device.type == "cpu":  # a batch shape new to the process, once, discarded (sharpgen.warmup)
        warmup.once(("invert", id(G), id(encoder), space, tuple(init.shape)),
                    lambda: targets_and_objective(init.clone().requires_grad_(True)))
    c = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=s.lr)
    fx, px = targets_and_objective(None)
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(s.steps, 1))))
        opt.zero_grad(set_to_none=True)
        *_, total = _objective(net, encoder, c, x, fx, px, match, s)
        total.sum().backward()
        opt.step()
    with torch.no_grad():
        img, pix, feat, shell, par, total = _objective(net, encoder, c, x, fx, px, match, s)
    return c.detach(), img.detach(), pix, feat, shell, par, total


def _frozen(module):
    """Context: ``module`` in eval mode with requires_grad off, restored afterwards."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        if module is None:
            yield
            return
        was = module.training
        flags = [p.requires_grad for p in module.parameters()]
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(module.parameters(), flags):
                p.requires_grad_(f)
            module.train(was)

    return ctx()


def invert(G, targets: np.ndarray, *, encoder=None, init_codes: np.ndarray | None = None,
           settings: InvertSettings | Mapping | None = None, space: str = "auto",
           clip_gauss: float | None = None, match: ParameterMatch | None = None,
           progress: Callable[[int, int], None] | None = None) -> Inversion:
    """Invert real patches ``targets`` (N, S, S) in [-1, 1] -> :class:`Inversion`.

    encoder: a SimSiam :class:`sharpgen.ssl.Encoder` for the feature loss (None: pixel + prior
    only). init_codes: (N, R, D) starting codes (e.g. :func:`nearest_inits`), (N, D) for one
    restart, or None for seeded random starts (``settings.restarts`` of them). The N x R codes are
    optimised in batches of ``settings.batch_size``; progress(done, total) after each batch.
    clip_gauss: Gauss per store unit of the patches (needed when ``settings.match_parameters``
    are matched: the proxies threshold at 150 G). match: :func:`parameter_match` of the same
    generator, settings, space and clip_gauss, computed once by callers that invert many times
    (None: computed here).
    """
    s = settings if isinstance(settings, InvertSettings) else InvertSettings.from_mapping(settings or {})
    space = resolve_space(G, space)
    x = check_targets(targets, int(G.size))
    n, dim = len(x), code_dim(G, space)
    if init_codes is None:
        init_codes = random_inits(G, n, s.restarts, space, s.seed)
    init_codes = np.asarray(init_codes, dtype=np.float32)
    if init_codes.ndim == 2:
        init_codes = init_codes[:, None, :]
    if init_codes.ndim != 3 or init_codes.shape[0] != n or init_codes.shape[2] != dim:
        raise InversionError(f"init_codes must have shape ({n}, R, {dim}), got {init_codes.shape}")
    r = init_codes.shape[1]
    dev = device_of(G)
    flat_init = torch.from_numpy(init_codes.reshape(n * r, dim)).to(dev)
    flat_x = torch.from_numpy(np.repeat(x, r, axis=0))[:, None].to(dev)
    codes = np.empty((n * r, dim), np.float32)
    images = np.empty((n * r, G.size, G.size), np.float32)
    stats = np.empty((5, n * r), np.float64)
    t0 = time.perf_counter()
    with _frozen(G), _frozen(encoder):
        if match is None:
            match = parameter_match(G, s, space, clip_gauss)
        for i in range(0, n * r, s.batch_size):
            sl = slice(i, i + s.batch_size)
            c, img, pix, feat, shell, par, total = optimise_codes(G, flat_x[sl], flat_init[sl], encoder, s, space,
                                                                  match)
            codes[sl], images[sl] = c.float().cpu().numpy(), img[:, 0].float().cpu().numpy()
            stats[:, sl] = torch.stack([pix, feat, shell, total, par]).double().cpu().numpy()
            if progress is not None:
                progress(min(i + s.batch_size, n * r), n * r)
    seconds = time.perf_counter() - t0
    per_restart = stats[3].reshape(n, r)
    best = np.argmin(np.where(np.isfinite(per_restart), per_restart, np.inf), axis=1)
    pick = np.arange(n) * r + best
    feat = stats[1, pick]
    return Inversion(
        codes=codes[pick], images=images[pick], pixel_mse=stats[0, pick],
        rel_error=rel_l2(images[pick], x),
        feature_cos=(1.0 - feat) if encoder is not None and s.feature_weight > 0 else np.full(n, np.nan),
        prior=stats[2, pick], objective=stats[3, pick], restart=best.astype(np.int64),
        objective_per_restart=per_restart, space=space, seconds=seconds,
        settings={**s.__dict__, "match_parameters": list(s.match_parameters), "space": space,
                  "restarts_used": int(r),
                  "match_scale": None if match is None else [float(v) for v in match.scale.cpu()]},
        match_error=stats[4, pick],
    )
