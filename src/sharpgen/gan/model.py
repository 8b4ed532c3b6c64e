"""GAN networks for SHARP Br patches: the published model, a stabilised variant (same nets) and
a mapping-network generator with an intermediate latent space W.

Three architectures (config ``gan.arch``):

``paper``
    Chatterjee, Munoz-Jaramillo & Malanushenko (2025): generator Linear(nz -> 64 x s0 x s0) +
    LeakyReLU(0.2), ConvTranspose 64->64 and 64->32 (3x3, stride 2) with LeakyReLU, zero-pad by
    one pixel, ConvTranspose 32->1 (3x3, stride 2) + tanh, crop to S x S, with s0 = S/8 - 1
    (15 for S = 128: 15 -> 31 -> 63 -> pad 64 -> 129 -> crop 128). Discriminator: three
    unpadded 3x3 stride-2 convolutions 1->32->64->64 with LeakyReLU(0.2), Linear(64 (S/8-1)^2
    -> 100) + LeakyReLU, Linear(100 -> 1) (14400 inputs for S = 128). Non-saturating BCE loss.

``stable``
    The same two networks (same FLOPs) trained the way small data sets and short budgets need:
    spectral normalisation on every discriminator layer, hinge loss, DiffAugment with
    translation and cutout only (:mod:`sharpgen.gan.augment`: field values are never rescaled;
    no brightness/contrast/saturation), and an exponential moving average (EMA) of the generator
    weights, which is what ``generator.pt`` stores.

``mapping``
    Trained like ``stable`` (same discriminator and recipe), with a StyleGAN2-like generator
    (:class:`MappingGenerator`): a mapping MLP z -> w (``gan.mapping_layers`` layers, learning rate
    scaled by ``gan.mapping_lr_mult``), and a synthesis network w -> image built from
    resize + 3x3 convolutions (bilinear upsampling: no transposed convolutions, hence no
    checkerboard), each convolution modulated by w and demodulated (Karras et al. 2020), with a
    single-channel skip output summed over resolutions and a tanh at the end. The directions
    stage works in *whitened* W (:meth:`MappingGenerator.codes`): ``v = (w - mean) W^-1/2``,
    statistics fixed when training ends, so that v is zero-mean with identity covariance like z.

Images are float32 ``(B, 1, S, S)`` in [-1, 1] (Br / clip_gauss); latents are ``(B, nz)`` float32
drawn from N(0, I). S is any power of two >= 32.

The training loop is :mod:`sharpgen.gan.train`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpgen import warmup
from sharpgen.gan.augment import diff_augment  # noqa: F401  (re-exported)
from sharpgen.gan.layers import (  # noqa: F401  (re-exported: sharpgen.gan.model.* as before)
    MEMORY_FORMAT,
    NOISE_SEED,
    IsotropicKernel,
    PAD_QUANTILE_LEVELS,
    MappingNetwork,
    RadialFilter,
    ModulatedConv,
    _check_size,
    binomial_blur,
    centred_window,
    grain_filter,
    heavy_tail,
    minibatch_std,
    projected_noise,
    quantile_extent,
    register_noise_projections,
    register_projection,
)

ARCHITECTURES = ("paper", "stable", "mapping")
#: architectures trained with the stable recipe (spectral norm, hinge, DiffAugment, EMA)
STABLE_RECIPE = ("stable", "mapping")
#: default synthesis widths of the mapping generator at S/8, S/4, S/2 and S
MAPPING_CHANNELS = (64, 64, 32, 16)
#: latents used to fix the statistics of W (mean, covariance) when training ends
W_STATS_SAMPLES = 20000
#: seed of the speckle projection (``gan.speckle``), another draw than the noise inputs'
SPECKLE_SEED = NOISE_SEED + 1
#: initial bias of the speckle strength logit: softplus(-3) = 0.049, a 5 % grain to start from
SPECKLE_BIAS0 = -3.0
#: initial weight scale of the per-image floor's head (``gan.speckle_floor: image``), x 1/sqrt(nz)
FLOOR_INIT_STD = 0.1
#: largest speckle strength s (log-normal factor exp(s n - s^2 / 2); s = 2 spans 0.02-7x at 2 sigma)
SPECKLE_MAX = 2.0
#: ``signed`` grain: field (pre-activation units) over which the opposing part fades by 1/e
SPECKLE_FADE = 0.1
#: ``padding: window``: the data extent e = min(PAD_GAIN sigmoid(a), 1) per axis reaches exactly 1
PAD_GAIN = 1.25
#: ``padding: window``: initial spread of the extent logits over z (a few samples start padded)
PAD_INIT_STD = 0.5
#: ``padding: window``: initial extent logit, sigmoid(1.386) = 0.8 -> e = 1 (no padding) on average
PAD_BIAS0 = 1.386
#: ``intermittent`` grain: largest tail t of the white map's transform sinh(t n) / sd(t)
#: (kurtosis 3 at t -> 0, 7.8 at 0.7, 36 at 1; the real plage's high-pass kurtosis is 13-30)
SPECKLE_TAIL_MAX = 1.0
#: ``intermittent`` grain: initial tail, t = 0.3 (kurtosis 3.3, nearly the Gaussian grain)
SPECKLE_TAIL0 = 0.3


class GanError(RuntimeError):
    """Base class for GAN training/loading errors."""


class PaperGenerator(nn.Module):
    """z (B, nz) -> image (B, 1, S, S) in [-1, 1]; the published generator generalised to S."""

    def __init__(self, nz: int = 100, size: int = 128):
        super().__init__()
        _check_size(size)
        self.nz, self.size, self.s0 = nz, size, size // 8 - 1
        self.fc = nn.Linear(nz, 64 * self.s0 * self.s0)
        self.up1 = nn.ConvTranspose2d(64, 64, 3, stride=2)
        self.up2 = nn.ConvTranspose2d(64, 32, 3, stride=2)
        self.up3 = nn.ConvTranspose2d(32, 1, 3, stride=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(z), 0.2).view(-1, 64, self.s0, self.s0)
        x = F.leaky_relu(self.up1(x), 0.2)            # S/4 - 1
        x = F.leaky_relu(self.up2(x), 0.2)            # S/2 - 1
        x = F.pad(x, (0, 1, 0, 1))                    # S/2
        x = torch.tanh(self.up3(x))                   # S + 1
        return x[:, :, : self.size, : self.size]


#: upsampling layers of the stable generator (``gan.upsample``)
UPSAMPLING = ("transposed", "blur", "resize")
#: pixel-scale grain of the stable generator (``gan.speckle``)
SPECKLES = ("none", "additive", "lognormal", "signed", "intermittent")
#: the grain's filter (``gan.speckle_kernel``): a free 3x3 conv, an isotropic 5x5 mix of a delta
#: and sampled Gaussians, or a radial transfer function H(|k|) applied by FFT
SPECKLE_KERNELS = ("free", "isotropic", "radial")
#: a floor under the grain's strength (``gan.speckle_floor``): none, one level per image (of z)
#: times the grain, or that level times a grain of the same white map through a filter of its own
SPECKLE_FLOORS = ("none", "image", "image_own")
#: zero padding of the stable generator (``gan.padding``)
PADDINGS = ("none", "window", "matched")
#: output layers of the stable generator (``gan.output``)
OUTPUTS = ("tanh", "clipped")
#: ``gan.output: clipped`` is ``clamp(CLIPPED_GAIN * tanh(x), -1, 1)``: exactly +-1 (the clip
#: level of the real patches) from |x| >= atanh(1 / CLIPPED_GAIN) = 1.10 on
CLIPPED_GAIN = 1.25


class StableGenerator(nn.Module):
    """The paper's generator with 4x4 kernels (stride 2, padding 1): Linear(nz -> 64 x S/8 x S/8)
    + LeakyReLU, then three x2 upsampling layers 64->64, 64->32 (LeakyReLU) and 32->1 + the
    output layer (``output``, below); S/8 -> S/4 -> S/2 -> S exactly (no pad/crop, so no edge
    artefacts).

    ``upsample`` (``gan.upsample``) chooses the upsampling layer:

    * ``transposed``: ConvTranspose 4x4, stride 2 (even kernel overlap, but the four output
      phases still get different learned weights: a checkerboard shows in the samples);
    * ``blur``: the same transposed convolution followed by a fixed binomial 3x3 low-pass
      (:func:`binomial_blur`, StyleGAN2's upsampling filter): nothing at the Nyquist frequency;
      +~1 % of the generator's FLOPs;
    * ``resize``: bilinear x2 resize then a 3x3 convolution (Odena et al. 2016); no
      phase-dependent weights at all; 2.25x the generator's convolution FLOPs.

    ``noise`` (``gan.noise``): the last layer gets the map :meth:`noise_map` of z at S/2 as one
    more input, and a second map at S, through a learned 3x3 ``noise_filter``, is added before the
    output layer (fixed projections from :data:`NOISE_SEED`: the image stays a function of z).

    ``refine`` (``gan.refine``): 3x3 conv 64->64 + LeakyReLU at S/8 and at S/4 (non-linear
    capacity for the layout); x1.37 the step FLOPs (S = 128).

    ``speckle`` (``gan.speckle``, ``none`` here by default): pixel-scale grain whose strength the
    generator sets per place -- plage is speckled with small flux concentrations, the quiet Sun
    nearly flat, and a transposed convolution from a S/8 grid can only place them on its
    lattice. The last layer makes a second map, a strength logit ``a``; with ``g = f(n)``, ``n``
    the deterministic white map :meth:`speckle_map` of z at S (its own fixed projection,
    :data:`SPECKLE_SEED`, rebuilt on load) and ``f`` a learned filter (``speckle_filter``,
    starting as the identity: ``speckle_kernel`` ``free``, a 3x3 convolution; ``isotropic``,
    :class:`~sharpgen.gan.layers.IsotropicKernel`; ``radial``,
    :class:`~sharpgen.gan.layers.RadialFilter`), the output layer gets, instead of the field
    ``m`` alone,

    * ``additive``: ``m + softplus(a) g`` (grain of either sign, also inside spots);
    * ``lognormal``: ``m exp(s g - s^2 / 2)``, ``s = min(softplus(a), SPECKLE_MAX)`` (grain of
      the field's own sign, none where ``m`` = 0);
    * ``signed``: ``additive`` whose part against the field's sign fades where the field is
      strong: ``m + softplus(a) sgn(m) (max(u, 0) - max(-u, 0) exp(-|m| / SPECKLE_FADE))``,
      ``u = sgn(m) g`` (``sgn(0) = 1``; continuous through ``m = 0``, where it is ``additive``).
      The grain can brighten a spot or plage but not punch pixels of the other polarity into it
      (what puts the ``additive`` grain's r_paper off: docs/gan.md);
    * ``intermittent``: ``signed`` with a heavy-tailed white map, ``n`` replaced by
      :func:`heavy_tail` ``(n, t)``, the tail ``t = SPECKLE_TAIL_MAX sigmoid(b)`` set per pixel by
      a third map ``b`` of the last layer (starting at ``SPECKLE_TAIL0``): real plage is a few
      strong flux concentrations among weak ones, a Gaussian grain of the same strength is not.

    ``signed`` is the pipeline's default (config schema); the others are measured in docs/gan.md.

    ``speckle_floor`` (``gan.speckle_floor``): ``image`` adds to ``softplus(a)`` one level per
    image, ``softplus(floor_head(z))`` (a linear head of z from :data:`SPECKLE_BIAS0`), at every
    pixel: the grain never vanishes in places, as a record's (homogeneous) noise does not.
    ``image_own``: that level times a grain of its own, the same white map through a second filter
    (``m + softplus(a) f(w) + level f_floor(w)``, one grain for the sign rule): the quiet Sun's
    grain and plage's may then differ in spectrum. ``none``: the per-pixel strength alone; with no
    grain (``speckle: none``) the floor is off.

    ``output`` (``gan.output``): ``tanh``, or ``clipped``, ``clamp(1.25 tanh(x), -1, 1)``, which
    reaches exactly +-1 -- the +-clip_gauss plateaus of the real patches -- at finite x. The
    pipeline's default is ``clipped`` (config schema); ``tanh`` here and for generators saved
    without the key (everything before 2026-12-01).
    """

    def __init__(self, nz: int = 100, size: int = 128, upsample: str = "transposed",
                 noise: bool = False, refine: bool = False, output: str = "tanh",
                 speckle: str = "none", padding: str = "none", speckle_kernel: str = "free",
                 speckle_floor: str = "none"):
        super().__init__()
        _check_size(size)
        for what, value, known in (("upsampling", upsample, UPSAMPLING), ("output layer", output, OUTPUTS),
                                   ("speckle", speckle, SPECKLES), ("speckle kernel", speckle_kernel, SPECKLE_KERNELS),
                                   ("padding", padding, PADDINGS), ("speckle floor", speckle_floor, SPECKLE_FLOORS)):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r}; known: {list(known)}")
        if speckle == "lognormal" and speckle_floor == "image_own":
            raise ValueError("speckle floor 'image_own' needs an additive grain, not lognormal")
        self.nz, self.size, self.s0, self.upsample = nz, size, size // 8, upsample
        self.noise, self.refine, self.output = bool(noise), bool(refine), output
        self.speckle, self.padding, self.speckle_kernel = speckle, padding, speckle_kernel
        self.speckle_floor = speckle_floor if speckle != "none" else "none"  # a floor of no grain: none
        self.fc = nn.Linear(nz, 64 * self.s0 * self.s0)
        if self.refine:
            self.refine0 = nn.Conv2d(64, 64, 3, padding=1)
            self.refine1 = nn.Conv2d(64, 64, 3, padding=1)
        c3 = 32 + (1 if self.noise else 0)
        c_out = {"none": 1, "intermittent": 3}.get(speckle, 2)
        if upsample == "resize":
            self.up1 = nn.Conv2d(64, 64, 3, padding=1)
            self.up2 = nn.Conv2d(64, 32, 3, padding=1)
            self.up3 = nn.Conv2d(c3, c_out, 3, padding=1)
        else:
            self.up1 = nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1)
            self.up2 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
            self.up3 = nn.ConvTranspose2d(c3, c_out, 4, stride=2, padding=1)
        if self.noise:
            register_noise_projections(self, size, nz)  # fixed (NOISE_SEED), not in the state_dict
            self.noise_filter = nn.Conv2d(1, 1, 3, padding=1, bias=False)
            nn.init.normal_(self.noise_filter.weight, std=0.003)
        if speckle != "none":
            register_projection(self, "speckle_proj", size * size, nz,
                                torch.Generator().manual_seed(SPECKLE_SEED))
            self.speckle_filter = grain_filter(speckle_kernel, size)
            if self.speckle_floor == "image_own":  # the floor's grain: the same white map, its own filter
                self.floor_filter = grain_filter(speckle_kernel, size)
            with torch.no_grad():
                self.up3.bias[1] = SPECKLE_BIAS0
                if speckle == "intermittent":  # tail logit: t = SPECKLE_TAIL_MAX sigmoid(.)
                    q = SPECKLE_TAIL0 / SPECKLE_TAIL_MAX
                    self.up3.bias[2] = math.log(q / (1.0 - q))
            if self.speckle_floor != "none":  # z -> one strength logit per image, starting at SPECKLE_BIAS0
                self.floor_head = nn.Linear(nz, 1)
                nn.init.normal_(self.floor_head.weight, std=FLOOR_INIT_STD / math.sqrt(nz))
                nn.init.constant_(self.floor_head.bias, SPECKLE_BIAS0)

        if padding != "none":  # z -> data extent (height, width) of a centred window
            self.pad_head = nn.Linear(nz, 2, bias=padding == "window")
            nn.init.normal_(self.pad_head.weight, std=PAD_INIT_STD / math.sqrt(nz))
        if padding == "window":
            nn.init.constant_(self.pad_head.bias, PAD_BIAS0)
        if padding == "matched":  # the crops' extent quantiles (2, K), set from the data by training
            self.register_buffer("pad_quantiles", torch.ones(2, PAD_QUANTILE_LEVELS))

    def window_mask(self, z: torch.Tensor) -> torch.Tensor:
        """``padding: window``: the data mask (B, 1, S, S) of z -- 1 inside a centred rectangle
        of extent (e_y S, e_x S), ``e = min(PAD_GAIN sigmoid(pad_head(z)), 1)``, exactly 0 outside
        it, linear across its one-pixel edge. The real crops are zero-padded where their record is
        smaller than the window, symmetrically about its centre (``patch_cut.crop_window``).
        ``padding: matched``: ``e = Q(Phi(u))`` instead, u = z projected on the head's two unit
        directions (~N(0, 1)) and Q each axis's quantile function of the training crops' extents
        (``pad_quantiles``): the padded share and extents are the data's by construction, the head
        learns only which z are padded."""
        if self.padding == "matched":
            u = self.pad_head(z).float() / self.pad_head.weight.float().norm(dim=1)
            return centred_window(quantile_extent(u, self.pad_quantiles), self.size)
        return centred_window((PAD_GAIN * torch.sigmoid(self.pad_head(z))).clamp(max=1.0), self.size)

    def _up(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == "resize":
            return layer(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = layer(x)
        return binomial_blur(x) if self.upsample == "blur" else x

    def noise_map(self, z: torch.Tensor, r: int) -> torch.Tensor:
        """The deterministic pixel map (B, 1, r, r) of z: ``P_r (z / rms(z)) / sqrt(nz)`` with
        the fixed projection ``P_r`` (r^2, nz); ~N(0, 1) per pixel and white across pixels."""
        return projected_noise(z, getattr(self, f"noise_proj_{r}"), r)

    def speckle_map(self, z: torch.Tensor) -> torch.Tensor:
        """The speckle's white map (B, 1, S, S) of z, ~N(0, 1) per pixel (:func:`projected_noise`
        with the fixed projection drawn from :data:`SPECKLE_SEED`)."""
        return projected_noise(z, self.speckle_proj, self.size)

    def _last(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The last upsampling layer; with ``speckle`` its two maps combined into one field."""
        y = self._up(self.up3, x)
        if self.speckle == "none":
            return y
        white = self.speckle_map(z).to(y.dtype)
        if self.speckle == "intermittent":  # heavy-tailed per pixel, then as signed
            white = heavy_tail(white, SPECKLE_TAIL_MAX * torch.sigmoid(y[:, 2:3]))
        grain = self.speckle_filter(white)
        strength = F.softplus(y[:, 1:2])
        if self.speckle_floor != "none":  # the image's own level, everywhere (HMI's noise is set per record)
            level = F.softplus(self.floor_head(z).to(y.dtype))[:, :, None, None]
            if self.speckle_floor == "image":
                strength = strength + level
            else:  # image_own: one grain of two filters (strength > 0: the sign rule below is unchanged)
                grain, strength = strength * grain + level * self.floor_filter(white), 1.0
        if self.speckle == "additive":
            return y[:, :1] + strength * grain
        if self.speckle in ("signed", "intermittent"):  # the grain against the field's sign fades with |m|
            m = y[:, :1]
            against = torch.where(m >= 0, grain < 0, grain > 0)
            grain = torch.where(against, grain * torch.exp(-m.abs() / SPECKLE_FADE), grain)
            return m + strength * grain
        s = strength.clamp(max=SPECKLE_MAX)
        return y[:, :1] * torch.exp(s * grain - 0.5 * s * s)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "clipped":
            return (CLIPPED_GAIN * torch.tanh(x)).clamp(-1.0, 1.0)
        return torch.tanh(x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self._field(z)
        return x if self.padding == "none" else x * self.window_mask(z).to(x.dtype)

    def _field(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(z), 0.2).view(-1, 64, self.s0, self.s0)
        if self.refine:
            x = F.leaky_relu(self.refine0(x), 0.2)
        x = F.leaky_relu(self._up(self.up1, x), 0.2)
        if self.refine:
            x = F.leaky_relu(self.refine1(x), 0.2)
        x = F.leaky_relu(self._up(self.up2, x), 0.2)
        if not self.noise:
            return self._out(self._last(x, z))
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        x = torch.cat([x, self.noise_map(z, x.shape[-1]).to(x.dtype)], dim=1).contiguous(memory_format=fmt)
        out = self._last(x, z) + self.noise_filter(self.noise_map(z, self.size).to(x.dtype))
        return self._out(out)


class MappingGenerator(nn.Module):
    """z (B, nz) -> image (B, 1, S, S) in [-1, 1] through an intermediate latent w (B, w_dim).

    ``mapping`` (:class:`MappingNetwork`) z -> w; ``synthesis(w)``: Linear(w -> C0 x S/8 x S/8)
    + LeakyReLU, a 3x3 conv at S/8, then three blocks of bilinear x2 upsampling + 3x3 conv +
    LeakyReLU (widths ``channels`` at S/8, S/4, S/2, S); every resolution adds a 1x1
    single-channel output to the bilinearly upsampled running image (skip architecture); tanh at
    the end. ``w_dim = nz``. The convolutions at S/8 and S/4 (the layout of the region) are
    modulated by w (:class:`ModulatedConv`); those at S/2 and S (texture) are plain: per-sample
    modulation of the large feature maps cost more CPU time than the convolutions themselves
    (measured: 3x the stable generator's step time with every layer modulated).

    ``noise=True``: the S/2 and S convolutions get one extra input channel, a pixel-scale
    "noise" map that is a *deterministic* function of w: ``P_r (w / rms(w)) / sqrt(w_dim)``
    reshaped to r x r, with a fixed Gaussian projection ``P_r`` (r^2, w_dim) drawn from a fixed
    seed (not stored: rebuilt identically on load). Per pixel it is ~N(0, 1) and white across
    pixels, so the generator has the raw material for HMI-like noise and plage granulation
    (StyleGAN's noise inputs), while the image stays a function of the latent (traversals,
    measurements and W codes stay reproducible).
    Whitened W: buffers ``w_mean`` (w_dim,), ``w_white`` and ``w_color`` (w_dim, w_dim) (the
    symmetric inverse / square root of the covariance of w), set by :meth:`fit_w_statistics`
    when training ends. :meth:`codes` z -> v, :meth:`from_codes` v -> image; before the
    statistics are fitted both are the identity on w.
    """

    latent_space = "w"

    def __init__(self, nz: int = 100, size: int = 128, mapping_layers: int = 4,
                 channels: tuple[int, ...] | list[int] = MAPPING_CHANNELS, noise: bool = True):
        super().__init__()
        _check_size(size)
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"mapping generator needs 4 positive widths (S/8, S/4, S/2, S), got {channels}")
        self.nz, self.size, self.s0, self.w_dim = nz, size, size // 8, nz
        self.channels, self.noise = channels, bool(noise)
        self.mapping = MappingNetwork(nz, self.w_dim, mapping_layers)
        self.fc = nn.Linear(self.w_dim, channels[0] * self.s0 * self.s0)
        self.conv0 = ModulatedConv(channels[0], channels[0], 3, self.w_dim)
        extra = 1 if self.noise else 0
        self.convs = nn.ModuleList(
            ModulatedConv(channels[i], channels[i + 1], 3, self.w_dim) if i == 0
            else nn.Conv2d(channels[i] + extra, channels[i + 1], 3, padding=1) for i in range(3))
        if self.noise:  # fixed projections w -> pixel-scale maps at S/2 and S (not in state_dict)
            register_noise_projections(self, size, self.w_dim)
        self.to_img = nn.ModuleList(
            ModulatedConv(c, 1, 1, self.w_dim, demodulate=False) if i < 2 else nn.Conv2d(c, 1, 1)
            for i, c in enumerate(channels))
        self.register_buffer("w_mean", torch.zeros(self.w_dim))
        self.register_buffer("w_white", torch.eye(self.w_dim))
        self.register_buffer("w_color", torch.eye(self.w_dim))

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        c0 = self.channels[0]
        x = F.leaky_relu(self.fc(w), 0.2).view(-1, c0, self.s0, self.s0)
        x = F.leaky_relu(self.conv0(x, w), 0.2)
        img = self.to_img[0](x, w)
        for i, (conv, to_img) in enumerate(zip(self.convs, self.to_img[1:])):
            styled = i == 0
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if not styled and self.noise:
                x = torch.cat([x, self.noise_map(w, x.shape[-1]).to(x.dtype)], dim=1)
            x = F.leaky_relu(conv(x, w) if styled else conv(x), 0.2)
            img = (F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
                   + (to_img(x, w) if styled else to_img(x)))
        return torch.tanh(img)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))

    def noise_map(self, w: torch.Tensor, r: int) -> torch.Tensor:
        """The deterministic pixel-scale map (B, 1, r, r) of w, ~N(0, 1) per pixel."""
        return projected_noise(w, getattr(self, f"noise_proj_{r}"), r)

    # ---- whitened W ------------------------------------------------------------------------
    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, nz) -> whitened w codes v (B, w_dim)."""
        return (self.mapping(z) - self.w_mean) @ self.w_white

    def from_codes(self, v: torch.Tensor) -> torch.Tensor:
        """Whitened codes v (B, w_dim) -> image (B, 1, S, S)."""
        return self.synthesis(v @ self.w_color + self.w_mean)

    @torch.no_grad()
    def fit_w_statistics(self, n: int = W_STATS_SAMPLES, seed: int = 0, batch: int = 2048,
                         rel_floor: float = 1e-6) -> dict:
        """Set ``w_mean`` / ``w_white`` / ``w_color`` from the w of ``n`` seeded latents
        (``torch.Generator().manual_seed(seed)`` on the CPU; covariance in float64,
        eigenvalues floored at ``rel_floor`` x the largest). Returns a summary (eigenvalue
        range, effective rank)."""
        dev = self.w_mean.device
        gen = torch.Generator().manual_seed(int(seed))
        ws = []
        for i in range(0, n, batch):
            z = torch.randn(min(batch, n - i), self.nz, generator=gen)
            ws.append(self.mapping(z.to(dev)).double().cpu())
        w = torch.cat(ws)
        mean = w.mean(0)
        cov = torch.cov((w - mean).T)
        lam, vec = torch.linalg.eigh(cov)
        lam = lam.clamp_min(float(lam.max()) * rel_floor)
        white = (vec * lam.rsqrt()) @ vec.T
        color = (vec * lam.sqrt()) @ vec.T
        self.w_mean.copy_(mean.float())
        self.w_white.copy_(white.float())
        self.w_color.copy_(color.float())
        p = lam / lam.sum()
        return {"n": int(n), "eig_min": float(lam.min()), "eig_max": float(lam.max()),
                "effective_rank": float(torch.exp(-(p * p.log()).sum()))}


class PaperDiscriminator(nn.Module):
    """image (B, 1, S, S) -> logit (B,); optional spectral normalisation on every layer."""

    def __init__(self, size: int = 128, spectral_norm: bool = False, mbstd: bool = False):
        super().__init__()
        _check_size(size)
        s3 = size // 8 - 1
        self.size, self.mbstd = size, mbstd
        self.flat = (65 if mbstd else 64) * s3 * s3
        layers = [nn.Conv2d(1, 32, 3, stride=2), nn.Conv2d(32, 64, 3, stride=2),
                  nn.Conv2d(64, 64, 3, stride=2), nn.Linear(self.flat, 100), nn.Linear(100, 1)]
        if spectral_norm:
            sn = torch.nn.utils.parametrizations.spectral_norm
            layers = [sn(m) for m in layers]
        self.c1, self.c2, self.c3, self.fc1, self.fc2 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.c1(x), 0.2)
        x = F.leaky_relu(self.c2(x), 0.2)
        x = F.leaky_relu(self.c3(x), 0.2)
        if self.mbstd:
            x = minibatch_std(x)
        x = F.leaky_relu(self.fc1(x.flatten(1)), 0.2)
        return self.fc2(x).squeeze(1)


def build_generator(arch: str, size: int, nz: int = 100, mapping_layers: int = 4,
                    channels: tuple[int, ...] | list[int] = MAPPING_CHANNELS,
                    noise: bool = True, upsample: str = "transposed",
                    stable_noise: bool = False, refine: bool = False,
                    output: str = "tanh", speckle: str = "none", padding: str = "none",
                    speckle_kernel: str = "free", speckle_floor: str = "none") -> nn.Module:
    """The generator of ``arch``; ``mapping_layers``, ``channels`` and ``noise`` only for
    ``mapping``, ``upsample``, ``stable_noise``, ``refine``, ``output``, ``speckle``, ``padding``,
    ``speckle_kernel`` and ``speckle_floor`` only for ``stable``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {arch!r}; known: {list(ARCHITECTURES)}")
    if arch == "mapping":
        return MappingGenerator(nz=nz, size=size, mapping_layers=mapping_layers, channels=channels,
                                noise=noise)
    if arch == "stable":
        return StableGenerator(nz=nz, size=size, upsample=upsample, noise=stable_noise,
                               refine=refine, output=output, speckle=speckle, padding=padding,
                               speckle_kernel=speckle_kernel, speckle_floor=speckle_floor)
    return PaperGenerator(nz=nz, size=size)


def build_discriminator(arch: str, size: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {arch!r}; known: {list(ARCHITECTURES)}")
    stable = arch in STABLE_RECIPE
    return PaperDiscriminator(size=size, spectral_norm=stable, mbstd=stable)


def latent_space(G: nn.Module) -> str:
    """``"w"`` for a generator with a mapping network (directions work in whitened W), else
    ``"z"``."""
    return getattr(G, "latent_space", "z")


def d_loss_fn(arch: str, real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    real_logit, fake_logit = real_logit.float(), fake_logit.float()
    if arch in STABLE_RECIPE:  # hinge
        return F.relu(1.0 - real_logit).mean() + F.relu(1.0 + fake_logit).mean()
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss_fn(arch: str, fake_logit: torch.Tensor) -> torch.Tensor:
    fake_logit = fake_logit.float()
    if arch in STABLE_RECIPE:
        return -fake_logit.mean()
    # non-saturating: maximise log D(G(z))
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load ``generator.pt`` -> generator in eval mode (channels_last weights, like training),
    z (B, nz) -> (B, 1, S, S) in [-1, 1]."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        cfg = blob.get("config") or {}
        G = build_generator(blob["arch"], int(blob["size"]), int(blob["nz"]),
                            mapping_layers=int(cfg.get("mapping_layers", 4)),
                            channels=cfg.get("mapping_channels", MAPPING_CHANNELS),
                            noise=bool(cfg.get("mapping_noise", True)),
                            upsample=str(cfg.get("upsample", "transposed")),
                            stable_noise=bool(cfg.get("noise", False)),
                            refine=bool(cfg.get("refine", False)),
                            output=str(cfg.get("output", "tanh")),
                            speckle=str(cfg.get("speckle", "none")),
                            padding=str(cfg.get("padding", "none")),
                            speckle_kernel=str(cfg.get("speckle_kernel", "free")),
                            speckle_floor=str(cfg.get("speckle_floor", "none")))
        G.load_state_dict(blob["state_dict"])
    except Exception as err:
        raise GanError(f"cannot load generator {path}: {type(err).__name__}: {err}") from err
    G.to(device, memory_format=MEMORY_FORMAT).eval()
    G.meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return G


@torch.no_grad()
def generate(G: nn.Module, z: np.ndarray, batch_size: int = 256, space: str = "z") -> np.ndarray:
    """Images for latents ``z`` (N, nz) -> (N, S, S) float32 in [-1, 1], in batches.

    ``space="w"``: the rows are whitened W codes (:meth:`MappingGenerator.codes`) instead of z.
    """
    z = np.asarray(z, dtype=np.float32)
    if space not in ("z", "w"):
        raise ValueError(f"latent space must be 'z' or 'w', got {space!r}")
    if space == "w" and latent_space(G) != "w":
        raise ValueError("W codes need a generator with a mapping network (gan.arch: mapping)")
    dim = G.w_dim if space == "w" else G.nz
    if z.ndim != 2 or z.shape[1] != dim:
        raise ValueError(f"{space} must have shape (N, {dim}), got {z.shape}")
    net = G.from_codes if space == "w" else G
    dev = next(G.parameters()).device
    out = np.empty((z.shape[0], G.size, G.size), dtype=np.float32)
    for i in range(0, z.shape[0], batch_size):
        zb = torch.from_numpy(z[i: i + batch_size]).to(dev)
        # a batch shape new to the process is computed once on zeros first (sharpgen.warmup);
        # not in training mode, where a throw-away pass would move the batch statistics
        img = net(zb) if G.training else warmup.call(net, zb, ("generate", id(G), space))
        out[i: i + batch_size] = img[:, 0].float().cpu().numpy()
    return out


@torch.no_grad()
def latent_codes(G: nn.Module, z: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The latent codes the directions stage works in: whitened W codes (N, w_dim) for a
    generator with a mapping network, z itself otherwise; float32."""
    z = np.asarray(z, dtype=np.float32)
    if latent_space(G) != "w":
        return z.copy()
    dev = next(G.parameters()).device
    out = np.empty((z.shape[0], G.w_dim), dtype=np.float32)
    for i in range(0, z.shape[0], batch_size):
        zb = torch.from_numpy(z[i: i + batch_size]).to(dev)
        out[i: i + batch_size] = warmup.call(G.codes, zb, ("codes", id(G))).float().cpu().numpy()
    return out
