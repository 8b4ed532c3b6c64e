"""Independent random streams: one per (configured seed, purpose).

Stages used to derive secondary seeds as ``seed + 1``, ``seed + 2`` ..., which collide across
stages (``directions.seed + 1`` equalled ``sampling.seed``, so the traversal bases were the first
generated latents). :func:`stream` gives every purpose its own stream of a
:class:`numpy.random.SeedSequence` keyed by the purpose's name, so streams never coincide
whatever the configured seeds are.
"""

from __future__ import annotations

import zlib

import numpy as np


def spawn_key(purpose: str) -> tuple[int]:
    """Stable 32-bit key of a purpose name (crc32: the same on every platform and run)."""
    return (zlib.crc32(purpose.encode("utf-8")),)


def seed_sequence(seed: int, purpose: str) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=int(seed), spawn_key=spawn_key(purpose))


def stream(seed: int, purpose: str) -> np.random.Generator:
    """numpy Generator for ``purpose`` (e.g. "traversal_bases") under the configured ``seed``."""
    return np.random.default_rng(seed_sequence(seed, purpose))


def int_seed(seed: int, purpose: str) -> int:
    """A 63-bit integer seed for APIs that want an int (torch, sklearn) for ``purpose``."""
    return int(seed_sequence(seed, purpose).generate_state(2, dtype=np.uint32).astype(np.uint64)
               @ np.array([1, 1 << 32], dtype=np.uint64)) & ((1 << 63) - 1)
