"""The other option for the parameter engine: the batch as torch tensors (issue 16.1).

A complete torch implementation of :data:`sharpgen.physics.PARAMETER_NAMES` (float64, so the
values can equal the reference to 1e-9): sums and masks as tensor ops, the 7x7 / 3x3 dilations as
separable ``max_pool2d``, the block mean as ``avg_pool2d``, the Gaussians as separable filters
(banded matrix products: torch's float64 ``conv2d`` on the CPU is a slow reference loop, 40x
slower than BLAS here; the 0/1 masks are pooled in float32, exact). torch has no
connected-component labelling, so the dominant clusters of ``psep_robust`` are labelled on
the CPU with ``scipy.ndimage.label`` over the whole batch (maps stacked with empty separator
rows) + ``bincount``, as the previous numpy engine did; on a GPU that step would need an
iterative label propagation instead.

It is timed in the same run, interleaved, against the per-image reference and the compiled
(numba) engine that the package uses, on one thread (``torch.set_num_threads(1)``), on the
patches of benchmarks/bench_physics.py, after checking that its values equal the reference's.
``--device cuda`` times it on a GPU (the CPU reference and engine are timed on the CPU as usual).

    .venv/bin/python benchmarks/bench_physics_torch.py [--n 256] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_physics import _single_thread, real_patches, synthetic_patches  # noqa: E402
from sharpgen.physics import (  # noqa: E402
    PARAMETER_NAMES,
    R_PAPER_DILATION,
    ROBUST_SMOOTH_MM,
    ROBUST_THRESHOLD_GAUSS,
    STRONG_GAUSS,
    PixelScale,
    _gauss_taps,
    _quantize_sigma,
    compute_parameters,
    robust_grid_factor,
)
from sharpgen.physics_reference import compute_parameters_reference  # noqa: E402
from sharpgen.rvalue import _r_value_kernel, r_value_scale  # noqa: E402


def _band(n, taps, device):
    """(n, n) matrix M with (M @ v)[i] = sum_d taps[r + d] v[i + d] (zero outside): the 1-D
    correlation as a banded matrix (torch's float64 conv2d on the CPU is a slow reference loop,
    its matmul is BLAS)."""
    import torch

    r = (len(taps) - 1) // 2
    i = np.arange(n)
    d = i[None, :] - i[:, None]
    m = np.where(np.abs(d) <= r, np.asarray(taps)[np.clip(d + r, 0, 2 * r)], 0.0)
    return torch.from_numpy(m).to(device)


def _dilate(mask, k):
    """k x k binary dilation of a (N,1,H,W) bool mask (zero outside) as two 1-D max-pools; the
    0/1 values are pooled in float32 (exact, faster than float64)."""
    import torch.nn.functional as F

    r = k // 2
    m = F.max_pool2d(mask.float(), (k, 1), 1, (r, 0))
    return F.max_pool2d(m, (1, k), 1, (0, r))


def _sep_conv(x, taps, device):
    """Separable correlation of (N,1,H,W) with the 1-D ``taps``, zero outside: My @ x @ Mx^T."""
    h, w = x.shape[-2:]
    return _band(h, taps, device) @ x @ _band(w, taps, device).T


def _clusters(sm: np.ndarray):
    """Centroids (px, coarse grid) of the largest-flux cluster of each polarity, whole batch at
    once: one 2-D scipy label of the maps stacked with empty rows between them + bincounts."""
    from scipy import ndimage

    n, h, w = sm.shape
    out = []
    for sign in (1.0, -1.0):
        weight = sign * sm
        sel = weight > ROBUST_THRESHOLD_GAUSS
        selp = np.zeros((n, h + 1, w), dtype=bool)
        selp[:, :h] = sel
        labels, nlab = ndimage.label(selp.reshape(n * (h + 1), w), structure=np.ones((3, 3), bool))
        cy = np.full(n, np.nan)
        cx = np.full(n, np.nan)
        if nlab:
            lab = labels.reshape(n, h + 1, w)[:, :h][sel]
            img, yy, xx = np.nonzero(sel)
            wt = weight[sel]
            flux = np.bincount(lab, weights=wt, minlength=nlab + 1)
            sy = np.bincount(lab, weights=wt * yy, minlength=nlab + 1)
            sx = np.bincount(lab, weights=wt * xx, minlength=nlab + 1)
            owner = np.zeros(nlab + 1, dtype=np.int64)
            owner[lab] = img
            labs = np.arange(1, nlab + 1)
            order = np.lexsort((labs, -flux[labs], owner[labs]))  # per map: largest flux, then first label
            best = labs[order]
            first = np.ones(best.size, dtype=bool)
            first[1:] = owner[best[1:]] != owner[best[:-1]]
            maps, best = owner[best[first]], best[first]
            cy[maps] = sy[best] / flux[best]
            cx[maps] = sx[best] / flux[best]
        out.append((cy, cx))
    return out


def torch_parameters(x_np: np.ndarray, scale: PixelScale, device: str = "cpu") -> np.ndarray:
    """Every parameter of PARAMETER_NAMES for (N,H,W) maps with one pixel scale (scalars), as an
    (N, 14) array. No mask (the benchmark's patches have none)."""
    import torch
    import torch.nn.functional as F

    n, h, w = x_np.shape
    size_mm, area, arcsec = (float(v) for v in (scale.size_mm, scale.area_cm2, scale.size_arcsec))
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float64)).to(device).view(n, 1, h, w)
    valid = torch.isfinite(x)
    bz = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=device))
    out = {}
    nval = valid.sum(dim=(1, 2, 3)).double()
    sp = bz.clamp(min=0).sum(dim=(1, 2, 3))
    sn = (-bz).clamp(min=0).sum(dim=(1, 2, 3))
    out["tpf"], out["tnf"] = sp * area, sn * area
    out["tuf"] = out["tpf"] + out["tnf"]
    out["net_flux"] = out["tpf"] - out["tnf"]
    out["flux_imbalance"] = (out["net_flux"].abs() / out["tuf"]).where(out["tuf"] > 0, torch.nan)
    pos, neg = bz > STRONG_GAUSS, bz < -STRONG_GAUSS
    wp, wn = bz * pos, -bz * neg
    fp, fn = wp.sum(dim=(1, 2, 3)), wn.sum(dim=(1, 2, 3))
    out["usflux_strong"] = (fp + fn) * area
    out["strong_frac"] = (pos | neg).sum(dim=(1, 2, 3)).double() / nval
    out["bmax"] = bz.abs().amax(dim=(1, 2, 3))
    yy = torch.arange(h, dtype=x.dtype, device=device).view(1, 1, h, 1)
    xx = torch.arange(w, dtype=x.dtype, device=device).view(1, 1, 1, w)
    cpy, cpx = (wp * yy).sum(dim=(1, 2, 3)) / fp, (wp * xx).sum(dim=(1, 2, 3)) / fp
    cny, cnx = (wn * yy).sum(dim=(1, 2, 3)) / fn, (wn * xx).sum(dim=(1, 2, 3)) / fn
    out["psep"] = torch.hypot(cpy - cny, cpx - cnx) * size_mm
    both = (_dilate(pos, R_PAPER_DILATION) > 0) & (_dilate(neg, R_PAPER_DILATION) > 0)
    out["r_paper"] = (bz.abs() * both).sum(dim=(1, 2, 3)) * area

    # psep_robust / tilt / lead_sign: block mean, Gaussian (torch), labelling (scipy, CPU)
    f = int(robust_grid_factor(size_mm))
    sig = float(_quantize_sigma(np.array([ROBUST_SMOOTH_MM / (size_mm * f)]))[0])
    coarse = F.avg_pool2d(F.pad(bz, (0, -w % f, 0, -h % f)), f) if f > 1 else bz
    sm = _sep_conv(coarse, _gauss_taps(sig), device)
    (ryp, rxp), (ryn, rxn) = _clusters(sm[:, 0].cpu().numpy())
    ryp, rxp, ryn, rxn = ((v + 0.5) * f - 0.5 for v in (ryp, rxp, ryn, rxn))
    res = {k: v.cpu().numpy() for k, v in out.items()}
    res["psep_robust"] = np.hypot(ryp - ryn, rxp - rxn) * size_mm
    dx, dy = rxp - rxn, ryp - ryn
    flip = dx < 0
    tilt = np.degrees(np.arctan2(np.where(flip, -dy, dy), np.where(flip, -dx, dx)))
    res["tilt_deg"] = np.where(tilt <= -90.0, tilt + 180.0, tilt)
    res["lead_sign"] = np.sign(dx)

    # r_value: point sampling, 3x3 box (border 0), 41-tap Gaussian with zero padding
    s = int(r_value_scale(arcsec))
    rim = x[:, :, : (h // s) * s : s, : (w // s) * s : s]
    ny1, nx1 = rim.shape[2:]
    inner = torch.zeros((1, 1, ny1, nx1), dtype=torch.bool, device=device)
    inner[..., 1:-1, 1:-1] = True
    p1 = (_dilate(rim > STRONG_GAUSS, 3) > 0) & (_dilate(rim < -STRONG_GAUSS, 3) > 0) & inner
    pmap = _sep_conv(p1.double(), _r_value_kernel(), device)  # 41 taps: zero padding by 20
    a = torch.nan_to_num(torch.trunc(rim.abs()), nan=0.0)
    total = (pmap * a).sum(dim=(1, 2, 3)).cpu().numpy()
    with np.errstate(divide="ignore"):
        res["r_value"] = np.where(total < 1.0, 0.0, np.log10(np.maximum(total, 1e-300)))
    arr = np.stack([np.asarray(res[k], dtype=np.float64) for k in PARAMETER_NAMES], axis=1)
    arr[res["tuf"] != res["tuf"]] = np.nan
    arr[nval.cpu().numpy() == 0] = np.nan
    return arr


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-n", type=int, default=64, help="patches the reference times per round")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    patches = real_patches(args.n, args.size, rng)
    if patches is None:
        patches = synthetic_patches(args.n, args.size, rng)
    scale = PixelScale.cea(0.03, bin_factor=2)
    n, nref = args.n, min(args.n, args.ref_n)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with _single_thread():
        ref = compute_parameters_reference(patches, scale).to_numpy()
        tor = torch_parameters(patches, scale, args.device)
        compute_parameters(patches, scale)  # warm-up: the numba engine compiles on first use
        rel = np.where(np.isnan(tor) & np.isnan(ref), 0.0, np.abs(tor - ref) / np.maximum(np.abs(ref), 1e-300))
        worst = float(np.nanmax(rel))
        if not np.array_equal(np.isnan(tor), np.isnan(ref)) or worst > 1e-9:
            bad = {k: float(np.nanmax(rel[:, j])) for j, k in enumerate(PARAMETER_NAMES)}
            print(f"MISMATCH torch vs reference: {bad}", file=sys.stderr)
            return 1
        per = []
        for _ in range(args.repeats):
            t0 = time.process_time(); w0 = time.perf_counter()
            torch_parameters(patches, scale, args.device); sync()
            t_cpu, t_wall = time.process_time() - t0, time.perf_counter() - w0
            t0 = time.process_time()
            compute_parameters(patches, scale)
            e_cpu = time.process_time() - t0
            t0 = time.process_time()
            compute_parameters_reference(patches[:nref], scale)
            r_cpu = time.process_time() - t0
            per.append((t_cpu / n, t_wall / n, e_cpu / n, r_cpu / nref))
    per = np.array(per)
    med = np.median(per, axis=0)
    print(f"physics parameters, torch option ({args.device}, float64, 1 thread) vs numba engine vs reference, "
          f"{n} patches {args.size}x{args.size}, {args.repeats} interleaved rounds (medians)")
    print(f"  torch       {1e6 * med[0]:8.1f} us/map CPU ({1e6 * med[1]:.1f} wall)   "
          f"{np.median(per[:, 3] / per[:, 0]):6.1f} x the reference (CPU)")
    print(f"  numba       {1e6 * med[2]:8.1f} us/map CPU            "
          f"{np.median(per[:, 3] / per[:, 2]):6.1f} x the reference (CPU)")
    print(f"  reference   {1e6 * med[3]:8.1f} us/map CPU")
    print(f"  torch agrees with the reference: max relative difference {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
