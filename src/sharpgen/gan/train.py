"""Stage "gan": train the generator (rules/gan.smk -> workflow_scripts/train_gan.py -> here).

Training (:func:`train_gan`, one loop read top to bottom) keeps the whole patch store in memory
as one tensor on the training device, draws batches with a seeded ``torch.Generator``, logs losses
and throughput to a CSV file, writes sample grids, and checkpoints everything needed to resume
bit-for-bit (networks, optimisers, EMA, RNG states, step) atomically under
``<checkpoint_root>/<hash>/``, which it locks for its whole life. Device selection, the lock,
checkpoint files, RNG state and the CSV log are the shared machinery of :mod:`sharpgen.training`.
The networks and losses are in :mod:`sharpgen.gan.model`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sharpgen import distributed, training, warmup
from sharpgen.distributed import SINGLE, Dist
from sharpgen.atomic import atomic_path
from sharpgen.training import list_checkpoints  # noqa: F401  (re-exported: tests, callers)

from sharpgen.gan.steps import (  # noqa: F401  (re-exported: tests, benchmarks)
    path_length_step,
    r1_step,
    train_step,
    training_flops_per_step,
)
from sharpgen.gan.augment import diff_augment
from sharpgen.gan.config import GanConfig
from sharpgen.gan.layers import crop_extents, extent_quantiles
from sharpgen.gan.structure import LatentStructure, describe, fade_in, fit_structure, structure_loss
from sharpgen.gan.spectral import SpectralLoss, add_losses
from sharpgen.gan.model import (  # noqa: F401
    ARCHITECTURES,
    STABLE_RECIPE,
    GanError,
    MEMORY_FORMAT,
    build_discriminator,
    build_generator,
    d_loss_fn,
    g_loss_fn,
    generate,
    load_generator,
    PaperDiscriminator,
    _check_size,
)

logger = logging.getLogger("sharpgen.gan")

FORMAT_VERSION = 2


CSV_COLUMNS = ("step", "d_loss", "g_loss", "d_real", "d_fake", "images_per_s", "elapsed_s")


class PatchStoreError(GanError, ValueError):
    """The patch store is missing, empty or corrupt (the message names it)."""


class CheckpointMismatchError(GanError, training.CheckpointMismatchError):
    """A checkpoint was written for another architecture, configuration or data set."""


class DivergenceError(GanError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def read_patch_store(zarr_path: str | os.PathLike, table_path: str | os.PathLike | None = None,
                     split: str = "all") -> tuple[np.ndarray, dict]:
    """The training patches: ``((N, S, S) float32 in [-1, 1], store attrs)`` of ``split``, read
    with the one patch-store reader (:class:`sharpgen.store.PatchStore`) and checked (finite,
    within [-1, 1]). Raises :class:`PatchStoreError` naming the store and the problem."""
    from sharpgen.store import PatchStore, StoreError

    try:
        store = PatchStore.open(zarr_path, table_path)
        rows = None if split == "all" else store.rows(split)
        return store.read(rows, check=True), store.attrs
    except StoreError as err:
        raise PatchStoreError(str(err)) from None


def checkpoint_folder(root: str | os.PathLike, cfg: GanConfig, size: int, n_images: int,
                      data_id: str = "") -> Path:
    """``root/<12-hex hash>`` of the trajectory-defining config keys and the training data."""
    return training.checkpoint_folder(root, cfg.trajectory_dict(),
                                      {"size": size, "n": n_images, "data": data_id})


def _meta(cfg: GanConfig, size: int, n_images: int, data_id: str) -> dict:
    return {"format": FORMAT_VERSION, "arch": cfg.arch, "size": int(size), "nz": int(cfg.nz),
            "n_images": int(n_images), "data_id": str(data_id),
            "trajectory": cfg.trajectory_dict()}


def check_checkpoint_meta(path: Path, meta: dict, expected: dict) -> None:
    """Refuse a checkpoint written for another architecture / config / data set."""
    training.check_meta(path, meta, expected, error=CheckpointMismatchError)


def save_grid_png(path: str | os.PathLike, images: np.ndarray, clip_gauss: float,
                  title: str = "") -> None:
    """Square grid of (N, S, S) images in [-1, 1] as a PNG in Gauss, colour map centred on 0 G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    vmax = 0.5 * clip_gauss
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.8, 1.6 * rows + 0.3),
                             squeeze=False)
    im = None
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            im = ax.imshow(images[i] * clip_gauss, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                           origin="lower", interpolation="nearest")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="Br [G]")
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


#: keys every GAN checkpoint holds (a file without them is treated as corrupt)
CHECKPOINT_KEYS = ("meta", "step", "G", "D", "ema", "opt_g", "opt_d", "rng")


@dataclass
class _Run:
    """A checkpoint's content: G, D, EMA of G, optimisers, the batch/latent/augmentation
    generator, finished steps, training time, the path-length penalty's running mean."""

    G: nn.Module
    D: nn.Module
    ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0
    elapsed_s: float = 0.0
    pl_mean: float = 0.0


def _build_run(cfg: GanConfig, size: int, device: torch.device) -> _Run:
    """Fresh G, D (seed ``cfg.seed``, channels_last), EMA, Adams, training generator (seed + 1)."""
    torch.manual_seed(cfg.seed)
    G = build_generator(cfg.arch, size, cfg.nz, **cfg.generator_options()).to(
        device, memory_format=MEMORY_FORMAT)
    D = build_discriminator(cfg.arch, size).to(device, memory_format=MEMORY_FORMAT)
    ema = (copy.deepcopy(G).eval().requires_grad_(False)
           if cfg.arch in STABLE_RECIPE and cfg.ema_decay > 0 else None)
    mapping = list(G.mapping.parameters()) if hasattr(G, "mapping") else []
    ids = {id(p) for p in mapping}
    groups = [{"params": [p for p in G.parameters() if id(p) not in ids]}]
    if mapping:  # StyleGAN's lower learning rate for the mapping network
        groups.append({"params": mapping, "lr": cfg.lr_g * cfg.mapping_lr_mult})
    opt_g = torch.optim.Adam(groups, lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    return _Run(G, D, ema, opt_g, opt_d, gen)


def _scale_lr(run: _Run, cfg: GanConfig, factor: float) -> None:
    """Set every optimiser group's learning rate to its configured value times ``factor``."""
    g_rates = [cfg.lr_g, cfg.lr_g * cfg.mapping_lr_mult][:len(run.opt_g.param_groups)]
    for group, lr in zip(run.opt_g.param_groups + run.opt_d.param_groups, g_rates + [cfg.lr_d]):
        group["lr"] = lr * factor


def _checkpoint_state(run: _Run, meta: dict, device: torch.device) -> dict:
    """The checkpoint dict of ``run`` (tensors stay where they are; loading maps to the CPU)."""
    return {"meta": meta, "step": run.step, "device": device.type,
            "G": run.G.state_dict(), "D": run.D.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "opt_g": run.opt_g.state_dict(), "opt_d": run.opt_d.state_dict(),
            "rng": training.rng_state(device, {"gen": run.gen}),
            "extra": {"elapsed_s": run.elapsed_s, "pl_mean": run.pl_mean}}


def _resume(run: _Run, folder: Path, cfg: GanConfig, meta: dict,
            device: torch.device, dist: Dist = SINGLE) -> Path | None:
    """Load the newest readable checkpoint in ``folder`` at a step <= ``cfg.steps`` into
    ``run`` (refusing one from another run); return its path, None when starting anew.
    Data-parallel: rank 0 picks the checkpoint and every rank loads that one."""
    found = distributed.resume_checkpoint(folder, cfg.steps, dist, required=CHECKPOINT_KEYS)
    if found is None:
        logger.info("starting a new run in %s", folder)
        return None
    path, ck = found
    check_checkpoint_meta(path, ck.get("meta", {}), meta)
    run.G.load_state_dict(ck["G"])
    run.D.load_state_dict(ck["D"])
    if run.ema is not None:
        run.ema.load_state_dict(ck["ema"])
    training.load_optimizer_state(run.opt_g, ck["opt_g"])
    training.load_optimizer_state(run.opt_d, ck["opt_d"])
    run.step = int(ck["step"])
    run.elapsed_s = float(ck.get("extra", {}).get("elapsed_s", 0.0))
    run.pl_mean = float(ck.get("extra", {}).get("pl_mean", 0.0))
    training.restore_rng_state(ck["rng"], device, {"gen": run.gen}, seed=cfg.seed + 1,
                               step=run.step, source=path)
    logger.info("resumed from %s (step %d of %d)", path, run.step, cfg.steps)
    return path


def _ema_update(ema: nn.Module, G: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), G.parameters()):
            pe.lerp_(p, 1.0 - decay)


def _check_finite(sums: torch.Tensor, step: int, d_loss: torch.Tensor, g_loss: torch.Tensor,
                  last_good: Path | None) -> None:
    """:class:`DivergenceError` if the window sums (4,) of the losses are not finite (syncs CUDA)."""
    if all(math.isfinite(v) for v in sums.tolist()):
        return
    raise DivergenceError(
        f"GAN training diverged: non-finite loss by step {step} (d_loss={d_loss.item():.4g}, "
        f"g_loss={g_loss.item():.4g}); the last good checkpoint {last_good or '(none yet)'} is "
        "kept; lower gan.lr_d/lr_g or use gan.arch: stable")


def _log_row(step: int, means: list[float], images_per_s: float, elapsed_s: float) -> dict:
    """One CSV row (:data:`CSV_COLUMNS`) from the window means (d_loss, g_loss, d_real, d_fake)."""
    return {"step": step, "d_loss": f"{means[0]:.6g}", "g_loss": f"{means[1]:.6g}",
            "d_real": f"{means[2]:.6g}", "d_fake": f"{means[3]:.6g}",
            "images_per_s": f"{images_per_s:.4g}", "elapsed_s": f"{elapsed_s:.2f}"}


def _sample_grid(net: nn.Module, z_fixed: torch.Tensor, autocast, path: Path,
                 clip_gauss: float, title: str) -> None:
    """PNG grid of ``net(z_fixed)`` ((16, nz) on the device) in eval mode, then back."""
    was = net.training
    net.eval()
    with torch.no_grad(), autocast:
        imgs = net(z_fixed).float()[:, 0].cpu().numpy()
    net.train(was)
    save_grid_png(path, imgs, clip_gauss, title=title)


def _write_outputs(run: _Run, cfg: GanConfig, size: int, clip_gauss: float, data_id: str,
                   generator_path, log: training.CsvLog, log_csv, grid_dir: Path,
                   samples_dir, structure: LatentStructure | None = None) -> None:
    """generator.pt (EMA or G weights as CPU float32, byte-reproducible; with the latent
    structure's axes, quantiles and correlation when ``gan.structure`` is on), the CSV log and the
    sample grids, each atomically."""
    final = run.ema if run.ema is not None else run.G
    w_stats = None
    if hasattr(final, "fit_w_statistics"):  # whitened W for the directions stage
        final = copy.deepcopy(final)
        w_stats = final.fit_w_statistics(seed=cfg.seed + 3)
        logger.info("W statistics from %d latents: eigenvalues %.3g..%.3g, effective rank %.1f",
                    w_stats["n"], w_stats["eig_min"], w_stats["eig_max"], w_stats["effective_rank"])
    blob = {"format": FORMAT_VERSION, "arch": cfg.arch, "size": int(size), "nz": int(cfg.nz),
            "config": cfg.as_dict(), "clip_gauss": float(clip_gauss), "steps": int(run.step),
            "weights": "ema" if run.ema is not None else "generator", "data_id": str(data_id),
            "latent_space": getattr(final, "latent_space", "z"), "w_statistics": w_stats,
            "structure": structure.as_dict() if structure is not None else None,
            "state_dict": {k: v.detach().float().cpu().contiguous()
                           for k, v in final.state_dict().items()}}
    training.write_torch(generator_path, blob)
    log.publish(log_csv)
    if samples_dir is not None:
        with atomic_path(samples_dir) as tmp:
            tmp.mkdir()
            for png in sorted(grid_dir.glob("step_*.png")):
                shutil.copyfile(png, tmp / png.name)


def train_gan(patches: np.ndarray, cfg: GanConfig | dict, *, checkpoint_root: str | os.PathLike,
              generator_path: str | os.PathLike, log_csv: str | os.PathLike,
              samples_dir: str | os.PathLike | None = None, clip_gauss: float = 1000.0,
              data_id: str = "", threads: int | None = None, progress: bool = True,
              max_steps_this_run: int | None = None, pixel_scale=None) -> dict:
    """Train on ``patches`` (N, S, S) float32 in [-1, 1]; write generator.pt, the CSV log, grids.

    Holds an exclusive lock on ``checkpoint_root/<hash>`` while it runs and resumes from the
    newest readable checkpoint there. ``max_steps_this_run`` (tests only) stops early after that
    many steps without writing the final outputs. ``pixel_scale`` (the store's nominal
    :class:`sharpgen.physics.PixelScale`) is needed by ``gan.structure_correlation: parameters``
    only. Returns a summary dict (steps, seconds, images/s, checkpoint folder).

    Under torchrun (``gan.devices`` > 1, :func:`train_gan_stage`) each process trains on its
    shard of every global batch of ``batch_size`` (:func:`sharpgen.distributed.shard_rows`:
    whole minibatch-std groups) with gradients averaged over the processes, so N processes
    follow the one-process trajectory up to floating-point rounding; rank 0 alone locks the
    folder and writes checkpoints, log, grids and outputs.
    """
    from sharpgen.logutil import progress_bar

    cfg = GanConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    cfg.check()
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or patches.shape[0] == 0:
        raise PatchStoreError(f"training patches must be (N, S, S) with N > 0, got {patches.shape}")
    n_img, size, bs = patches.shape[0], patches.shape[1], cfg.batch_size
    _check_size(size)
    dist, device = distributed.setup(cfg.device, key="gan.device", threads=threads, log=logger)
    folder = checkpoint_folder(checkpoint_root, cfg, size, n_img, data_id)
    meta = _meta(cfg, size, n_img, data_id)
    main = dist.is_main
    lock = training.folder_lock(folder, what=f"GAN training ({cfg.arch})")
    with distributed.main_only(dist, lock):
        # ---- state: fresh, or the newest readable checkpoint; the live CSV log to match ------
        run = _build_run(cfg, size, device)
        if cfg.arch == "stable" and cfg.padding == "matched":  # G pads like the training crops
            quantiles = extent_quantiles(crop_extents(patches)).to(device)
            for net in filter(None, (run.G, run.ema)):
                net.pad_quantiles.copy_(quantiles)
        last_good = _resume(run, folder, cfg, meta, device, dist)
        log = training.CsvLog(folder / "train_log.csv", CSV_COLUMNS, key="step") if main else None
        if log is not None:
            log.restart(run.step)
        # this process's rows of each global batch (None: one process, all rows)
        rows = distributed.shard_rows(bs, dist, group=4 if getattr(run.D, "mbstd", False) else 1,
                                      device=device)
        rows_pl = (distributed.shard_rows(max(bs // 2, 1), dist, device=device)
                   if cfg.pl_weight > 0 else None)
        # ---- data on the device once; fixed latents for the sample grids ----------------------
        data = torch.from_numpy(patches).unsqueeze(1).to(device)
        data = data.contiguous(memory_format=MEMORY_FORMAT)
        z_fixed = torch.randn(16, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 2))
        z_fixed = z_fixed.to(device)
        autocast = training.autocast(device)  # bf16 on GPUs with compute capability >= 8.0
        structure, structure_state, spectral = None, None, None
        if cfg.structure:  # the latent laid out by the parameters (sharpgen.gan.structure)
            structure = fit_structure(patches, cfg.structure, cfg.nz, cfg.structure_weight,
                                      clip_gauss, tau_gauss=cfg.structure_tau_gauss,
                                      pil_weight=cfg.structure_pil_weight,
                                      r_grid=cfg.structure_r_grid,
                                      correlation=cfg.structure_correlation, pixel_scale=pixel_scale,
                                      r_straight_through=cfg.structure_r_straight_through,
                                      parameter_weights=cfg.structure_parameter_weights)
            structure_state = structure.torch_state(device)
            if main:
                logger.info(describe(structure))
                if cfg.arch == "paper":  # the published model has no structure term
                    logger.warning("gan.arch paper with gan.structure %s: the paper's architecture "
                                   "plus the structure loss, not the published configuration "
                                   "(presets/paper.yaml sets gan.structure: [])", list(cfg.structure))
                if cfg.structure_start >= cfg.steps:  # faded in later than the run is long
                    logger.warning("gan.structure_start %d is not before gan.steps %d: the structure "
                                   "loss never applies in this run (set gan.structure_start lower, "
                                   "or gan.structure: [])", cfg.structure_start, cfg.steps)
        if cfg.spectral_weight > 0:  # the batch's mean power spectrum held to the training patches'
            spectral = SpectralLoss(patches, cfg.spectral_weight, device)

        def g_extra_at(step: int):
            """G's extra loss at optimiser step ``step`` (None: none): the structure term, its
            weight faded in (gan.structure_start / structure_ramp), plus the spectral term."""
            scale = fade_in(step, cfg.structure_start, cfg.structure_ramp) if cfg.structure else 0.0
            term = (partial(structure_loss, structure=structure, state=structure_state, scale=scale)
                    if scale > 0 else None)
            return add_losses(term, spectral)
        aug = (partial(diff_augment, gen=run.gen, translation=cfg.augment_translation,
                       cutout=cfg.augment_cutout, rows=rows, batch=bs,
                       fill=cfg.augment_translation_fill)
               if cfg.arch in STABLE_RECIPE else None)
        end = cfg.steps if max_steps_this_run is None else min(cfg.steps,
                                                               run.step + max_steps_this_run)

        def iteration(r: _Run):
            """One step of ``r``: batch and latents from ``r.gen``, D and G updates, the lazy
            regularisers when due, the EMA; returns train_step's (d_loss, g_loss, logits)."""
            # the global batch is drawn on every process; each keeps its rows
            idx = torch.randint(0, n_img, (bs,), generator=r.gen, device=device)
            real = data.index_select(0, distributed.take(idx, rows))
            z = distributed.take(torch.randn(bs, cfg.nz, generator=r.gen, device=device), rows)
            if cfg.lr_decay_steps:  # gan.lr_decay_*: both rates scaled, the mapping MLP's with them
                _scale_lr(r, cfg, cfg.lr_scale(r.step))
            out = train_step(r.G, r.D, real, z, cfg.arch, aug, autocast, r.opt_g, r.opt_d, dist,
                             g_extra=g_extra_at(r.step))
            if cfg.r1_gamma > 0 and r.step % cfg.r1_every == 0:  # lazy regularisers
                r1_step(r.D, real, cfg.r1_gamma, cfg.r1_every, aug, autocast, r.opt_d, dist)
            if cfg.pl_weight > 0 and r.step % cfg.pl_every == 0:
                z_pl = torch.randn(max(bs // 2, 1), cfg.nz, generator=r.gen, device=device)
                r.pl_mean, _ = path_length_step(
                    r.G, distributed.take(z_pl, rows_pl), r.gen, r.pl_mean, cfg.pl_weight,
                    cfg.pl_every, autocast=autocast, opt_g=r.opt_g, dist=dist, rows=rows_pl)
            if r.ema is not None:
                decay = min(cfg.ema_decay, (1.0 + r.step) / (10.0 + r.step))
                _ema_update(r.ema, r.G, decay)
            return out

        acc = torch.zeros(4, device=device)  # window sums: d_loss, g_loss, D(real), D(fake)
        elapsed0, t_start, n_win = run.elapsed_s, time.perf_counter(), 0
        t_win = t_start
        run.G.train()
        run.D.train()
        if device.type == "cpu" and run.step < end:
            # the first step of a process, once on throw-away copies (and the same random
            # numbers): its kernels' first computation sometimes differs (sharpgen.warmup)
            warmup.rehearse(iteration, run, generators=[run.gen])
        # ---- training loop ------------------------------------------------------------------
        with progress_bar(total=cfg.steps, initial=run.step, enabled=progress and main,
                          unit="step", desc=f"gan[{cfg.arch}]", dynamic_ncols=True) as bar:
            while run.step < end:
                d_loss, g_loss, real_logit, fake_logit = iteration(run)
                run.step += 1
                n_win += 1
                acc += torch.stack([d_loss.detach(), g_loss.detach(),
                                    real_logit.detach().float().mean(),
                                    fake_logit.detach().float().mean()])
                at_log = run.step % cfg.log_every == 0 or run.step == cfg.steps
                at_ckpt = run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps
                # free on the CPU; on CUDA the check waits for the GPU, so only when needed.
                # Data-parallel: on the means over the processes, so all stop together
                if device.type != "cuda" or at_log or at_ckpt or run.step == end:
                    sums = distributed.mean_over_ranks(acc, dist)
                    _check_finite(sums, run.step, d_loss, g_loss, last_good)
                if at_log:
                    now = time.perf_counter()
                    row = _log_row(run.step, (sums / n_win).tolist(),
                                   n_win * bs / max(now - t_win, 1e-9), elapsed0 + now - t_start)
                    if log is not None:
                        log.append(row)
                    bar.set_postfix(d=row["d_loss"], g=row["g_loss"], ips=row["images_per_s"])
                    logger.info("step %d/%d d_loss %s g_loss %s D(real) %s D(fake) %s %s images/s",
                                run.step, cfg.steps, row["d_loss"], row["g_loss"], row["d_real"],
                                row["d_fake"], row["images_per_s"])
                    acc.zero_()
                    t_win, n_win = time.perf_counter(), 0
                if main and (run.step % cfg.sample_every == 0 or run.step == cfg.steps):
                    _sample_grid(run.ema if run.ema is not None else run.G, z_fixed, autocast,
                                 folder / "grids" / f"step_{run.step:08d}.png", clip_gauss,
                                 f"{cfg.arch} step {run.step}")
                if at_ckpt and main:  # only after the loss check: a checkpoint is always good
                    run.elapsed_s = elapsed0 + time.perf_counter() - t_start
                    last_good = training.save_checkpoint(
                        folder, run.step, _checkpoint_state(run, meta, device),
                        keep=cfg.keep_checkpoints)
                bar.update(1)
        # ---- final outputs ------------------------------------------------------------------
        elapsed = elapsed0 + time.perf_counter() - t_start
        summary = {"steps": run.step, "seconds": elapsed, "checkpoint_folder": str(folder),
                   "images_per_s": run.step * bs / max(elapsed, 1e-9)}
        if run.step < cfg.steps or not main:  # stopped early on purpose (tests); rank > 0
            return summary
        _write_outputs(run, cfg, size, clip_gauss, data_id, generator_path, log, log_csv,
                       folder / "grids", samples_dir, structure)
    logger.info("trained %s GAN: %d steps in %.1f s (%.1f images/s); wrote %s", cfg.arch,
                run.step, elapsed, summary["images_per_s"], generator_path)
    return summary


def train_gan_stage(zarr: str, table: str, gan: dict, checkpoint_root: str, generator: str,
                    log_csv: str, samples_dir: str | None = None, threads: int | None = None
                    ) -> dict | None:
    """The ``train_gan`` rule: read the ``gan.split`` patches of the store (``zarr`` + ``table``)
    and :func:`train_gan` on them. With ``gan.devices`` = N > 1 this starts N torchrun processes
    (:func:`sharpgen.distributed.launch_if_needed`), each running this function with
    ``threads`` / N CPU threads; returns the summary (None from the launching process of N)."""
    cfg = GanConfig.from_dict(gan)
    if distributed.launch_if_needed(
            "sharpgen.gan.train:train_gan_stage",
            {"zarr": str(zarr), "table": str(table), "gan": cfg.as_dict(),
             "checkpoint_root": str(checkpoint_root), "generator": str(generator),
             "log_csv": str(log_csv), "samples_dir": None if samples_dir is None else str(samples_dir),
             "threads": threads},
            devices=cfg.devices):
        return None
    threads = distributed.threads_per_process(threads)
    patches, attrs = read_patch_store(zarr, table, split=cfg.split)
    logger.info("training %s GAN on %d patches of %dx%d from %s (split=%s)", cfg.arch,
                patches.shape[0], patches.shape[1], patches.shape[2], zarr, cfg.split)
    pixel_scale = None
    if cfg.structure_correlation == "parameters":  # measured at the scale generated images are
        from sharpgen.store import PatchStore

        pixel_scale = PatchStore.open(zarr, table).nominal_scale
    return train_gan(patches, cfg, checkpoint_root=checkpoint_root, generator_path=generator,
                     log_csv=log_csv, samples_dir=samples_dir,
                     clip_gauss=float(attrs.get("clip_gauss", 1000.0)),
                     data_id=str(attrs.get("config_hash", "")), threads=threads,
                     pixel_scale=pixel_scale)
