"""Shared fixtures: the real reference data in ../shared/data and small synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (read-only real SHARP records and JSOC responses); skip when absent."""
    if not (SHARED_DATA / "sharp").is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (a user's clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def real_windows(shared_data):
    """128 x 128 windows (stride 16 px) of the real Br records of ../shared/data, binned 2x2 as
    the default crop grid, clipped to +-1000 G: store units (N, S, S) in [-1, 1] and each
    window's :class:`sharpgen.physics.PixelScale`."""
    from sharpgen.patch_cut import bin_image
    from sharpgen.physics import PixelScale
    from sharpgen.sharp_io import read_sharp

    clip = 1000.0
    wins, scales = [], []
    for path in sorted((shared_data / "sharp").glob("*.Br.fits")):
        rec = read_sharp(path)
        b = np.nan_to_num(bin_image(rec.data, 2), nan=0.0)
        for i in range(0, b.shape[0] - 127, 16):
            for j in range(0, b.shape[1] - 127, 16):
                wins.append(np.clip(b[i:i + 128, j:j + 128], -clip, clip) / clip)
                scales.append(PixelScale.from_header(rec.header, bin_factor=2))
    x = np.stack(wins).astype(np.float32)
    scale = PixelScale(size_mm=np.array([s.size_mm for s in scales]),
                       area_cm2=np.array([s.area_cm2 for s in scales]),
                       size_arcsec=np.array([s.size_arcsec for s in scales]))
    return x, scale
