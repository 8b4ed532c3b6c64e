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


# ------------------------------------------------------------------------------------------------
# Running the suite on several processes (`make test`: pytest-xdist, `-n 2 --dist loadfile`)
# ------------------------------------------------------------------------------------------------
#: test files that share one expensive session fixture: they must run in the same process
#: (test_explore.py uses test_invert.py's tiny pipeline, built once per process)
SHARED_FIXTURE_GROUPS = {"tests/test_explore.py": "tests/test_invert.py"}

#: the files that run a Snakemake pipeline or several trainings (minutes each on 2 cores, measured
#: 2026-12-02 with --durations), heaviest first: handed to the workers first, so that no worker
#: starts a long file when the others are about to finish
#: (test_explore.py runs with test_invert.py, see above)
HEAVY_FILES = ("test_workflow", "test_invert", "test_slurm", "test_scale", "test_distributed",
               "test_directions", "test_gan", "test_data")


def _file_group(nodeid: str) -> str:
    """The unit of work of a test node id (its file, test_explore.py with test_invert.py): "tests/x.py"."""
    path = nodeid.split("::")[0]
    return SHARED_FIXTURE_GROUPS.get(path, path)


def pytest_collection_modifyitems(config, items):
    """The heavy files first (without xdist too: only the order of the files changes, tests within
    a file keep theirs)."""
    rank = {stem: i for i, stem in enumerate(HEAVY_FILES)}
    first_seen = {}
    for i, item in enumerate(items):
        first_seen.setdefault(_file_group(item.nodeid), i)

    def key(item):
        group = _file_group(item.nodeid)
        return rank.get(Path(group).stem, len(rank)), first_seen[group]

    items.sort(key=key)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist hands out whole files (module- and session-scoped fixtures are built once, in
    one worker), test_explore.py with test_invert.py, in the collection order above. (xdist's own
    ``xdist_group`` marks do not group under pytest 9: the worker's renamed node ids are not
    seen, measured 2026-12-02 with xdist 3.8.0; hence this scheduler.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _file_group(nodeid)

    config.option.loadscopereorder = False  # keep the heavy-first order
    return FileGroupScheduling(config, log)
