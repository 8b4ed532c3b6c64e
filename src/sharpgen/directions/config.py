"""Typed ``directions`` config section (defaults: rules/schemas/config.schema.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sharpgen.config import section, typed


@dataclass(frozen=True)
class TraversalConfig:
    n_base: int
    eps_max: float
    n_eps: int
    batch_size: int
    device: str


@dataclass(frozen=True)
class StripsConfig:
    seed: int
    directions: tuple[str, ...]
    n_steps: int
    eps_max: float


@dataclass(frozen=True)
class CalibrationConfig:
    n_bootstrap: int
    n_requests: int
    evaluate: tuple[str, ...]
    refine_steps: int
    tol: float
    hold_steps: int                   # feedback hold: generator calls to bring held parameters back


@dataclass(frozen=True)
class HoldFitConfig:
    n_base: int
    max_evaluations: int
    tol: float


@dataclass(frozen=True)
class DirectionsConfig:
    parameters: tuple[str, ...]
    labels: str
    fraction: float
    val_fraction: float
    classifier: str
    C: float
    seed: int
    fold: str
    fold_min_accuracy: float
    fold_min_balance: float           # no fold when one leading polarity is rarer than this
    space: str                        # auto | z | w (whitened W of a mapping generator)
    conditional: tuple[Any, ...]
    hold: str                         # measured | projection (sharpgen.directions.holds)
    hold_fit: HoldFitConfig
    traversal: TraversalConfig
    strips: StripsConfig
    calibration: CalibrationConfig


def directions_config(values: "Mapping[str, Any] | DirectionsConfig | None" = None) -> DirectionsConfig:
    """The section as a :class:`DirectionsConfig`, schema defaults under ``values``."""
    if isinstance(values, DirectionsConfig):
        return values
    return typed(DirectionsConfig, section("directions", values))
