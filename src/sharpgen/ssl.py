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
  (:mod:`sharpgen.collapse`), atomic per-epoch checkpoints and resume in a
  locked checkpoint folder (the shared machinery of :mod:`sharpgen.training`).
* :func:`save_encoder` / :func:`load_encoder` / :func:`embed` -- the trained encoder file
  (loadable with ``torch.load(weights_only=True)``) and batched embedding.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpgen import distributed, training, warmup
from sharpgen.distributed import SINGLE, Dist
from sharpgen.augment import AugmentConfig, augment  # noqa: F401  (the SimSiam views)
from sharpgen.collapse import (  # noqa: F401  (re-exported: tests, callers)
    CollapseError, _normalized_std_t, check_collapse, collapse_stats, effective_rank, normalized_std)
from sharpgen.config import section
from sharpgen.logutil import track

logger = logging.getLogger(__name__)

ENCODER_FORMAT = "sharpgen-simsiam-encoder-v1"
INPUT_TRANSFORMS = ("identity", "signed_sqrt", "both")


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity (or 1x1 projection) shortcut.
    The projection subsamples, then applies a stride-1 1x1 conv: the same map and weights as a
    1x1 stride-2 conv, whose channels_last backward torch 2.13 breaks on the CPU for 2-7 input
    channels (varying gradients, heap corruption; docs/gan.md, "Reproducibility")."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        s = self.stride
        return F.relu(out + (x if self.short is None else self.short(x[:, :, ::s, ::s])))


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
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
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
    """The architecture keys of the ``ssl`` config section (schema defaults fill the rest)."""
    cfg = section("ssl", cfg)
    return {
        "width": int(cfg["width"]),
        "depth": [int(d) for d in cfg["depth"]],
        "proj_hidden": int(cfg["proj_hidden"]),
        "dim": int(cfg["dim"]),
        "pred_hidden": int(cfg["pred_hidden"]),
        "input_transform": str(cfg["input_transform"]),
    }


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient on the targets:
    ``L = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, in [-1, 1]."""
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=1).mean()
                   + F.cosine_similarity(p2, z1.detach(), dim=1).mean())


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _state_hash(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


#: ssl keys that do not change the training trajectory (left out of the checkpoint hash)
NON_TRAJECTORY = ("device", "embed_batch_size", "collapse", "devices")
#: checkpoints kept per folder: ``epoch_<finished epochs, 8 digits>.pt``
KEEP_CHECKPOINTS = 2
#: keys every SimSiam checkpoint holds (a file without them is treated as corrupt)
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "log", "n_train", "arch")


def checkpoint_folder(root: str | Path, cfg: Mapping[str, Any], data_id: str = "") -> Path:
    """``root/<12-hex hash>`` of the trajectory-defining ``ssl`` keys and the training data id."""
    traj = {k: v for k, v in dict(cfg).items() if k not in NON_TRAJECTORY}
    return training.checkpoint_folder(root, traj, {"data": data_id})


LOG_COLUMNS = ("epoch", "lr", "loss", "std_z", "std_p", "monitor_std", "monitor_effective_rank", "seconds")


def _optimizer(model: SimSiam, cfg: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with momentum and weight decay; the predictor's group is flagged ``fix_lr``."""
    groups = [
        {"params": model.encoder.parameters(), "fix_lr": False},
        {"params": model.predictor.parameters(), "fix_lr": bool(cfg["fix_predictor_lr"])},
    ]
    return torch.optim.SGD(groups, lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                           weight_decay=float(cfg["weight_decay"]))


def _resume(model: SimSiam, opt: torch.optim.Optimizer, folder: Path, epochs: int, n: int,
            device: torch.device, dist: Dist = SINGLE) -> tuple[int, list[dict]]:
    """Load the newest readable checkpoint of ``folder`` into ``model``/``opt``; return
    (first epoch to run, log rows so far) -- (0, []) when starting anew. Data-parallel: rank 0
    picks the checkpoint and every rank loads that one."""
    found = distributed.resume_checkpoint(folder, epochs, dist, required=CHECKPOINT_KEYS, prefix="epoch")
    if found is None:
        return 0, []
    path, state = found
    training.check_meta(path, {"n_train": state["n_train"], "arch": state["arch"]},
                        {"n_train": n, "arch": model.arch})
    model.load_state_dict(state["model"])
    training.load_optimizer_state(opt, state["optimizer"])
    training.warn_device_change(state.get("device"), device, path)
    logger.info("resuming SimSiam from %s after epoch %d", path, int(state["epoch"]))
    return int(state["epoch"]) + 1, [dict(r) for r in state["log"]]


def _check_epoch_collapse(row: Mapping[str, float], emb: torch.Tensor, healthy: float, epoch: int,
                          min_std_ratio: float, min_erank: float) -> None:
    """Raise :class:`CollapseError` when the training-mode std of the l2-normalised predictor
    (the sharper signal: the projector's last BN keeps z's std up unless the features are
    constant) or projector output < ``min_std_ratio * healthy``, or the eval-mode effective rank
    of ``emb`` < ``min_erank``."""
    floor = min_std_ratio * healthy
    for name in ("std_p", "std_z"):
        if not row[name] >= floor:
            raise CollapseError(
                f"SimSiam representation collapsed at epoch {epoch}: std of the l2-normalised "
                f"{'predictor' if name == 'std_p' else 'projector'} output {row[name]:.4g} < "
                f"{min_std_ratio} x 1/sqrt(d) = {floor:.4g} (healthy ~ {healthy:.4g}); "
                "try a lower lr, a larger batch or another seed (thresholds: ssl.collapse)")
    check_collapse(emb, 0.0, min_erank, epoch=epoch)


def _end_epoch(model: SimSiam, x_mon: torch.Tensor, stats: torch.Tensor, epoch: int, epochs: int,
               lr: float, t0: float, warmup_epochs: int, min_std_ratio: float, min_erank: float
               ) -> tuple[dict, str | None]:
    """The epoch's log row (step statistics ``stats`` (3, steps): loss, std(z1), std(p1); the
    eval-mode embedding of the monitor patches ``x_mon``) and the collapse verdict: (row, None)
    or (row, the :class:`CollapseError` message) from epoch ``warmup_epochs`` on. Leaves ``model`` in
    eval mode."""
    model.eval()
    with torch.no_grad():
        emb = torch.cat([_embed_batch(model.encoder, x_mon[i:i + 256]).cpu()
                         for i in range(0, len(x_mon), 256)])
    st = collapse_stats(emb)
    per_step = stats.double().cpu().numpy()  # one transfer per epoch
    row = {
        "epoch": epoch, "lr": lr, "loss": float(np.mean(per_step[0])),
        "std_z": float(np.mean(per_step[1])), "std_p": float(np.mean(per_step[2])),
        "monitor_std": st["std"], "monitor_effective_rank": st["effective_rank"],
        "seconds": time.perf_counter() - t0,
    }
    logger.info("ssl epoch %d/%d loss %.4f std(z) %.4f std(p) %.4f monitor std %.4f "
                "(healthy %.4f) eff.rank %.2f  %.1fs", epoch + 1, epochs, row["loss"], row["std_z"],
                row["std_p"], row["monitor_std"], st["std_healthy"], row["monitor_effective_rank"],
                row["seconds"])
    if epoch < warmup_epochs:
        return row, None
    try:
        _check_epoch_collapse(row, emb, st["std_healthy"], epoch, min_std_ratio, min_erank)
    except CollapseError as err:
        return row, str(err)
    return row, None


def _step(net: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, aug: AugmentConfig,
          gen: torch.Generator, rows, bs: int):
    """One SimSiam update on batch ``xb`` (B, 1, S, S): two augmented views drawn from ``gen``,
    the symmetric loss, an optimiser step. Returns (loss, z1, p1), not detached."""
    v1, v2 = (augment(xb, aug, gen, rows=rows, batch=bs)
              .contiguous(memory_format=torch.channels_last) for _ in range(2))
    p1, p2, z1, z2 = net(v1, v2)
    loss = simsiam_loss(p1, p2, z1, z2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, z1, p1


def train_simsiam(
    patches: np.ndarray,
    cfg: Mapping[str, Any],
    checkpoint_dir: str | Path,
    log_csv: str | Path | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[dict], None] | None = None,
    threads: int | None = None,
) -> tuple[SimSiam, list[dict]]:
    """Train SimSiam on ``patches`` (N, S, S) float32 in [-1, 1]; return the model (eval mode,
    on CPU) and the per-epoch log rows.

    ``cfg`` is the ``ssl`` config section; ``device`` other than ``auto`` overrides
    ``cfg["device"]``; ``threads`` sets torch's CPU threads. The folder ``checkpoint_dir`` is
    locked for the whole run. Every epoch ends with an atomic checkpoint
    ``epoch_<finished epochs>.pt`` (the newest two kept) and a row of the live log
    ``train_log.csv`` there (rewritten from the checkpoint's log on resume), copied to
    ``log_csv`` at the end; a rerun resumes after the last finished epoch, bit-identically on
    the same device (random streams seeded per (seed, epoch)). Patches and per-step statistics
    stay on the device (one host transfer per epoch). Raises :class:`CollapseError` on collapse
    (thresholds ``cfg["collapse"]``, checked from epoch ``warmup_epochs`` on, 0-based).

    Under torchrun (``ssl.devices`` > 1, :func:`train_ssl_stage`) the model is wrapped in
    ``DistributedDataParallel`` and each process trains on its rows of every global batch of
    ``batch_size`` (same views as one process: :func:`sharpgen.distributed.shard_rows`); on
    CUDA the BatchNorm layers become ``SyncBatchNorm`` (global-batch statistics); gloo on the
    CPU has none, so there each process normalises its shard. Rank 0 alone locks the folder,
    monitors collapse (its verdict is broadcast) and writes checkpoints and the log.
    """
    x_all = np.asarray(patches, dtype=np.float32)
    if x_all.ndim != 3 or x_all.shape[1] != x_all.shape[2]:
        raise ValueError(f"SimSiam training needs patches of shape (N, S, S), got {x_all.shape}")
    n = len(x_all)
    if n < 2:
        raise ValueError(f"SimSiam training needs at least 2 training patches, got {n}")
    cfg = section("ssl", cfg)
    bs = min(int(cfg["batch_size"]), n)
    epochs = int(cfg["epochs"])
    seed = int(cfg["seed"])
    aug = AugmentConfig.from_config(cfg["augment"])
    col = cfg["collapse"]
    min_std_ratio, min_erank = float(col["min_std_ratio"]), float(col["min_effective_rank"])
    warmup_epochs = int(col["warmup_epochs"])
    n_monitor = min(n, int(col["monitor_samples"]))
    dist, dev = distributed.setup(str(cfg["device"]) if str(device) == "auto" else str(device),
                                  key="ssl.device", threads=threads, log=logger)
    main = dist.is_main
    rows = distributed.shard_rows(bs, dist, device=dev)
    base_lr = float(cfg["lr"])
    steps_per_epoch = n // bs  # drop_last: BN needs > 1 sample, and equal batches
    total_steps = max(1, epochs * steps_per_epoch)
    folder = Path(checkpoint_dir)

    with distributed.main_only(dist, training.folder_lock(folder, what="SimSiam training")):
        torch.manual_seed(seed)
        # channels_last: fast cuDNN kernels, and 1.2x per step with oneDNN on the CPU here
        model = SimSiam(arch_from_config(cfg)).to(dev, memory_format=torch.channels_last)
        opt = _optimizer(model, cfg)
        start_epoch, log_rows = _resume(model, opt, folder, epochs, n, dev, dist)
        net: nn.Module = model
        if dist.enabled:
            if dev.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None)
        log = training.CsvLog(folder / "train_log.csv", LOG_COLUMNS, key="epoch") if main else None
        if log is not None:  # the checkpoint's log (up to the resumed epoch) is authoritative
            log.rewrite(log_rows)
        x_dev = torch.from_numpy(x_all)[:, None].to(dev)  # the training patches, on the device once
        mon_idx = np.random.default_rng(seed + 7).choice(n, size=n_monitor, replace=False)
        x_mon = x_dev.index_select(0, torch.from_numpy(np.sort(mon_idx)).to(dev))

        if dev.type == "cpu" and not dist.enabled and start_epoch < epochs:
            # the process's first step once on throw-away copies (sharpgen.warmup); any rows
            # and views will do: only their shapes matter, so from a throw-away stream
            warmup.rehearse(lambda m, o: _step(m.train(), o, x_dev[:bs], aug, torch.Generator(
                device=dev).manual_seed(0), rows, bs), model, opt)
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            model.train()
            gen = torch.Generator(device=dev).manual_seed(seed * 100_003 + epoch)
            order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n)).to(dev)
            stats = torch.empty(3, steps_per_epoch, device=dev)  # loss, std(z1), std(p1) per step
            for it in track(range(steps_per_epoch), desc=f"simsiam epoch {epoch + 1}/{epochs}", unit="step",
                            leave=False, dynamic_ncols=True, enabled=main):  # terminal only
                step = epoch * steps_per_epoch + it
                lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                for g in opt.param_groups:
                    g["lr"] = base_lr if g["fix_lr"] else lr
                xb = x_dev.index_select(0, distributed.take(order[it * bs:(it + 1) * bs], rows))
                loss, z1, p1 = _step(net, opt, xb, aug, gen, rows, bs)
                with torch.no_grad():  # stays on the device: no host sync per step
                    stats[0, it] = loss.detach()
                    stats[1, it] = _normalized_std_t(z1.detach())
                    stats[2, it] = _normalized_std_t(p1.detach())
            stats = distributed.mean_over_ranks(stats, dist)  # over the processes' shards
            verdict = _end_epoch(model, x_mon, stats, epoch, epochs, lr, t0, warmup_epochs, min_std_ratio,
                                 min_erank) if main else None
            row, failure = distributed.broadcast_object(verdict, dist)
            if failure is not None:  # collapse, decided on rank 0: every process stops
                raise CollapseError(failure)
            log_rows.append(row)
            if main:
                log.append(row)
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                         "log": log_rows, "n_train": n, "arch": model.arch, "device": dev.type}
                training.save_checkpoint(folder, epoch + 1, state, keep=KEEP_CHECKPOINTS,
                                         prefix="epoch")
                if progress is not None:
                    progress(row)
        if log_csv is not None and main:
            log.publish(log_csv)
    model.eval()
    return model.cpu(), log_rows


# --------------------------------------------------------------------------------------------
# Encoder file and embedding
# --------------------------------------------------------------------------------------------


def save_encoder(path: str | Path, model: SimSiam, meta: Mapping[str, Any] | None = None) -> str:
    """Write the encoder (backbone + projector) state dict + metadata atomically; return its hash.

    The file holds only tensors, strings and numbers, so ``torch.load(path, weights_only=True)``
    loads it; identical weights and metadata give a byte-identical file. ``meta`` (e.g. patch size, clip_gauss, patch mode) is stored alongside.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
    digest = _state_hash(state)
    obj = {"format": ENCODER_FORMAT, "state_dict": state, "arch": dict(model.arch),
           "hash": digest, "meta": dict(meta or {})}
    training.write_torch(path, obj)  # through a file handle: identical weights -> identical bytes
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
        out[i:i + len(xb)] = _embed_batch(encoder, xb).cpu().numpy()
    return out


def _embed_batch(encoder: Encoder, xb: torch.Tensor) -> torch.Tensor:
    """``encoder.embed(xb)`` (eval mode, no grad), after one discarded pass of a batch shape
    new to the process on the CPU (:mod:`sharpgen.warmup`)."""
    return warmup.call(encoder.embed, xb, ("embed", id(encoder)))


def train_ssl_stage(zarr: str, table: str, cfg: Mapping[str, Any], checkpoint_root: str,
                    encoder: str, log_csv: str, threads: int | None = None) -> str | None:
    """The ``train_ssl`` rule: :func:`train_simsiam` on the ``ssl.split`` patches of the store
    (``zarr`` + ``table``), then :func:`save_encoder` (rank 0). With ``ssl.devices`` = N > 1 this
    starts N torchrun processes (:func:`sharpgen.distributed.launch_if_needed`), each running
    this function with ``threads`` / N CPU threads. Returns the encoder's hash (None from the
    launching process of N and from ranks > 0)."""
    from sharpgen.store import PatchStore

    cfg = section("ssl", cfg)
    if distributed.launch_if_needed(
            "sharpgen.ssl:train_ssl_stage",
            {"zarr": str(zarr), "table": str(table), "cfg": dict(cfg),
             "checkpoint_root": str(checkpoint_root), "encoder": str(encoder),
             "log_csv": str(log_csv), "threads": threads},
            devices=int(cfg.get("devices", 1))):
        return None
    threads = distributed.threads_per_process(threads)
    store = PatchStore.open(zarr, table)
    attrs = store.attrs
    split = str(cfg.get("split", "train"))
    patches = store.read(store.rows(split))
    data_id = f"{attrs.get('config_hash', '')}:{patches.shape}"
    folder = checkpoint_folder(checkpoint_root, cfg, data_id)
    logger.info("SimSiam on %d patches of %dx%d (split=%s), checkpoints in %s", *patches.shape,
                split, folder)
    model, rows_log = train_simsiam(patches, cfg, folder, log_csv=log_csv, threads=threads)
    if not distributed.from_env().is_main:  # rank > 0: rank 0 writes the encoder
        return None
    digest = save_encoder(encoder, model, meta={
        "size": int(patches.shape[1]), "clip_gauss": float(attrs.get("clip_gauss", 1000.0)),
        "mode": str(attrs.get("mode", "")), "bin": int(attrs.get("bin", 1) or 1),
        "data_id": data_id, "n_train": int(patches.shape[0]), "epochs": int(len(rows_log)),
    })
    logger.info("encoder %s written to %s", digest, encoder)
    return digest
