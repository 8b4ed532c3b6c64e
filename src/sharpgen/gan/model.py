"""GAN networks for SHARP Br patches: the published model and a stabilised variant (same nets).

Two architectures (config ``gan.arch``):

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
    translation and cutout only (both fill with 0 G, so field values are never rescaled; no
    brightness/contrast/saturation), and an exponential moving average (EMA) of the generator
    weights, which is what ``generator.pt`` stores.

Images are float32 ``(B, 1, S, S)`` in [-1, 1] (Br / clip_gauss); latents are ``(B, nz)`` float32
drawn from N(0, I). S is any power of two >= 32.

The training loop is :mod:`sharpgen.gan.train`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("paper", "stable")


class GanError(RuntimeError):
    """Base class for GAN training/loading errors."""


def _check_size(size: int) -> None:
    if size < 32 or size & (size - 1):
        raise ValueError(f"patch size must be a power of two >= 32, got {size}")


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


class StableGenerator(nn.Module):
    """The paper's generator with checkerboard-free 4x4 kernels (stride 2, padding 1):
    Linear(nz -> 64 x S/8 x S/8) + LeakyReLU, ConvTranspose 64->64, 64->32 (LeakyReLU) and
    32->1 + tanh; S/8 -> S/4 -> S/2 -> S exactly (no pad/crop, so no edge artefacts)."""

    def __init__(self, nz: int = 100, size: int = 128):
        super().__init__()
        _check_size(size)
        self.nz, self.size, self.s0 = nz, size, size // 8
        self.fc = nn.Linear(nz, 64 * self.s0 * self.s0)
        self.up1 = nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.up3 = nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(z), 0.2).view(-1, 64, self.s0, self.s0)
        x = F.leaky_relu(self.up1(x), 0.2)
        x = F.leaky_relu(self.up2(x), 0.2)
        return torch.tanh(self.up3(x))


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


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one feature map holding the mean across-group standard deviation (Karras et al.
    2018): lets D see the diversity of a batch, which counters mode collapse. (B, C, H, W) ->
    (B, C+1, H, W); groups of ``group`` samples (or the whole batch if it does not divide)."""
    B, C, H, W = x.shape
    g = group if B % group == 0 else B
    y = x.float().view(g, -1, C, H, W)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
    y = y.repeat(g).view(B, 1, 1, 1).expand(B, 1, H, W).to(x.dtype)
    return torch.cat([x, y], dim=1)


def build_generator(arch: str, size: int, nz: int = 100) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {arch!r}; known: {list(ARCHITECTURES)}")
    if arch == "stable":
        return StableGenerator(nz=nz, size=size)
    return PaperGenerator(nz=nz, size=size)


def build_discriminator(arch: str, size: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {arch!r}; known: {list(ARCHITECTURES)}")
    stable = arch == "stable"
    return PaperDiscriminator(size=size, spectral_norm=stable, mbstd=stable)


def d_loss_fn(arch: str, real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    real_logit, fake_logit = real_logit.float(), fake_logit.float()
    if arch == "stable":  # hinge
        return F.relu(1.0 - real_logit).mean() + F.relu(1.0 + fake_logit).mean()
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss_fn(arch: str, fake_logit: torch.Tensor) -> torch.Tensor:
    fake_logit = fake_logit.float()
    if arch == "stable":
        return -fake_logit.mean()
    # non-saturating: maximise log D(G(z))
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def diff_augment(x: torch.Tensor, gen: torch.Generator, translation: float = 0.125,
                 cutout: float = 0.25) -> torch.Tensor:
    """Differentiable translation + cutout (Zhao et al. 2020) on (B, C, H, W); fill is 0 (0 G).

    Only geometric augmentations: pixel values are never rescaled, so the field strengths the
    discriminator sees stay physical.
    """
    B, C, H, W = x.shape
    dev = x.device
    if translation > 0:
        sh, sw = int(H * translation + 0.5), int(W * translation + 0.5)
        ty = torch.randint(-sh, sh + 1, (B, 1, 1), generator=gen, device=dev)
        tx = torch.randint(-sw, sw + 1, (B, 1, 1), generator=gen, device=dev)
        gy = (torch.arange(H, device=dev).view(1, H, 1) + ty + 1).clamp_(0, H + 1)
        gx = (torch.arange(W, device=dev).view(1, 1, W) + tx + 1).clamp_(0, W + 1)
        xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)          # (B, H+2, W+2, C)
        b = torch.arange(B, device=dev).view(B, 1, 1)
        x = xp[b, gy, gx].permute(0, 3, 1, 2)
    if cutout > 0:
        ch, cw = int(H * cutout + 0.5), int(W * cutout + 0.5)
        oy = torch.randint(0, H + (1 - ch % 2), (B, 1), generator=gen, device=dev) - ch // 2
        ox = torch.randint(0, W + (1 - cw % 2), (B, 1), generator=gen, device=dev) - cw // 2
        ys = torch.arange(H, device=dev).view(1, H)
        xs = torch.arange(W, device=dev).view(1, W)
        in_y = (ys >= oy) & (ys < oy + ch)
        in_x = (xs >= ox) & (xs < ox + cw)
        keep = ~(in_y[:, :, None] & in_x[:, None, :])
        x = x * keep[:, None].to(x.dtype)
    return x.contiguous(memory_format=torch.channels_last)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load ``generator.pt`` -> generator in eval mode, z (B, nz) -> (B, 1, S, S) in [-1, 1]."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        G = build_generator(blob["arch"], int(blob["size"]), int(blob["nz"]))
        G.load_state_dict(blob["state_dict"])
    except Exception as err:
        raise GanError(f"cannot load generator {path}: {type(err).__name__}: {err}") from err
    G.to(device).eval()
    G.meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return G


@torch.no_grad()
def generate(G: nn.Module, z: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Images for latents ``z`` (N, nz) -> (N, S, S) float32 in [-1, 1], in batches."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != G.nz:
        raise ValueError(f"z must have shape (N, {G.nz}), got {z.shape}")
    dev = next(G.parameters()).device
    out = np.empty((z.shape[0], G.size, G.size), dtype=np.float32)
    for i in range(0, z.shape[0], batch_size):
        zb = torch.from_numpy(z[i: i + batch_size]).to(dev)
        out[i: i + batch_size] = G(zb)[:, 0].float().cpu().numpy()
    return out
