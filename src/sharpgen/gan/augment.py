"""DiffAugment for the discriminator of the ``stable`` and ``mapping`` recipes (Zhao et al. 2020):
random integer translation and cutout, applied alike to real and generated batches inside the
differentiable graph. Only geometric augmentations: pixel values are never rescaled or
interpolated, so the field strengths the discriminator sees stay physical.

What the translation brings in at the border is ``gan.augment_translation_fill``:

``zero``
    0 G, as DiffAugment does (the default). Every augmented image then has exact-zero bands
    along one or two edges, real and generated alike, so the discriminator cannot use the real
    crops' own zero padding (``patches.mode: crop`` pads where a record is smaller than the
    window; docs/gan.md) to tell them apart, and a generator that learns that padding
    (``gan.padding: window``) is neither rewarded nor penalised for how much it pads.
``reflect``
    the image's own pixels mirrored at the border (StyleGAN2-ADA's integer translation):
    no new zeros, so the zero bands the discriminator sees are those of the data (a padded
    real crop keeps exact zeros on its padded sides, shifted by at most the translation).

The cutout square is filled with 0 G either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpgen.gan.layers import MEMORY_FORMAT

#: what the translation brings in at the border (``gan.augment_translation_fill``)
TRANSLATION_FILLS = ("zero", "reflect")


def diff_augment(x: torch.Tensor, gen: torch.Generator, translation: float = 0.125,
                 cutout: float = 0.25, rows: torch.Tensor | None = None,
                 batch: int | None = None, fill: str = "zero") -> torch.Tensor:
    """Differentiable translation + cutout on ``x`` (B, C, H, W) -> (B, C, H, W).

    ``translation``: the largest shift per axis, a fraction of H (W); ``cutout``: the side of
    the 0 G square, a fraction of H (W); ``fill``: what the shift brings in, ``zero`` (0 G) or
    ``reflect`` (the image mirrored at its border; the shift must be under the image size).
    Data-parallel training passes ``rows`` (B,) and ``batch``: ``x`` holds these rows of a
    global batch of ``batch`` samples; the random shifts and cutouts are drawn for the global
    batch and these rows kept, so N processes augment exactly as one process would
    (:func:`sharpgen.distributed.shard_rows`).
    """
    if fill not in TRANSLATION_FILLS:
        raise ValueError(f"unknown translation fill {fill!r}; known: {list(TRANSLATION_FILLS)}")
    B, C, H, W = x.shape
    dev = x.device
    n_draw = B if rows is None else int(batch if batch is not None else B)

    def draw(lo: int, hi: int, shape_tail: tuple[int, ...]) -> torch.Tensor:
        r = torch.randint(lo, hi, (n_draw, *shape_tail), generator=gen, device=dev)
        return r if rows is None else r.index_select(0, rows)

    if translation > 0:
        sh, sw = int(H * translation + 0.5), int(W * translation + 0.5)
        ty = draw(-sh, sh + 1, (1, 1))
        tx = draw(-sw, sw + 1, (1, 1))
        if fill == "reflect":  # pad by the largest shift, mirrored; every index lands inside
            xp = F.pad(x, (sw, sw, sh, sh), mode="reflect")
            gy = torch.arange(H, device=dev).view(1, H, 1) + ty + sh
            gx = torch.arange(W, device=dev).view(1, 1, W) + tx + sw
        else:  # one ring of zeros; indices beyond the image clamp onto it
            xp = F.pad(x, (1, 1, 1, 1))
            gy = (torch.arange(H, device=dev).view(1, H, 1) + ty + 1).clamp_(0, H + 1)
            gx = (torch.arange(W, device=dev).view(1, 1, W) + tx + 1).clamp_(0, W + 1)
        b = torch.arange(B, device=dev).view(B, 1, 1)
        x = xp.permute(0, 2, 3, 1)[b, gy, gx].permute(0, 3, 1, 2)   # (B, C, H, W)
    if cutout > 0:
        ch, cw = int(H * cutout + 0.5), int(W * cutout + 0.5)
        oy = draw(0, H + (1 - ch % 2), (1,)) - ch // 2
        ox = draw(0, W + (1 - cw % 2), (1,)) - cw // 2
        ys = torch.arange(H, device=dev).view(1, H)
        xs = torch.arange(W, device=dev).view(1, W)
        in_y = (ys >= oy) & (ys < oy + ch)
        in_x = (xs >= ox) & (xs < ox + cw)
        keep = ~(in_y[:, :, None] & in_x[:, None, :])
        x = x * keep[:, None].to(x.dtype)
    return x.contiguous(memory_format=MEMORY_FORMAT)
