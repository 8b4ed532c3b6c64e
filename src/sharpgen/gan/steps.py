"""The GAN's update steps (used by :func:`sharpgen.gan.train.train_gan`): one adversarial step
(a discriminator and a generator update on the same fake batch), the lazy R1 penalty on the
discriminator and the lazy path-length penalty on the generator; each averages its gradients
over the processes of a data-parallel run (:mod:`sharpgen.distributed`) before the optimiser
step. Plus the FLOP count of one step (the MFU of benchmarks).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sharpgen import distributed
from sharpgen.distributed import SINGLE, Dist
from sharpgen.gan.model import STABLE_RECIPE, PaperDiscriminator, build_generator, d_loss_fn, g_loss_fn

def _update(loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer | None,
            dist: Dist) -> None:
    """One update of ``net``: zero its gradients, backward ``loss``, average the gradients over
    the processes (data-parallel), optimiser step. Without ``opt`` (tests): backward only."""
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(net.parameters(), dist)
    if opt is not None:
        opt.step()


def train_step(G: nn.Module, D: nn.Module, real: torch.Tensor, z: torch.Tensor, arch: str,
               aug=None, autocast=None, opt_g: torch.optim.Optimizer | None = None,
               opt_d: torch.optim.Optimizer | None = None, dist: Dist = SINGLE, g_extra=None):
    """One discriminator step and one generator step on the same fake batch.

    ``real`` (B, 1, S, S), ``z`` (B, nz). D's weights are frozen during the generator step (no
    wasted weight gradients). Data-parallel (``dist``): the gradients are averaged over the
    processes before each optimiser step. ``g_extra(fake, z)`` (optional): a scalar loss added
    to the generator's (the latent structure, :mod:`sharpgen.gan.structure`). Returns (d_loss,
    g_loss, real_logit, fake_logit), not detached (this process's shard); g_loss includes
    ``g_extra``.
    """
    aug = aug or (lambda x: x)
    autocast = autocast or torch.autocast("cpu", enabled=False)
    with autocast:
        fake = G(z)
        real_logit = D(aug(real))
        fake_logit = D(aug(fake.detach()))
        d_loss = d_loss_fn(arch, real_logit, fake_logit)
    _update(d_loss, D, opt_d, dist)
    D.requires_grad_(False)
    try:
        with autocast:
            g_loss = g_loss_fn(arch, D(aug(fake)))
            if g_extra is not None:
                g_loss = g_loss + g_extra(fake, z)
        _update(g_loss, G, opt_g, dist)
    finally:
        D.requires_grad_(True)
    return d_loss, g_loss, real_logit, fake_logit


def r1_step(D: nn.Module, real: torch.Tensor, gamma: float, every: int, aug=None, autocast=None,
            opt_d: torch.optim.Optimizer | None = None, dist: Dist = SINGLE) -> torch.Tensor:
    """Lazy R1 regularisation (Mescheder et al. 2018; StyleGAN2's lazy form): one D update on
    ``gamma / 2 * E ||grad_x D(x)||^2 * every`` over the (augmented) real batch ``real``
    (B, 1, S, S). Returns the penalty E||grad||^2 (detached)."""
    aug = aug or (lambda x: x)
    autocast = autocast or torch.autocast("cpu", enabled=False)
    x = aug(real).detach().requires_grad_(True)
    with autocast:
        logits = D(x).float()
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grad.float().square().sum(dim=(1, 2, 3)).mean()
    _update(0.5 * gamma * every * penalty, D, opt_d, dist)
    return penalty.detach()


def path_length_step(G: nn.Module, z: torch.Tensor, gen: torch.Generator, pl_mean: float,
                     weight: float, every: int, decay: float = 0.01, autocast=None,
                     opt_g: torch.optim.Optimizer | None = None, dist: Dist = SINGLE,
                     rows: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Lazy path-length regularisation (Karras et al. 2020): penalise the deviation of
    ``|J^T y|`` from its running mean ``pl_mean``, with J the Jacobian of the image w.r.t. w
    (the mapping network's output; z for a generator without one) and y ~ N(0, I) / S image
    noise drawn from ``gen``; one G update on ``weight * every * penalty``. Pushes a fixed-size
    latent step to change the image by a fixed amount: a smoother, more linear latent.
    Returns (new running mean, penalty (detached)). The first call (``pl_mean == 0``) starts the
    running mean at the batch mean. Data-parallel: ``z`` holds rows ``rows`` of the global
    batch, the noise is drawn for the global batch, the batch mean is the mean over processes and
    the gradients are averaged over them."""
    autocast = autocast or torch.autocast("cpu", enabled=False)
    with autocast:
        if hasattr(G, "mapping"):
            w = G.mapping(z)
            img = G.synthesis(w).float()
        else:
            w = z.detach().requires_grad_(True)
            img = G(w).float()
    S = img.shape[-1]
    n_draw = img.shape[0] * dist.world_size if rows is not None else img.shape[0]
    y = distributed.take(torch.randn((n_draw, *img.shape[1:]), generator=gen,
                                     device=img.device), rows) / S
    (grad,) = torch.autograd.grad((img * y).sum(), w, create_graph=True)
    lengths = grad.float().square().sum(dim=1).sqrt()
    batch_mean = float(distributed.mean_over_ranks(lengths.detach().mean(), dist))
    pl_mean = batch_mean if pl_mean == 0.0 else pl_mean + decay * (batch_mean - pl_mean)
    penalty = (lengths - pl_mean).square().mean()
    _update(weight * every * penalty, G, opt_g, dist)
    return pl_mean, penalty.detach()


def _fft_flops(shape, dims) -> float:
    """The textbook 5 N log2 N FLOPs of complex FFTs of N = prod(shape[dims]) points, over the
    other axes of ``shape`` (a real-input or real-output transform: half of it)."""
    n = math.prod(shape[d] for d in dims)
    return 5.0 * math.prod(shape) * math.log2(n) if n > 1 else 0.0


def _fft_r2c_flop(x_shape, dims, *args, out_shape=None, **kwargs) -> int:
    return int(0.5 * _fft_flops(x_shape, dims))


def _fft_c2r_flop(x_shape, dims, *args, out_shape=None, **kwargs) -> int:
    return int(0.5 * _fft_flops(out_shape, dims))


def _fft_c2c_flop(x_shape, dims, *args, out_shape=None, **kwargs) -> int:
    return int(_fft_flops(x_shape, dims))


def fft_flop_mapping() -> dict:
    """``FlopCounterMode(custom_mapping=...)`` entries for the FFT ops, which torch's counter
    leaves out: the `radial` grain filter's rfft2 / irfft2 (and complex FFTs)."""
    aten = torch.ops.aten
    return {aten._fft_r2c: _fft_r2c_flop, aten._fft_c2r: _fft_c2r_flop, aten._fft_c2c: _fft_c2c_flop}


def training_flops_per_step(arch: str, size: int, batch_size: int, nz: int = 100,
                            **generator_options) -> float:
    """FLOPs of one training step (D step + G step), counted with FlopCounterMode on the meta
    device (convolutions, matmuls, FFTs (5 N log2 N per complex transform, half for a real one;
    the `radial` grain filter) and their backward passes; elementwise ops not counted).
    ``generator_options``: keywords of :func:`build_generator` (``upsample``, ``stable_noise``...;
    :meth:`GanConfig.generator_options` gives a config's)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G = build_generator(arch, size, nz, **generator_options)
        D = PaperDiscriminator(size, mbstd=arch in STABLE_RECIPE)  # SN adds only O(params) work
        z = torch.randn(batch_size, nz)
        real = torch.randn(batch_size, 1, size, size)
    counter = FlopCounterMode(display=False, custom_mapping=fft_flop_mapping())
    with counter:
        train_step(G, D, real, z, arch)
    return float(counter.get_total_flops())
