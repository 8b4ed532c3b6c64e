"""SimSiam (sharpgen.ssl): architecture, loss, augmentations, collapse detection, train + resume."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpgen import ssl, training

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "width": 4, "depth": [1, 1], "proj_hidden": 16, "dim": 8, "pred_hidden": 4,
    "epochs": 2, "batch_size": 8, "lr": 0.05, "seed": 3, "device": "cpu",
    "collapse": {"min_std_ratio": 0.01, "min_effective_rank": 1.2, "monitor_samples": 16},
}


def bipoles(n: int, s: int = 32, seed: int = 0) -> np.ndarray:
    """(n, s, s) float32 in [-1, 1]: one Gaussian bipole each, random flux/separation/tilt."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    out = np.zeros((n, s, s), np.float32)
    for i in range(n):
        amp, sep, ang, w = rng.uniform(0.2, 1.0), rng.uniform(2, s / 3), rng.uniform(0, np.pi), rng.uniform(1.5, 4)
        cx, cy = s / 2 + rng.normal(0, 2), s / 2 + rng.normal(0, 2)
        dx, dy = 0.5 * sep * np.cos(ang), 0.5 * sep * np.sin(ang)
        out[i] = amp * (np.exp(-((xx - cx - dx) ** 2 + (yy - cy - dy) ** 2) / (2 * w * w))
                        - np.exp(-((xx - cx + dx) ** 2 + (yy - cy + dy) ** 2) / (2 * w * w)))
    return np.clip(out + rng.normal(0, 0.01, out.shape).astype(np.float32), -1, 1)


def test_resnet18_paper_shape_and_feature_dim():
    enc = ssl.Encoder(64, [2, 2, 2, 2], 512, 100)
    assert enc.backbone.feature_dim == 512
    assert enc.backbone.stem[0].in_channels == 1 and enc.backbone.stem[0].kernel_size == (7, 7)
    n_blocks = sum(len(s) for s in enc.backbone.stages)
    assert n_blocks == 8  # ResNet18: 8 basic blocks (16 convs) + stem + fc-free head
    lin = [m for m in enc.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(512, 512), (512, 512), (512, 100)]
    assert not enc.projector[-1].affine
    pred = ssl.predictor(100, 128)
    assert [(m.in_features, m.out_features) for m in pred if isinstance(m, torch.nn.Linear)] == [(100, 128), (128, 100)]


@pytest.mark.parametrize("s", [32, 64])
def test_small_encoder_any_size_and_two_channel_input(s):
    for tf in ("identity", "signed_sqrt", "both"):
        enc = ssl.Encoder(4, [1, 1, 1], 16, 8, input_transform=tf).eval()
        e = enc.embed(torch.zeros(3, 1, s, s).uniform_(-1, 1))
        assert e.shape == (3, 8)
        assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="input_transform"):
        ssl.Encoder(4, [1], 16, 8, input_transform="log")


@pytest.mark.parametrize("c_in", [2, 4, 8])
def test_projection_shortcut_is_a_strided_1x1_conv_and_its_backward_is_repeatable(c_in):
    """The shortcut subsamples and then convolves (1x1, stride 1): the same map as a 1x1 stride-2
    conv, without torch 2.13's broken channels_last stride-2 1x1 backward for 2-7 channels."""
    torch.manual_seed(0)
    block = ssl.BasicBlock(c_in, 2 * c_in, stride=2)
    x = torch.randn(4, c_in, 17, 17)
    conv = block.short[0]
    assert conv.stride == (1, 1) and conv.weight.shape == (2 * c_in, c_in, 1, 1)
    torch.testing.assert_close(conv(x[:, :, ::2, ::2]), torch.nn.functional.conv2d(x, conv.weight, stride=2))
    block = block.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for _ in range(12):
        block.zero_grad()
        block(x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in block.parameters()]))
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_loss_symmetric_and_stop_gradient():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(6, 8, generator=g, requires_grad=True) for _ in range(4))
    loss = ssl.simsiam_loss(p1, p2, z1, z2)
    assert torch.allclose(loss, ssl.simsiam_loss(p2, p1, z2, z1))
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the target branch
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    # identical prediction and target -> -1
    z = torch.randn(4, 8, generator=g)
    assert math.isclose(float(ssl.simsiam_loss(z, z, z, z)), -1.0, rel_tol=1e-6)


def test_augment_shapes_determinism_and_identity():
    x = torch.from_numpy(bipoles(10, 32))[:, None]
    aug = ssl.AugmentConfig.from_config({"polarity_flip": True})
    a = ssl.augment(x, aug, torch.Generator().manual_seed(1))
    b = ssl.augment(x, aug, torch.Generator().manual_seed(1))
    c = ssl.augment(x, aug, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0
    ident = ssl.AugmentConfig(rotation_deg=0, translate_px=0, zoom=(1, 1), hflip=False, vflip=False,
                              blur_sigma_px=(0, 0), polarity_flip=False)
    assert torch.allclose(ssl.augment(x, ident, torch.Generator().manual_seed(0)), x, atol=1e-5)
    # pure polarity flip: every view is +x or -x
    pol = ssl.AugmentConfig(rotation_deg=0, translate_px=0, zoom=(1, 1), hflip=False, vflip=False,
                            blur_sigma_px=(0, 0), polarity_flip=True)
    v = ssl.augment(x, pol, torch.Generator().manual_seed(0))
    sign = torch.sign((v * x).sum(dim=(1, 2, 3)))
    assert torch.allclose(v, sign[:, None, None, None] * x, atol=1e-5) and (sign < 0).any() and (sign > 0).any()
    # pure flips preserve the unsigned flux exactly; blur keeps the shape
    flips = ssl.AugmentConfig.from_config({"rotation_deg": 0, "translate_px": 0, "zoom": (1, 1), "blur_sigma_px": (0, 0)})
    f = ssl.augment(x, flips, torch.Generator().manual_seed(0))
    assert torch.allclose(f.abs().sum(dim=(1, 2, 3)), x.abs().sum(dim=(1, 2, 3)), rtol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        ssl.augment(x[:, 0], aug, torch.Generator())


def test_collapse_detector():
    rng = np.random.default_rng(0)
    healthy = rng.standard_normal((256, 100)).astype(np.float32)
    st = ssl.check_collapse(healthy, 0.1, 2.0)
    assert abs(st["std"] - 0.1) < 0.01 and st["effective_rank"] > 50
    collapsed = np.tile(rng.standard_normal(100), (256, 1)) + 1e-4 * rng.standard_normal((256, 100))
    assert ssl.normalized_std(collapsed) < 1e-3
    assert ssl.effective_rank(np.tile(rng.standard_normal(100), (256, 1))) == 0.0
    assert ssl.effective_rank(collapsed, center=False) < 1.2
    with pytest.raises(ssl.CollapseError, match="collapsed at epoch 7"):
        ssl.check_collapse(collapsed, 0.1, 2.0, epoch=7)
    # dimensional collapse: embeddings vary along one line only -> caught by the rank threshold
    line = rng.standard_normal(100) + rng.standard_normal((256, 1)) * rng.standard_normal(100)
    assert ssl.effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ssl.CollapseError, match="effective rank"):
        ssl.check_collapse(line, 0.0, 2.0)


def test_training_stops_on_collapse(tmp_path):
    x = np.zeros((16, 32, 32), np.float32)  # constant input: the features cannot differ
    cfg = dict(TINY, epochs=1, collapse={"min_std_ratio": 0.1, "min_effective_rank": 2.0, "monitor_samples": 16,
                                         "warmup_epochs": 0})
    cfg["augment"] = {"rotation_deg": 0, "translate_px": 0, "zoom": [1, 1], "hflip": False, "vflip": False,
                      "blur_sigma_px": [0, 0]}
    with pytest.raises(ssl.CollapseError, match="collapsed at epoch 0"):
        ssl.train_simsiam(x, cfg, tmp_path / "ck")


def _params(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_tiny_train_resume_and_encoder_file(tmp_path):
    torch.set_num_threads(1)
    x = bipoles(24, 32, seed=1)
    full, log_full = ssl.train_simsiam(x, TINY, tmp_path / "a", log_csv=tmp_path / "a.csv")
    assert [r["epoch"] for r in log_full] == [0, 1]
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(rows) == 2 and set(ssl.LOG_COLUMNS) == set(rows[0])
    assert all(np.isfinite(float(r["loss"])) and float(r["monitor_effective_rank"]) > 1 for r in rows)

    # interrupted after the first epoch, then rerun: resumes and ends bit-identical
    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    with pytest.raises(Stop):
        ssl.train_simsiam(x, TINY, tmp_path / "b", progress=stop)
    assert [s for s, _ in training.list_checkpoints(tmp_path / "b", "epoch")] == [1]
    assert not (tmp_path / "b.csv").exists()  # published only when the training completes
    resumed, log_res = ssl.train_simsiam(x, TINY, tmp_path / "b", log_csv=tmp_path / "b.csv")
    assert len(log_res) == 2
    pa, pb = _params(full), _params(resumed)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    rows_b = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows_b] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert [s for s, _ in training.list_checkpoints(tmp_path / "b", "epoch")] == [1, 2]
    ck = torch.load(tmp_path / "b" / "epoch_00000002.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["device"] == "cpu" and len(ck["log"]) == 2

    # a checkpoint for other data is refused
    with pytest.raises(RuntimeError, match="another data set"):
        ssl.train_simsiam(x[:16], TINY, tmp_path / "b")

    # encoder file: weights_only loadable, hash checked, embeddings normalised and deterministic
    digest = ssl.save_encoder(tmp_path / "enc.pt", full, meta={"size": 32})
    # two runs with the same seed -> byte-identical encoder files
    assert ssl.save_encoder(tmp_path / "enc_b.pt", resumed, meta={"size": 32}) == digest
    assert hashlib.sha256((tmp_path / "enc.pt").read_bytes()).digest() == \
        hashlib.sha256((tmp_path / "enc_b.pt").read_bytes()).digest()
    blob = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert blob["hash"] == digest and blob["meta"]["size"] == 32
    enc, info = ssl.load_encoder(tmp_path / "enc.pt")
    e1 = ssl.embed(enc, x)
    assert e1.shape == (24, 8) and np.allclose(np.linalg.norm(e1, axis=1), 1, atol=1e-5)
    assert np.array_equal(e1, ssl.embed(enc, x))
    blob["state_dict"][next(iter(blob["state_dict"]))] += 1
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not match the stored hash"):
        ssl.load_encoder(tmp_path / "bad.pt")


def test_checkpoint_folder_keys():
    a = ssl.checkpoint_folder("ck", TINY, "d1")
    assert a == ssl.checkpoint_folder("ck", dict(TINY, device="cuda"), "d1")  # device: same trajectory
    assert a != ssl.checkpoint_folder("ck", dict(TINY, lr=0.1), "d1")
    assert a != ssl.checkpoint_folder("ck", TINY, "d2")


_HOLDER = textwrap.dedent("""
    import sys, time
    from sharpgen import training
    with training.folder_lock(sys.argv[1], "SimSiam training"):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_checkpoint_folder_held_by_another_process_is_refused(tmp_path):
    folder = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(training.CheckpointLockError) as exc:
            ssl.train_simsiam(bipoles(16, 32), TINY, folder, log_csv=tmp_path / "log.csv")
        assert f"host {socket.gethostname()}, pid {proc.pid}" in str(exc.value)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "log.csv").exists() and not training.list_checkpoints(folder, "epoch")
    ssl.train_simsiam(bipoles(16, 32), dict(TINY, epochs=1), folder)  # released with its holder


def _count_host_syncs(monkeypatch) -> dict:
    """Wrap the Tensor methods that copy to the host (a GPU sync) and count their calls."""
    counts = {}
    for name in ("item", "tolist", "cpu", "numpy", "__float__"):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            counts[_name] = counts.get(_name, 0) + 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


def test_no_per_step_host_sync(tmp_path, monkeypatch):
    """The host copies per epoch do not grow with the number of steps (2 vs 6 per epoch): the
    patches stay on the device and the per-step statistics are fetched once per epoch."""
    torch.set_num_threads(1)
    counts = {}
    for n in (16, 48):
        x = bipoles(n, 32, seed=1)
        counts[n] = _count_host_syncs(monkeypatch)
        ssl.train_simsiam(x, dict(TINY, epochs=1), tmp_path / f"ck{n}")
        monkeypatch.undo()
    assert counts[16].get("cpu", 0) >= 1  # the counting works (the per-epoch fetches)
    assert counts[16] == counts[48], f"host syncs grow with the steps: {counts}"


def test_gpu_job_without_cuda_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_STEP_GPUS", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(training.DeviceError, match=r"ssl.device is 'auto'.*SLURM_STEP_GPUS=0"):
        ssl.train_simsiam(bipoles(16, 32), dict(TINY, device="auto"), tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_checkpoint_from_another_device_type_resumes_with_a_warning(tmp_path, caplog):
    torch.set_num_threads(1)
    x = bipoles(16, 32, seed=1)
    ssl.train_simsiam(x, dict(TINY, epochs=1), tmp_path / "a")
    path = tmp_path / "a" / "epoch_00000001.pt"
    ck = torch.load(path, weights_only=True)
    ck["device"] = "cuda"
    torch.save(ck, path)
    (tmp_path / "a" / "train_log.csv").unlink()  # the checkpoint's own log is authoritative
    with caplog.at_level(logging.WARNING):
        _, rows = ssl.train_simsiam(x, TINY, tmp_path / "a", log_csv=tmp_path / "a.csv")
    assert f"resuming {path}, written on cuda, on cpu" in caplog.text
    assert [r["epoch"] for r in rows] == [0, 1]
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "a.csv"))] == ["0", "1"]
