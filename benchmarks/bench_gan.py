"""GAN training throughput and model FLOP utilisation (MFU) on this machine.

For each architecture it runs the real training step of :mod:`sharpgen.gan` (batch drawn from an
in-memory patch tensor with a seeded generator, D step + G step, DiffAugment and EMA for
``stable``) and reports images/s and achieved FLOP/s, with FLOPs per step counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls incl. backward). The
reference is this machine's dense fp32 matmul FLOP/s measured in the same run (bf16 on CUDA);
MFU = achieved / matmul. CUDA is benchmarked too when available (bf16 autocast, channels_last).

    .venv/bin/python benchmarks/bench_gan.py                 # batch 32, 128x128, all threads
    .venv/bin/python benchmarks/bench_gan.py --steps 10 --threads 1 2 --json out.json
    .venv/bin/python benchmarks/bench_gan.py --inference 1024 --threads 1   # generation layouts
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sharpgen import gan  # noqa: E402


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 8) -> float:
    """Best-of dense matmul FLOP/s (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        a @ b
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_arch(arch: str, device: torch.device, size: int, batch: int, steps: int,
               warmup: int, channels_last: bool, n_data: int = 512) -> dict:
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    mem = torch.channels_last if channels_last else torch.contiguous_format
    G = gan.build_generator(arch, size).to(device, memory_format=mem)
    D = gan.build_discriminator(arch, size).to(device, memory_format=mem)
    ema = copy.deepcopy(G).requires_grad_(False) if arch == "stable" else None
    opt_g = torch.optim.Adam(G.parameters(), lr=5e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=5e-4, betas=(0.5, 0.999))
    gen = torch.Generator(device=device).manual_seed(0)
    data = (torch.rand(n_data, 1, size, size, device=device) * 2 - 1).contiguous(
        memory_format=mem)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    aug = (lambda x: gan.diff_augment(x, gen)) if arch == "stable" else None

    def step():
        idx = torch.randint(0, n_data, (batch,), generator=gen, device=device)
        real = data.index_select(0, idx)
        z = torch.randn(batch, 100, generator=gen, device=device)
        gan.train_step(G, D, real, z, arch, aug, autocast, opt_g, opt_d)
        if ema is not None:
            gan._ema_update(ema, G, 0.999)

    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t) / steps
    flops = gan.training_flops_per_step(arch, size, batch)
    return {"arch": arch, "device": device.type, "channels_last": channels_last,
            "threads": torch.get_num_threads(), "s_per_step": dt, "images_per_s": batch / dt,
            "gflop_per_step": flops / 1e9, "achieved_gflops": flops / dt / 1e9}


def bench_inference(device: torch.device, size: int, n: int, reps: int = 3) -> list[dict]:
    """Generation (no gradients, :func:`sharpgen.gan.generate`, batches of 256) of ``n`` images
    by a freshly built ``stable`` generator of each upsampling / grain, in the default NCHW layout
    (the reference, measured in the same run) and in channels_last (what
    :func:`sharpgen.gan.load_generator` returns). Best of ``reps``; the ratio is NCHW / channels_last."""
    import numpy as np

    z = np.random.default_rng(0).standard_normal((n, 100)).astype(np.float32)
    rows = []
    for opts in ({}, {"upsample": "blur"}, {"upsample": "blur", "speckle": "signed"}):
        torch.manual_seed(0)
        G = gan.build_generator("stable", size, output="clipped", **opts).to(device).eval()
        times = {}
        for layout, mem in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            G.to(memory_format=mem)
            gan.generate(G, z[:256])  # warm-up (oneDNN kernel selection)
            best = float("inf")
            for _ in range(reps):
                _sync(device)
                t = time.perf_counter()
                gan.generate(G, z)
                _sync(device)
                best = min(best, time.perf_counter() - t)
            times[layout] = best
        r = {"generator": "stable " + (" + ".join(f"{k}={v}" for k, v in opts.items()) or "transposed"),
             "device": device.type, "threads": torch.get_num_threads(), "n": n,
             "nchw_s": times["nchw"], "channels_last_s": times["channels_last"],
             "speedup": times["nchw"] / times["channels_last"]}
        print(f"  inference {r['generator']:<36} {n} images: NCHW {r['nchw_s']:.2f} s, "
              f"channels_last {r['channels_last_s']:.2f} s, ratio {r['speedup']:.2f}x")
        rows.append(r)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="CPU thread counts to try (default: torch's default)")
    ap.add_argument("--archs", nargs="*", default=list(gan.ARCHITECTURES))
    ap.add_argument("--channels-last-cpu", action="store_true",
                    help="also try the contiguous (NCHW) memory format on the CPU; training "
                         "uses channels_last everywhere")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--inference", type=int, default=0, metavar="N",
                    help="instead of training: generate N images per stable generator variant, "
                         "NCHW vs channels_last")
    args = ap.parse_args(argv)

    results = []
    cpu = torch.device("cpu")
    if args.inference:
        for threads in args.threads or [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            results += bench_inference(cpu, args.size, args.inference)
        return _write_json(args.json, results)
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        print(f"CPU, {threads} thread(s); the matmul reference is measured right before and "
              "after each run (the machine may be shared) and averaged")
        for arch in args.archs:
            for cl in ([False, True] if args.channels_last_cpu else [True]):
                before = matmul_flops(cpu)
                r = bench_arch(arch, cpu, args.size, args.batch, args.steps, args.warmup, cl)
                peak = 0.5 * (before + matmul_flops(cpu))
                r["matmul_gflops"] = peak / 1e9
                r["mfu"] = r["achieved_gflops"] * 1e9 / peak
                results.append(r)
                _print(r)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        peak = matmul_flops(dev, n=8192, reps=10)
        print(f"CUDA {torch.cuda.get_device_name()}: dense bf16 matmul {peak / 1e12:.1f} TFLOP/s")
        for arch in args.archs:
            r = bench_arch(arch, dev, args.size, args.batch, max(args.steps, 50), 10, True)
            r["matmul_gflops"] = peak / 1e9
            r["mfu"] = r["achieved_gflops"] * 1e9 / peak
            results.append(r)
            _print(r)
    else:
        print("CUDA not available: no GPU numbers")
    return _write_json(args.json, results)


def _write_json(path: Path | None, results: list[dict]) -> int:
    """Write ``results`` to ``path`` (when given); the exit status 0."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _print(r: dict) -> None:
    print(f"  {r['arch']:<7} {r['device']:<4} threads={r['threads']} "
          f"channels_last={str(r['channels_last']):<5} {r['s_per_step'] * 1e3:8.1f} ms/step "
          f"{r['images_per_s']:8.1f} img/s  {r['gflop_per_step']:.2f} GFLOP/step  "
          f"{r['achieved_gflops']:8.1f} GFLOP/s  matmul {r['matmul_gflops']:.1f} GFLOP/s  "
          f"MFU {100 * r['mfu']:.1f}%")


if __name__ == "__main__":
    raise SystemExit(main())
