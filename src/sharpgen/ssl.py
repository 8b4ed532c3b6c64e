"""SimSiam self-supervised encoder for Br patches (Chen & He 2021; paper section on retrieval).

Everything here is plain torch (no torchvision). Shapes: patches are ``(B, 1, S, S)`` float32 in
``[-1, 1]`` (Br / clip_gauss, as in the patch store); embeddings are ``(B, dim)`` float32,
l2-normalised (unitless).

* :class:`ResNet` -- ResNet backbone with a 1-channel 7x7 stem. ``width=64, depth=(2, 2, 2, 2)`` is
  ResNet18 as in the paper (feature dim 512); the CPU default is narrower and shallower.
* :class:`Encoder` -- backbone + projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN without
  affine; paper 512 -> 512 -> 100). Its l2-normalised output is the retrieval embedding.
* :class:`SimSiam` -- encoder + predictor (100 -> 128 -> 100), symmetric negative-cosine loss
  with stop-gradient on the target branch (:func:`simsiam_loss`).
* :func:`augment` -- batched random affine (rotation, translation, zoom, flips) in ONE
  ``affine_grid`` + ``grid_sample`` call, a per-sample Gaussian blur in one grouped conv, and an
  optional polarity flip (Br -> -Br).
* :func:`train_simsiam` -- SGD + cosine schedule, per-epoch collapse monitoring
  (:func:`collapse_stats`, :func:`check_collapse`), atomic per-epoch checkpoints and resume.
* :func:`save_encoder` / :func:`load_encoder` / :func:`embed` -- the trained encoder file
  (loadable with ``torch.load(weights_only=True)``) and batched embedding.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpgen.atomic import atomic_path

logger = logging.getLogger(__name__)

ENCODER_FORMAT = "sharpgen-simsiam-encoder-v1"
INPUT_TRANSFORMS = ("identity", "signed_sqrt", "both")


class CollapseError(RuntimeError):
    """SimSiam representation collapse detected (the message gives the epoch and the statistics)."""


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """ResNet backbone: 7x7/2 stem (``in_channels`` channels) + 3x3/2 max-pool, then
    ``len(depth)`` stages of ``depth[i]`` basic blocks with ``width * 2**i`` channels (stride 2
    from the second stage on), global average pool. ``(B, C, S, S) -> (B, feature_dim)``.

    ``width=64, depth=(2, 2, 2, 2)`` is ResNet18 (feature_dim 512).
    """

    def __init__(self, width: int = 64, depth: Sequence[int] = (2, 2, 2, 2), in_channels: int = 1):
        super().__init__()
        if width < 1 or not depth or any(int(d) < 1 for d in depth):
            raise ValueError(f"ResNet needs width >= 1 and depth entries >= 1, got width={width}, depth={depth}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        c_in = width
        for i, n_blocks in enumerate(depth):
            c_out = width * 2**i
            blocks = [BasicBlock(c_in, c_out, 1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out, 1) for _ in range(int(n_blocks) - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """SimSiam projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN (no affine)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim, bias=False),
        nn.BatchNorm1d(out_dim, affine=False),
    )


def predictor(dim: int, hidden: int) -> nn.Sequential:
    """SimSiam predictor bottleneck: Linear-BN-ReLU, Linear (dim -> hidden -> dim)."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim),
    )


def transform_input(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Map a ``(B, 1, S, S)`` patch in [-1, 1] to the network input.

    ``identity``: unchanged (paper). ``signed_sqrt``: sign(x) sqrt|x| (boosts weak field, a
    log-flux-aware scaling). ``both``: the two stacked as 2 channels.
    """
    if kind == "identity":
        return x
    ss = torch.sign(x) * torch.sqrt(torch.abs(x) + 1e-12)
    if kind == "signed_sqrt":
        return ss
    if kind == "both":
        return torch.cat([x, ss], dim=1)
    raise ValueError(f"ssl input_transform must be one of {INPUT_TRANSFORMS}, got {kind!r}")


class Encoder(nn.Module):
    """Backbone + projector. ``forward(x (B,1,S,S)) -> z (B, dim)`` (un-normalised projector
    output); :meth:`embed` returns the l2-normalised embedding."""

    def __init__(self, width: int, depth: Sequence[int], proj_hidden: int, dim: int,
                 input_transform: str = "identity"):
        super().__init__()
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"ssl input_transform must be one of {INPUT_TRANSFORMS}, got {input_transform!r}")
        self.input_transform = input_transform
        self.backbone = ResNet(width, depth, in_channels=2 if input_transform == "both" else 1)
        self.projector = projector(self.backbone.feature_dim, proj_hidden, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(transform_input(x, self.input_transform)))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self(x), dim=1)


class SimSiam(nn.Module):
    """Encoder f (backbone + projector) and predictor h."""

    def __init__(self, arch: Mapping[str, Any]):
        super().__init__()
        self.arch = dict(arch)
        self.encoder = Encoder(arch["width"], arch["depth"], arch["proj_hidden"], arch["dim"],
                               arch.get("input_transform", "identity"))
        self.predictor = predictor(arch["dim"], arch["pred_hidden"])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        return self.predictor(z1), self.predictor(z2), z1, z2


ARCH_KEYS = ("width", "depth", "proj_hidden", "dim", "pred_hidden", "input_transform")


def arch_from_config(cfg: Mapping[str, Any]) -> dict:
    """The architecture keys of the ``ssl`` config section (defaults: paper ResNet18)."""
    return {
        "width": int(cfg.get("width", 64)),
        "depth": [int(d) for d in cfg.get("depth", [2, 2, 2, 2])],
        "proj_hidden": int(cfg.get("proj_hidden", 512)),
        "dim": int(cfg.get("dim", 100)),
        "pred_hidden": int(cfg.get("pred_hidden", 128)),
        "input_transform": str(cfg.get("input_transform", "identity")),
    }


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient on the targets:
    ``L = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, in [-1, 1]."""
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=1).mean()
                   + F.cosine_similarity(p2, z1.detach(), dim=1).mean())


# --------------------------------------------------------------------------------------------
# Augmentations (batched, on the training device)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges. ``translate_px`` is in pixels at S=128 and scales with S."""

    rotation_deg: float = 20.0
    translate_px: float = 10.0
    zoom: tuple[float, float] = (0.8, 1.2)
    hflip: bool = True
    vflip: bool = True
    blur_sigma_px: tuple[float, float] = (0.0, 1.0)
    polarity_flip: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "AugmentConfig":
        cfg = dict(cfg or {})
        kw: dict[str, Any] = {}
        for key in ("rotation_deg", "translate_px"):
            if key in cfg:
                kw[key] = float(cfg[key])
        for key in ("zoom", "blur_sigma_px"):
            if key in cfg:
                lo, hi = (float(v) for v in cfg[key])
                if lo > hi:
                    raise ValueError(f"ssl augment {key}: lower bound {lo} > upper bound {hi}")
                kw[key] = (lo, hi)
        for key in ("hflip", "vflip", "polarity_flip"):
            if key in cfg:
                kw[key] = bool(cfg[key])
        return cls(**kw)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random view of a batch ``x`` (B, 1, S, S) in [-1, 1] -> (B, 1, S, S).

    One affine_grid/grid_sample call (bilinear, zero padding = no field) applies per-sample
    rotation U(-r, r) deg, translation U(-t, t) px (t scaled by S/128), zoom U(z0, z1)
    (> 1 magnifies) and independent horizontal/vertical flips with probability 1/2; then one
    grouped conv applies a Gaussian blur with sigma ~ U(s0, s1) px per sample (S/128 scaled);
    then (optional) the sign of Br is flipped with probability 1/2. Random numbers come from
    ``gen`` (on x's device), so a fixed generator seed gives identical views.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"augment expects (B, 1, S, S), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    dev = x.device
    scale_px = w / 128.0
    ang = _uniform(b, -aug.rotation_deg, aug.rotation_deg, gen, dev) * (math.pi / 180.0)
    zoom = _uniform(b, aug.zoom[0], aug.zoom[1], gen, dev)
    t = aug.translate_px * scale_px
    # translation in normalised coords (align_corners=False: 2 / size per pixel)
    tx = _uniform(b, -t, t, gen, dev) * (2.0 / w)
    ty = _uniform(b, -t, t, gen, dev) * (2.0 / h)
    fx = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(b, device=dev)
    fy = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0) if aug.vflip else torch.ones(b, device=dev)
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    # output pixel p samples input at A p + t: rotation by ang, zoom (A scaled by 1/zoom), flips
    theta = torch.stack([
        torch.stack([cos * fx, -sin * fy, tx], dim=1),
        torch.stack([sin * fx, cos * fy, ty], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    s0, s1 = aug.blur_sigma_px
    if s1 > 0:
        sigma = _uniform(b, s0, s1, gen, dev) * scale_px
        radius = max(1, int(math.ceil(3 * s1 * scale_px)))
        r = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
        k1 = torch.exp(-0.5 * (r[None, :] / sigma.clamp_min(1e-3)[:, None].to(x.dtype)) ** 2)
        k1 = k1 / k1.sum(dim=1, keepdim=True)  # sigma -> 0 gives a delta kernel
        k2 = (k1[:, :, None] * k1[:, None, :])[:, None]  # (B, 1, k, k)
        out = F.conv2d(out.reshape(1, b, h, w), k2, padding=radius, groups=b).reshape(b, 1, h, w)

    if aug.polarity_flip:
        sign = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0).to(x.dtype)
        out = out * sign[:, None, None, None]
    return out.clamp_(-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Collapse monitoring
# --------------------------------------------------------------------------------------------


def normalized_std(z: torch.Tensor | np.ndarray) -> float:
    """Mean over dimensions of the batch std of l2-normalised ``z`` (N, d).

    0 for a collapsed representation; about 1/sqrt(d) for a healthy one (SimSiam paper fig. 2).
    """
    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).float()
    zn = F.normalize(z, dim=1)
    return float(zn.std(dim=0).mean())


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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _state_hash(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cuda`` without CUDA is an error."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("ssl.device is 'cuda' but CUDA is not available (use auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: ssl keys that do not change the training trajectory (left out of the checkpoint hash)
NON_TRAJECTORY = ("device", "embed_batch_size", "collapse")


def checkpoint_folder(root: str | Path, cfg: Mapping[str, Any], data_id: str = "") -> Path:
    """``root/<12-hex hash>`` of the trajectory-defining ``ssl`` keys and the training data id."""
    from sharpgen.config import section_hash

    traj = {k: v for k, v in dict(cfg).items() if k not in NON_TRAJECTORY}
    return Path(root) / section_hash(traj, {"data": data_id})


LOG_COLUMNS = ("epoch", "lr", "loss", "std_z", "std_p", "monitor_std", "monitor_effective_rank", "seconds")


def train_simsiam(
    patches: np.ndarray,
    cfg: Mapping[str, Any],
    checkpoint_dir: str | Path,
    log_csv: str | Path | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[dict], None] | None = None,
) -> tuple[SimSiam, list[dict]]:
    """Train SimSiam on ``patches`` (N, S, S) float32 in [-1, 1].

    ``cfg`` is the ``ssl`` config section (see config.yaml). Every epoch ends with an atomic
    checkpoint ``checkpoint_dir/last.pt`` (model, optimiser, epoch, log) and, if given, an
    atomic rewrite of ``log_csv``; a rerun with the same folder resumes after the last finished
    epoch. The per-epoch random streams are seeded by (seed, epoch), so a resumed run equals an
    uninterrupted one on CPU. Raises :class:`CollapseError` when the representation collapses
    (thresholds ``cfg["collapse"]``, checked from epoch ``warmup_epochs`` on, 0-based).

    Returns the model (eval mode, on CPU) and the per-epoch log rows.
    """
    x_all = np.asarray(patches, dtype=np.float32)
    if x_all.ndim != 3 or x_all.shape[1] != x_all.shape[2]:
        raise ValueError(f"SimSiam training needs patches of shape (N, S, S), got {x_all.shape}")
    n = len(x_all)
    bs = int(cfg.get("batch_size", 64))
    if n < 2:
        raise ValueError(f"SimSiam training needs at least 2 training patches, got {n}")
    bs = min(bs, n)
    epochs = int(cfg.get("epochs", 10))
    seed = int(cfg.get("seed", 0))
    dev = pick_device(str(cfg.get("device", "auto"))) if device == "auto" else torch.device(device)
    aug = AugmentConfig.from_config(cfg.get("augment"))
    col = dict(cfg.get("collapse") or {})
    min_std_ratio = float(col.get("min_std_ratio", 0.1))
    min_erank = float(col.get("min_effective_rank", 2.0))
    warmup = int(col.get("warmup_epochs", 1))
    n_monitor = min(n, int(col.get("monitor_samples", 512)))

    torch.manual_seed(seed)
    model = SimSiam(arch_from_config(cfg)).to(dev)
    base_lr = float(cfg.get("lr", 0.0125))
    fix_pred = bool(cfg.get("fix_predictor_lr", True))
    groups = [
        {"params": model.encoder.parameters(), "fix_lr": False},
        {"params": model.predictor.parameters(), "fix_lr": fix_pred},
    ]
    opt = torch.optim.SGD(groups, lr=base_lr, momentum=float(cfg.get("momentum", 0.9)),
                          weight_decay=float(cfg.get("weight_decay", 1e-4)))
    steps_per_epoch = n // bs  # drop_last: BN needs > 1 sample, and equal batches
    total_steps = max(1, epochs * steps_per_epoch)

    ckpt_dir = Path(checkpoint_dir)
    ckpt = ckpt_dir / "last.pt"
    start_epoch, log_rows = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        if state.get("n_train") != n or state.get("arch") != model.arch:
            raise RuntimeError(
                f"SimSiam checkpoint {ckpt} was written for another data set or architecture "
                f"(n_train {state.get('n_train')} vs {n}); delete the folder to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        log_rows = [dict(r) for r in state["log"]]
        logger.info("resuming SimSiam from %s after epoch %d", ckpt, start_epoch - 1)

    mon_idx = np.random.default_rng(seed + 7).choice(n, size=n_monitor, replace=False)
    x_mon = torch.from_numpy(x_all[np.sort(mon_idx)])[:, None]

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed * 100_003 + epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        losses, std_z, std_p = [], [], []
        for it in range(steps_per_epoch):
            step = epoch * steps_per_epoch + it
            lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            for g in opt.param_groups:
                g["lr"] = base_lr if g["fix_lr"] else lr
            xb = torch.from_numpy(x_all[order[it * bs:(it + 1) * bs]])[:, None].to(dev)
            v1, v2 = augment(xb, aug, gen), augment(xb, aug, gen)
            p1, p2, z1, z2 = model(v1, v2)
            loss = simsiam_loss(p1, p2, z1, z2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            with torch.no_grad():
                std_z.append(normalized_std(z1.detach().cpu()))
                std_p.append(normalized_std(p1.detach().cpu()))
        model.eval()
        with torch.no_grad():
            emb = torch.cat([model.encoder.embed(x_mon[i:i + 256].to(dev)).cpu()
                             for i in range(0, len(x_mon), 256)])
        st = collapse_stats(emb)
        row = {
            "epoch": epoch, "lr": lr, "loss": float(np.mean(losses)),
            "std_z": float(np.mean(std_z)), "std_p": float(np.mean(std_p)),
            "monitor_std": st["std"], "monitor_effective_rank": st["effective_rank"],
            "seconds": time.perf_counter() - t0,
        }
        log_rows.append(row)
        logger.info("ssl epoch %d/%d loss %.4f std(z) %.4f std(p) %.4f monitor std %.4f "
                    "(healthy %.4f) eff.rank %.2f  %.1fs", epoch + 1, epochs, row["loss"], row["std_z"],
                    row["std_p"], row["monitor_std"], st["std_healthy"], row["monitor_effective_rank"],
                    row["seconds"])
        if log_csv is not None:
            write_log_csv(log_csv, log_rows)
        # collapse: the training-mode std of the l2-normalised predictor and projector outputs
        # (-> 0 on collapse; the projector's final BN keeps z's std up unless the features are
        # exactly constant, so p is the sharper signal) and the eval-mode effective rank
        floor = min_std_ratio * st["std_healthy"]
        for name in ("std_p", "std_z"):
            if epoch >= warmup and not row[name] >= floor:
                raise CollapseError(
                    f"SimSiam representation collapsed at epoch {epoch}: std of the l2-normalised "
                    f"{'predictor' if name == 'std_p' else 'projector'} output {row[name]:.4g} < "
                    f"{min_std_ratio} x 1/sqrt(d) = {floor:.4g} (healthy ~ {st['std_healthy']:.4g}); "
                    "try a lower lr, a larger batch or another seed (thresholds: ssl.collapse)")
        if epoch >= warmup:
            check_collapse(emb, 0.0, min_erank, epoch=epoch)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt, suffix=".pt") as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                        "log": log_rows, "n_train": n, "arch": model.arch}, tmp)
        if progress is not None:
            progress(row)
    model.eval()
    return model.cpu(), log_rows


def write_log_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the training log (one row per epoch, columns :data:`LOG_COLUMNS`) atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(LOG_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: r[k] for k in LOG_COLUMNS})


# --------------------------------------------------------------------------------------------
# Encoder file and embedding
# --------------------------------------------------------------------------------------------


def save_encoder(path: str | Path, model: SimSiam, meta: Mapping[str, Any] | None = None) -> str:
    """Write the encoder (backbone + projector) state dict + metadata atomically; return its hash.

    The file holds only tensors, strings and numbers, so ``torch.load(path, weights_only=True)``
    loads it. ``meta`` (e.g. patch size, clip_gauss, patch mode) is stored alongside.
    """
    state = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    digest = _state_hash(state)
    obj = {"format": ENCODER_FORMAT, "state_dict": state, "arch": dict(model.arch),
           "hash": digest, "meta": dict(meta or {})}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)
    return digest


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Load :func:`save_encoder`'s file -> (Encoder in eval mode, info dict with ``hash``,
    ``arch``, ``meta``). Raises ValueError naming the file if it is not an encoder file or its
    weights do not match the stored hash."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SimSiam encoder file not found: {path} (run `snakemake train_ssl`)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path} is not a sharpgen SimSiam encoder file (format {ENCODER_FORMAT})")
    arch = obj["arch"]
    enc = Encoder(arch["width"], arch["depth"], arch["proj_hidden"], arch["dim"], arch.get("input_transform", "identity"))
    enc.load_state_dict(obj["state_dict"])
    if _state_hash(obj["state_dict"]) != obj["hash"]:
        raise ValueError(f"{path}: encoder weights do not match the stored hash {obj['hash']} (corrupt file?)")
    enc.eval().to(device)
    return enc, {"hash": obj["hash"], "arch": arch, "meta": dict(obj.get("meta", {}))}


@torch.no_grad()
def embed(encoder: Encoder, patches: np.ndarray, batch_size: int = 256,
          device: str | torch.device | None = None) -> np.ndarray:
    """Embed ``patches`` (N, S, S) float32 in [-1, 1] -> (N, dim) float32, l2-normalised
    (encoder in eval mode: BN uses running statistics)."""
    x = np.asarray(patches, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"embed expects patches of shape (N, S, S), got {x.shape}")
    dev = next(encoder.parameters()).device if device is None else torch.device(device)
    encoder.eval()
    out = np.empty((len(x), encoder.dim), dtype=np.float32)
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))[:, None].to(dev)
        out[i:i + len(xb)] = encoder.embed(xb).cpu().numpy()
    return out
