"""Geometry of latent directions: conditional projection, direction keys, the polarity fold.

Pure numpy, no I/O. Shapes: a latent is ``(D,)`` (``D = nz = 100``), a batch ``(N, D)``; a
direction is a unit ``(D,)`` vector, or ``(N, D)`` with one unit direction per base latent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from sharpgen.parameters import POLARITY_PARTNER

#: table column whose boundary defines the polarity fold
FOLD_PARAMETER = "lead_sign"


class DirectionError(ValueError):
    """Bad input for a direction computation; the message names the parameter/direction."""


class RequestOutOfRange(DirectionError):
    """A generation request outside the calibrated range; the message gives the range."""


# --------------------------------------------------------------------------------------------
# conditional directions
# --------------------------------------------------------------------------------------------


def project_boundary(primal, *conditions, tol: float = 1e-6) -> np.ndarray:
    """Conditional direction: remove from ``primal`` its components along ``conditions``.

    primal: (D,) direction (need not be unit). conditions: any number of (D,) vectors or
    (K, D) arrays. One condition ``c`` gives ``n - (n.c) c`` (``c`` normalised); several are
    orthonormalised with a QR decomposition and ``n - Q Q^T n`` is returned. The result is a unit
    (D,) vector orthogonal to every condition.
    Raises :class:`DirectionError` when the conditions are linearly dependent (or zero), or when
    ``primal`` lies in their span (nothing left to move).
    """
    n = np.asarray(primal, dtype=np.float64).ravel()
    if not np.isfinite(n).all() or np.linalg.norm(n) == 0:
        raise DirectionError("primal direction is zero or not finite")
    if not conditions:
        return n / np.linalg.norm(n)
    cols = []
    for c in conditions:
        cols.extend(np.atleast_2d(np.asarray(c, dtype=np.float64)))
    C = np.stack(cols, axis=1)  # (D, K)
    if C.shape[0] != n.size:
        raise DirectionError(f"condition dimension {C.shape[0]} does not match the primal direction dimension {n.size}")
    norms = np.linalg.norm(C, axis=0)
    if (norms == 0).any() or not np.isfinite(C).all():
        raise DirectionError("a condition direction is zero or not finite")
    C = C / norms
    if C.shape[1] > n.size:
        raise DirectionError(f"{C.shape[1]} conditions are linearly dependent in {n.size} dimensions")
    Q, R = np.linalg.qr(C)
    diag = np.abs(np.diag(R))
    if diag.min() < tol:
        raise DirectionError(
            f"the {C.shape[1]} condition directions are linearly dependent "
            f"(|R_kk| = {diag.min():.2e} < {tol:g}); drop one of them"
        )
    out = n - Q @ (Q.T @ n)
    norm = np.linalg.norm(out)
    if norm < tol * np.linalg.norm(n):
        raise DirectionError("the primal direction lies in the span of the conditions: nothing left to move")
    return out / norm


def combine_hold(primal, conditions, coefficients) -> np.ndarray:
    """Measured-hold conditional direction: unit ``n - sum_k b_k c_k``.

    primal: (D,) target normal; conditions: (K, D) held normals; coefficients: (K,) ``b``
    (:mod:`sharpgen.directions.holds` solves them so that the held parameters' measured slopes
    vanish; the projection of :func:`project_boundary` is the special case
    ``b = (C^T C)^-1 C^T n``). Returns a unit (D,) vector.
    Raises :class:`DirectionError` when the combination is zero or not finite.
    """
    n = np.asarray(primal, dtype=np.float64).ravel()
    C = np.atleast_2d(np.asarray(conditions, dtype=np.float64))
    b = np.asarray(coefficients, dtype=np.float64).ravel()
    if C.shape != (b.size, n.size):
        raise DirectionError(f"{b.size} hold coefficients for {C.shape[0]} conditions of dimension {C.shape[1]} "
                             f"(primal {n.size})")
    out = n - b @ C
    norm = np.linalg.norm(out)
    if not np.isfinite(norm) or norm < 1e-9:
        raise DirectionError(f"hold coefficients {b.tolist()} cancel the primal direction")
    return out / norm


def projection_coefficients(primal, conditions) -> np.ndarray:
    """The ``b`` (K,) with ``n - b @ C`` = :func:`project_boundary` ``(n, *C)`` up to its norm:
    the least-squares coefficients of ``n`` on the conditions' span. conditions: (K, D)."""
    C = np.atleast_2d(np.asarray(conditions, dtype=np.float64))
    n = np.asarray(primal, dtype=np.float64).ravel()
    return np.linalg.lstsq(C.T, n, rcond=None)[0]


@dataclass(frozen=True)
class DirectionSpec:
    """Move ``target`` while holding the parameters ``hold`` (sorted tuple; empty = unconditional)."""

    target: str
    hold: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "hold", tuple(sorted(set(self.hold))))
        if self.target in self.hold:
            raise DirectionError(f"direction {self.target!r} cannot hold its own target")

    @property
    def key(self) -> str:
        return self.target if not self.hold else f"{self.target}|{','.join(self.hold)}"

    @classmethod
    def parse(cls, key: str) -> "DirectionSpec":
        target, _, hold = key.partition("|")
        return cls(target.strip(), tuple(h.strip() for h in hold.split(",") if h.strip()))

    def normals_of(self, normals: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(target normal (D,), held normals in ``hold`` order); DirectionError naming the
        parameters without a boundary."""
        missing = [p for p in (self.target, *self.hold) if p not in normals]
        if missing:
            raise DirectionError(f"direction {self.key!r}: no boundary for {missing} (available: {sorted(normals)})")
        return normals[self.target], [normals[h] for h in self.hold]

    def vector(self, normals: Mapping[str, np.ndarray], coefficients=None) -> np.ndarray:
        """Unit (D,) direction from the boundary normals: the conditions projected out, or, with
        ``coefficients`` (K,) (a measured hold, :mod:`sharpgen.directions.holds`),
        :func:`combine_hold` of the target normal and the held normals in ``hold`` order."""
        n_t, n_h = self.normals_of(normals)
        try:
            if coefficients is not None and self.hold:
                return combine_hold(n_t, n_h, coefficients)
            return project_boundary(n_t, *n_h)
        except DirectionError as err:
            raise DirectionError(f"direction {self.key!r}: {err}") from None


def direction_specs(parameters: Iterable[str], conditional: Iterable[Mapping] = ()) -> list[DirectionSpec]:
    """Unconditional direction of every parameter + the conditional ones ({target, hold}),
    duplicates dropped, in order."""
    specs = [DirectionSpec(p) for p in parameters]
    specs += [DirectionSpec(c["target"], tuple(c["hold"])) for c in conditional]
    seen, out = set(), []
    for s in specs:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


def direction_title(key: str) -> str:
    """'r_value|tuf' -> 'r_value (tuf held)'; 'tuf' -> 'tuf'."""
    target, _, hold = key.partition("|")
    return f"{target} ({hold.replace(',', ', ')} held)" if hold else target


# --------------------------------------------------------------------------------------------
# polarity folding
# --------------------------------------------------------------------------------------------


def reflect(vectors, fold) -> np.ndarray:
    """Householder reflection ``H v = v - 2 (v.u) u`` across the hyperplane normal to ``fold``.

    vectors: (D,) or (N, D); fold: (D,) unit vector u. Returns the same shape. H is its own
    inverse and preserves lengths and angles.
    """
    v = np.asarray(vectors, dtype=np.float64)
    u = np.asarray(fold, dtype=np.float64).ravel()
    return v - 2.0 * (v @ u)[..., None] * u


def fold_latents(latent_codes, fold) -> tuple[np.ndarray, np.ndarray]:
    """Map latents to the ``z.u >= 0`` half-space.

    latent_codes: (N, D); fold: (D,) unit u, or None (no fold: a copy, nothing reflected).
    Returns ``(folded (N, D), negative (N,) bool)`` where ``negative`` marks the rows that were
    reflected (``z.u < 0``).
    """
    Z = np.asarray(latent_codes, dtype=np.float64)
    if fold is None:
        return Z.copy(), np.zeros(Z.shape[0], bool)
    negative = Z @ np.asarray(fold, dtype=np.float64).ravel() < 0
    out = Z.copy()
    out[negative] = reflect(Z[negative], fold)
    return out, negative


def folded_values(table: pd.DataFrame, name: str, negative) -> np.ndarray:
    """Values of ``name`` seen from the folded side: rows that were reflected take the value of
    the polarity partner (TPF <-> TNF; even parameters are unchanged). -> (N,) float64."""
    partner = POLARITY_PARTNER.get(name, name)
    v = table[name].to_numpy(dtype=np.float64)
    if partner == name:
        return v.copy()
    if partner not in table.columns:
        raise DirectionError(f"parameter {name!r} is folded with its polarity partner {partner!r}, "
                             "which is not a column of the latent table")
    return np.where(np.asarray(negative, bool), table[partner].to_numpy(dtype=np.float64), v)


def direction_rows(vector, latent_codes) -> np.ndarray:
    """(D,) vector, (N, D) rows or callable z -> rows, for N base latents -> (N, D)."""
    Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
    v = vector(Z) if callable(vector) else np.asarray(vector, dtype=np.float64)
    return np.broadcast_to(v, Z.shape) if v.ndim == 1 else v


def beyond_bounds(eps, bounds) -> np.ndarray:
    """eps (E,) against per-base eps ranges bounds (B, 2) -> (B, E) bool, True outside the range."""
    eps = np.asarray(eps, dtype=np.float64).ravel()
    lim = np.atleast_2d(np.asarray(bounds, dtype=np.float64))
    return (eps[None, :] < lim[:, :1] - 1e-12) | (eps[None, :] > lim[:, 1:] + 1e-12)


@dataclass(frozen=True)
class Boundaries:
    """Fitted boundary normals plus the optional polarity fold.

    normals: parameter -> unit (D,) normal, fitted on folded latents for the parameters in
    ``folded``; fold: unit (D,) u or None; folded: names fitted on folded latents; space: the
    latent they live in, ``"z"`` or ``"w"`` (whitened W codes of a mapping generator:
    :func:`sharpgen.measure.space_codes` maps seeded z there, the renderers take the codes).
    A base latent z with ``z.u >= 0`` moves along the normals as fitted; one with ``z.u < 0``
    along the reflected normal of the polarity partner, ``H n_partner`` (:meth:`side_normals`).
    holds: conditional direction key -> coefficients (K,) of a measured hold (the same on both
    sides of the fold); conditional keys not in it project their held normals out.
    """

    normals: Mapping[str, np.ndarray]
    fold: np.ndarray | None = None
    folded: frozenset = frozenset()
    space: str = "z"
    holds: Mapping[str, tuple] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(next(iter(self.normals.values())).size)

    def side_normals(self, negative: bool) -> dict[str, np.ndarray]:
        """Normals in raw z coordinates for bases on the positive (False) or negative side."""
        if not negative or self.fold is None:
            return dict(self.normals)
        out = {}
        for p, n in self.normals.items():
            q = POLARITY_PARTNER.get(p, p)
            out[p] = reflect(self.normals.get(q, n), self.fold) if p in self.folded else n
        return out

    def side(self, latent_codes) -> np.ndarray:
        """(N, D) -> (N,) bool, True where z.u < 0 (all False without a fold)."""
        Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
        if self.fold is None:
            return np.zeros(Z.shape[0], bool)
        return Z @ self.fold < 0

    def vectors(self, spec: DirectionSpec) -> tuple[np.ndarray, np.ndarray]:
        """(positive-side, negative-side) unit (D,) directions of ``spec``."""
        coef = self.holds.get(spec.key)
        pos = spec.vector(self.side_normals(False), coef)
        return pos, (spec.vector(self.side_normals(True), coef) if self.fold is not None else pos)

    def hold_fit(self, spec: DirectionSpec) -> str:
        """How ``spec`` holds its held parameters, for provenance (FITS HOLDFIT): ``"measured
        b=<b_1>,..."`` (coefficients solved on the generator), ``"projection"`` or ``"none"``."""
        if spec.key in self.holds:
            return "measured b=" + ",".join(f"{b:.4g}" for b in self.holds[spec.key])
        return "projection" if spec.hold else "none"

    def per_base(self, spec: DirectionSpec, latent_codes) -> np.ndarray:
        """Direction of ``spec`` for each base latent: (N, D) -> (N, D) unit rows."""
        Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
        pos, neg = self.vectors(spec)
        return np.where(self.side(Z)[:, None], neg[None, :], pos[None, :])

    def eps_bounds(self, spec: DirectionSpec, latent_codes) -> np.ndarray:
        """Range of eps that keeps ``z + eps * d(z)`` on the base's side of the fold: (N, D) -> (N, 2).

        A direction whose target is folded is defined on one half-space: at the fold the bipole
        amplitude passes through zero and beyond it the polarity-reversed region grows again
        (an even parameter cannot decrease below its value at the fold along that line).
        [-inf, inf] rows without a fold or for an unfolded target.
        """
        Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
        out = np.tile([-np.inf, np.inf], (Z.shape[0], 1))
        if self.fold is None or spec.target not in self.folded:
            return out
        a = Z @ self.fold
        du = self.per_base(spec, Z) @ self.fold
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -a / du
        pos = a >= 0
        lower = (pos & (du > 0)) | (~pos & (du < 0))
        upper = ~lower & (du != 0)
        out[lower, 0] = np.minimum(t[lower], 0.0)
        out[upper, 1] = np.maximum(t[upper], 0.0)
        return out

    def fold_latents(self, latent_codes) -> tuple[np.ndarray, np.ndarray]:
        """:func:`fold_latents` with this fold (identity without one)."""
        return fold_latents(latent_codes, self.fold)


def as_boundaries(normals) -> Boundaries:
    """A :class:`Boundaries` from itself or from a plain {name: normal} mapping (no fold)."""
    return normals if isinstance(normals, Boundaries) else Boundaries(dict(normals))


def latent_from_seed(seed: int, dim: int) -> np.ndarray:
    """The base latent of ``sharpgen generate --seed`` and of the report's traversal strips:
    (dim,) float32 from ``default_rng(seed)``."""
    return np.random.default_rng(int(seed)).standard_normal(dim).astype(np.float32)
