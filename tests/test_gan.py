"""GAN models, training loop, checkpoints/resume, faults (sharpgen.gan). Tiny sizes, CPU, < 60 s."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgen import gan, training
from sharpgen.atomic import DiskFullError
from sharpgen.gan import (CheckpointMismatchError, DivergenceError, GanConfig, PatchStoreError,
                          list_checkpoints)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# fixture helper: a tiny patch store per the contracts (used by test_sampling.py too)
# --------------------------------------------------------------------------------------------
def synthetic_bipoles(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 in [-1, 1]: one Gaussian bipole per map plus weak noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        d = rng.uniform(0.08, 0.2) * size
        ang = rng.uniform(-0.6, 0.6)
        w = rng.uniform(0.04, 0.08) * size
        amp = rng.uniform(0.3, 0.9)
        dy, dx = 0.5 * d * np.sin(ang), 0.5 * d * np.cos(ang)
        pos = np.exp(-((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2) / (2 * w * w))
        neg = np.exp(-((yy - cy + dy) ** 2 + (xx - cx + dx) ** 2) / (2 * w * w))
        out[i] = amp * (pos - neg) + 0.01 * rng.standard_normal((size, size))
    return np.clip(out, -1, 1)


def make_patch_store(root: Path, n: int = 24, size: int = 32, clip_gauss: float = 1000.0,
                     seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/patches.zarr`` + ``root/patches.parquet`` per the contracts; return paths."""
    import zarr

    from sharpgen.physics import PixelScale, compute_parameters

    patches = synthetic_bipoles(n, size, seed)
    scale = PixelScale.cea(0.03, bin_factor=4)
    zpath, tpath = root / "patches.zarr", root / "patches.parquet"
    g = zarr.open_group(str(zpath), mode="w")
    g.create_array("patches", shape=patches.shape, dtype="float32",
                   chunks=(min(64, n), size, size))[...] = patches
    for name in ("size_mm", "area_cm2", "size_arcsec"):
        arr = np.full(n, float(getattr(scale, name)))
        g.create_array(f"pixel_{name}", shape=(n,), dtype="float64")[...] = arr
    g.attrs.update({"clip_gauss": clip_gauss, "mode": "crop", "size": size, "bin": 4, "n": n,
                    "config_hash": "testhash0000", "pixel_size_mm": float(scale.size_mm),
                    "pixel_area_cm2": float(scale.area_cm2),
                    "pixel_size_arcsec": float(scale.size_arcsec)})
    params = compute_parameters(patches.astype(np.float64) * clip_gauss, scale)
    split = np.array(["train", "train", "val", "test"] * (n // 4 + 1))[:n]
    table = pd.DataFrame({"row": np.arange(n), "split": split, "harpnum": np.arange(n) // 2,
                          "pixel_size_mm": scale.size_mm, "pixel_area_cm2": scale.area_cm2})
    table = pd.concat([table, params], axis=1)
    table.to_parquet(tpath, index=False)
    return zpath, tpath


TINY = dict(arch="stable", steps=6, batch_size=8, log_every=2, sample_every=3,
            checkpoint_every=3, keep_checkpoints=2, device="cpu", seed=3,
            structure=[])  # the training loop, without the default's structure term (test_gan_structure.py)


def _train(tmp: Path, patches, tag: str, progress=False, **over):
    max_steps = over.pop("_max", None)
    cfg = GanConfig.from_dict({**TINY, **over})
    out = tmp / tag
    summary = gan.train_gan(patches, cfg, checkpoint_root=out / "ckpt",
                            generator_path=out / "generator.pt", log_csv=out / "train_log.csv",
                            samples_dir=out / "samples", data_id="t", threads=1,
                            progress=progress, max_steps_this_run=max_steps)
    return out, summary


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def tiny_patches() -> np.ndarray:
    return synthetic_bipoles(16, 32, seed=1)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_and_discriminator_shapes(size):
    G = gan.build_generator("paper", size)
    D = gan.build_discriminator("stable", size)
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(size))
    x = G(z)
    assert x.shape == (3, 1, size, size)
    # a function of z: deterministic, and different latents give different images
    assert torch.equal(G(z), x)
    assert float((x[0] - x[1]).abs().max()) > 1e-4 and float((x[1] - x[2]).abs().max()) > 1e-4
    logits = D(x)
    assert logits.shape == (3,) and torch.isfinite(logits).all() and float(logits.std()) > 0


def test_paper_architecture_matches_publication():
    G = gan.build_generator("paper", 128)
    D = gan.build_discriminator("paper", 128)
    assert G.fc.out_features == 64 * 15 * 15
    assert [m.out_channels for m in (G.up1, G.up2, G.up3)] == [64, 32, 1]
    assert all(m.kernel_size == (3, 3) and m.stride == (2, 2) for m in (G.up1, G.up2, G.up3))
    assert D.fc1.in_features == 14400 and D.fc1.out_features == 100 and D.fc2.out_features == 1
    assert [m.padding for m in (D.c1, D.c2, D.c3)] == [(0, 0)] * 3
    # stable: spectral norm on every D layer + minibatch-std channel; 4x4 kernels in G
    Ds = gan.build_discriminator("stable", 128)
    assert all(hasattr(m, "parametrizations") for m in (Ds.c1, Ds.c2, Ds.c3, Ds.fc1, Ds.fc2))
    assert Ds.fc1.in_features == 65 * 15 * 15
    Gs = gan.build_generator("stable", 128)
    assert Gs.fc.out_features == 64 * 16 * 16 and Gs.up3.kernel_size == (4, 4)
    with pytest.raises(ValueError, match="power of two"):
        gan.build_generator("paper", 48)


def test_flop_count_matches_analytic_macs():
    # per image: forward MACs of G and D (convolutions + linear layers), counted by hand
    g = 100 * 14400 + 15 * 15 * 64 * 64 * 9 + 31 * 31 * 64 * 32 * 9 + 64 * 64 * 32 * 9
    d = 63 * 63 * 32 * 9 + 31 * 31 * 64 * 32 * 9 + 15 * 15 * 64 * 64 * 9 + 14400 * 100 + 100
    flops = gan.training_flops_per_step("paper", 128, 1)
    # forward: G once and D three times (real, fake for the D step, fake for the G step):
    # 2 FLOPs per MAC. Backward: D step ~2x D fwd twice; G step through D (input grads only,
    # D weights frozen: ~1x) and G (2x). Hand count: 2*(g + 3d) fwd + 2*(2d + 2d + d + 2g) bwd
    # = 2*(3g + 8d), i.e. ~2.7x the forward FLOPs for these nets; allow 10% for the ops
    # FlopCounterMode counts differently (biases, the first layer's unneeded input grads)
    fwd = 2 * (g + 3 * d)
    expected = 2 * (3 * g + 8 * d)
    assert abs(flops / expected - 1) < 0.10, (flops / fwd, expected / fwd)
    assert abs(gan.training_flops_per_step("paper", 128, 4) / flops - 4) < 1e-6


def test_minibatch_std_feature():
    x = torch.zeros(8, 3, 2, 2)
    x[:4] = 1.0  # groups are samples {j, j+2, j+4, j+6}: two ones, two zeros -> std 0.5
    y = gan.minibatch_std(x)
    assert y.shape == (8, 4, 2, 2)
    assert torch.allclose(y[:, 3], torch.full((8, 2, 2), 0.5), atol=1e-3)
    assert torch.equal(y[:, :3], x)


def test_diff_augment_only_moves_and_zeros_pixels():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32) + 1.0  # all values in [1, 2): zeros can only come from fills
    y = gan.diff_augment(x, gen, 0.125, 0.25)
    assert y.shape == x.shape
    vals = set(torch.unique(x).tolist()) | {0.0}
    assert set(torch.unique(y).tolist()) <= vals  # no rescaling, no interpolation
    assert (y == 0).any()
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(y, gan.diff_augment(x, gen2, 0.125, 0.25))


@pytest.mark.parametrize("fill, np_mode", [("zero", "constant"), ("reflect", "reflect")])
def test_diff_augment_translation_is_a_shift_of_the_numpy_padded_image(fill, np_mode):
    """Translation only: each image is its numpy-padded self (0 G or mirrored) shifted by the
    drawn (ty, tx), which the same generator reproduces; reflect brings in no new zeros."""
    B, H, W, t = 6, 24, 32, 0.25
    x = torch.rand(B, 1, H, W) + 1.0
    y = gan.diff_augment(x, torch.Generator().manual_seed(5), t, 0.0, fill=fill)
    sh, sw = int(H * t + 0.5), int(W * t + 0.5)
    g = torch.Generator().manual_seed(5)  # the draws diff_augment makes, in its order
    ty = torch.randint(-sh, sh + 1, (B, 1, 1), generator=g).view(B).tolist()
    tx = torch.randint(-sw, sw + 1, (B, 1, 1), generator=g).view(B).tolist()
    assert any(ty) and any(tx)
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (sh, sh), (sw, sw)), mode=np_mode)
    for b in range(B):
        want = xp[b, :, sh + ty[b]:sh + ty[b] + H, sw + tx[b]:sw + tx[b] + W]
        np.testing.assert_array_equal(y[b].numpy(), want)
    assert ((y == 0).any().item()) == (fill == "zero")
    with pytest.raises(ValueError, match="translation fill 'wrap'"):
        gan.diff_augment(x, torch.Generator(), fill="wrap")


def test_translation_fill_reflect_keeps_a_padded_crop_padded_on_its_padded_sides():
    """A real crop zero-padded left and right by 20 px (> the 16 px shift): after a reflect
    translation the zero columns are still at both sides and nowhere else; a zero fill adds
    zero rows to an unpadded image, a reflect fill does not."""
    S = 128
    x = torch.rand(16, 1, S, S) + 1.0
    x[..., :20] = 0.0
    x[..., -20:] = 0.0
    y = gan.diff_augment(x, torch.Generator().manual_seed(1), 0.125, 0.0, fill="reflect")
    zero_col = (y == 0).all(dim=2).squeeze(1)                    # (B, S)
    assert zero_col[:, :4].all() and zero_col[:, -4:].all()      # both sides, every image
    assert not zero_col[:, 36:-36].any() and not (y[..., 36:-36] == 0).any()
    z = torch.rand(16, 1, S, S) + 1.0
    zero_row = lambda im: (im == 0).all(dim=3).any().item()      # noqa: E731
    assert zero_row(gan.diff_augment(z, torch.Generator().manual_seed(1), 0.125, 0.0))
    assert not (gan.diff_augment(z, torch.Generator().manual_seed(1), 0.125, 0.0,
                                 fill="reflect") == 0).any()


# --------------------------------------------------------------------------------------------
# training: determinism, resume, outputs
# --------------------------------------------------------------------------------------------
def test_training_is_deterministic_and_writes_outputs(tmp_path, tiny_patches):
    a, sa = _train(tmp_path, tiny_patches, "a")
    b, _ = _train(tmp_path, tiny_patches, "b")
    wa, wb = _weights(a / "generator.pt"), _weights(b / "generator.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # byte-identical file (the zip archive inside is not named after a random temporary file)
    assert _sha(a / "generator.pt") == _sha(b / "generator.pt")
    c, _ = _train(tmp_path, tiny_patches, "c", seed=4)
    assert not all(torch.equal(wa[k], _weights(c / "generator.pt")[k]) for k in wa)
    assert sa["steps"] == 6
    blob = torch.load(a / "generator.pt", weights_only=True)
    assert blob["arch"] == "stable" and blob["size"] == 32 and blob["weights"] == "ema"
    assert blob["config"]["steps"] == 6
    log = pd.read_csv(a / "train_log.csv")
    assert list(log.columns) == list(gan.CSV_COLUMNS)
    assert list(log["step"]) == [2, 4, 6]
    assert np.isfinite(log[["d_loss", "g_loss", "images_per_s"]].to_numpy()).all()
    folder = Path(sa["checkpoint_folder"])
    assert [s for s, _ in list_checkpoints(folder)] == [3, 6]
    ck = torch.load(list_checkpoints(folder)[-1][1], weights_only=True)
    assert ck["device"] == "cpu" and ck["rng"]["devices"] == {"gen": "cpu"} and ck["step"] == 6
    assert (folder / "train.lock").read_text() == ""  # released
    assert sorted(p.name for p in (a / "samples").iterdir()) == ["step_00000003.png",
                                                                "step_00000006.png"]
    G = gan.load_generator(a / "generator.pt")
    z = np.random.default_rng(0).standard_normal((5, 100)).astype(np.float32)
    imgs = gan.generate(G, z, batch_size=2)
    assert imgs.shape == (5, 32, 32) and imgs.dtype == np.float32
    # batching changes the images only at float rounding (oneDNN picks kernels by batch size),
    # and they are the loaded network's output
    np.testing.assert_allclose(imgs, gan.generate(G, z, batch_size=5), atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(imgs, G(torch.from_numpy(z))[:, 0].numpy(), atol=1e-6)
    # loaded like it was trained (channels_last: ~2x faster inference on the CPU), the same
    # network as in the default layout up to float rounding
    convs = [m for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    G.to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(imgs, gan.generate(G, z, batch_size=2), atol=1e-5)


def test_resume_matches_uninterrupted_run(tmp_path, tiny_patches):
    full, _ = _train(tmp_path, tiny_patches, "full", arch="paper")
    part, s = _train(tmp_path, tiny_patches, "part", arch="paper", _max=3)
    assert s["steps"] == 3 and not (part / "generator.pt").exists()
    _train(tmp_path, tiny_patches, "part", arch="paper")  # resumes at step 3
    wa, wb = _weights(full / "generator.pt"), _weights(part / "generator.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = pd.read_csv(part / "train_log.csv")
    assert list(log["step"]) == [2, 4, 6]


def test_lr_decay_schedule_trajectory_resume_and_hash(tmp_path, tiny_patches):
    """gan.lr_decay_*: the factor is 1 before the start, then falls linearly to 0; a decay that
    starts after the last step leaves the trajectory bit-identical to constant rates; one that
    reaches 0 at the last step leaves that step a no-op (paper: generator.pt is G itself) and
    resumes exactly; the keys move the checkpoint hash only when the decay is on; a decay that
    ends before gan.steps (rates 0 for the rest) is refused."""
    cfg = GanConfig.from_dict({"lr_decay_start": 2, "lr_decay_steps": 4, "steps": 6})
    assert [cfg.lr_scale(s) for s in (0, 1, 2, 3, 5, 6, 99)] == [1, 1, 0.75, 0.5, 0, 0, 0]
    assert GanConfig.from_dict({"lr_decay_steps": 0}).lr_scale(10**6) == 1.0
    default = GanConfig.from_dict({})  # the default since 2026-12-05: the second half decays to 0
    assert (default.lr_scale(default.steps // 2 - 1), default.lr_scale(default.steps - 1)) == (1.0, 0.0)
    const, _ = _train(tmp_path, tiny_patches, "const", arch="paper", lr_decay_steps=0)
    late, _ = _train(tmp_path, tiny_patches, "late", arch="paper", lr_decay_start=6, lr_decay_steps=5)
    assert _same_weights(const / "generator.pt", late / "generator.pt")
    three, _ = _train(tmp_path, tiny_patches, "three", arch="paper", steps=3, lr_decay_steps=0)
    four, _ = _train(tmp_path, tiny_patches, "four", arch="paper", steps=4, lr_decay_start=3,
                     lr_decay_steps=1)  # rate 0 at the 4th (last) step
    assert _same_weights(three / "generator.pt", four / "generator.pt")
    assert not _same_weights(const / "generator.pt", four / "generator.pt")
    mid = dict(arch="stable", lr_decay_start=2, lr_decay_steps=4)
    straight, _ = _train(tmp_path, tiny_patches, "mid", **mid)
    _train(tmp_path, tiny_patches, "mid_r", **mid, _max=4)  # stops inside the decay, then resumes
    resumed, _ = _train(tmp_path, tiny_patches, "mid_r", **mid)
    assert _same_weights(straight / "generator.pt", resumed / "generator.pt")
    plain = GanConfig.from_dict({"lr_decay_steps": 0}).trajectory_dict()
    assert "lr_decay_start" not in plain and "lr_decay_steps" not in plain
    assert GanConfig.from_dict({"lr_decay_start": 9, "lr_decay_steps": 0}).trajectory_dict() == plain
    on = GanConfig.from_dict({"lr_decay_start": 9, "lr_decay_steps": 3, "steps": 12}).trajectory_dict()
    assert (on["lr_decay_start"], on["lr_decay_steps"]) == (9, 3)
    assert GanConfig.from_dict({}).trajectory_dict()["lr_decay_steps"] == 2400
    with pytest.raises(ValueError, match="lr_decay_steps"):
        GanConfig.from_dict({"lr_decay_steps": -1})
    with pytest.raises(ValueError, match=r"= 4800 ends before gan.steps = 9600: .* 0 for the last 4800 steps"):
        GanConfig.from_dict({"steps": 9600})  # the default's decay, steps raised alone
    with pytest.raises(ValueError, match="ends before gan.steps = 6"):
        GanConfig.from_dict({"steps": 6, "lr_decay_start": 3, "lr_decay_steps": 1})


def test_sigkill_mid_run_resumes_and_finishes(tmp_path, tiny_patches):
    np.save(tmp_path / "p.npy", tiny_patches)
    cfg = {**TINY, "steps": 100000, "checkpoint_every": 2, "arch": "paper", "lr_decay_steps": 0}
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from sharpgen import gan
        torch.set_num_threads(1)
        gan.train_gan(np.load({str(tmp_path / 'p.npy')!r}), gan.GanConfig.from_dict({cfg!r}),
                      checkpoint_root={str(tmp_path / 'ckpt')!r},
                      generator_path={str(tmp_path / 'g.pt')!r},
                      log_csv={str(tmp_path / 'log.csv')!r}, data_id="t", progress=False)
    """)
    folder = gan.checkpoint_folder(tmp_path / "ckpt", GanConfig.from_dict(cfg), 32, 16, "t")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list_checkpoints(folder)) < 1:
            assert proc.poll() is None, "training subprocess died"
            time.sleep(0.05)
        assert list_checkpoints(folder), "no checkpoint within 60 s"
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = list_checkpoints(folder)[-1][0]
    assert done >= 2
    # rerun (in-process) with a finite budget a few steps past the kill: resumes and finishes
    cfg2 = GanConfig.from_dict({**cfg, "steps": done + 4})
    s = gan.train_gan(tiny_patches, cfg2, checkpoint_root=tmp_path / "ckpt",
                      generator_path=tmp_path / "g.pt", log_csv=tmp_path / "log.csv",
                      data_id="t", progress=False)
    assert s["steps"] == done + 4
    assert torch.load(tmp_path / "g.pt", weights_only=True)["steps"] == done + 4
    steps = list(pd.read_csv(tmp_path / "log.csv")["step"])
    assert steps == sorted(set(steps)) and steps[-1] == done + 4
    assert not list(folder.glob(".*.tmp"))  # no half-written checkpoint left behind


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_patches):
    out, _ = _train(tmp_path, tiny_patches, "div", arch="paper", checkpoint_every=2, _max=2)
    folder = Path(out / "ckpt")
    ck = list_checkpoints(next(folder.iterdir()))
    assert [s for s, _ in ck] == [2]
    bad = tiny_patches.copy()
    bad[:] = np.nan
    with pytest.raises(DivergenceError, match=r"non-finite loss by step 3.*step_00000002\.pt"):
        _train(tmp_path, bad, "div", arch="paper", checkpoint_every=2)
    assert [s for s, _ in list_checkpoints(next(folder.iterdir()))] == [2]
    assert not (out / "generator.pt").exists()


def test_checkpoint_from_other_architecture_is_refused(tmp_path, tiny_patches):
    out, _ = _train(tmp_path, tiny_patches, "x", arch="paper", _max=3)
    src = list_checkpoints(next((out / "ckpt").iterdir()))[-1][1]
    cfg = GanConfig.from_dict({**TINY, "arch": "stable"})
    dst = gan.checkpoint_folder(out / "ckpt", cfg, 32, 16, "t")
    dst.mkdir(parents=True)
    (dst / src.name).write_bytes(src.read_bytes())
    with pytest.raises(CheckpointMismatchError, match=r"arch: checkpoint 'paper' != current 'stable'"):
        _train(tmp_path, tiny_patches, "x", arch="stable")


def test_unknown_config_key_and_bad_values():
    with pytest.raises(ValueError, match="unknown gan config key"):
        GanConfig.from_dict({"archh": "paper"})
    with pytest.raises(ValueError, match="gan.arch"):
        GanConfig.from_dict({"arch": "biggan"})


# --------------------------------------------------------------------------------------------
# checkpoint folder lock, pruning, unreadable checkpoints, other devices, disk full
# --------------------------------------------------------------------------------------------
_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from sharpgen import gan
    torch.set_num_threads(1)
    root, out, cfg = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    gan.train_gan(np.load(sys.argv[4]), gan.GanConfig.from_dict(cfg), checkpoint_root=root,
                  generator_path=out + "/g.pt", log_csv=out + "/log.csv", data_id="t",
                  progress=False)
""")


def test_second_training_on_the_same_checkpoint_folder_is_refused(tmp_path, tiny_patches):
    """Two real processes, same settings and checkpoint_dir, different results: the second
    refuses, naming the first's host and pid; the first's log stays complete and in order."""
    np.save(tmp_path / "p.npy", tiny_patches)
    cfg = {**TINY, "arch": "paper", "steps": 300, "checkpoint_every": 2, "log_every": 2,
           "sample_every": 1000}
    folder = gan.checkpoint_folder(tmp_path / "ckpt", GanConfig.from_dict(cfg), 32, 16, "t")
    args = [str(tmp_path / "ckpt"), None, repr(cfg), str(tmp_path / "p.npy")]

    def cmd(out):
        (tmp_path / out).mkdir()
        return [sys.executable, "-c", _TRAIN_SCRIPT, args[0], str(tmp_path / out), *args[2:]]

    first = subprocess.Popen(cmd("one"), cwd=REPO_ROOT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list_checkpoints(folder):
            assert first.poll() is None, "first training died"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, frozen mid-run
        assert first.poll() is None, "first training finished too early; raise steps"
        second = subprocess.run(cmd("two"), cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=120)
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
    assert second.returncode != 0
    assert "CheckpointLockError" in second.stderr
    assert f"host {socket.gethostname()}, pid {first.pid}" in second.stderr
    assert str(folder) in second.stderr
    assert not (tmp_path / "two" / "g.pt").exists() and not (tmp_path / "two" / "log.csv").exists()
    steps = list(pd.read_csv(tmp_path / "one" / "log.csv")["step"])
    assert steps == list(range(2, 301, 2))
    assert torch.load(tmp_path / "one" / "g.pt", weights_only=True)["steps"] == 300


def test_stale_and_unreadable_checkpoints_do_not_evict_fresh_ones(tmp_path, tiny_patches, caplog):
    folder = gan.checkpoint_folder(tmp_path / "s" / "ckpt", GanConfig.from_dict(TINY), 32, 16, "t")
    folder.mkdir(parents=True)
    (folder / "step_00000005.pt").write_bytes(b"not a checkpoint")  # unreadable, within steps
    (folder / "step_00000900.pt").write_bytes(b"stale")  # a longer run's: past steps
    with caplog.at_level(logging.WARNING):
        out, _ = _train(tmp_path, tiny_patches, "s")
    assert [s for s, _ in list_checkpoints(folder)] == [3, 6, 900]  # fresh ones kept
    assert "step_00000005.pt is unreadable" in caplog.text
    assert "EVERY checkpoint" in caplog.text and "step_00000005.pt.corrupt" in caplog.text
    assert (folder / "step_00000005.pt.corrupt").read_bytes() == b"not a checkpoint"
    ref, _ = _train(tmp_path, tiny_patches, "ref")
    assert _same_weights(out / "generator.pt", ref / "generator.pt")


def test_unreadable_newest_checkpoint_falls_back_to_an_older_one(tmp_path, tiny_patches, caplog):
    full, _ = _train(tmp_path, tiny_patches, "full", arch="paper", steps=9)
    part, _ = _train(tmp_path, tiny_patches, "part", arch="paper", steps=9, _max=7)
    folder = next((part / "ckpt").iterdir())
    assert [s for s, _ in list_checkpoints(folder)] == [3, 6]
    newest = folder / "step_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a failing disk
    with caplog.at_level(logging.INFO):
        _train(tmp_path, tiny_patches, "part", arch="paper", steps=9)
    assert "step_00000006.pt is unreadable" in caplog.text and "EVERY" not in caplog.text
    assert re.search(r"resumed from \S*step_00000003\.pt \(step 3 of 9\)", caplog.text)
    assert (folder / "step_00000006.pt.corrupt").exists()
    assert _same_weights(full / "generator.pt", part / "generator.pt")
    assert list(pd.read_csv(part / "train_log.csv")["step"]) == [2, 4, 6, 8, 9]


def test_every_checkpoint_unreadable_starts_over_loudly(tmp_path, tiny_patches, caplog):
    full, _ = _train(tmp_path, tiny_patches, "full", arch="paper")
    part, _ = _train(tmp_path, tiny_patches, "part", arch="paper", _max=5)
    folder = next((part / "ckpt").iterdir())
    (folder / "step_00000003.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        _train(tmp_path, tiny_patches, "part", arch="paper")
    loud = [r.getMessage() for r in caplog.records if "EVERY checkpoint" in r.getMessage()]
    assert len(loud) == 1 and "step_00000003.pt.corrupt" in loud[0] and "step 0" in loud[0]
    assert _same_weights(full / "generator.pt", part / "generator.pt")
    assert list(pd.read_csv(part / "train_log.csv")["step"]) == [2, 4, 6]


@pytest.mark.parametrize("recorded", [True, False], ids=["device-recorded", "old-format"])
def test_checkpoint_from_another_device_type_resumes_with_a_warning(tmp_path, tiny_patches,
                                                                    caplog, recorded):
    """A checkpoint written on CUDA (Philox generator state: 16 bytes, CUDA RNG states) resumes
    on the CPU: the generator is reseeded from (seed, step) with a warning, deterministically."""
    part, _ = _train(tmp_path, tiny_patches, "x", _max=3)
    path = list_checkpoints(next((part / "ckpt").iterdir()))[-1][1]
    ck = torch.load(path, weights_only=True)
    ck["rng"]["gen"] = torch.zeros(16, dtype=torch.uint8)
    ck["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    if recorded:
        ck["device"], ck["rng"]["devices"] = "cuda", {"gen": "cuda"}
    else:
        del ck["device"], ck["rng"]["devices"]
    torch.save(ck, path)
    shutil.copytree(part / "ckpt", tmp_path / "y" / "ckpt")
    with caplog.at_level(logging.WARNING):
        _train(tmp_path, tiny_patches, "x")
    assert "resuming" in caplog.text and "generator 'gen' could not be restored" in caplog.text
    assert "reseeded deterministically from (seed 4, step 3)" in caplog.text
    _train(tmp_path, tiny_patches, "y")
    assert _same_weights(part / "generator.pt", tmp_path / "y" / "generator.pt")
    ref, _ = _train(tmp_path, tiny_patches, "ref")
    assert not _same_weights(part / "generator.pt", ref / "generator.pt")


@pytest.mark.parametrize("var", ["SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"])
def test_gpu_job_without_cuda_is_refused(tmp_path, tiny_patches, monkeypatch, var):
    for v in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(training.DeviceError) as exc:
        _train(tmp_path, tiny_patches, "auto", device="auto")
    msg = str(exc.value)
    assert f"{var}=0" in msg and "CPU-only build" in msg and "gan.device: cpu" in msg
    assert not (tmp_path / "auto").exists()  # refused before anything was written
    _, s = _train(tmp_path, tiny_patches, "cpu", device="cpu", _max=1)  # explicit cpu: fine
    assert s["steps"] == 1


def test_plain_cpu_run_with_device_auto_works(tmp_path, tiny_patches, monkeypatch, caplog):
    for v in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO):
        _, s = _train(tmp_path, tiny_patches, "auto", device="auto", _max=1)
    assert s["steps"] == 1 and "gan.device: running on cpu (1 threads" in caplog.text


@pytest.mark.parametrize("err", [RuntimeError("[enforce fail at inline_container.cc:672] . "
                                              "unexpected pos 576 vs 534"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_disk_full_while_checkpointing_is_named(tmp_path, tiny_patches, monkeypatch, err):
    def full(obj, f, *a, **k):
        raise err

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as exc:
        _train(tmp_path, tiny_patches, "full", arch="paper")
    folder = next((tmp_path / "full" / "ckpt").iterdir())
    assert f"no space left on {folder} while writing step_00000003.pt" in str(exc.value)
    assert not list(folder.glob(".*.tmp")) and not list_checkpoints(folder)
    monkeypatch.undo()  # space freed: the rerun trains (the lock was released)
    _, s = _train(tmp_path, tiny_patches, "full", arch="paper")
    assert s["steps"] == 6


# --------------------------------------------------------------------------------------------
# patch store faults
# --------------------------------------------------------------------------------------------
def test_patch_store_reading_and_split(tmp_path):
    z, t = make_patch_store(tmp_path, n=12)
    allp, attrs = gan.read_patch_store(z)
    assert allp.shape == (12, 32, 32) and attrs["clip_gauss"] == 1000.0
    train, _ = gan.read_patch_store(z, t, split="train")
    assert train.shape[0] == 6
    np.testing.assert_array_equal(train[0], allp[0])


def test_missing_empty_or_corrupt_patch_store_is_named(tmp_path):
    import zarr

    missing = tmp_path / "nope.zarr"
    with pytest.raises(PatchStoreError, match=f"patch store {missing} does not exist"):
        gan.read_patch_store(missing)
    empty = tmp_path / "empty.zarr"
    zarr.open_group(str(empty), mode="w").create_array("patches", shape=(0, 32, 32),
                                                       dtype="float32")
    with pytest.raises(PatchStoreError, match=f"patch store {empty} is empty"):
        gan.read_patch_store(empty)
    noarr = tmp_path / "noarr.zarr"
    zarr.open_group(str(noarr), mode="w")
    with pytest.raises(PatchStoreError, match=f"patch store {noarr} has no 'patches' array"):
        gan.read_patch_store(noarr)
    z, _ = make_patch_store(tmp_path, n=8)
    (z / "zarr.json").write_text("{ not json")
    with pytest.raises(PatchStoreError, match=f"patch store {z} is unreadable or corrupt"):
        gan.read_patch_store(z)
    sub = tmp_path / "chunks"
    sub.mkdir()
    z2, _ = make_patch_store(sub, n=8)
    for chunk in (z2 / "patches" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    with pytest.raises(PatchStoreError, match=f"patch store {z2} is unreadable or corrupt"):
        gan.read_patch_store(z2)


def test_config_yaml_gan_section_matches_code():
    import yaml

    from sharpgen.config import load_config

    cfg = load_config(REPO_ROOT / "config.yaml")
    GanConfig.from_dict(cfg["gan"])  # every key known, every value valid
    schema = yaml.safe_load((REPO_ROOT / "rules/schemas/config.schema.yaml").read_text())
    fields = set(GanConfig.__dataclass_fields__) - {"NON_TRAJECTORY"}
    assert set(schema["properties"]["gan"]["properties"]) == fields
    tiny = load_config(REPO_ROOT / "config.yaml", REPO_ROOT / "tests/configs/tiny.yaml")
    assert GanConfig.from_dict(tiny["gan"]).steps <= 10


# --------------------------------------------------------------------------------------------
# mapping architecture (z -> w -> modulated resize+conv synthesis), R1 and path-length penalties
# --------------------------------------------------------------------------------------------
MAPPING = dict(arch="mapping", mapping_channels=[8, 8, 8, 4], mapping_layers=2, mapping_lr_mult=0.1,
               r1_gamma=1.0, r1_every=2, pl_weight=2.0, pl_every=2)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_mapping_generator_shapes_and_whitened_codes(size):
    torch.manual_seed(0)
    G = gan.build_generator("mapping", size, 100, mapping_layers=3, channels=(16, 16, 8, 4)).eval()
    assert gan.latent_space(G) == "w" and gan.latent_space(gan.build_generator("stable", size)) == "z"
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        x = G(z)
        assert x.shape == (64, 1, size, size) and float(x.abs().max()) <= 1
        assert torch.equal(G(z), x)  # a function of z
        assert float((x[0] - x[1]).abs().max()) > 1e-4
        stats = G.fit_w_statistics(n=20000, seed=1)
        assert stats["n"] == 20000 and stats["eig_min"] > 0
        # whitened codes: zero mean, identity covariance on fresh latents (up to sampling noise)
        v = G.codes(torch.randn(20000, 100, generator=torch.Generator().manual_seed(9))).double()
        assert float(v.mean(0).abs().max()) < 0.1
        cov = torch.cov(v.T)
        assert float((cov.diagonal() - 1).abs().mean()) < 0.05
        assert float((cov - torch.eye(100, dtype=cov.dtype)).abs().max()) < 0.2
        # ... which the raw w is not
        w = G.mapping(torch.randn(20000, 100, generator=torch.Generator().manual_seed(9))).double()
        assert float((torch.cov(w.T) - torch.eye(100, dtype=w.dtype)).abs().max()) > 0.3
        # the code round trip renders the same image as z
        torch.testing.assert_close(G.from_codes(G.codes(z)), x, atol=2e-4, rtol=0)
    # the same statistics again: bit-identical buffers (seeded)
    before = G.w_white.clone()
    G.fit_w_statistics(n=20000, seed=1)
    assert torch.equal(G.w_white, before)
    # whitened codes through the numpy API
    zn = z[:5].numpy()
    codes = gan.latent_codes(G, zn)
    assert codes.shape == (5, 100) and codes.dtype == np.float32
    np.testing.assert_allclose(gan.generate(G, codes, space="w"), gan.generate(G, zn), atol=2e-4)
    with pytest.raises(ValueError, match="mapping network"):
        gan.generate(gan.build_generator("stable", size), codes, space="w")
    # D of the stable recipe for the mapping arch; more FLOPs than stable, no transposed convs
    D = gan.build_discriminator("mapping", size)
    assert D.mbstd and hasattr(D.c1, "parametrizations")
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())
    if size == 128:
        assert gan.training_flops_per_step("mapping", 128, 1) > gan.training_flops_per_step("stable", 128, 1)


def test_modulated_conv_demodulates_and_modulates():
    torch.manual_seed(0)
    conv = gan.model.ModulatedConv(8, 6, 3, w_dim=4)
    x = torch.randn(2, 8, 16, 16)
    w = torch.randn(2, 4)
    y = conv(x, w)
    # demodulated: scaling the style (hence the input scale) leaves the output unchanged
    with torch.no_grad():
        conv.affine.weight.mul_(3.0)
        conv.affine.bias.mul_(3.0)
    torch.testing.assert_close(conv(x, w), y, atol=1e-4, rtol=1e-4)
    # and different w give different outputs (the style reaches the image)
    with torch.no_grad():
        assert float((conv(x, w.flip(0))[0] - y[0]).abs().max()) > 1e-3


def test_r1_and_path_length_penalties():
    torch.manual_seed(0)
    D = gan.build_discriminator("stable", 32)
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    pen = gan.r1_step(D, real, gamma=1.0, every=1)
    # the penalty is E||grad_x D(x)||^2, checked against a direct computation
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    assert abs(float(pen) - float(g.square().sum((1, 2, 3)).mean())) < 1e-3 * max(1.0, float(pen))
    # the penalty reaches D's weights (not the last bias: it does not change grad_x D)
    assert D.c1.parametrizations.weight.original.grad is not None
    # path length: the running mean starts at the batch mean and moves by `decay`
    G = gan.build_generator("mapping", 32, 100, mapping_layers=2, channels=(8, 8, 8, 4))
    gen = torch.Generator().manual_seed(0)
    m1, p1 = gan.path_length_step(G, torch.randn(4, 100), gen, 0.0, weight=1.0, every=1)
    assert m1 > 0 and float(p1) >= 0
    m2, _ = gan.path_length_step(G, torch.randn(4, 100), gen, m1, weight=1.0, every=1, decay=0.5)
    assert m2 != m1 and G.mapping.layers[0].weight.grad is not None
    Gs = gan.build_generator("stable", 32)  # no mapping network: the Jacobian w.r.t. z
    m3, _ = gan.path_length_step(Gs, torch.randn(4, 100), gen, 0.0, weight=1.0, every=1)
    assert m3 > 0 and Gs.fc.weight.grad is not None


def test_mapping_training_is_deterministic_resumes_and_loads(tmp_path, tiny_patches):
    a, sa = _train(tmp_path, tiny_patches, "ma", **MAPPING)
    b, _ = _train(tmp_path, tiny_patches, "mb", **MAPPING)
    assert sa["steps"] == 6
    assert _sha(a / "generator.pt") == _sha(b / "generator.pt")
    # resumed at step 3 (R1, path length and its running mean, EMA in the checkpoint): identical
    part, s = _train(tmp_path, tiny_patches, "mp", _max=3, **MAPPING)
    assert s["steps"] == 3
    _train(tmp_path, tiny_patches, "mp", **MAPPING)
    assert _same_weights(a / "generator.pt", part / "generator.pt")
    # the regularisers change the trajectory
    c, _ = _train(tmp_path, tiny_patches, "mc", **{**MAPPING, "pl_weight": 0.0, "r1_gamma": 0.0})
    assert not _same_weights(a / "generator.pt", c / "generator.pt")
    blob = torch.load(a / "generator.pt", weights_only=True)
    assert blob["arch"] == "mapping" and blob["latent_space"] == "w" and blob["weights"] == "ema"
    assert blob["w_statistics"]["n"] == gan.model.W_STATS_SAMPLES
    G = gan.load_generator(a / "generator.pt")
    assert G.channels == (8, 8, 8, 4) and len(G.mapping.layers) == 2
    assert not torch.equal(G.w_white, torch.eye(100))  # statistics fitted at the end
    z = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32)
    np.testing.assert_allclose(gan.generate(G, gan.latent_codes(G, z), space="w"),
                               gan.generate(G, z), atol=2e-4)


def test_mapping_config_keys_are_checked():
    cfg = GanConfig.from_dict({"arch": "mapping", "mapping_channels": [4, 4, 4, 2]})
    assert cfg.mapping_channels == (4, 4, 4, 2) and cfg.as_dict()["mapping_channels"] == [4, 4, 4, 2]
    assert "mapping_channels" in cfg.trajectory_dict() and "r1_gamma" in cfg.trajectory_dict()
    for bad in ({"mapping_channels": [4, 4, 4]}, {"r1_gamma": -1.0}, {"pl_every": 0},
                {"mapping_layers": 0}, {"arch": "stylegan"}):
        with pytest.raises(ValueError):
            GanConfig.from_dict(bad)


def test_stable_only_options_do_not_move_other_architectures_checkpoints(tmp_path):
    """The `stable` generator's options (upsample, noise, refine, output, speckle) are read by no
    other generator: a change of their defaults must leave a `paper` or `mapping` run's checkpoint
    folder where it is, and still give `stable` runs their own folders."""
    stable_opts = ({"upsample": "transposed", "speckle": "none", "output": "tanh"},
                   {"upsample": "blur", "speckle": "signed", "refine": True, "noise": True})
    for arch in ("paper", "mapping"):
        a, b = ({**TINY, "arch": arch, **o} for o in stable_opts)
        assert (gan.checkpoint_folder(tmp_path, GanConfig.from_dict(a), 32, 16, "t")
                == gan.checkpoint_folder(tmp_path, GanConfig.from_dict(b), 32, 16, "t"))
        assert not set(GanConfig.STABLE_ONLY) & set(GanConfig.from_dict(b).trajectory_dict())
    a, b = ({**TINY, "arch": "stable", **o} for o in stable_opts)
    assert (gan.checkpoint_folder(tmp_path, GanConfig.from_dict(a), 32, 16, "t")
            != gan.checkpoint_folder(tmp_path, GanConfig.from_dict(b), 32, 16, "t"))
    # the paper's own keys still move it
    assert (gan.checkpoint_folder(tmp_path, GanConfig.from_dict({**TINY, "arch": "paper"}), 32, 16, "t")
            != gan.checkpoint_folder(tmp_path, GanConfig.from_dict({**TINY, "arch": "paper", "lr_g": 1e-4}),
                                     32, 16, "t"))


# --------------------------------------------------------------------------------------------
# stable generator upsampling (gan.upsample, issue 19)
# --------------------------------------------------------------------------------------------
def test_binomial_blur_removes_the_checkerboard_and_keeps_smooth_fields():
    from sharpgen.gan.model import binomial_blur

    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    checker = torch.from_numpy(((-1.0) ** (i + j)).astype(np.float32))[None, None]
    ramp = torch.from_numpy((0.01 * i + 0.02 * j).astype(np.float32))[None, None]
    out = binomial_blur(torch.cat([checker, 3.0 + 0 * checker], dim=1))
    assert out.shape == (1, 2, 16, 16)
    # the Nyquist pattern (what a stride-2 transposed convolution leaves) is gone inside the map
    assert float(out[0, 0, 1:-1, 1:-1].abs().max()) < 1e-6
    assert torch.allclose(out[0, 1], torch.full((16, 16), 3.0))          # constants unchanged
    assert torch.allclose(binomial_blur(ramp)[..., 1:-1, 1:-1], ramp[..., 1:-1, 1:-1], atol=1e-6)
    # the one-channel path (shifted sums) equals the depthwise convolution of the others
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    both = binomial_blur(x)
    for c in range(3):
        torch.testing.assert_close(binomial_blur(x[:, c: c + 1]), both[:, c: c + 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("upsample,noise", [("blur", False), ("resize", False), ("blur", True)])
def test_stable_upsampling_variants_train_save_and_load(tmp_path, tiny_patches, upsample, noise):
    G = gan.build_generator("stable", 32, upsample=upsample, stable_noise=noise).eval()
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(z)
        assert torch.equal(G(z), x)                      # a function of z, noise included
    assert x.shape == (3, 1, 32, 32) and float(x.abs().max()) <= 1.0
    kinds = {type(m) for m in (G.up1, G.up2, G.up3)}
    assert kinds == ({torch.nn.Conv2d} if upsample == "resize" else {torch.nn.ConvTranspose2d})
    assert G.up3.in_channels == 32 + int(noise)
    # trained and saved with the keys, loaded back as the same network
    tag = f"{upsample}{'_noise' if noise else ''}"
    a, _ = _train(tmp_path, tiny_patches, tag, upsample=upsample, noise=noise)
    blob = torch.load(a / "generator.pt", weights_only=True)
    assert blob["config"]["upsample"] == upsample and blob["config"]["noise"] is noise
    assert not any(k.startswith("noise_proj") for k in blob["state_dict"])  # rebuilt, not stored
    Gl = gan.load_generator(a / "generator.pt")
    assert Gl.upsample == upsample and Gl.noise is noise
    zn = np.random.default_rng(1).standard_normal((2, 100)).astype(np.float32)
    assert np.isfinite(gan.generate(Gl, zn)).all()
    # a second load (fresh fixed projections) makes the same images
    np.testing.assert_array_equal(gan.generate(gan.load_generator(a / "generator.pt"), zn), gan.generate(Gl, zn))
    # another upsampling / noise setting is another training: another checkpoint folder
    fa = gan.checkpoint_folder(tmp_path, GanConfig.from_dict({**TINY, "upsample": upsample, "noise": noise}), 32, 16, "t")
    other = next(u for u in ("transposed", "blur", "resize") if u != upsample)
    fb = gan.checkpoint_folder(tmp_path, GanConfig.from_dict({**TINY, "upsample": other, "noise": noise}), 32, 16, "t")
    assert fa != fb
    assert gan.training_flops_per_step("stable", 32, 2, upsample=upsample, stable_noise=noise) > 0
    with pytest.raises(ValueError, match="upsample"):
        GanConfig.from_dict({**TINY, "upsample": "pixelshuffle"})


def test_stable_refine_and_clipped_output_train_save_and_load(tmp_path, tiny_patches):
    from sharpgen.gan.model import CLIPPED_GAIN

    G = gan.build_generator("stable", 32, refine=True, output="clipped").eval()
    assert [m.kernel_size for m in (G.refine0, G.refine1)] == [(3, 3), (3, 3)]
    # the clipped output reaches exactly +-1 (the clip level of the real patches), tanh never does
    with torch.no_grad():
        for w in (G.up3.weight, G.up3.bias):
            w.mul_(50.0)
        x = G(torch.randn(4, 100, generator=torch.Generator().manual_seed(0)))
    assert float(x.abs().max()) == 1.0 and float((x.abs() == 1.0).float().mean()) > 0.05
    t = torch.linspace(-3, 3, 61)
    G.output = "tanh"
    assert torch.equal(G._out(t), torch.tanh(t))
    G.output = "clipped"
    torch.testing.assert_close(G._out(t), (CLIPPED_GAIN * torch.tanh(t)).clamp(-1, 1))
    # FLOPs: the two 3x3 convolutions cost more, the output layer nothing
    base = gan.training_flops_per_step("stable", 32, 2)
    assert gan.training_flops_per_step("stable", 32, 2, output="clipped") == base
    assert gan.training_flops_per_step("stable", 32, 2, refine=True) > base
    # trained and saved with the keys, loaded back as the same network
    a, _ = _train(tmp_path, tiny_patches, "refine_clipped", refine=True, output="clipped")
    blob = torch.load(a / "generator.pt", weights_only=True)
    assert blob["config"]["refine"] is True and blob["config"]["output"] == "clipped"
    Gl = gan.load_generator(a / "generator.pt")
    assert Gl.refine is True and Gl.output == "clipped"
    zn = np.random.default_rng(1).standard_normal((2, 100)).astype(np.float32)
    assert np.abs(gan.generate(Gl, zn)).max() <= 1.0
    # refine off and the tanh output (before the options): the checkpoint hash of those configurations
    traj = GanConfig.from_dict({**TINY, "output": "tanh"}).trajectory_dict()
    assert "refine" not in traj and "output" not in traj
    assert GanConfig.from_dict(TINY).trajectory_dict()["output"] == "clipped"  # the default
    with pytest.raises(ValueError, match="gan.output"):
        GanConfig.from_dict({**TINY, "output": "sigmoid"})


def test_heavy_tail_keeps_unit_variance_and_grows_the_tails():
    """heavy_tail(n, t) = sinh(t n) / sd(t): zero mean and unit variance for n ~ N(0, 1) at every
    tail t, the Gaussian itself as t -> 0, kurtosis rising with t (36 at t = 1 in theory)."""
    from sharpgen.gan.model import heavy_tail

    n = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    kurt = {}
    for t in (0.0, 0.3, 0.7, 1.0):
        h = heavy_tail(n, torch.tensor(t))
        assert abs(float(h.mean())) < 0.01 and abs(float(h.std()) - 1.0) < 0.02
        kurt[t] = float(((h - h.mean()) ** 4).mean() / h.var() ** 2)
    torch.testing.assert_close(heavy_tail(n, torch.tensor(0.0)), n, atol=1e-5, rtol=1e-5)
    assert abs(kurt[0.0] - 3.0) < 0.1 and 3.2 < kurt[0.3] < 3.7 and 6.5 < kurt[0.7] < 9.0
    assert kurt[1.0] > 20.0
    # per-pixel tails broadcast, and the tail is differentiable (the generator learns it)
    t = torch.full((2, 1, 4, 4), 0.5, requires_grad=True)
    heavy_tail(torch.randn(2, 1, 4, 4), t).pow(4).sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and float(t.grad.abs().sum()) > 0


def test_stable_intermittent_speckle_is_signed_with_a_per_pixel_tail():
    """gan.speckle: intermittent -- a third map b of the last layer sets the tail
    t = SPECKLE_TAIL_MAX sigmoid(b) of the white map (starting at SPECKLE_TAIL0), then the grain
    is combined as `signed`: it never punches the other polarity into strong field."""
    from sharpgen.gan.model import SPECKLE_FADE, SPECKLE_TAIL0, SPECKLE_TAIL_MAX, heavy_tail

    G = gan.build_generator("stable", 32, speckle="intermittent", upsample="blur").eval()
    assert G.up3.out_channels == 3
    assert abs(SPECKLE_TAIL_MAX * float(torch.sigmoid(G.up3.bias[2])) - SPECKLE_TAIL0) < 1e-6
    z = torch.randn(16, 100, generator=torch.Generator().manual_seed(4))
    maps = {}
    hook = G._up  # the last layer's three maps, after the blur
    G._up = lambda layer, x: maps.setdefault(id(layer), hook(layer, x))
    with torch.no_grad():
        x = G(z)
        y = maps[id(G.up3)]
        t = SPECKLE_TAIL_MAX * torch.sigmoid(y[:, 2:3])
        m, g = y[:, :1], G.speckle_filter(heavy_tail(G.speckle_map(z), t))
        against = (g < 0) & (m >= 0) | (g > 0) & (m < 0)
        grain = torch.where(against, g * torch.exp(-m.abs() / SPECKLE_FADE), g)
        expect = G._out(m + torch.nn.functional.softplus(y[:, 1:2]) * grain)
    torch.testing.assert_close(x, expect)
    # a strong tail in one place and none in another: the grain's outliers follow the tail map
    field = torch.zeros(32, 32)
    tail_logit = torch.where(torch.arange(32)[None, :] < 16, -30.0, 30.0).expand(32, 32)
    G._up = lambda layer, x: (torch.stack([field.expand(len(x), 32, 32),
                                           torch.full((len(x), 32, 32), -2.0),
                                           tail_logit.expand(len(x), 32, 32)], 1)
                              if layer is G.up3 else hook(layer, x))
    G.speckle_filter.weight.data.zero_()[0, 0, 1, 1] = 1.0
    with torch.no_grad():
        out = torch.atanh(G(torch.randn(256, 100, generator=torch.Generator().manual_seed(5)))
                          .clamp(-0.999999, 0.999999))
    left, right = out[..., :16].flatten(), out[..., 16:].flatten()
    kurt = [float(((v - v.mean()) ** 4).mean() / v.var() ** 2) for v in (left, right)]
    # (same strength on both sides; the heavy side's sample std converges slowly, and the white
    # map, a projection of z, has slightly lighter tails than N(0, 1), which sinh amplifies)
    assert abs(float(left.std()) - float(right.std())) < 0.1 * float(left.std())
    assert abs(kurt[0] - 3.0) < 0.3 and kurt[1] > 15.0


def test_crop_extents_of_real_records_give_the_crop_windows_pad_fraction(shared_data):
    """crop_extents reads the zero margins patch_cut.crop_window leaves around real records
    smaller than the window: 1 - e_y e_x is the crop's own pad_fraction, exactly."""
    from sharpgen.gan.layers import crop_extents
    from sharpgen.patch_cut import bin_image, crop_window
    from sharpgen.sharp_io import read_sharp

    seen = set()
    for path in sorted((shared_data / "sharp").glob("*.Br.fits")):
        data = read_sharp(path).data
        for b in (2, 4):
            window, pad = crop_window(bin_image(data, b), 128)
            e = crop_extents(np.nan_to_num(window)[None].astype(np.float32))[0]
            assert abs((1.0 - e[0] * e[1]) - pad) < 1e-12, (path.name, b, e, pad)
            seen.add(round(pad, 3))
    assert len(seen) >= 3 and 0.0 in seen        # unpadded and several padded crops
    assert crop_extents(np.zeros((1, 8, 8)))[0].tolist() == [0.0, 0.0]


def test_matched_padding_draws_the_training_crops_extents(tmp_path):
    """gan.padding: matched -- e = Q(Phi(u)) per axis, u = z on the head's unit directions: the
    extents follow the training crops' distribution for any head weights (the head picks only
    which z are padded); train_gan stores the crops' quantiles in generator.pt."""
    from sharpgen.gan.layers import crop_extents, extent_quantiles, quantile_extent

    S, rng = 32, np.random.default_rng(3)
    patches = rng.uniform(-1, 1, (40, S, S)).astype(np.float32)
    for i in range(12):                                 # 30 %: 20-30 of 32 rows
        patches[i, : 1 + i % 6], patches[i, S - 1 - i % 6:] = 0, 0
    patches[:4, :, :4], patches[:4, :, -4:] = 0, 0      # 10 %: also 24 of 32 columns
    ext = crop_extents(patches)
    assert (ext[:6, 0] == (S - 2 - 2 * np.arange(6)) / S).all() and (ext[12:, 0] == 1).all()
    assert (ext[:, 1] < 1).sum() == 4
    q = extent_quantiles(ext)
    assert (np.diff(q[0].numpy()) >= 0).all() and (np.diff(q[0, :70].numpy()) > 0).sum() > 50
    u = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    e = quantile_extent(u, q)
    # the crops' padded shares and extents (to within one quantile step, 1 / 256)
    assert abs(float((e[:, 0] < 1).float().mean()) - 0.3) < 0.01
    assert abs(float((e[:, 1] < 1).float().mean()) - 0.1) < 0.01
    assert abs(float(e[:, 0].min()) - 20 / S) < 1e-6 and float(e.max()) == 1.0
    for v in (20 / S, 30 / S):                          # each extent keeps its mass (1 / 12 of 30 %)
        assert abs(float((e[:, 0] - v).abs().le(1 / S).float().mean()) - 0.05) < 0.015
    G = gan.build_generator("stable", S, upsample="blur", speckle="signed", output="clipped",
                            padding="matched").eval()
    assert G.pad_head.bias is None and torch.equal(G.pad_quantiles, torch.ones_like(G.pad_quantiles))
    z = torch.randn(4000, 100, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(G.window_mask(z), torch.ones(4000, 1, S, S))   # before the data: none
        G.pad_quantiles.copy_(q)
        for scale in (0.01, 1.0, 30.0):                 # the head's scale does not change the shares
            G.pad_head.weight.mul_(scale)
            m = G.window_mask(z)
            rows = (m[:, 0, :, S // 2] > 0).float().sum(1) / S
            assert abs(float((rows < 1).float().mean()) - 0.3) < 0.03
    # gradients reach the head (it learns which z are padded)
    G.train()
    G(z[:16]).pow(2).mean().backward()
    assert float(G.pad_head.weight.grad.abs().sum()) > 0
    # trained: generator.pt carries the crops' quantiles, and the samples pad like the crops
    out = gan.train_gan(patches, {**TINY, "padding": "matched"}, checkpoint_root=tmp_path / "ck",
                        generator_path=tmp_path / "g.pt", log_csv=tmp_path / "log.csv",
                        progress=False)
    assert out["steps"] == TINY["steps"]
    Gl = gan.load_generator(tmp_path / "g.pt")
    torch.testing.assert_close(Gl.pad_quantiles, q)
    x = gan.generate(Gl, z[:2000].numpy())
    rows = (x != 0).any(axis=2).sum(axis=1) / S
    assert abs(float((rows < 1).mean()) - 0.3) < 0.05
    assert "padding" in GanConfig.from_dict({**TINY, "padding": "matched"}).trajectory_dict()


def test_stable_window_padding_is_exact_zero_around_a_centred_window(tmp_path):
    """gan.padding: window -- G(z) = field x mask(z), the mask 1 inside a centred rectangle of
    extent e S per axis (e = min(PAD_GAIN sigmoid(pad_head(z)), 1)) and exactly 0 outside, laid
    out like the real crops' zero padding (patch_cut.crop_window of a record smaller than S)."""
    from sharpgen.gan.model import PAD_GAIN
    from sharpgen.gan.train import GanConfig
    from sharpgen.patch_cut import crop_window

    S = 32
    G = gan.build_generator("stable", S, upsample="blur", speckle="signed", output="clipped",
                            padding="window").eval()
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        x, mask = G(z), G.window_mask(z)
        G.padding = "none"
        field = G(z)
        G.padding = "window"
    assert mask.shape == (64, 1, S, S) and float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    torch.testing.assert_close(x, field * mask)
    assert torch.equal(x == 0, (mask == 0) | (field == 0))          # exact zeros, nowhere else
    assert 0.0 < float((mask == 0).float().mean()) < 0.5            # some samples start padded
    # a record of 20 x 32 pixels in a 32 x 32 window: the crop's padding, pixel for pixel
    for rows, cols in ((20, 32), (32, 12), (16, 26)):
        with torch.no_grad():
            e = torch.tensor([rows / S, cols / S])
            G.pad_head.weight.zero_()
            G.pad_head.bias.copy_(torch.logit(e / PAD_GAIN))
            m = G.window_mask(z[:1])[0, 0].numpy()
        window, pad = crop_window(np.ones((rows, cols)), S)
        np.testing.assert_allclose(m, window, atol=1e-5)
        assert abs(float(1.0 - m.mean()) - pad) < 1e-5
    # extent 1 reached exactly at finite logits: no padding at all
    with torch.no_grad():
        G.pad_head.bias.fill_(3.0)
        assert torch.equal(G.window_mask(z), torch.ones(64, 1, S, S))
    # the extent is learned from z (gradients reach the head)
    G.pad_head.bias.data.fill_(0.5)
    G.train()
    G(z[:8]).pow(2).mean().backward()
    assert G.pad_head.weight.grad is not None and float(G.pad_head.weight.grad.abs().sum()) > 0
    # saved and loaded back with its head; none (the setting before the key) keeps every hash
    path = tmp_path / "generator.pt"
    torch.save({"arch": "stable", "size": S, "nz": 100, "state_dict": G.state_dict(),
                "config": {"upsample": "blur", "speckle": "signed", "output": "clipped",
                           "padding": "window"}}, path)
    Gl = gan.load_generator(path)
    zn = np.random.default_rng(2).standard_normal((4, 100)).astype(np.float32)
    np.testing.assert_allclose(gan.generate(Gl, zn), gan.generate(G.eval(), zn), atol=1e-6)
    assert "padding" not in GanConfig.from_dict({**TINY, "padding": "none"}).trajectory_dict()
    # the translation's fill: zero (the setting before the key) keeps every existing checkpoint's
    # hash, and the paper architecture (no DiffAugment) never has it in its hash
    zero_fill = {**TINY, "augment_translation_fill": "zero"}
    assert "augment_translation_fill" not in GanConfig.from_dict(zero_fill).trajectory_dict()
    assert "augment_translation_fill" not in GanConfig.from_dict({**TINY, "arch": "paper"}).trajectory_dict()
    assert GanConfig.from_dict({**TINY, "augment_translation_fill": "reflect"}
                               ).trajectory_dict()["augment_translation_fill"] == "reflect"
    with pytest.raises(ValueError, match="augment_translation_fill"):
        GanConfig.from_dict({**TINY, "augment_translation_fill": "wrap"})
    assert GanConfig.from_dict({**TINY, "padding": "window"}).trajectory_dict()["padding"] == "window"
    with pytest.raises(ValueError, match="gan.padding"):
        GanConfig.from_dict({**TINY, "padding": "mirror"})
    with pytest.raises(ValueError, match="unknown padding"):
        gan.build_generator("stable", S, padding="mirror")


def test_isotropic_and_radial_grain_filters(tmp_path):
    """gan.speckle_kernel: the grain's filter of its white map. ``isotropic`` (a mix of a delta
    and sampled Gaussians on 5x5) and ``radial`` (H(|k|) by FFT) start as the identity, stay
    isotropic whatever they learn -- axis / diagonal power of the filtered white map within 0.2
    of 1 in every |k| band (``isotropic``: below the Nyquist band) -- where the free 3x3 filter
    the default generator learned (docs/gan.md) is 2-8x off; they learn (gradients reach their
    gains), load back with their generator, and ``free`` keeps every existing checkpoint hash."""
    from sharpgen.gan.layers import IsotropicKernel, RadialFilter, isotropic_basis
    from sharpgen.gan.train import GanConfig
    from sharpgen.imagestats import orientation_ratio

    S = 64
    white = torch.randn(24, 1, S, S, generator=torch.Generator().manual_seed(0))
    iso, rad = IsotropicKernel(), RadialFilter(S)
    with torch.no_grad():
        torch.testing.assert_close(iso(white), white)
        torch.testing.assert_close(rad(white), white, atol=1e-5, rtol=1e-5)
    basis = isotropic_basis()
    assert basis.shape == (4, 5, 5)
    torch.testing.assert_close(basis.flatten(1).norm(dim=1), torch.ones(4))
    torch.testing.assert_close(basis, basis.transpose(1, 2))
    torch.testing.assert_close(basis, basis.flip(1))

    def ratios(filt) -> np.ndarray:
        with torch.no_grad():
            return np.median(orientation_ratio(filt(white)[:, 0].double().numpy()), axis=0)

    gen = torch.Generator().manual_seed(1)
    knots = torch.linspace(0.0, 1.0, 9)
    for _ in range(3):  # random learned states (smooth in |k|: a band's two wedges sample |k|
        with torch.no_grad():  # slightly differently, which a jagged H would turn into a ratio)
            iso.coef.copy_(torch.rand(4, generator=gen) * 2 - 0.5)
            width = 0.3 + torch.rand(1, generator=gen)
            rad.gain.copy_(torch.exp(-(knots / width) ** 2) * (1 + 0.2 * torch.rand(9, generator=gen)))
        assert np.all(np.abs(ratios(rad) - 1.0) < 0.2), ratios(rad)
        assert np.all(np.abs(ratios(iso)[:3] - 1.0) < 0.2), ratios(iso)
    # H depends on |k| alone: the same on the transposed grid (ky <-> kx where both exist)
    H = rad.transfer().detach()
    torch.testing.assert_close(H[: S // 2 + 1], H[: S // 2 + 1].T)
    free = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():  # the default generator's learned filter (centre, edges, corners)
        free.weight.copy_(torch.tensor([[0.48, 0.51, 0.30], [0.52, 0.65, 0.51], [0.31, 0.52, 0.49]]))
    r_free = ratios(free)
    assert r_free[3] > 2.0 and r_free[2] < 0.7
    # in a generator: they learn, and load back with their kind
    for kind, param in (("isotropic", "coef"), ("radial", "gain")):
        G = gan.build_generator("stable", 32, upsample="blur", speckle="signed", output="clipped",
                                speckle_kernel=kind)
        z = torch.randn(8, 100, generator=torch.Generator().manual_seed(2))
        G(z).pow(2).mean().backward()
        assert float(getattr(G.speckle_filter, param).grad.abs().sum()) > 0
        with torch.no_grad():
            getattr(G.speckle_filter, param).mul_(0.7)
        path = tmp_path / f"{kind}.pt"
        torch.save({"arch": "stable", "size": 32, "nz": 100, "state_dict": G.state_dict(),
                    "config": {"upsample": "blur", "speckle": "signed", "output": "clipped",
                               "speckle_kernel": kind}}, path)
        Gl = gan.load_generator(path)
        assert type(Gl.speckle_filter) is type(G.speckle_filter)
        zn = np.random.default_rng(2).standard_normal((4, 100)).astype(np.float32)
        np.testing.assert_allclose(gan.generate(Gl, zn), gan.generate(G.eval(), zn), atol=1e-5)
        assert GanConfig.from_dict({**TINY, "speckle_kernel": kind}).trajectory_dict()["speckle_kernel"] == kind
    assert "speckle_kernel" not in GanConfig.from_dict({**TINY, "speckle_kernel": "free"}).trajectory_dict()
    assert "speckle_kernel" not in GanConfig.from_dict({**TINY, "arch": "paper",
                                                        "speckle_kernel": "radial"}).trajectory_dict()
    with pytest.raises(ValueError, match="gan.speckle_kernel"):
        GanConfig.from_dict({**TINY, "speckle_kernel": "gaussian"})
    with pytest.raises(ValueError, match="unknown speckle kernel"):
        gan.build_generator("stable", 32, speckle="signed", speckle_kernel="gaussian")
    # FLOPs: the radial filter's FFTs are counted (5 N log2 N per complex transform, half per
    # real one), and the FLOP count builds the generator a config describes
    from torch.utils.flop_counter import FlopCounterMode
    from sharpgen.gan import steps
    counter = FlopCounterMode(display=False, custom_mapping=steps.fft_flop_mapping())
    with torch.device("meta"):
        x = torch.randn(4, 1, 32, 32)
    with counter:
        torch.fft.irfft2(torch.fft.rfft2(x), s=(32, 32))
    assert counter.get_total_flops() == 2 * int(2.5 * 4 * 32 * 32 * 10)
    opts = GanConfig.from_dict({**TINY, "speckle": "signed", "speckle_kernel": "radial"}).generator_options()
    assert opts["speckle_kernel"] == "radial" and opts["speckle"] == "signed"
    flops = {k: gan.training_flops_per_step("stable", 32, 2, **{**opts, "speckle_kernel": k})
             for k in ("free", "radial")}
    assert flops["radial"] != flops["free"] and min(flops.values()) > 0


def test_speckle_floor_is_one_level_per_image(tmp_path):
    """gan.speckle_floor: image adds softplus(floor_head(z)), one number per image, to the grain's
    per-pixel strength: where the generator turns its own strength map off, the grain is still
    there at the image's level, the same at every pixel (the data's noise is set per record);
    without the floor the same generator puts out the bare field. It loads back, and is in the
    checkpoint hash only when on with a grain (``speckle: none`` has nothing to floor)."""
    from sharpgen.gan.train import GanConfig

    z = torch.randn(6, 100, generator=torch.Generator().manual_seed(3))

    def flat(floor: str):
        G = gan.build_generator("stable", 32, upsample="blur", speckle="signed", output="clipped",
                                speckle_kernel="radial", speckle_floor=floor).eval()
        with torch.no_grad():  # field m = 0 and the per-pixel strength logit at -30 everywhere
            G.up3.weight.zero_()
            G.up3.bias.copy_(torch.tensor([0.0, -30.0]))
        return G

    G0 = flat("none")
    with torch.no_grad():
        assert float(G0(z).abs().max()) < 1e-6
    G = flat("image")
    with torch.no_grad():
        G.floor_head.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(4))
        G.floor_head.bias.fill_(-2.0)
        level = torch.nn.functional.softplus(G.floor_head(z))[:, 0]  # (B,)
        x = torch.atanh(G(z)[:, 0] / 1.25)        # the clipped output layer's input
        white = G.speckle_filter(G.speckle_map(z))[:, 0]
    ratio = (x / white).flatten(1)
    torch.testing.assert_close(ratio, level[:, None].expand_as(ratio), atol=1e-4, rtol=1e-4)
    assert float(level.std()) > 0  # a function of z: another level per image
    path = tmp_path / "floor.pt"
    torch.save({"arch": "stable", "size": 32, "nz": 100, "state_dict": G.state_dict(),
                "config": {"upsample": "blur", "speckle": "signed", "output": "clipped",
                           "speckle_kernel": "radial", "speckle_floor": "image"}}, path)
    zn = z[:3].numpy()
    np.testing.assert_allclose(gan.generate(gan.load_generator(path), zn), gan.generate(G, zn), atol=1e-5)
    assert GanConfig.from_dict({**TINY, "speckle_floor": "image"}).trajectory_dict()["speckle_floor"] == "image"
    assert GanConfig.from_dict({**TINY}).speckle_floor == "image"  # the default since 2026-12-03
    assert "speckle_floor" not in GanConfig.from_dict({**TINY, "speckle_floor": "none"}).trajectory_dict()
    assert "speckle_floor" not in GanConfig.from_dict({**TINY, "arch": "paper",
                                                       "speckle_floor": "image"}).trajectory_dict()
    # without a grain there is nothing to floor: no head, and the hash of a run from before the option
    assert "speckle_floor" not in GanConfig.from_dict({**TINY, "speckle": "none",
                                                       "speckle_floor": "image"}).trajectory_dict()
    assert not hasattr(gan.build_generator("stable", 32, speckle_floor="image"), "floor_head")
    with pytest.raises(ValueError, match="gan.speckle_floor"):
        GanConfig.from_dict({**TINY, "speckle_floor": "pixel"})
    with pytest.raises(ValueError, match="unknown speckle floor"):
        gan.build_generator("stable", 32, speckle="signed", speckle_floor="pixel")


def test_speckle_floor_image_own_filters_the_floor_grain_apart(tmp_path):
    """gan.speckle_floor: image_own -- out = m + softplus(a) f(n) + level f_floor(n): the floor's
    grain is the same white map through a filter of its own, so the quiet Sun's grain (the floor
    alone) and plage's (the per-pixel strength) can differ in spectrum. It starts as ``image``
    (both filters the identity), loads back, is in the hash, and a lognormal grain is refused."""
    from sharpgen.gan.train import GanConfig

    z = torch.randn(5, 100, generator=torch.Generator().manual_seed(5))
    opts = dict(upsample="blur", speckle="signed", output="clipped", speckle_kernel="radial")

    def build(floor: str):
        torch.manual_seed(11)
        return gan.build_generator("stable", 32, speckle_floor=floor, **opts).eval()

    with torch.no_grad():
        torch.testing.assert_close(build("image_own")(z), build("image")(z))  # the same start
    G = build("image_own")
    with torch.no_grad():  # field m = 0; the two filters: low-pass and high-pass
        G.up3.weight.zero_()
        G.speckle_filter.gain.copy_(torch.linspace(1.0, 0.0, G.speckle_filter.gain.numel()))
        G.floor_filter.gain.copy_(torch.linspace(0.0, 1.0, G.floor_filter.gain.numel()))
        G.floor_head.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(6))
        white = G.speckle_map(z)
        for a, floor_bias in ((-30.0, -2.0), (-2.0, -30.0), (-2.0, -2.0)):  # floor, per pixel, both
            G.up3.bias.copy_(torch.tensor([0.0, a]))
            G.floor_head.bias.fill_(floor_bias)
            level = torch.nn.functional.softplus(G.floor_head(z))[:, :, None, None]
            x = torch.atanh(G(z) / 1.25)  # the clipped output layer's input (no pixel at the clip here)
            expect = torch.nn.functional.softplus(torch.tensor(a)) * G.speckle_filter(white) \
                + level * G.floor_filter(white)
            torch.testing.assert_close(x, expect, atol=1e-4, rtol=1e-3)
            if a < -20:  # the floor alone: its own (high-pass) grain, not the per-pixel filter's
                assert float((x - level * G.speckle_filter(white)).abs().max()) > 0.05
    path = tmp_path / "own.pt"
    torch.save({"arch": "stable", "size": 32, "nz": 100, "state_dict": G.state_dict(),
                "config": {**opts, "speckle_floor": "image_own"}}, path)
    zn = z[:3].numpy()
    np.testing.assert_allclose(gan.generate(gan.load_generator(path), zn), gan.generate(G, zn), atol=1e-5)
    assert GanConfig.from_dict({**TINY, "speckle_floor": "image_own"}).trajectory_dict()["speckle_floor"] == "image_own"
    with pytest.raises(ValueError, match="image_own needs an additive grain"):
        GanConfig.from_dict({**TINY, "speckle": "lognormal", "speckle_floor": "image_own"})
    with pytest.raises(ValueError, match="image_own"):
        gan.build_generator("stable", 32, speckle="lognormal", speckle_floor="image_own")


def test_stable_speckle_grain_is_a_function_of_z_scaled_per_pixel(tmp_path, tiny_patches):
    """gan.speckle: lognormal out(m exp(s f(n) - s^2 / 2)), s = min(softplus(a), SPECKLE_MAX), or
    additive out(m + softplus(a) f(n)) -- the grain n is white, N(0, 1), a function of z from its
    own fixed projection; where the strength logit a is very negative the field m comes out
    alone, where it is large the grain dominates (lognormal: always with the sign of m)."""
    from sharpgen.gan.model import SPECKLE_BIAS0, SPECKLE_FADE, SPECKLE_MAX

    G = gan.build_generator("stable", 32, speckle="lognormal", stable_noise=True).eval()
    assert G.up3.out_channels == 2 and float(G.up3.bias[1]) == SPECKLE_BIAS0
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(3))
    n = G.speckle_map(z)
    assert n.shape == (64, 1, 32, 32) and torch.equal(G.speckle_map(z), n)
    assert abs(float(n.mean())) < 0.05 and abs(float(n.std()) - 1.0) < 0.05
    c = float(torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1])
    assert abs(c) < 0.05
    # its own projection: not the noise inputs' map at S
    assert abs(float(torch.corrcoef(torch.stack([n.flatten(), G.noise_map(z, 32).flatten()]))[0, 1])) < 0.05
    # the combination, through a forward hook on the last layer's two maps
    maps = {}
    hook = G.up3.register_forward_hook(lambda mod, inp, out: maps.update(y=out))  # returns None
    with torch.no_grad():
        x = G(z)
        y = maps["y"]
        s = torch.nn.functional.softplus(y[:, 1:2]).clamp(max=SPECKLE_MAX)
        speckled = y[:, :1] * torch.exp(s * G.speckle_filter(n) - s * s / 2)
        expect = G._out(speckled + G.noise_filter(G.noise_map(z, 32)))
        assert torch.equal(torch.sign(speckled), torch.sign(y[:, :1]))  # same-sign grain
    torch.testing.assert_close(x, expect)
    G.speckle = "additive"
    with torch.no_grad():
        x = G(z)
        y = maps["y"]
        expect = G._out(y[:, :1] + torch.nn.functional.softplus(y[:, 1:2]) * G.speckle_filter(n)
                        + G.noise_filter(G.noise_map(z, 32)))
    torch.testing.assert_close(x, expect)
    # signed: additive, but the grain's part against the field's sign fades as exp(-|m| / FADE)
    G.speckle = "signed"
    with torch.no_grad():
        x = G(z)
        y = maps["y"]
        m, g = y[:, :1], G.speckle_filter(n)
        s = torch.nn.functional.softplus(y[:, 1:2])
        against = (g < 0) & (m >= 0) | (g > 0) & (m < 0)
        grain = torch.where(against, g * torch.exp(-m.abs() / SPECKLE_FADE), g)
        expect = G._out(m + s * grain + G.noise_filter(G.noise_map(z, 32)))
    torch.testing.assert_close(x, expect)
    hook.remove()
    # at full strength the additive grain punches the other polarity into strong field, signed not
    G = gan.build_generator("stable", 32, speckle="additive").eval()
    field = torch.where(torch.arange(32)[:, None] < 16, 1.0, -1.0).expand(32, 32)  # two +-1 halves
    # (a hook that returns a value replaces the layer's output: field m, strength softplus(2) ~ 2)
    G.up3.register_forward_hook(lambda mod, inp, out: torch.stack(
        [field.expand(len(out), 32, 32), torch.full((len(out), 32, 32), 2.0)], 1))
    flips = {}
    with torch.no_grad():
        for kind in ("additive", "signed"):
            G.speckle = kind
            x = torch.atanh(G(z).clamp(-0.999999, 0.999999))  # tanh output: back to m + grain
            flips[kind] = float((torch.sign(x) != field).float().mean())
    assert flips["additive"] > 0.1 and flips["signed"] == 0.0
    # the strength bias: the field alone (s ~ 0), or a log-normal grain of strength SPECKLE_MAX
    G = gan.build_generator("stable", 32, speckle="lognormal").eval()  # tanh output, no noise inputs
    G.up3.register_forward_hook(lambda mod, inp, out: maps.update(y=out))
    for bias, lo, hi in ((-30.0, 0.0, 1e-3), (5.0, 0.8 * SPECKLE_MAX, 1.2 * SPECKLE_MAX)):
        with torch.no_grad():
            G.up3.bias[1] = bias
            x = G(z)
        m = maps["y"][:, :1]
        ok = (x.abs() < 0.99) & (m.abs() > 1e-3)
        log_factor = torch.log(torch.atanh(x[ok]) / m[ok])         # log of the grain factor
        grain_std = float(G.speckle_filter(G.speckle_map(z)).std())
        assert lo <= float(log_factor.std()) / grain_std <= hi
    # more FLOPs (projection, filter, a second output map), trained, saved and loaded back
    assert (gan.training_flops_per_step("stable", 32, 2, speckle="lognormal")
            > gan.training_flops_per_step("stable", 32, 2))
    a, _ = _train(tmp_path, tiny_patches, "speckle", speckle="lognormal")
    blob = torch.load(a / "generator.pt", weights_only=True)
    assert blob["config"]["speckle"] == "lognormal"
    assert not any(k.startswith("speckle_proj") for k in blob["state_dict"])  # rebuilt, not stored
    Gl = gan.load_generator(a / "generator.pt")
    assert Gl.speckle == "lognormal"
    zn = np.random.default_rng(1).standard_normal((2, 100)).astype(np.float32)
    np.testing.assert_array_equal(gan.generate(Gl, zn), gan.generate(Gl, zn))
    # none (the setting before the key) is left out of the checkpoint hash; each grain is its own
    assert "speckle" not in GanConfig.from_dict({**TINY, "speckle": "none"}).trajectory_dict()
    assert GanConfig.from_dict(TINY).trajectory_dict()["speckle"] == "signed"  # the default
    folders = {gan.checkpoint_folder(tmp_path, GanConfig.from_dict({**TINY, "speckle": s}), 32, 16, "t")
               for s in ("none", "additive", "lognormal", "signed", "intermittent")}
    assert len(folders) == 5
    with pytest.raises(ValueError, match="gan.speckle"):
        GanConfig.from_dict({**TINY, "speckle": "gaussian"})
    for key in ("noise", "refine", "mapping_noise"):     # booleans: the Python API refuses "yes"
        with pytest.raises(ValueError, match=f"gan.{key} must be true or false"):
            GanConfig.from_dict({**TINY, key: "yes"})
    # the pipeline's config validation refuses it too
    from sharpgen.config import ConfigError, load_config, validate_config

    bad = load_config(REPO_ROOT / "config.yaml")
    bad["gan"]["speckle"] = True
    with pytest.raises(ConfigError, match="gan.speckle"):
        validate_config(bad)


def test_stable_noise_maps_are_white_unit_gaussian_functions_of_z():
    G = gan.build_generator("stable", 64, stable_noise=True)
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(2))
    for r in (32, 64):
        n = G.noise_map(z, r)
        assert n.shape == (64, 1, r, r)
        assert abs(float(n.mean())) < 0.05 and abs(float(n.std()) - 1.0) < 0.05
        # white: neighbouring pixels uncorrelated
        c = float(torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1])
        assert abs(c) < 0.05
        assert torch.equal(G.noise_map(z, r), n)
    # another latent, another map; the projection is part of the architecture (same in a new net)
    assert not torch.allclose(G.noise_map(z[:1], 64), G.noise_map(z[1:2], 64))
    G2 = gan.build_generator("stable", 64, stable_noise=True)
    assert torch.equal(G2.noise_map(z, 64), G.noise_map(z, 64))


def test_generators_saved_before_the_upsample_key_load_as_transposed(tmp_path):
    G = gan.build_generator("stable", 32)
    blob = {"format": 2, "arch": "stable", "size": 32, "nz": 100, "config": {"arch": "stable"},
            "state_dict": G.state_dict()}
    torch.save(blob, tmp_path / "old.pt")
    assert gan.load_generator(tmp_path / "old.pt").upsample == "transposed"


def test_generate_warms_each_batch_shape_once_without_changing_results(monkeypatch):
    """generate() computes each new batch shape once on zeros first (CPU first-pass differences,
    docs/gan.md): same images, no random numbers drawn, once per shape, not in training mode."""
    from sharpgen import warmup
    from sharpgen.gan import model as gan_model

    torch.manual_seed(0)
    G = gan_model.build_generator("stable", 32, 8).eval()
    z = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    monkeypatch.setattr(warmup, "_DONE", set())
    calls = []
    real_forward = G.forward
    monkeypatch.setattr(G, "forward", lambda x: calls.append(x.shape[0]) or real_forward(x))
    state = torch.get_rng_state()
    first = gan_model.generate(G, z, batch_size=4)
    assert torch.equal(state, torch.get_rng_state())
    assert calls == [4, 4, 4, 2, 2]  # warm 4, 4, 4, warm 2, 2: each shape warmed once
    calls.clear()
    again = gan_model.generate(G, z, batch_size=4)
    assert calls == [4, 4, 2] and np.array_equal(first, again)
    monkeypatch.setattr(warmup, "_DONE", set())
    G.train()
    calls.clear()
    gan_model.generate(G, z, batch_size=4)
    assert calls == [4, 4, 2]  # no warm-up pass in training mode
