"""A spectral term in the generator's loss (``gan.spectral_weight``; issue "generator realism";
measured in docs/gan.md).

Every stable generator trained so far puts too little power at 0.4-0.5 cycles per pixel (the
quality report's spectrum ratio, ``sharpgen.sampling``): its learned grain filter goes to ~0 gain
there whatever the data (Durall et al. 2020, "Watch your up-convolution", find the same
high-frequency deficit in image GANs and add a spectral term to G's loss). With a weight ``w > 0``
the generator's loss gets

    ``w * mean_k (log10 P_fake(k) - log10 P_train(k))^2``

``P_fake`` the mean radial power spectrum of the generated batch and ``P_train`` that of the
training patches (computed once), both as :func:`sharpgen.imagestats.mean_power_spectrum`
defines it (each image's mean removed, annuli of integer radius 1..S/2). The quality report
compares the generated samples' spectrum with the *held-out* patches'; the training split's
agrees with theirs to 0.03 dex rms on the default data, so this term uses no held-out data --
but it does train on the statistic the spectrum target measures: with it on, that target is no
longer an independent check (the C2ST still is).

Shapes: images ``(B, 1, S, S)`` (or ``(N, S, S)`` for the training patches), spectra ``(S/2,)``.
"""

from __future__ import annotations

import numpy as np
import torch

from sharpgen.imagestats import mean_power_spectrum


def radial_index(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The annulus of every fft2 frequency, ``(S, S)`` long (integer radius, 0..S/2; the corners
    beyond S/2 get S/2 + 1, dropped), and the annuli's pixel counts ``(S/2 + 2,)``."""
    f = torch.fft.fftfreq(size, dtype=torch.float64) * size
    r = torch.round(torch.hypot(f[:, None], f[None, :])).long().clamp(max=size // 2 + 1)
    return r, torch.bincount(r.flatten(), minlength=size // 2 + 2)


def mean_radial_power(images: torch.Tensor, index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's radial power spectrum, radii 1..S/2: ``(B, 1, S, S)``
    or ``(B, S, S)`` -> ``(S/2,)`` (differentiable; float32 whatever the input's dtype)."""
    x = images.float().reshape(-1, *images.shape[-2:])
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    p = (torch.fft.fft2(x).abs() ** 2).mean(0) / (x.shape[-1] * x.shape[-2])
    sums = torch.zeros(counts.numel(), dtype=p.dtype, device=p.device).index_add_(
        0, index.flatten(), p.flatten())
    return (sums / counts.to(p))[1: x.shape[-1] // 2 + 1]


class SpectralLoss:
    """``loss(fake, z)``: the term above for a generated batch ``fake`` (B, 1, S, S) (``z`` is
    not used: the signature of ``train_step``'s ``g_extra``), against the training patches
    ``patches`` (N, S, S) in [-1, 1], on ``device``."""

    def __init__(self, patches: np.ndarray, weight: float, device: torch.device | str = "cpu"):
        _, power = mean_power_spectrum(patches)  # the quality report's own spectrum of the data
        self.log_target = torch.from_numpy(np.log10(power)).float().to(device)
        index, counts = radial_index(int(np.shape(patches)[-1]))
        self.index, self.counts = index.to(device), counts.to(device)
        self.weight = float(weight)

    def __call__(self, fake: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        p = mean_radial_power(fake, self.index, self.counts)
        return self.weight * (torch.log10(p.clamp_min(1e-30)) - self.log_target).square().mean()


def add_losses(*terms):
    """One ``g_extra(fake, z)`` from the terms that are not None (None when none is)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else (lambda fake, z: sum(t(fake, z) for t in terms))
