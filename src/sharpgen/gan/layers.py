"""Building blocks shared by the generators and the discriminator of :mod:`sharpgen.gan.model`:
the size check, the deterministic noise maps of a latent (``projected_noise``, fixed
projections drawn from :data:`NOISE_SEED`), the padding window (its mask and, for
``padding: matched``, the crops' extents and their quantile functions), the binomial
low-pass, the isotropic and radial grain filters, the mapping network and modulated convolution of the
``mapping`` generator, the minibatch-standard-deviation channel and the networks' memory
format. Re-exported by :mod:`sharpgen.gan.model`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: memory format of the networks and their batches in training and of a loaded generator:
#: required for fast cuDNN convolutions, and faster with oneDNN on this project's CPU too
#: (training 1.3-1.8x, benchmarks/bench_gan.py --channels-last-cpu; generation 1.7-1.8x, --inference)
MEMORY_FORMAT = torch.channels_last

#: seed of the fixed noise projections (part of the architecture: rebuilt on load, not stored)
NOISE_SEED = 20250205


def _check_size(size: int) -> None:
    if size < 32 or size & (size - 1):
        raise ValueError(f"patch size must be a power of two >= 32, got {size}")


def projected_noise(code: torch.Tensor, proj: torch.Tensor, r: int) -> torch.Tensor:
    """A pixel map (B, 1, r, r) that is a deterministic function of a latent code (B, D):
    ``proj (code / rms(code)) / sqrt(D)`` with a fixed Gaussian projection ``proj`` (r^2, D);
    ~N(0, 1) per pixel and white across pixels (the noise inputs of the stable and mapping
    generators)."""
    cn = code.float() * torch.rsqrt(code.float().square().mean(1, keepdim=True) + 1e-8)
    return (cn @ proj.T / math.sqrt(code.shape[1])).view(-1, 1, r, r)


def register_projection(module: nn.Module, name: str, rows: int, dim: int, gen: torch.Generator) -> None:
    """Give ``module`` the buffer ``name``: a fixed Gaussian projection (rows, dim) for
    :func:`projected_noise`, drawn from ``gen`` on the CPU -- part of the architecture, rebuilt
    identically on load, not in the state_dict. Created on the default device ("meta" under
    ``torch.device("meta")``, for FLOP counting)."""
    proj = torch.randn(rows, dim, generator=gen, device="cpu")
    module.register_buffer(name, proj.to(torch.empty(0).device), persistent=False)


def register_noise_projections(module: nn.Module, size: int, dim: int) -> None:
    """Give ``module`` the projections ``noise_proj_{S/2}`` and ``noise_proj_{S}`` ((r^2, dim)
    each, :func:`register_projection`), drawn in that order from :data:`NOISE_SEED`."""
    gen = torch.Generator().manual_seed(NOISE_SEED)
    for r in (size // 2, size):
        register_projection(module, f"noise_proj_{r}", r * r, dim, gen)


def heavy_tail(n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sinh(t n) / sd(t)`` with ``sd(t)^2 = (exp(2 t^2) - 1) / 2``: for n ~ N(0, 1) a map of
    zero mean and unit variance whose tails grow with t >= 0 (kurtosis 3 at t -> 0, 36 at t = 1);
    ``n`` and ``t`` broadcast (e.g. (B, 1, S, S) and a per-pixel tail of the same shape)."""
    t = t.clamp(min=1e-3)
    return torch.sinh(t * n) / torch.sqrt(0.5 * torch.expm1(2.0 * t * t))


def centred_window(extent: torch.Tensor, size: int) -> torch.Tensor:
    """Masks (B, 1, S, S) of centred rectangles of extent ``extent`` (B, 2) (height, width, as
    fractions of S in [0, 1]): 1 inside, exactly 0 outside, linear across the one-pixel edge --
    for an extent of n / S with n and S even, the layout of ``patch_cut.crop_window``'s padding."""
    c = torch.arange(size, device=extent.device, dtype=extent.dtype) + 0.5 - size / 2.0
    half = 0.5 * size * extent                                                  # (B, 2)
    inside = (half[:, :, None] - c.abs()[None, None, :] + 0.5).clamp(0.0, 1.0)  # (B, 2, S)
    return (inside[:, 0, :, None] * inside[:, 1, None, :])[:, None]


#: ``padding: matched``: number of levels of the stored extent quantile functions
PAD_QUANTILE_LEVELS = 257


def crop_extents(patches: np.ndarray) -> np.ndarray:
    """Data extents (N, 2) -- height, width as fractions of S -- of crops (N, S, S): the span
    from the first to the last row (column) holding a non-zero pixel, so 1 for a crop without
    zero margins and (S - margins) / S for one ``patch_cut.crop_window`` padded; 0 for an
    all-zero crop."""
    nonzero = np.asarray(patches) != 0

    def span(has: np.ndarray) -> np.ndarray:  # (N, S) bool -> (N,)
        S = has.shape[1]
        first, last = has.argmax(1), S - 1 - has[:, ::-1].argmax(1)
        return np.where(has.any(1), (last - first + 1) / S, 0.0)

    return np.stack([span(nonzero.any(2)), span(nonzero.any(1))], axis=1)


def extent_quantiles(extents: np.ndarray, levels: int = PAD_QUANTILE_LEVELS) -> torch.Tensor:
    """Quantile functions (2, levels) float32 of extents (N, 2) (:func:`crop_extents`) at the
    probabilities ``linspace(0, 1, levels)``: exactly 1 on the unpadded crops' share, and below
    it piecewise linear through each distinct padded extent placed at the middle of its
    probability mass -- strictly increasing where the crops are padded (the crops' extents are
    whole pixels, so an empirical quantile function is flat over each tie and gives no
    gradient), with the padded share and each extent's mass kept to within one level."""
    extents = np.asarray(extents, dtype=np.float64)
    if extents.ndim != 2 or extents.shape[1] != 2 or extents.shape[0] == 0:
        raise ValueError(f"extents must have shape (N, 2) with N > 0, got {extents.shape}")
    p = np.linspace(0.0, 1.0, levels)
    q = np.ones((2, levels))
    for a in range(2):
        padded = extents[extents[:, a] < 1.0, a]
        if padded.size == 0:
            continue
        values, counts = np.unique(padded, return_counts=True)  # sorted distinct extents
        upper = np.cumsum(counts) / extents.shape[0]            # CDF at each distinct extent
        mid = upper - 0.5 * counts / extents.shape[0]
        below = p < upper[-1]                                   # the padded share
        q[a, below] = np.interp(p[below], mid, values)
    return torch.from_numpy(q.astype(np.float32))


def quantile_extent(u: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Extents (B, 2) from standard-normal scores u (B, 2): each axis's piecewise-linear quantile
    function (``quantiles`` (2, K), :func:`extent_quantiles`) at Phi(u). For u ~ N(0, 1) the
    extents follow the crops' distribution on each axis; differentiable in u between knots."""
    K = quantiles.shape[1]
    p = torch.special.ndtr(u.float()) * (K - 1)
    lo = p.detach().floor().clamp(0, K - 2)
    frac = p - lo
    lo = lo.long()
    axis = torch.arange(2, device=u.device)
    q = quantiles.float()
    return q[axis, lo] + frac * (q[axis, lo + 1] - q[axis, lo])


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 binomial low-pass ([1, 2, 1] / 4 in each axis; edge pixels replicated):
    zero response at the Nyquist frequency, so the 2-pixel pattern a stride-2 transposed
    convolution leaves (checkerboard) is removed, and ~unit response at low frequencies.
    (B, C, H, W) -> same shape."""
    C = x.shape[1]
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    if C == 1:  # one channel: two shifted sums (5x faster than a depthwise conv on the CPU)
        y = 0.25 * xp[..., :-2] + 0.5 * xp[..., 1:-1] + 0.25 * xp[..., 2:]
        return 0.25 * y[..., :-2, :] + 0.5 * y[..., 1:-1, :] + 0.25 * y[..., 2:, :]
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype) / 4.0
    k2 = (k[:, None] * k[None, :]).expand(C, 1, 3, 3).contiguous()
    return F.conv2d(xp, k2, groups=C)


#: widths (px) of the sampled Gaussians an isotropic grain kernel mixes beside a delta
#: (``gan.speckle_kernel: isotropic``); the widest still spans +-2 sigma of its 5x5 support
ISOTROPIC_SIGMAS_PX = (0.5, 0.7, 1.0)
#: support (px) of the isotropic grain kernel
ISOTROPIC_KERNEL_PX = 5


def isotropic_basis(sigmas_px: tuple[float, ...] = ISOTROPIC_SIGMAS_PX,
                    size: int = ISOTROPIC_KERNEL_PX) -> torch.Tensor:
    """Radially symmetric kernels (1 + len(sigmas), size, size), each of unit L2 norm (so each
    alone turns white noise of unit variance into a grain of unit variance): a delta, then
    sampled Gaussians of the given widths. Every mix of them has a radially symmetric
    profile, and its frequency response is isotropic wherever it has power (unlike a free 3x3
    filter, whose box-like solutions pass 2-7x more power along the axes than along the
    diagonals near the Nyquist frequency; docs/gan.md)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    delta = (r2 == 0).double()
    kernels = [delta] + [torch.exp(-r2 / (2.0 * s * s)) for s in sigmas_px]
    basis = torch.stack(kernels)
    return (basis / basis.flatten(1).norm(dim=1)[:, None, None]).float()


class IsotropicKernel(nn.Module):
    """A learned single-channel filter constrained to be isotropic: ``w = sum_j c_j b_j`` over
    :func:`isotropic_basis` (fixed, rebuilt on construction), ``c`` learned, starting as the
    delta (c = [1, 0, 0, 0]: the white map passes unchanged, as the free 3x3 filter starts).
    (B, 1, H, W) -> same shape (zero padding, like ``nn.Conv2d(1, 1, k, padding=k // 2)``)."""

    def __init__(self, sigmas_px: tuple[float, ...] = ISOTROPIC_SIGMAS_PX,
                 size: int = ISOTROPIC_KERNEL_PX):
        super().__init__()
        self.register_buffer("basis", isotropic_basis(sigmas_px, size), persistent=False)
        coef = torch.zeros(len(sigmas_px) + 1)
        coef[0] = 1.0
        self.coef = nn.Parameter(coef)

    @property
    def weight(self) -> torch.Tensor:
        """The filter as a conv weight (1, 1, size, size)."""
        return torch.einsum("j,jhw->hw", self.coef, self.basis)[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


#: knots of the radial grain filter (``gan.speckle_kernel: radial``), equally spaced in |k|
#: from 0 to the corner of the spectrum (sqrt(2) x the Nyquist wavenumber)
RADIAL_KNOTS = 9


class RadialFilter(nn.Module):
    """A learned single-channel filter whose transfer function depends on |k| alone -- isotropic
    at every wavenumber, the Nyquist band included (where a sampled Gaussian is not):
    ``H(|k|)`` piecewise linear between ``knots`` learned gains at |k| = 0, ..., sqrt(2) k_Nyq,
    starting at 1 (the white map passes unchanged). Applied by FFT, so periodically -- it filters
    the white map of z, which has no edges to respect. (B, 1, S, S) -> same shape, S = ``size``."""

    def __init__(self, size: int, knots: int = RADIAL_KNOTS):
        super().__init__()
        if knots < 2:
            raise ValueError(f"a radial filter needs >= 2 knots, got {knots}")
        ky = torch.fft.fftfreq(size, dtype=torch.float64) * size
        kx = torch.fft.rfftfreq(size, dtype=torch.float64) * size
        r = torch.hypot(ky[:, None], kx[None, :]) / (size / 2) / math.sqrt(2.0)  # 0..1
        t = r * (knots - 1)
        lo = t.floor().long().clamp(max=knots - 2)
        self.size = size
        self.register_buffer("knot_lo", lo, persistent=False)
        self.register_buffer("knot_frac", (t - lo).float(), persistent=False)
        self.gain = nn.Parameter(torch.ones(knots))

    def transfer(self) -> torch.Tensor:
        """H on the rfft2 grid (S, S // 2 + 1)."""
        g_lo, g_hi = self.gain[self.knot_lo], self.gain[self.knot_lo + 1]
        return g_lo + (g_hi - g_lo) * self.knot_frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft2(x.float()) * self.transfer()
        return torch.fft.irfft2(spec, s=(self.size, self.size)).to(x.dtype)


def grain_filter(kind: str, size: int) -> nn.Module:
    """The grain's filter (``gan.speckle_kernel``), starting as the identity."""
    if kind == "isotropic":  # starts as the delta too
        return IsotropicKernel()
    if kind == "radial":  # starts as H = 1
        return RadialFilter(size)
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()[0, 0, 1, 1] = 1.0
    return conv


class MappingNetwork(nn.Module):
    """z (B, nz) -> w (B, w_dim): second-moment normalisation of z, then ``layers`` x
    (Linear + LeakyReLU(0.2)); He-initialised so that the scale of w does not shrink with depth."""

    def __init__(self, nz: int, w_dim: int, layers: int):
        super().__init__()
        if layers < 1:
            raise ValueError(f"mapping network needs >= 1 layer, got {layers}")
        self.layers = nn.ModuleList(nn.Linear(nz if i == 0 else w_dim, w_dim) for i in range(layers))
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(lin.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.float().square().mean(1, keepdim=True) + 1e-8).to(z.dtype)
        for lin in self.layers:
            x = F.leaky_relu(lin(x), 0.2)
        return x


class ModulatedConv(nn.Module):
    """k x k convolution whose input channels are scaled per sample by an affine map of w, with
    optional demodulation (output scaled to unit expected variance): StyleGAN2's modulated
    convolution in its non-grouped form (scale input, convolve, scale output), which is exact
    and runs as one ordinary convolution."""

    def __init__(self, cin: int, cout: int, k: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.k, self.demodulate = k, demodulate
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = nn.Linear(w_dim, cin)
        nn.init.ones_(self.affine.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)                                           # (B, cin)
        x = F.conv2d(x * s[:, :, None, None].to(x.dtype), self.weight, padding=self.k // 2)
        if self.demodulate:
            d = torch.rsqrt(s.float().square() @ self.weight.float().square().sum((2, 3)).T + 1e-8)
            x = x * d[:, :, None, None].to(x.dtype)                  # (B, cout)
        return x + self.bias[None, :, None, None].to(x.dtype)


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one feature map holding the mean across-group standard deviation (Karras et al.
    2018): lets D see the diversity of a batch, which counters mode collapse. (B, C, H, W) ->
    (B, C+1, H, W); groups of ``group`` samples (or the whole batch if it does not divide)."""
    B, C, H, W = x.shape
    g = group if B % group == 0 else B
    y = x.float().view(g, -1, C, H, W)
    # the variance over the group written out: Tensor.var over the leading axis of a
    # channels_last view takes a slow strided path on the CPU (27 ms vs ~5 ms for (32, 64, 15, 15))
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
    y = y.repeat(g).view(B, 1, 1, 1).expand(B, 1, H, W).to(x.dtype)
    return torch.cat([x, y], dim=1)
