"""SimSiam collapse monitoring (used by :func:`sharpgen.ssl.train_simsiam` every epoch): the
spread of l2-normalised embeddings and their effective rank, and the check that raises
:class:`CollapseError` when either falls below the configured thresholds (``ssl.collapse``).
Shapes: embeddings ``(N, d)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


class CollapseError(RuntimeError):
    """SimSiam representation collapse detected (the message gives the epoch and the statistics)."""


def _normalized_std_t(z: torch.Tensor) -> torch.Tensor:
    """:func:`normalized_std` of ``z`` (N, d) as a 0-d float32 tensor on ``z``'s device (no
    host sync)."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


def normalized_std(z: torch.Tensor | np.ndarray) -> float:
    """Mean over dimensions of the batch std of l2-normalised ``z`` (N, d).

    0 for a collapsed representation; about 1/sqrt(d) for a healthy one (SimSiam paper fig. 2).
    """
    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z)
    return float(_normalized_std_t(z))


def effective_rank(z: torch.Tensor | np.ndarray, center: bool = True) -> float:
    """Effective rank of ``z`` (N, d): exp(entropy of the normalised singular values) (RankMe,
    Garrido et al. 2023), of the row-centred matrix by default.

    Centring makes it measure how many directions the embeddings actually vary in, unaffected by
    a common offset (e.g. eval-mode BatchNorm early in training): about min(N, d) for isotropic
    embeddings, 1 when they vary along one line, 0 when they are all identical.
    """
    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).double()
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if total <= 1e-12 * max(1.0, float(z.abs().max())) * max(z.shape):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_stats(emb: torch.Tensor | np.ndarray) -> dict:
    """``{"std": normalized_std, "std_healthy": 1/sqrt(d), "effective_rank": ...}``."""
    d = emb.shape[1]
    return {"std": normalized_std(emb), "std_healthy": 1.0 / math.sqrt(d), "effective_rank": effective_rank(emb)}


def check_collapse(emb: torch.Tensor | np.ndarray, min_std_ratio: float, min_effective_rank: float,
                   epoch: int | None = None) -> dict:
    """Raise :class:`CollapseError` if the normalised-output std is below
    ``min_std_ratio / sqrt(d)`` or the effective rank is below ``min_effective_rank``; else
    return :func:`collapse_stats`."""
    st = collapse_stats(emb)
    where = f" at epoch {epoch}" if epoch is not None else ""
    problems = []
    if st["std"] < min_std_ratio * st["std_healthy"]:
        problems.append(f"std of l2-normalised output {st['std']:.4g} < {min_std_ratio} x 1/sqrt(d) "
                        f"= {min_std_ratio * st['std_healthy']:.4g} (healthy ~ {st['std_healthy']:.4g})")
    if st["effective_rank"] < min_effective_rank:
        problems.append(f"effective rank {st['effective_rank']:.3g} < {min_effective_rank}")
    if problems:
        raise CollapseError(
            f"SimSiam representation collapsed{where}: " + "; ".join(problems)
            + ". Try a lower lr, a larger batch, stronger augmentations, or a different seed "
              "(thresholds: config ssl.collapse)."
        )
    return st
