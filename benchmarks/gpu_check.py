"""One-shot GPU check (issue 16.6): the torch stages of the pipeline on a device, in a few minutes.

Runs the project's own code (no re-implementation) on synthetic bipole patches in a temporary
folder, times each section, checks its outputs and prints one table line per section, then
PASS or FAIL (exit status 0 / 1; 2 when the device cannot be used at all):

1. ``matmul``     dense bf16 and fp32 ``torch.matmul`` rate of the device: the MFU reference
                  (bf16 when training runs in bf16 autocast, i.e. compute capability >= 8.0,
                  :func:`sharpgen.training.use_bf16`; fp32 otherwise, e.g. on the CPU).
2. ``gan[arch]``  :func:`sharpgen.gan.train_gan` for ``--steps`` steps of each ``--archs``
                  (bf16 autocast and channels_last exactly as the pipeline trains); images/s
                  from its CSV log (median of the logged windows after the first, which holds
                  the warm-up), MFU = :func:`sharpgen.gan.training_flops_per_step` x steps/s /
                  the measured matmul rate.
                  Pass criterion ("the losses decrease", the honest GAN version): the losses of
                  the two-player game do not decrease monotonically -- the D loss of the
                  ``stable`` arch (spectral-norm D) stays within a few % of its chance value
                  (2.0, hinge) over a short run, and the pixel statistics of a short run's
                  samples do not move reliably toward the data either (on the CPU at 64x64 and
                  36 steps, stable's moved away for 3 of 4 data seeds) -- so the check is
                  (a) every logged loss of the train_gan run is finite (train_gan also stops on
                  a non-finite one); (b) no divergence: every logged D loss is at most twice the
                  D loss of the untrained pair (the same seeded initial weights, measured on a
                  real and a generated batch before training); (c) each player's loss decreases
                  when it is optimised against a frozen opponent, with the project's
                  :func:`sharpgen.gan.train_step` on the device (same autocast, channels_last,
                  Adam settings; no DiffAugment, one fixed real batch and fixed latents, so the
                  objective is fixed): ``--opt-steps`` D-only steps, then as many G-only steps
                  against that D; the mean of the last 3 losses must be below the mean of the
                  first 3, for D and for G; (d) the generator moved: its images of fixed
                  latents changed by more than 1e-3 (mean |dx|, store units).
                  Reported, not required: the distance (W1) of the pixel-value distributions of
                  generated and real patches before and after, and the D loss untrained -> mean
                  of the logged windows after the first.
3. ``resume``     train 3+ steps in a subprocess (checkpoint every step), SIGKILL it, then resume
                  in this process to ``killed step + 5`` (+3 with ``--smoke``; ``steps`` is
                  outside the checkpoint hash, so raising it resumes): passes when the run
                  resumed from the newest checkpoint the killed process left (its log line),
                  finished, the CSV log has every step exactly once, and generator.pt loads
                  and generates finite images.
                  Also reported, not required: whether the result equals an uninterrupted run of
                  the same steps bit for bit.
4. ``simsiam``    :func:`sharpgen.ssl.train_simsiam` for a few epochs: every epoch loss finite and
                  the last epoch's loss below the first's; images/s (2 views each). The
                  project's SimSiam loop trains in fp32 (no autocast, default memory format).
5. ``traverse``   :func:`sharpgen.directions.traverse.traverse` along two random unit directions
                  with the trained stable generator on the device (:func:`sharpgen.measure.
                  make_renderer`: generation on the device, in fp32 as the pipeline does, and the
                  parameters measured on the host); generated images finite, flux-type
                  parameters finite for every image, no infinite value anywhere (geometric
                  parameters such as psep are NaN by definition for maps without strong-field
                  clusters, reported as a fraction). samples/s, and the share of the time spent
                  in the CPU measurement.
6. ``physics``    :func:`sharpgen.physics.compute_parameters` maps/s. It is numba code on the
                  host CPU: there is no GPU port in the package (benchmarks/bench_physics_torch.py
                  is a benchmark only), so in the GPU rules (traverse, calibrate) this is CPU
                  physics inside a GPU job.

Nothing is installed; use what ``make`` installed (benchmarks/gpu_check.sh runs this with a
290 s limit).

    benchmarks/gpu_check.sh                                  # CUDA, 128x128, --json optional
    .venv/bin/python benchmarks/gpu_check.py --device cuda --json gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --device cpu --smoke   # tiny, < 1 min on a CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from sharpgen import gan, ssl, training  # noqa: E402
from sharpgen.directions.traverse import eps_grid, traverse  # noqa: E402
from sharpgen.gan.train import MEMORY_FORMAT, _build_run  # noqa: E402
from sharpgen.measure import MeasurementContext, make_renderer, measure  # noqa: E402
from sharpgen.physics import PARAMETER_NAMES, PixelScale, compute_parameters  # noqa: E402

CLIP_GAUSS = 1000.0
SCALE = PixelScale.cea(0.03, bin_factor=4)
#: parameters defined for every map with a valid pixel (the others -- psep, tilt, ... -- are NaN
#: for a map without strong-field clusters, by definition)
ALWAYS_DEFINED = ("tuf", "tpf", "tnf", "net_flux", "bmax", "r_value")
MOVED_MIN = 1e-3  # mean |G_end(z) - G_start(z)| the generator must exceed (store units)


@dataclass(frozen=True)
class Plan:
    """Sizes of one check run."""

    size: int = 128
    n_patches: int = 512
    batch: int = 32
    steps: int = 60
    archs: tuple[str, ...] = ("stable", "paper")
    opt_steps: int = 20  # frozen-opponent steps per player
    matmul_n: int = 8192
    resume_extra: int = 5
    ssl: tuple = (("epochs", 5), ("batch_size", 64))  # ssl config keys over the schema defaults
    n_base: int = 16
    n_eps: int = 7
    physics_maps: int = 512


SMOKE = Plan(size=32, n_patches=64, batch=16, steps=12, opt_steps=10, matmul_n=512, resume_extra=3,
             ssl=(("width", 4), ("depth", [1, 1]), ("proj_hidden", 16), ("dim", 8),
                  ("pred_hidden", 4), ("epochs", 3), ("batch_size", 8), ("lr", 0.05),
                  ("collapse", {"min_std_ratio": 0.01, "min_effective_rank": 1.2,
                                "monitor_samples": 16})),
             n_base=4, n_eps=5, physics_maps=64)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def bipoles(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 in [-1, 1]: one Gaussian bipole per map (both polarity orders,
    random amplitude, separation, tilt and width) plus weak noise; vectorised over the batch."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size

    def u(lo, hi):
        return rng.uniform(lo, hi, (n, 1, 1)).astype(np.float32)

    cy, cx, sep = u(.35, .65), u(.35, .65), u(.08, .2)
    ang, w, amp = u(-.6, .6), u(.04, .08), u(.3, .9)
    amp *= rng.choice(np.float32([-1, 1]), (n, 1, 1))
    dy, dx = 0.5 * sep * np.sin(ang), 0.5 * sep * np.cos(ang)

    def blob(s):
        return np.exp(-((yy - cy - s * dy) ** 2 + (xx - cx - s * dx) ** 2) / (2 * w * w))

    out = amp * (blob(1) - blob(-1)) + 0.01 * rng.standard_normal((n, size, size), np.float32)
    return np.clip(out, -1, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5,
                burst: int = 4) -> float:
    """Best-of-``reps`` dense (n x n) @ (n x n) FLOP/s in ``dtype`` (bursts of ``burst``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(burst):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / burst)
    return 2 * n**3 / best


def pixel_w1(a: np.ndarray, b: np.ndarray, q: int = 1001) -> float:
    """Wasserstein-1 distance of the pixel-value distributions of two image sets (quantiles)."""
    qs = np.linspace(0, 1, q)
    return float(np.mean(np.abs(np.quantile(a, qs) - np.quantile(b, qs))))


def gan_config(arch: str, plan: Plan, device: torch.device, **over) -> gan.GanConfig:
    d = dict(arch=arch, steps=plan.steps, batch_size=plan.batch, device=device.type, seed=0,
             log_every=max(1, plan.steps // 6), sample_every=10**9, checkpoint_every=10**9,
             keep_checkpoints=2, lr_decay_steps=0)  # constant rates: a throughput check at any --steps
    if arch == "paper":  # as presets/paper.yaml runs it: no structure term (config.yaml's default)
        d["structure"] = []
    d.update(over)
    return gan.GanConfig.from_dict(d)


def all_finite(values) -> bool:
    return bool(np.all(np.isfinite(np.asarray(values, dtype=np.float64))))


class _Capture(logging.Handler):
    """Keeps the log records of a logger (here: train_gan's "resumed from ..." line)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


# --------------------------------------------------------------------------------------------
# sections: each returns a dict of numbers with "passed", and "line" (its table text)
# --------------------------------------------------------------------------------------------
def check_matmul(ctx: dict) -> dict:
    dev, plan = ctx["device"], ctx["plan"]
    bf16 = matmul_rate(dev, torch.bfloat16, plan.matmul_n)
    fp32 = matmul_rate(dev, torch.float32, plan.matmul_n)
    ref = bf16 if ctx["bf16"] else fp32
    ctx["ref_flops"] = ref
    return {"passed": all_finite([bf16, fp32]) and min(bf16, fp32) > 0,
            "n": plan.matmul_n, "bf16_tflops": bf16 / 1e12, "fp32_tflops": fp32 / 1e12,
            "reference": "bf16" if ctx["bf16"] else "fp32", "reference_tflops": ref / 1e12,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "line": f"bf16 {bf16 / 1e12:.3g} TFLOP/s, fp32 {fp32 / 1e12:.3g} TFLOP/s "
                    f"(n={plan.matmul_n}; MFU reference: {'bf16' if ctx['bf16'] else 'fp32'})"}


def check_gan(ctx: dict, arch: str) -> dict:
    dev, plan, patches = ctx["device"], ctx["plan"], ctx["patches"]
    cfg = gan_config(arch, plan, dev)
    out = ctx["work"] / f"gan_{arch}"
    autocast = training.autocast(dev)
    # the untrained pair (the same seeded weights train_gan starts from): D loss, samples
    run = _build_run(cfg, plan.size, dev)
    z = np.random.default_rng(11).standard_normal((64, cfg.nz)).astype(np.float32)
    real = torch.from_numpy(patches[:64]).unsqueeze(1).to(dev)
    real = real.contiguous(memory_format=MEMORY_FORMAT)
    with torch.no_grad(), autocast:
        fake = run.G(torch.from_numpy(z).to(dev))
        d_loss0 = float(gan.d_loss_fn(arch, run.D(real), run.D(fake)))
    imgs0 = gan.generate(run.G.eval(), z)
    del run, real, fake
    # training, as the pipeline runs it
    _sync(dev)
    t = time.perf_counter()
    summary = gan.train_gan(patches, cfg, checkpoint_root=out / "checkpoints",
                            generator_path=out / "generator.pt", log_csv=out / "train_log.csv",
                            clip_gauss=CLIP_GAUSS, progress=False, threads=ctx["threads"])
    wall = time.perf_counter() - t
    log = pd.read_csv(out / "train_log.csv")
    losses = log[["d_loss", "g_loss", "d_real", "d_fake"]].to_numpy()
    ips = log["images_per_s"].to_numpy()
    ips_steady = float(np.median(ips[1:] if len(ips) > 1 else ips))
    flops = gan.training_flops_per_step(arch, plan.size, plan.batch, cfg.nz, **cfg.generator_options())
    achieved = flops * ips_steady / plan.batch
    G = gan.load_generator(out / "generator.pt", device=dev)
    imgs1 = gan.generate(G, z)
    moved = float(np.mean(np.abs(imgs1 - imgs0)))
    d_late = float(log["d_loss"].iloc[1:].mean() if len(log) > 1 else log["d_loss"].iloc[0])
    w1_before, w1_after = pixel_w1(imgs0, patches[:64]), pixel_w1(imgs1, patches[:64])
    opt = frozen_opponent_losses(cfg, plan, dev, patches)
    checks = {"losses_finite": all_finite(losses),
              "d_loss_bounded": float(log["d_loss"].max()) <= 2 * d_loss0,
              "d_loss_decreases_vs_frozen_g": _decreased(opt["d_loss"]),
              "g_loss_decreases_vs_frozen_d": _decreased(opt["g_loss"]),
              "generator_moved": moved > MOVED_MIN, "samples_finite": all_finite(imgs1),
              "steps_done": int(summary["steps"]) == plan.steps}
    if arch == ctx["plan"].archs[0]:
        ctx["generator"] = out / "generator.pt"
    r = {"passed": all(checks.values()), "checks": checks, "arch": arch, "steps": plan.steps,
         "batch": plan.batch, "size": plan.size, "bf16_autocast": ctx["bf16"],
         "channels_last": MEMORY_FORMAT == torch.channels_last, "wall_s": wall,
         "images_per_s": ips_steady, "gflop_per_step": flops / 1e9,
         "achieved_tflops": achieved / 1e12, "mfu": achieved / ctx["ref_flops"],
         "d_loss_untrained": d_loss0, "d_loss_trained_mean": d_late,
         "d_loss_windows": log["d_loss"].tolist(), "g_loss_windows": log["g_loss"].tolist(),
         "d_real_windows": log["d_real"].tolist(), "d_fake_windows": log["d_fake"].tolist(),
         "generator_change": moved, "frozen_opponent_d_loss": opt["d_loss"],
         "frozen_opponent_g_loss": opt["g_loss"],
         "pixel_w1_before": w1_before, "pixel_w1_after": w1_after}
    r["line"] = (f"{ips_steady:9.1f} img/s  MFU {100 * r['mfu']:.2f}%  "
                 f"frozen-opponent D {opt['d_loss'][0]:.3f} -> {opt['d_loss'][-1]:.3f}, "
                 f"G {opt['g_loss'][0]:.3f} -> {opt['g_loss'][-1]:.3f}  |dG| {moved:.3f}  "
                 f"(train D loss {d_loss0:.3f} -> {d_late:.3f}, pixel W1 {w1_before:.3f} -> "
                 f"{w1_after:.3f})")
    return r


def frozen_opponent_losses(cfg: gan.GanConfig, plan: Plan, device: torch.device,
                           patches: np.ndarray) -> dict:
    """D loss over ``plan.opt_steps`` D-only steps of fresh nets (G frozen), then G loss over as
    many G-only steps against that D (D frozen): :func:`sharpgen.gan.train_step` with one
    optimiser left out, on one fixed real batch and fixed latents, no augmentation."""
    run = _build_run(cfg, plan.size, device)
    autocast = training.autocast(device)
    real = torch.from_numpy(patches[:plan.batch]).unsqueeze(1).to(device)
    real = real.contiguous(memory_format=MEMORY_FORMAT)
    z = torch.randn(len(real), cfg.nz, generator=torch.Generator().manual_seed(7)).to(device)
    d_loss = [gan.train_step(run.G, run.D, real, z, cfg.arch, None, autocast, None, run.opt_d)[0]
              .detach() for _ in range(plan.opt_steps)]
    g_loss = [gan.train_step(run.G, run.D, real, z, cfg.arch, None, autocast, run.opt_g, None)[1]
              .detach() for _ in range(plan.opt_steps)]
    return {"d_loss": torch.stack(d_loss).tolist(), "g_loss": torch.stack(g_loss).tolist()}


def _decreased(losses: list[float], k: int = 3) -> bool:
    return all_finite(losses) and float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


CHILD = """
import json, sys
import numpy as np
from sharpgen.gan import train_gan
cfg, patches, root, threads = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
train_gan(np.load(patches), cfg, checkpoint_root=root, generator_path=root + "/unused.pt",
          log_csv=root + "/unused.csv", progress=False, threads=threads or None)
"""


def check_resume(ctx: dict) -> dict:
    dev, plan, patches = ctx["device"], ctx["plan"], ctx["patches"]
    work = ctx["work"] / "resume"
    work.mkdir()
    np.save(work / "patches.npy", patches)
    over = dict(seed=1, log_every=1, checkpoint_every=1)
    cfg_child = gan_config("stable", plan, dev, steps=10**6, **over)  # never finishes: killed
    folder = gan.checkpoint_folder(work / "ck", cfg_child, plan.size, len(patches))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t0 = time.perf_counter()
    with open(work / "child.log", "wb") as child_log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg_child.as_dict()),
             str(work / "patches.npy"), str(work / "ck"), str(ctx["threads"] or 0)],
            stdout=child_log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            while not (gan.list_checkpoints(folder) and gan.list_checkpoints(folder)[-1][0] >= 3):
                if proc.poll() is not None:
                    tail = (work / "child.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the training subprocess exited ({proc.returncode}) "
                                       f"before 3 checkpoints:\n{tail}")
                if time.perf_counter() - t0 > 150:
                    raise RuntimeError("no 3 checkpoints from the training subprocess in 150 s")
                time.sleep(0.02)
            t_3 = time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_rc = proc.returncode
    killed_at = gan.list_checkpoints(folder)[-1][0]  # newest complete checkpoint after the kill
    total = killed_at + plan.resume_extra
    # resume in this process, to `total` steps (steps is not part of the checkpoint hash)
    capture = _Capture()
    glog = logging.getLogger("sharpgen.gan")
    level = glog.level
    glog.addHandler(capture)
    glog.setLevel(logging.INFO)
    try:
        t = time.perf_counter()
        summary = gan.train_gan(patches, gan_config("stable", plan, dev, steps=total, **over),
                                checkpoint_root=work / "ck", generator_path=work / "generator.pt",
                                log_csv=work / "train_log.csv", clip_gauss=CLIP_GAUSS,
                                progress=False, threads=ctx["threads"])
        resume_s = time.perf_counter() - t
    finally:
        glog.removeHandler(capture)
        glog.setLevel(level)
    resumed = [int(rec.args[1]) for rec in capture.records
               if str(rec.msg).startswith("resumed from")]
    steps_logged = pd.read_csv(work / "train_log.csv")["step"].tolist()
    G = gan.load_generator(work / "generator.pt", device=dev)
    imgs = gan.generate(G, np.random.default_rng(0).standard_normal((8, G.nz)).astype(np.float32))
    # reference only: the same steps without the interruption
    gan.train_gan(patches, gan_config("stable", plan, dev, steps=total, seed=1),
                  checkpoint_root=work / "ck_straight", generator_path=work / "straight.pt",
                  log_csv=work / "straight.csv", clip_gauss=CLIP_GAUSS, progress=False,
                  threads=ctx["threads"])
    a, b = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
            for p in (work / "generator.pt", work / "straight.pt"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    checks = {"killed": killed_rc == -signal.SIGKILL, "at_least_3_steps": killed_at >= 3,
              "resumed_from_newest": resumed == [killed_at],
              "finished": int(summary["steps"]) == total,
              "log_steps_unique": steps_logged == list(range(1, total + 1)),
              "generator_loads": all_finite(imgs)}
    r = {"passed": all(checks.values()), "checks": checks, "resumed": checks["resumed_from_newest"],
         "killed_at_step": killed_at, "resumed_from_step": resumed[0] if resumed else -1,
         "final_step": int(summary["steps"]), "seconds_to_3_checkpoints": t_3,
         "resume_run_s": resume_s, "bitwise_equal_to_uninterrupted": diff == 0.0,
         "max_abs_diff_to_uninterrupted": diff}
    r["line"] = (f"killed (SIGKILL) at step {killed_at}, resumed from step "
                 f"{r['resumed_from_step']} to {r['final_step']}; log steps unique: "
                 f"{checks['log_steps_unique']}; vs uninterrupted run: max|dW| {diff:.2g}")
    return r


def check_simsiam(ctx: dict) -> dict:
    dev, plan, patches = ctx["device"], ctx["plan"], ctx["patches"]
    cfg = dict(dict(plan.ssl), device=dev.type, seed=0)
    _sync(dev)
    t = time.perf_counter()
    _, rows = ssl.train_simsiam(patches, cfg, ctx["work"] / "ssl_ck",
                                log_csv=ctx["work"] / "ssl_log.csv", device=dev.type,
                                threads=ctx["threads"])
    wall = time.perf_counter() - t
    losses = [r["loss"] for r in rows]
    bs = min(int(cfg["batch_size"]), len(patches))
    secs = [r["seconds"] for r in rows]
    ips = (len(patches) // bs) * bs / float(np.median(secs[1:] if len(secs) > 1 else secs))
    checks = {"losses_finite": all_finite(losses), "loss_decreased": losses[-1] < losses[0]}
    return {"passed": all(checks.values()), "checks": checks, "epochs": len(rows),
            "losses": losses, "images_per_s": ips, "wall_s": wall, "precision": "fp32",
            "line": f"{ips:9.1f} img/s (x2 views)  loss {losses[0]:.4f} -> {losses[-1]:.4f} "
                    f"over {len(rows)} epochs (fp32: train_simsiam has no autocast)"}


def check_traverse(ctx: dict) -> dict:
    dev, plan = ctx["device"], ctx["plan"]
    if "generator" not in ctx:
        raise RuntimeError("no generator: the first gan section did not finish")
    G = gan.load_generator(ctx["generator"], device=dev)
    mctx = MeasurementContext(CLIP_GAUSS, "crop", plan.size, SCALE, bin=4)
    render = make_renderer(G, mctx, batch_size=256)
    rng = np.random.default_rng(5)
    base = rng.standard_normal((plan.n_base, G.nz))
    vectors = {k: v / np.linalg.norm(v) for k, v in
               (("tuf", rng.standard_normal(G.nz)), ("r_value", rng.standard_normal(G.nz)))}
    eps = eps_grid(3.0, plan.n_eps)
    t = time.perf_counter()
    measure(gan.generate(G, base[:2].astype(np.float32)), mctx)  # warm-up: numba, cuDNN
    warmup = time.perf_counter() - t
    _sync(dev)
    t = time.perf_counter()
    df = traverse(render, base, vectors, eps)
    dt = time.perf_counter() - t
    Z = np.concatenate([base[:, None, :] + eps[None, :, None] * v for v in vectors.values()])
    Z = Z.reshape(-1, G.nz).astype(np.float32)
    t = time.perf_counter()
    imgs = gan.generate(G, Z, batch_size=256)  # generation alone (to the host, as render does)
    gen_dt = time.perf_counter() - t
    values = df[list(PARAMETER_NAMES)].to_numpy(np.float64)
    nan_frac = {p: float(df[p].isna().mean()) for p in PARAMETER_NAMES if p not in ALWAYS_DEFINED}
    checks = {"rows": len(df) == len(Z), "images_finite": all_finite(imgs),
              "flux_parameters_finite": all_finite(df[list(ALWAYS_DEFINED)]),
              "no_inf": not np.isinf(values).any()}
    r = {"passed": all(checks.values()), "checks": checks, "samples": len(df),
         "samples_per_s": len(df) / dt, "generate_images_per_s": len(Z) / gen_dt,
         "measure_share": max(0.0, 1.0 - gen_dt / dt), "nan_fraction": nan_frac,
         "warmup_s": warmup,
         "generation": f"{dev.type}, fp32", "measurement": "host CPU (numba)"}
    r["line"] = (f"{r['samples_per_s']:9.1f} samples/s ({len(df)} rendered + measured; "
                 f"generation alone {r['generate_images_per_s']:.0f} img/s; "
                 f"{100 * r['measure_share']:.0f}% of the time in the CPU measurement; "
                 f"warm-up incl. numba {warmup:.1f} s)")
    return r


def check_physics(ctx: dict) -> dict:
    plan = ctx["plan"]
    br = ctx["patches"][:plan.physics_maps].astype(np.float64) * CLIP_GAUSS
    t = time.perf_counter()
    compute_parameters(br[:2], SCALE)  # compiles or loads the numba kernels
    first = time.perf_counter() - t
    t = time.perf_counter()
    df = compute_parameters(br, SCALE)
    dt = time.perf_counter() - t
    checks = {"flux_parameters_finite": all_finite(df[list(ALWAYS_DEFINED)]),
              "no_inf": not np.isinf(df.to_numpy(np.float64)).any()}
    return {"passed": all(checks.values()), "checks": checks, "maps": len(br),
            "maps_per_s": len(br) / dt, "first_call_s": first, "runs_on": "cpu",
            "line": f"{len(br) / dt:9.1f} maps/s on the host CPU (numba; no GPU port: CPU "
                    f"physics in a GPU rule); first call {first:.2f} s"}


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def _run_section(name: str, fn, ctx: dict, results: dict, *args) -> None:
    t = time.perf_counter()
    try:
        r = fn(ctx, *args)
    except Exception as err:  # a failed section is reported; the others still run
        traceback.print_exc()
        r = {"passed": False, "error": f"{type(err).__name__}: {err}",
             "line": f"ERROR {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    r["seconds"] = time.perf_counter() - t
    results[name] = r
    print(f"{name:<13} {'PASS' if r['passed'] else 'FAIL'} {r['seconds']:7.1f} s  {r['line']}",
          flush=True)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if k != "line"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (size 32, 12 steps): a CPU test")
    ap.add_argument("--size", type=int, default=None, help="patch size (default 128; smoke 32)")
    ap.add_argument("--steps", type=int, default=None, help="GAN steps (default 60; smoke 12)")
    ap.add_argument("--batch", type=int, default=None,
                    help="GAN batch (default 32 as config.yaml; smoke 16)")
    ap.add_argument("--opt-steps", type=int, default=None,
                    help="frozen-opponent steps per player (default 20; smoke 10)")
    ap.add_argument("--archs", nargs="+", default=None, choices=list(gan.ARCHITECTURES),
                    help="GAN architectures (default: stable paper; the first one is traversed)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of torch (default: torch's; 1 with --smoke on the CPU)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args(argv)

    plan = SMOKE if args.smoke else Plan()
    plan = replace(plan, **{k: v for k, v in (("size", args.size), ("steps", args.steps),
                                              ("batch", args.batch),
                                              ("opt_steps", args.opt_steps)) if v is not None})
    if args.archs:
        plan = replace(plan, archs=tuple(args.archs))
    threads = args.threads or (1 if args.smoke and args.device == "cpu" else None)
    # `timeout` (gpu_check.sh) sends SIGTERM: exit through the finally blocks (temporary folder)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    t_all = time.perf_counter()
    report = {"passed": False, "plan": asdict(plan), "torch": torch.__version__,
              "cuda": torch.version.cuda, "sections": {}}
    try:
        device = training.setup_device(args.device, key="--device", threads=threads)
    except training.DeviceError as err:
        print(f"FAIL: {err}")
        report["error"] = str(err)
        _write_json(args.json, report)
        return 2
    report["device"] = training.describe_device(device)
    bf16 = training.use_bf16(training.device_capability(device))
    print(f"gpu_check on {report['device']}")
    print(f"GAN: {'bf16 autocast' if bf16 else 'fp32'}, "
          f"{'channels_last' if MEMORY_FORMAT == torch.channels_last else 'NCHW'}; "
          f"size {plan.size}, batch {plan.batch}, {plan.steps} steps, archs {' '.join(plan.archs)}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="sharpgen-gpu-check-") as tmp:
        ctx = {"device": device, "plan": plan, "bf16": bf16, "threads": threads,
               "work": Path(tmp), "patches": bipoles(plan.n_patches, plan.size)}
        res = report["sections"]
        _run_section("matmul", check_matmul, ctx, res)
        ctx.setdefault("ref_flops", math.nan)
        for arch in plan.archs:
            _run_section(f"gan[{arch}]", check_gan, ctx, res, arch)
        _run_section("resume", check_resume, ctx, res)
        _run_section("simsiam", check_simsiam, ctx, res)
        _run_section("traverse", check_traverse, ctx, res)
        _run_section("physics", check_physics, ctx, res)
    report["passed"] = all(r["passed"] for r in res.values())
    report["total_s"] = time.perf_counter() - t_all
    failed = [k for k, r in res.items() if not r["passed"]]
    print(f"{'PASS' if report['passed'] else 'FAIL'}: {len(res) - len(failed)}/{len(res)} "
          f"sections passed in {report['total_s']:.1f} s"
          + (f" (failed: {', '.join(failed)})" if failed else ""))
    _write_json(args.json, report)
    return 0 if report["passed"] else 1


def _write_json(path: Path | None, report: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(report), indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
