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

    @classmethod
    def from_store(cls, store) -> "MeasurementContext":
        """From a :class:`sharpgen.store.PatchStore` (its nominal median scale)."""
        return cls(store.clip_gauss, store.mode, store.size, store.nominal_scale)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MeasurementContext":
        """From the JSON form of :meth:`to_dict` (calibration.json ``measurement``)."""
        return cls(float(d["clip_gauss"]), str(d.get("mode", "crop")), int(d.get("size", 0)),
                   PixelScale(size_mm=float(d["pixel_size_mm"]), area_cm2=float(d["pixel_area_cm2"]),
                              size_arcsec=float(d["pixel_size_arcsec"])))

    def to_dict(self) -> dict:
        return {"clip_gauss": float(self.clip_gauss), "mode": self.mode, "size": int(self.size),
                "pixel_size_mm": float(self.scale.size_mm),
                "pixel_area_cm2": float(self.scale.area_cm2),
                "pixel_size_arcsec": float(self.scale.size_arcsec)}

    @property
    def units(self) -> str:
        return "physical" if self.mode == "crop" else "image units (patches mode 'resize': not physical)"


def measure(images: np.ndarray, ctx: MeasurementContext) -> pd.DataFrame:
    """Parameters of generated images (N, S, S) in [-1, 1] -> DataFrame (N rows, one float64
    column per parameter of :data:`sharpgen.physics.PARAMETER_NAMES`)."""
    br = np.asarray(images, dtype=np.float64) * float(ctx.clip_gauss)
    return compute_parameters(br, ctx.scale)


def generate_and_measure(G, z: np.ndarray, ctx: MeasurementContext, batch_size: int = 256,
                         progress: bool = False, keep_images: bool = True
                         ) -> tuple[np.ndarray | None, pd.DataFrame]:
    """z (N, nz) -> (images (N, S, S) float32 in [-1, 1] or None, parameters (N rows)),
    generated and measured batch by batch."""
    from tqdm.auto import tqdm

    from sharpgen.gan import generate

    z = np.asarray(z, dtype=np.float32)
    n = z.shape[0]
    images = np.empty((n, G.size, G.size), dtype=np.float32) if keep_images else None
    parts = []
    for i in tqdm(range(0, n, batch_size), disable=None if progress else True, desc="generate+measure",
                  unit="batch"):
        imgs = generate(G, z[i: i + batch_size], batch_size=batch_size)
        if images is not None:
            images[i: i + len(imgs)] = imgs
        parts.append(measure(imgs, ctx))
    return images, pd.concat(parts, ignore_index=True)


Renderer = Callable[[np.ndarray], pd.DataFrame]


def make_renderer(G, ctx: "MeasurementContext | Mapping", params: Sequence[str] | None = None,
                  batch_size: int = 256) -> Renderer:
    """z (N, D) -> DataFrame of parameters (N rows) of G(z), measured by :func:`measure`.
    ``ctx``: a :class:`MeasurementContext` or its JSON form."""
    if not isinstance(ctx, MeasurementContext):
        ctx = MeasurementContext.from_dict(ctx)

    def render(z: np.ndarray) -> pd.DataFrame:
        _, df = generate_and_measure(G, z, ctx, batch_size=batch_size, keep_images=False)
        return df if params is None else df[list(params)]

    return render
