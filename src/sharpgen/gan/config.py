"""The ``gan`` config section as a typed, checked object (:class:`GanConfig`): its keys, their
checks and which of them move the training trajectory (the checkpoint hash). Defaults and meanings:
rules/schemas/config.schema.yaml and config.yaml; the training loop is :mod:`sharpgen.gan.train`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sharpgen.gan.augment import TRANSLATION_FILLS
from sharpgen.gan.model import (
    ARCHITECTURES,
    OUTPUTS,
    PADDINGS,
    SPECKLE_FLOORS,
    SPECKLE_KERNELS,
    SPECKLES,
    UPSAMPLING,
)
from sharpgen.gan.structure import CORRELATION_SOURCES, R_GRIDS, check_names, fade_in


@dataclass(frozen=True)
class GanConfig:
    """The ``gan`` config section (defaults, meanings: rules/schemas/config.schema.yaml, config.yaml)."""

    arch: str
    nz: int
    steps: int
    batch_size: int
    lr_g: float
    lr_d: float
    lr_decay_start: int               # both learning rates fall linearly to 0 from this step ...
    lr_decay_steps: int               # ... over this many steps (0 = constant)
    betas: tuple[float, float]
    ema_decay: float                  # stable, mapping
    augment_translation: float        # stable, mapping: max shift, fraction of S
    augment_cutout: float             # stable, mapping: cutout square side, fraction of S
    augment_translation_fill: str     # stable, mapping: zero | reflect (what a shift brings in)
    mapping_layers: int               # mapping: depth of the z -> w MLP
    mapping_lr_mult: float            # mapping: learning rate of the MLP = lr_g x this
    mapping_channels: tuple[int, ...]  # mapping: synthesis widths at S/8, S/4, S/2, S
    mapping_noise: bool               # mapping: deterministic pixel-scale noise inputs from w
    upsample: str                     # stable: transposed | blur | resize (StableGenerator)
    noise: bool                       # stable: deterministic pixel-scale noise inputs from z
    refine: bool                      # stable: 3x3 convs at S/8 and S/4 (StableGenerator)
    output: str                       # stable: tanh | clipped (StableGenerator)
    speckle: str                      # stable: none | additive | lognormal | signed | intermittent grain
    padding: str                      # stable: none | window | matched (zero margins about a centred data window)
    speckle_kernel: str               # stable: free (3x3 conv) | isotropic (5x5 radial mix) | radial (H(|k|), FFT)
    speckle_floor: str                # stable: none | image | image_own (a per-image floor under the grain; own filter)
    r1_gamma: float                   # R1 penalty weight on D(real) (0 = off)
    r1_every: int                     # lazy R1: every N steps, weighted by N
    pl_weight: float                  # path-length penalty weight on G (0 = off)
    pl_every: int                     # lazy path-length regularisation: every N steps
    structure: tuple[str, ...]        # parameters laying out the latent (sharpgen.gan.structure)
    structure_weight: float           # weight of the structure loss
    structure_start: int              # optimiser step the structure loss starts at (0 = the first)
    structure_ramp: int               # steps over which its weight then rises linearly (0 = at once)
    structure_tau_gauss: float        # width [G] of the proxies' soft 150 G threshold (sharpgen.gan.structure)
    structure_pil_weight: float       # weight of the inversion-line term (needs r_value; 0 = off)
    structure_r_grid: str             # R_VALUE proxy's sub-sampling: mean (block means) | point (JSOC's)
    structure_correlation: str        # the axes' correlation: of the proxies | of the pipeline's parameters
    structure_r_straight_through: bool  # R's loss on the pipeline's R_VALUE, the soft proxy's gradient
    structure_parameter_weights: dict  # parameter -> factor of its structure-loss term (unlisted: 1)
    spectral_weight: float            # weight of the spectral loss (sharpgen.gan.spectral; 0 = off)
    split: str                        # train | all
    seed: int
    device: str                       # auto | cpu | cuda
    log_every: int
    sample_every: int
    checkpoint_every: int
    keep_checkpoints: int
    devices: int                      # data-parallel processes (one per GPU; torchrun)

    # keys that do not change the training trajectory (left out of the checkpoint hash, so
    # raising `steps` (with constant rates: a decay must end by `steps`, :meth:`check`) or
    # changing the logging cadence resumes from existing checkpoints; N
    # processes follow the one-process trajectory, so `devices` may change between resumes)
    NON_TRAJECTORY = ("steps", "device", "log_every", "sample_every", "checkpoint_every",
                      "keep_checkpoints", "devices")
    # options whose setting before they existed is left out of the hash (configurations from
    # before the option keep their checkpoints): key -> that setting
    OPTIONS_OFF = {"refine": False, "output": "tanh", "speckle": "none", "padding": "none",
                   "augment_translation_fill": "zero", "speckle_kernel": "free",
                   "speckle_floor": "none", "spectral_weight": 0.0,
                   "structure_start": 0, "structure_ramp": 0, "lr_decay_steps": 0,
                   "structure_tau_gauss": 20.0, "structure_pil_weight": 0.0,
                   "structure_r_grid": "mean", "structure_correlation": "proxies",
                   "structure_r_straight_through": False, "structure_parameter_weights": {}}
    # generator options only the `stable` generator reads: left out of the hash of the other
    # architectures, so a change of their defaults never moves a `paper` or `mapping` checkpoint
    STABLE_ONLY = ("upsample", "noise", "refine", "output", "speckle", "padding", "speckle_kernel",
                   "speckle_floor")

    @classmethod
    def from_dict(cls, d: dict | None) -> "GanConfig":
        """From a (partial) ``gan`` section: schema defaults fill what is not given."""
        from sharpgen.config import ConfigError, section, typed

        try:
            cfg = typed(cls, section("gan", d))
        except ConfigError as err:
            raise ValueError(str(err).replace("unknown config key(s)", "unknown gan config key(s)")) from None
        object.__setattr__(cfg, "betas", tuple(float(b) for b in cfg.betas))
        object.__setattr__(cfg, "mapping_channels", tuple(int(c) for c in cfg.mapping_channels))
        object.__setattr__(cfg, "structure", tuple(str(n) for n in cfg.structure))
        cfg.check()
        object.__setattr__(cfg, "structure_parameter_weights",  # checked: names in structure, numbers
                           {k: float(v) for k, v in cfg.structure_parameter_weights.items()})
        return cfg

    def check(self) -> None:
        # the pipeline's schema checks these too; the Python API would take "yes" as on
        for k in ("mapping_noise", "noise", "refine", "structure_r_straight_through"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"gan.{k} must be true or false, got {getattr(self, k)!r}")
        for k, allowed in (("arch", ARCHITECTURES), ("upsample", UPSAMPLING), ("output", OUTPUTS),
                           ("speckle", SPECKLES), ("padding", PADDINGS),
                           ("speckle_kernel", SPECKLE_KERNELS), ("speckle_floor", SPECKLE_FLOORS),
                           ("augment_translation_fill", TRANSLATION_FILLS),
                           ("structure_r_grid", R_GRIDS),
                           ("structure_correlation", CORRELATION_SOURCES)):
            if getattr(self, k) not in allowed:
                raise ValueError(f"gan.{k} {getattr(self, k)!r} is not one of {list(allowed)}")
        if self.speckle == "lognormal" and self.speckle_floor == "image_own":
            raise ValueError("gan.speckle_floor image_own needs an additive grain, not gan.speckle lognormal")
        if self.split not in ("train", "all"):
            raise ValueError(f"gan.split {self.split!r} is not 'train' or 'all'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"gan.device {self.device!r} is not auto|cpu|cuda")
        for k in ("nz", "steps", "batch_size", "log_every", "sample_every", "checkpoint_every",
                  "keep_checkpoints", "mapping_layers", "r1_every", "pl_every", "devices"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"gan.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("structure_start", "structure_ramp", "lr_decay_start", "lr_decay_steps"):
            if int(getattr(self, k)) < 0:
                raise ValueError(f"gan.{k} must be >= 0, got {getattr(self, k)}")
        decay_end = self.lr_decay_start + self.lr_decay_steps
        if self.lr_decay_steps and decay_end < self.steps:
            raise ValueError(
                f"gan.lr_decay_start + gan.lr_decay_steps = {decay_end} ends before gan.steps = "
                f"{self.steps}: both learning rates would be 0 for the last {self.steps - decay_end} "
                f"steps; move the decay with the steps (or gan.lr_decay_steps: 0 for constant rates)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"gan.ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.mapping_channels) != 4 or min(self.mapping_channels) < 1:
            raise ValueError(f"gan.mapping_channels must be 4 positive widths, got {list(self.mapping_channels)}")
        check_names(self.structure, "gan.structure")
        if not float(self.structure_tau_gauss) > 0.0:
            raise ValueError(f"gan.structure_tau_gauss must be > 0, got {self.structure_tau_gauss}")
        if float(self.structure_pil_weight) > 0 and "r_value" not in self.structure:
            raise ValueError(f"gan.structure_pil_weight {self.structure_pil_weight} needs r_value in "
                             f"gan.structure, got {list(self.structure)}")
        weights = self.structure_parameter_weights
        if not isinstance(weights, dict):
            raise ValueError(f"gan.structure_parameter_weights must map parameters to factors, got {weights!r}")
        for k, v in weights.items():
            if k not in self.structure:
                raise ValueError(f"gan.structure_parameter_weights names {k!r}, which is not in "
                                 f"gan.structure {list(self.structure)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < float("inf"):
                raise ValueError(f"gan.structure_parameter_weights.{k} must be a number >= 0, got {v!r}")
        for k in ("mapping_lr_mult", "r1_gamma", "pl_weight", "structure_weight", "spectral_weight",
                  "structure_pil_weight"):
            if not float(getattr(self, k)) >= 0.0:
                raise ValueError(f"gan.{k} must be >= 0, got {getattr(self, k)}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        d["mapping_channels"] = list(d["mapping_channels"])
        d["structure"] = list(d["structure"])
        return d

    def lr_scale(self, step: int) -> float:
        """The learning rates' factor at optimiser step ``step`` (0-based): 1 before
        ``lr_decay_start``, then falling linearly to 0 over ``lr_decay_steps`` steps (1 throughout
        when that is 0). A function of the step alone, so a resumed run applies the same rates."""
        return 1.0 - fade_in(step, self.lr_decay_start, self.lr_decay_steps) if self.lr_decay_steps else 1.0

    def generator_options(self) -> dict:
        """The keywords of :func:`sharpgen.gan.model.build_generator` this config sets (all but
        ``arch``, ``size`` and ``nz``): one place for training and the FLOP count."""
        return dict(mapping_layers=self.mapping_layers, channels=self.mapping_channels,
                    noise=self.mapping_noise, upsample=self.upsample, stable_noise=self.noise,
                    refine=self.refine, output=self.output, speckle=self.speckle,
                    padding=self.padding, speckle_kernel=self.speckle_kernel,
                    speckle_floor=self.speckle_floor)

    def trajectory_dict(self) -> dict:
        d = self.as_dict()
        for k in self.NON_TRAJECTORY:
            d.pop(k)
        if not self.structure:  # off: the hash of configurations from before the option
            d.pop("structure")
            d.pop("structure_weight")
            d.pop("structure_start")
            d.pop("structure_ramp")
            d.pop("structure_tau_gauss", None)
            d.pop("structure_pil_weight", None)
            d.pop("structure_r_grid", None)
            d.pop("structure_correlation", None)
            d.pop("structure_r_straight_through", None)
            d.pop("structure_parameter_weights", None)
        else:  # a factor of 1 is the unlisted default: {tuf: 1} trains as {} and keeps its hash
            d["structure_parameter_weights"] = {k: v for k, v in sorted(self.structure_parameter_weights.items())
                                                if v != 1.0}
        if not self.lr_decay_steps:  # constant learning rates: where the decay would start is moot
            d.pop("lr_decay_start")
        if self.speckle == "none":  # a floor of no grain: the generator has none (StableGenerator)
            d["speckle_floor"] = "none"
        for k, off in self.OPTIONS_OFF.items():  # likewise for these options
            if d.get(k) == off:
                d.pop(k)
        if self.arch != "stable":
            for k in self.STABLE_ONLY:
                d.pop(k, None)
        if self.arch == "paper":  # no DiffAugment: its fill never moves a paper checkpoint
            d.pop("augment_translation_fill", None)
        return d
