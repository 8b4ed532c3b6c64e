"""Augmentations of Br patches, batched on the training device: the SimSiam views
(``ssl.augment``) and the augmented real retrieval queries (``retrieval.augment``).

Geometric only (rotation, translation, zoom, flips) plus a Gaussian blur and an optional global
polarity flip; pixel values are never rescaled, so field strengths stay physical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from sharpgen.config import section


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges. ``translate_px`` is in pixels at S=128 and scales with S."""

    rotation_deg: float
    translate_px: float
    zoom: tuple[float, float]
    hflip: bool
    vflip: bool
    blur_sigma_px: tuple[float, float]
    polarity_flip: bool

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "AugmentConfig":
        """From an ``augment`` section (ssl.augment or retrieval.augment; schema defaults fill
        what is not given)."""
        cfg = section("ssl", {"augment": dict(cfg or {})})["augment"]
        kw: dict[str, Any] = {}
        for key in ("rotation_deg", "translate_px"):
            if key in cfg:
                kw[key] = float(cfg[key])
        for key in ("zoom", "blur_sigma_px"):
            if key in cfg:
                lo, hi = (float(v) for v in cfg[key])
                if lo > hi:
                    raise ValueError(f"ssl augment {key}: lower bound {lo} > upper bound {hi}")
                kw[key] = (lo, hi)
        for key in ("hflip", "vflip", "polarity_flip"):
            if key in cfg:
                kw[key] = bool(cfg[key])
        return cls(**kw)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator,
            rows: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
    """Random view of a batch ``x`` (B, 1, S, S) in [-1, 1] -> (B, 1, S, S).

    One affine_grid/grid_sample call (bilinear, zero padding = no field) applies per-sample
    rotation U(-r, r) deg, translation U(-t, t) px (t scaled by S/128), zoom U(z0, z1)
    (> 1 magnifies) and independent horizontal/vertical flips with probability 1/2; then two
    grouped 1-D convs apply a (separable) Gaussian blur with sigma ~ U(s0, s1) px per sample (S/128 scaled);
    then (optional) the sign of Br is flipped with probability 1/2. Random numbers come from
    ``gen`` (on x's device), so a fixed generator seed gives identical views. Data-parallel
    training passes ``rows`` (B,) and ``batch``: ``x`` holds these rows of a global batch of
    ``batch``; every random number is drawn for the global batch and these rows kept, so N
    processes see exactly the views one process would (:func:`sharpgen.distributed.shard_rows`).
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"augment expects (B, 1, S, S), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    dev = x.device
    n = b if rows is None else int(batch if batch is not None else b)

    def uniform(lo: float, hi: float) -> torch.Tensor:  # (b,) U(lo, hi), this shard's rows
        u = _uniform(n, lo, hi, gen, dev)
        return u if rows is None else u.index_select(0, rows)

    def sign() -> torch.Tensor:  # (b,) -1 or +1 with probability 1/2
        return torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)

    scale_px = w / 128.0
    ang = uniform(-aug.rotation_deg, aug.rotation_deg) * (math.pi / 180.0)
    zoom = uniform(aug.zoom[0], aug.zoom[1])
    t = aug.translate_px * scale_px
    # translation in normalised coords (align_corners=False: 2 / size per pixel)
    tx = uniform(-t, t) * (2.0 / w)
    ty = uniform(-t, t) * (2.0 / h)
    fx = sign() if aug.hflip else torch.ones(b, device=dev)
    fy = sign() if aug.vflip else torch.ones(b, device=dev)
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    # output pixel p samples input at A p + t: rotation by ang, zoom (A scaled by 1/zoom), flips
    theta = torch.stack([
        torch.stack([cos * fx, -sin * fy, tx], dim=1),
        torch.stack([sin * fx, cos * fy, ty], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    s0, s1 = aug.blur_sigma_px
    if s1 > 0:
        sigma = uniform(s0, s1) * scale_px
        radius = max(1, int(math.ceil(3 * s1 * scale_px)))
        r = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
        k1 = torch.exp(-0.5 * (r[None, :] / sigma.clamp_min(1e-3)[:, None].to(x.dtype)) ** 2)
        k1 = k1 / k1.sum(dim=1, keepdim=True)  # sigma -> 0 gives a delta kernel
        # separable: a row pass then a column pass (2k instead of k^2 multiply-adds per pixel)
        out = F.conv2d(out.reshape(1, b, h, w), k1[:, None, None, :], padding=(0, radius), groups=b)
        out = F.conv2d(out, k1[:, None, :, None], padding=(radius, 0), groups=b).reshape(b, 1, h, w)

    if aug.polarity_flip:
        out = out * sign().to(x.dtype)[:, None, None, None]
    return out.clamp_(-1.0, 1.0)
