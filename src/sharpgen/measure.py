"""The one measurement of generated images: ``compute_parameters(clip * image, scale)``.

Generated images are (N, S, S) float32 in [-1, 1]; they are measured as Br = clip_gauss * image
(float64) at the patch store's nominal pixel scale -- exactly how the real patches in
patches.parquet were measured -- by :func:`measure`. Sampling (latents.parquet), traversals,
calibration, ``sharpgen generate`` and retrieval all call it, so one image gets the same numbers
in every table (bit for bit).

:class:`MeasurementContext` carries clip_gauss, the patch mode and size and the pixel scale; it
is written into JSON outputs (calibration.json's ``measurement``) and read back by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.physics import PixelScale, compute_parameters


@dataclass(frozen=True)
class MeasurementContext:
    """How generated images are measured: Br = clip_gauss * image at ``scale``."""

    clip_gauss: float
    mode: str
    size: int
    scale: PixelScale
    bin: int = 1  #: crop mode: the native 0.03 deg CEA grid was binned by this factor

    @classmethod
    def from_store(cls, store) -> "MeasurementContext":
        """From a :class:`sharpgen.store.PatchStore` (its nominal median scale)."""
        return cls(store.clip_gauss, store.mode, store.size, store.nominal_scale,
                   int(store.attrs.get("bin", 1) or 1))

    @classmethod
    def from_dict(cls, d: Mapping) -> "MeasurementContext":
        """From the JSON form of :meth:`to_dict` (calibration.json ``measurement``)."""
        return cls(float(d["clip_gauss"]), str(d.get("mode", "crop")), int(d.get("size", 0)),
                   PixelScale(size_mm=float(d["pixel_size_mm"]), area_cm2=float(d["pixel_area_cm2"]),
                              size_arcsec=float(d["pixel_size_arcsec"])),
                   int(d.get("bin", 1) or 1))

    def to_dict(self) -> dict:
        return {"clip_gauss": float(self.clip_gauss), "mode": self.mode, "size": int(self.size),
                "bin": int(self.bin),
                "pixel_size_mm": float(self.scale.size_mm),
                "pixel_area_cm2": float(self.scale.area_cm2),
                "pixel_size_arcsec": float(self.scale.size_arcsec)}

    @property
    def units(self) -> str:
        return "physical" if self.mode == "crop" else "image units (patches mode 'resize': not physical)"


def measure(images: np.ndarray, ctx: MeasurementContext, scale: PixelScale | None = None) -> pd.DataFrame:
    """Parameters of images (N, S, S) in store units [-1, 1] -> DataFrame (N rows, one float64
    column per parameter of :data:`sharpgen.physics.PARAMETER_NAMES`). Generated images use the
    context's nominal scale; pass ``scale`` (e.g. ``store.scale(rows)``) for patches that have
    their own (augmented real queries)."""
    br = np.asarray(images, dtype=np.float64) * float(ctx.clip_gauss)
    return compute_parameters(br, ctx.scale if scale is None else scale)


def generate_and_measure(G, z: np.ndarray, ctx: MeasurementContext, batch_size: int = 256,
                         progress: bool = False, keep_images: bool = True, space: str = "z"
                         ) -> tuple[np.ndarray | None, pd.DataFrame]:
    """z (N, nz) -> (images (N, S, S) float32 in [-1, 1] or None, parameters (N rows)),
    generated and measured batch by batch. ``space="w"``: the rows are whitened W codes of a
    generator with a mapping network (:func:`space_codes`)."""
    from sharpgen.gan import generate
    from sharpgen.logutil import track

    z = np.asarray(z, dtype=np.float32)
    n = z.shape[0]
    images = np.empty((n, G.size, G.size), dtype=np.float32) if keep_images else None
    parts = []
    for i in track(range(0, n, batch_size), enabled=progress, desc="generate+measure", unit="batch"):
        imgs = generate(G, z[i: i + batch_size], batch_size=batch_size, space=space)
        if images is not None:
            images[i: i + len(imgs)] = imgs
        parts.append(measure(imgs, ctx))
    return images, pd.concat(parts, ignore_index=True)


Renderer = Callable[[np.ndarray], pd.DataFrame]


def make_renderer(G, ctx: "MeasurementContext | Mapping", params: Sequence[str] | None = None,
                  batch_size: int = 256, space: str = "z") -> Renderer:
    """z (N, D) -> DataFrame of parameters (N rows) of G(z), measured by :func:`measure`.
    ``ctx``: a :class:`MeasurementContext` or its JSON form. ``space="w"``: the rows are
    whitened W codes (the latent space of boundaries fitted in W)."""
    if not isinstance(ctx, MeasurementContext):
        ctx = MeasurementContext.from_dict(ctx)

    def render(z: np.ndarray) -> pd.DataFrame:
        _, df = generate_and_measure(G, z, ctx, batch_size=batch_size, keep_images=False, space=space)
        return df if params is None else df[list(params)]

    return render


def space_codes(G, z: np.ndarray, space: str = "z") -> np.ndarray:
    """Latents drawn as z ~ N(0, I) (N, nz) -> the codes of latent space ``space`` (N, D) float64:
    z itself, or the whitened W codes of G's mapping network (``space="w"``,
    :func:`sharpgen.gan.latent_codes`). Base latents of traversals, strips, calibration requests
    and ``sharpgen generate`` are drawn in z and mapped here, so a seed means the same image in
    both spaces."""
    from sharpgen.gan.model import latent_codes, latent_space

    z = np.asarray(z)
    if space == "z":
        return z.astype(np.float64)
    if space != "w":
        raise ValueError(f"latent space must be 'z' or 'w', got {space!r}")
    if latent_space(G) != "w":
        raise ValueError("boundaries fitted in W need a generator with a mapping network "
                         "(gan.arch: mapping); this generator has none")
    return latent_codes(G, np.atleast_2d(z).astype(np.float32)).astype(np.float64).reshape(z.shape[:-1] + (-1,))
