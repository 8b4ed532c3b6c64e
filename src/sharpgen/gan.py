"""GAN for SHARP Br patches: the published model, a stabilised variant, and the training loop.

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

Training (:func:`train_gan`) keeps the whole patch store in memory as one tensor on the
training device, draws batches with a seeded ``torch.Generator``, logs losses and throughput to a
CSV file, writes sample grids, and checkpoints everything needed to resume bit-for-bit (networks,
optimisers, EMA, RNG states, step) atomically under ``<checkpoint_root>/<hash>/``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpgen.atomic import atomic_path
from sharpgen.config import section_hash

logger = logging.getLogger(__name__)

ARCHITECTURES = ("paper", "stable")
FORMAT_VERSION = 2
CSV_COLUMNS = ("step", "d_loss", "g_loss", "d_real", "d_fake", "images_per_s", "elapsed_s")


class GanError(RuntimeError):
    """Base class for GAN training/loading errors."""


class PatchStoreError(GanError, ValueError):
    """The patch store is missing, empty or corrupt (the message names it)."""


class CheckpointMismatchError(GanError):
    """A checkpoint was written for another architecture, configuration or data set."""


class DivergenceError(GanError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GanConfig:
    """The ``gan`` config section with defaults (see config.yaml for the meaning of each key)."""

    arch: str = "stable"
    nz: int = 100
    steps: int = 1500
    batch_size: int = 32
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.999          # stable only
    augment_translation: float = 0.125  # stable only: max shift, fraction of S
    augment_cutout: float = 0.25      # stable only: cutout square side, fraction of S
    split: str = "train"              # train | all
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    # keys that do not change the training trajectory (left out of the checkpoint hash, so
    # raising `steps` or changing the logging cadence resumes from existing checkpoints)
    NON_TRAJECTORY = ("steps", "device", "log_every", "sample_every", "checkpoint_every",
                      "keep_checkpoints")

    @classmethod
    def from_dict(cls, d: dict | None) -> "GanConfig":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown gan config key(s) {unknown}; known: {sorted(names)}")
        if "betas" in d:
            d["betas"] = tuple(float(b) for b in d["betas"])
        cfg = cls(**d)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"gan.arch {self.arch!r} is not one of {list(ARCHITECTURES)}")
        if self.split not in ("train", "all"):
            raise ValueError(f"gan.split {self.split!r} is not 'train' or 'all'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"gan.device {self.device!r} is not auto|cpu|cuda")
        for k in ("nz", "steps", "batch_size", "log_every", "sample_every", "checkpoint_every",
                  "keep_checkpoints"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"gan.{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"gan.ema_decay must be in [0, 1), got {self.ema_decay}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d

    def trajectory_dict(self) -> dict:
        d = self.as_dict()
        for k in self.NON_TRAJECTORY:
            d.pop(k)
        return d


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Losses and augmentation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Patch store
# --------------------------------------------------------------------------------------------


def read_patch_store(zarr_path: str | os.PathLike, table_path: str | os.PathLike | None = None,
                     split: str = "all") -> tuple[np.ndarray, dict]:
    """Load the patch store into memory: ``((N, S, S) float32 in [-1, 1], attrs)``.

    With ``split='train'`` only rows whose ``split`` column in ``table_path`` (patches.parquet)
    is ``train`` are returned. Raises :class:`PatchStoreError` naming the store when it is
    missing, empty, unreadable or holds values outside [-1, 1] / non-finite values.
    """
    import zarr

    zarr_path = Path(zarr_path)
    if not zarr_path.exists():
        raise PatchStoreError(f"patch store {zarr_path} does not exist")
    try:
        group = zarr.open_group(str(zarr_path), mode="r")
        attrs = dict(group.attrs)
        if "patches" not in group:
            raise PatchStoreError(f"patch store {zarr_path} has no 'patches' array")
        arr = group["patches"]
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
            raise PatchStoreError(f"patch store {zarr_path}: 'patches' has shape {arr.shape}, "
                                  "expected (N, S, S)")
        if arr.shape[0] == 0:
            raise PatchStoreError(f"patch store {zarr_path} is empty (0 patches)")
        data = np.asarray(arr[...], dtype=np.float32)
    except PatchStoreError:
        raise
    except Exception as err:  # zarr/numcodecs raise many types for damaged stores
        raise PatchStoreError(f"patch store {zarr_path} is unreadable or corrupt: "
                              f"{type(err).__name__}: {err}") from err
    if not np.isfinite(data).all():
        raise PatchStoreError(f"patch store {zarr_path} contains NaN/inf values")
    if np.abs(data).max() > 1.0 + 1e-6:
        raise PatchStoreError(f"patch store {zarr_path} has values outside [-1, 1] "
                              f"(max |x| = {np.abs(data).max():.3g})")
    if split != "all":
        if table_path is None:
            raise ValueError("split selection needs the patches.parquet table")
        import pandas as pd

        table = pd.read_parquet(table_path, columns=["row", "split"])
        if len(table) != data.shape[0]:
            raise PatchStoreError(f"{table_path} has {len(table)} rows but patch store "
                                  f"{zarr_path} has {data.shape[0]} patches")
        rows = table.loc[table["split"] == split, "row"].to_numpy()
        if rows.size == 0:
            raise PatchStoreError(f"{table_path} has no rows with split == {split!r}")
        data = data[np.sort(rows)]
    return data, attrs


# --------------------------------------------------------------------------------------------
# Devices and checkpoints
# --------------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GanError("gan.device is 'cuda' but CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def checkpoint_folder(root: str | os.PathLike, cfg: GanConfig, size: int, n_images: int,
                      data_id: str = "") -> Path:
    """``root/<12-hex hash>`` of the trajectory-defining config keys and the training data."""
    return Path(root) / section_hash(cfg.trajectory_dict(), {"size": size, "n": n_images,
                                                             "data": data_id})


_CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(out)


def _meta(cfg: GanConfig, size: int, n_images: int, data_id: str) -> dict:
    return {"format": FORMAT_VERSION, "arch": cfg.arch, "size": int(size), "nz": int(cfg.nz),
            "n_images": int(n_images), "data_id": str(data_id),
            "trajectory": cfg.trajectory_dict()}


def check_checkpoint_meta(path: Path, meta: dict, expected: dict) -> None:
    """Refuse a checkpoint written for another architecture / config / data set."""
    diffs = [f"{k}: checkpoint {meta.get(k)!r} != current {v!r}"
             for k, v in expected.items() if meta.get(k) != v]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written for a different run and cannot be resumed "
            f"({'; '.join(diffs)}); delete it or change checkpoint_dir")


def _save_checkpoint(folder: Path, state: dict, step: int, keep: int) -> Path:
    path = folder / f"step_{step:08d}.pt"
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Loading / generating
# --------------------------------------------------------------------------------------------


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


def save_grid_png(path: str | os.PathLike, images: np.ndarray, clip_gauss: float,
                  title: str = "") -> None:
    """Square grid of (N, S, S) images in [-1, 1] as a PNG in Gauss, colour map centred on 0 G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    vmax = 0.5 * clip_gauss
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.8, 1.6 * rows + 0.3),
                             squeeze=False)
    im = None
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            im = ax.imshow(images[i] * clip_gauss, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                           origin="lower", interpolation="nearest")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="Br [G]")
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    G: nn.Module
    D: nn.Module
    ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0
    extra: dict = field(default_factory=dict)


def _rng_state(state: _State) -> dict:
    rng = {"torch": torch.get_rng_state(), "gen": state.gen.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(state: _State, rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    state.gen.set_state(rng["gen"].to(state.gen.device) if state.gen.device.type == "cpu"
                        else rng["gen"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _ema_update(ema: nn.Module, G: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), G.parameters()):
            pe.lerp_(p, 1.0 - decay)


def train_step(G: nn.Module, D: nn.Module, real: torch.Tensor, z: torch.Tensor, arch: str,
               aug=None, autocast=None, opt_g: torch.optim.Optimizer | None = None,
               opt_d: torch.optim.Optimizer | None = None):
    """One discriminator step and one generator step on the same fake batch.

    ``real`` (B, 1, S, S), ``z`` (B, nz). D's weights are frozen during the generator step (no
    wasted weight gradients). Returns (d_loss, g_loss, real_logit, fake_logit), not detached.
    """
    aug = aug or (lambda x: x)
    autocast = autocast or torch.autocast("cpu", enabled=False)
    with autocast:
        fake = G(z)
        real_logit = D(aug(real))
        fake_logit = D(aug(fake.detach()))
        d_loss = d_loss_fn(arch, real_logit, fake_logit)
    if opt_d is not None:
        opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    if opt_d is not None:
        opt_d.step()
    D.requires_grad_(False)
    try:
        with autocast:
            g_loss = g_loss_fn(arch, D(aug(fake)))
        if opt_g is not None:
            opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        if opt_g is not None:
            opt_g.step()
    finally:
        D.requires_grad_(True)
    return d_loss, g_loss, real_logit, fake_logit


def train_gan(patches: np.ndarray, cfg: GanConfig | dict, *, checkpoint_root: str | os.PathLike,
              generator_path: str | os.PathLike, log_csv: str | os.PathLike,
              samples_dir: str | os.PathLike | None = None, clip_gauss: float = 1000.0,
              data_id: str = "", threads: int | None = None, progress: bool = True,
              max_steps_this_run: int | None = None) -> dict:
    """Train on ``patches`` (N, S, S) float32 in [-1, 1]; write generator.pt, the CSV log, grids.

    Resumes from the newest checkpoint in ``checkpoint_root/<hash>``. ``max_steps_this_run``
    (tests only) stops early after that many steps without writing the final outputs.
    Returns a summary dict (steps, seconds, images/s, checkpoint folder).
    """
    cfg = GanConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    cfg.check()
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or patches.shape[0] == 0:
        raise PatchStoreError(f"training patches must be (N, S, S) with N > 0, got {patches.shape}")
    n_img, size = patches.shape[0], patches.shape[1]
    _check_size(size)
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    if threads and not cuda:
        torch.set_num_threads(int(threads))
    if not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    folder = checkpoint_folder(checkpoint_root, cfg, size, n_img, data_id)
    folder.mkdir(parents=True, exist_ok=True)
    grid_dir = folder / "grids"
    meta = _meta(cfg, size, n_img, data_id)
    stable = cfg.arch == "stable"
    # channels_last: required for fast cuDNN convolutions, and measured 1.3-1.8x faster with
    # oneDNN on this project's CPU too (benchmarks/bench_gan.py --channels-last-cpu)
    mem = torch.channels_last

    torch.manual_seed(cfg.seed)
    G = build_generator(cfg.arch, size, cfg.nz).to(device, memory_format=mem)
    D = build_discriminator(cfg.arch, size).to(device, memory_format=mem)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if stable and cfg.ema_decay > 0 else None
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    st = _State(G, D, ema, opt_g, opt_d, gen)
    # fixed latents for the sample grids (independent of the training stream)
    z_fixed = torch.randn(16, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 2))

    # ---- resume ------------------------------------------------------------------------------
    for step_ck, path in reversed(list_checkpoints(folder)):
        if step_ck > cfg.steps:
            continue
        try:
            ck = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # a damaged file: fall back to an older one
            logger.warning("skipping unreadable checkpoint %s (%s: %s)", path,
                           type(err).__name__, err)
            continue
        check_checkpoint_meta(path, ck.get("meta", {}), meta)
        G.load_state_dict(ck["G"])
        D.load_state_dict(ck["D"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        _set_rng_state(st, ck["rng"])
        st.step = int(ck["step"])
        st.extra = dict(ck.get("extra", {}))
        logger.info("resumed from %s (step %d of %d)", path, st.step, cfg.steps)
        break
    else:
        logger.info("starting a new run in %s", folder)

    # the live CSV log sits next to the checkpoints; rows past the resumed step are dropped
    live_csv = folder / "train_log.csv"
    rows: list[dict] = []
    if live_csv.exists() and st.step > 0:
        with open(live_csv, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= st.step]
    with open(live_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    elapsed0 = float(st.extra.get("elapsed_s", 0.0))

    # ---- data on the device, once ---------------------------------------------------------------
    data = torch.from_numpy(patches).unsqueeze(1).to(device).contiguous(memory_format=mem)
    bs = cfg.batch_size
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def aug(x: torch.Tensor) -> torch.Tensor:
        if not stable:
            return x
        return diff_augment(x, gen, cfg.augment_translation, cfg.augment_cutout)

    def save_ckpt() -> Path:
        state = {"meta": meta, "step": st.step, "G": G.state_dict(), "D": D.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None,
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": _rng_state(st),
                 "extra": {"elapsed_s": elapsed0 + (time.perf_counter() - t_start)}}
        return _save_checkpoint(folder, state, st.step, cfg.keep_checkpoints)

    def sample_grid() -> None:
        net = ema if ema is not None else G
        was = net.training
        net.eval()
        with torch.no_grad(), autocast:
            imgs = net(z_fixed.to(device)).float()[:, 0].cpu().numpy()
        net.train(was)
        save_grid_png(grid_dir / f"step_{st.step:08d}.png", imgs, clip_gauss,
                      title=f"{cfg.arch} step {st.step}")

    from tqdm.auto import tqdm

    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, st.step + max_steps_this_run)
    bar = tqdm(total=cfg.steps, initial=st.step, disable=not progress, desc=f"gan[{cfg.arch}]",
               unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    t_win, n_win = time.perf_counter(), 0
    acc = torch.zeros(4, device=device)  # d_loss, g_loss, d_real, d_fake sums over the window
    last_good = list_checkpoints(folder)[-1][1] if list_checkpoints(folder) else None
    G.train()
    D.train()
    while st.step < end:
        idx = torch.randint(0, n_img, (bs,), generator=gen, device=device)
        real = data.index_select(0, idx)
        z = torch.randn(bs, cfg.nz, generator=gen, device=device)
        d_loss, g_loss, real_logit, fake_logit = train_step(
            G, D, real, z, cfg.arch, aug, autocast, opt_g, opt_d)
        if ema is not None:
            _ema_update(ema, G, min(cfg.ema_decay, (1.0 + st.step) / (10.0 + st.step)))
        st.step += 1
        n_win += 1
        acc += torch.stack([d_loss.detach(), g_loss.detach(), real_logit.detach().float().mean(),
                            fake_logit.detach().float().mean()])
        # on the CPU the check is free; on CUDA it waits for the GPU, so only at log steps
        check_now = (not cuda) or st.step % cfg.log_every == 0 or st.step == end \
            or st.step % cfg.checkpoint_every == 0
        if check_now:
            vals = acc.tolist()
            if not all(math.isfinite(v) for v in vals):
                bar.close()
                raise DivergenceError(
                    f"GAN training diverged: non-finite loss by step {st.step} "
                    f"(d_loss={d_loss.item():.4g}, g_loss={g_loss.item():.4g}); the last good "
                    f"checkpoint {last_good or '(none yet)'} is kept; lower gan.lr_d/lr_g or "
                    "use gan.arch: stable")
        if st.step % cfg.log_every == 0 or st.step == cfg.steps:
            now = time.perf_counter()
            vals = (acc / n_win).tolist()
            row = {"step": st.step, "d_loss": f"{vals[0]:.6g}", "g_loss": f"{vals[1]:.6g}",
                   "d_real": f"{vals[2]:.6g}", "d_fake": f"{vals[3]:.6g}",
                   "images_per_s": f"{n_win * bs / max(now - t_win, 1e-9):.4g}",
                   "elapsed_s": f"{elapsed0 + now - t_start:.2f}"}
            with open(live_csv, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=CSV_COLUMNS).writerow(row)
            bar.set_postfix(d=row["d_loss"], g=row["g_loss"], ips=row["images_per_s"])
            acc.zero_()
            t_win, n_win = time.perf_counter(), 0
        if st.step % cfg.sample_every == 0 or st.step == cfg.steps:
            sample_grid()
        if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps:
            last_good = save_ckpt()
        bar.update(1)
    bar.close()
    elapsed = elapsed0 + time.perf_counter() - t_start
    summary = {"steps": st.step, "seconds": elapsed, "checkpoint_folder": str(folder),
               "images_per_s": st.step * bs / max(elapsed, 1e-9)}
    if st.step < cfg.steps:  # stopped early on purpose (tests)
        return summary

    # ---- final outputs ---------------------------------------------------------------------------
    final = ema if ema is not None else G
    blob = {"format": FORMAT_VERSION, "arch": cfg.arch, "size": int(size), "nz": int(cfg.nz),
            "config": cfg.as_dict(), "clip_gauss": float(clip_gauss), "steps": int(st.step),
            "weights": "ema" if ema is not None else "generator", "data_id": str(data_id),
            "state_dict": {k: v.detach().float().cpu().contiguous()
                           for k, v in final.state_dict().items()}}
    with atomic_path(generator_path, suffix=".pt") as tmp:
        torch.save(blob, tmp)
    with atomic_path(log_csv, suffix=".csv") as tmp:
        shutil.copyfile(live_csv, tmp)
    if samples_dir is not None:
        with atomic_path(samples_dir) as tmp:
            tmp.mkdir()
            for png in sorted(grid_dir.glob("step_*.png")):
                shutil.copyfile(png, tmp / png.name)
    logger.info("trained %s GAN: %d steps in %.1f s (%.1f images/s); wrote %s", cfg.arch,
                st.step, elapsed, summary["images_per_s"], generator_path)
    return summary


def training_flops_per_step(arch: str, size: int, batch_size: int, nz: int = 100) -> float:
    """FLOPs of one training step (D step + G step), counted with FlopCounterMode on the meta
    device (convolutions, matmuls and their backward passes; elementwise ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G = build_generator(arch, size, nz)
        D = PaperDiscriminator(size, mbstd=arch == "stable")  # SN adds only O(params) work
        z = torch.randn(batch_size, nz)
        real = torch.randn(batch_size, 1, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(G, D, real, z, arch)
    return float(counter.get_total_flops())


def iter_csv(path: str | os.PathLike) -> Iterable[dict[str, Any]]:
    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)
