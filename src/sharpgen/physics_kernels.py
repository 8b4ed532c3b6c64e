"""Compiled (numba) kernels of :func:`sharpgen.physics.compute_parameters`.

Plain functions compiled on first use by :func:`_jit` (numba caches the machine code on disk,
next to this file). One map at a time: each map's full-resolution pass, dilations, block mean,
Gaussian and cluster search run on buffers that stay in the L1/L2 cache, and the loop over the
maps of a batch (:func:`_k_parameters`) is compiled too. Flat 1-D arrays with row slices in the
inner loops (numba tests a computed index for wrap-around, which blocks vectorisation). The
150 G polarity masks are rows of bits (bit x of uint64 word x >> 6), so the 7x7 dilations of
``r_paper`` are a few shifted ORs per 64 pixels. These kernels call no kernel of another module
(numba's disk cache would not notice a change there): R_VALUE has its own, in sharpgen.rvalue.
docs/parameters.md ("Speed") has the numbers.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from sharpgen.parameters import R_PAPER_DILATION, ROBUST_THRESHOLD_GAUSS, STRONG_GAUSS

_BYTES_TO_BITS = np.uint64(0x0102040810204080)  # 8 bytes of 0/1 -> 8 bits (one multiplication)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_TABLE = np.zeros(64, dtype=np.int64)  # index of the set bit of a power of two
for _i in range(64):
    _DEBRUIJN_TABLE[(((1 << _i) * 0x03F79D71B4CB0A89) & 0xFFFFFFFFFFFFFFFF) >> 58] = _i
del _i
_ABS_BITS = np.int64(0x7FFFFFFFFFFFFFFF)  # float64 bits without the sign (monotonic in |v|)


def _k_pack_bits(row8, words):
    """Bits of the 0/1 bytes ``row8`` -> uint64 ``words`` (byte i -> bit i & 63 of word i >> 6):
    8 bytes at a time, gathered into 8 bits by one multiplication (little-endian)."""
    r = row8.view(np.uint64)
    s = np.uint64(56)
    for k in range(words.shape[0]):
        g = r[8 * k : 8 * k + 8]  # (a slice: constant indices, no wrap-around tests)
        words[k] = (((g[0] * _BYTES_TO_BITS) >> s)
                    | (((g[1] * _BYTES_TO_BITS) >> s) << np.uint64(8))
                    | (((g[2] * _BYTES_TO_BITS) >> s) << np.uint64(16))
                    | (((g[3] * _BYTES_TO_BITS) >> s) << np.uint64(24))
                    | (((g[4] * _BYTES_TO_BITS) >> s) << np.uint64(32))
                    | (((g[5] * _BYTES_TO_BITS) >> s) << np.uint64(40))
                    | (((g[6] * _BYTES_TO_BITS) >> s) << np.uint64(48))
                    | (((g[7] * _BYTES_TO_BITS) >> s) << np.uint64(56)))


def _k_full_res(bi, mi, has_mask, h, w, bz, pbytes, bits, nw, acc, ibuf):
    """Full-resolution pass over one flat (h*w) map ``bi`` (mask ``mi`` if ``has_mask``).

    Writes ``bz`` (the field with invalid pixels 0), the bit rows of the > +150 G (rows 0..h-1)
    and < -150 G (rows h..2h-1) masks into ``bits`` (via the bytes ``pbytes``, 64*nw per row,
    0 beyond the map), and into ``acc``: positive sum, negative
    sum (magnitude), strong positive / negative sums (magnitudes), their row- and column-index
    weighted sums, strong pixel count, valid pixel count, max |B|. Each row is three short loops
    that LLVM vectorises (sums re-associated: fastmath 'reassoc')."""
    sp = 0.0
    sn = 0.0
    fp = 0.0
    fn = 0.0
    pyp = 0.0
    pyn = 0.0
    pxp = 0.0
    pxn = 0.0
    cnt = 0
    nval = 0
    bmax = np.int64(0)
    zi = bz.view(np.int64)
    for y in range(h):
        o = y * w
        brow = bi[o : o + w]
        zrow = bz[o : o + w]
        rv = 0
        if has_mask:
            mrow = mi[o : o + w]
            for x in range(w):
                v = np.float64(brow[x])
                ok = ((v - v) == 0.0) & mrow[x]  # finite and inside the mask
                zrow[x] = v if ok else 0.0
                rv += ok
        else:
            for x in range(w):
                v = np.float64(brow[x])
                ok = (v - v) == 0.0
                zrow[x] = v if ok else 0.0
                rv += ok
        rsp = 0.0
        rsn = 0.0
        rfp = 0.0
        rfn = 0.0
        rxp = 0.0
        rxn = 0.0
        rc = 0
        prow = pbytes[y * 64 * nw : y * 64 * nw + w]
        nrow = pbytes[(h + y) * 64 * nw : (h + y) * 64 * nw + w]
        for x in range(w):
            v = zrow[x]
            rsp += v if v > 0.0 else 0.0
            rsn += v if v < 0.0 else 0.0
            p = v > STRONG_GAUSS
            q = v < -STRONG_GAUSS
            vp = v if p else 0.0
            vn = v if q else 0.0
            rfp += vp
            rfn += vn
            rxp += vp * x
            rxn += vn * x
            rc += p + q
            prow[x] = p
            nrow[x] = q
        rmax = np.int64(0)
        zirow = zi[o : o + w]
        for x in range(w):  # max |B| as the max of the sign-less bit patterns (vectorises)
            t = zirow[x] & _ABS_BITS
            rmax = t if t > rmax else rmax
        bmax = rmax if rmax > bmax else bmax
        sp += rsp
        sn += rsn
        fp += rfp
        fn += rfn
        pyp += rfp * y
        pyn += rfn * y
        pxp += rxp
        pxn += rxn
        cnt += rc
        nval += rv
    _k_pack_bits(pbytes, bits)
    ibuf[0] = bmax
    acc[0] = sp
    acc[1] = -sn
    acc[2] = fp
    acc[3] = -fn
    acc[4] = pyp
    acc[5] = -pyn
    acc[6] = pxp
    acc[7] = -pxn
    acc[8] = cnt
    acc[9] = nval
    acc[10] = ibuf.view(np.float64)[0]


def _k_dilate_rows(src, dst, rows, nw, r, lastmask):
    """Each bit row of ``src`` (``rows`` rows of nw words) OR-ed with itself shifted by 1..r
    pixels either way (zero outside the map; bits beyond it cleared by ``lastmask``)."""
    z = np.uint64(0)
    for y in range(rows):
        o = y * nw
        for k in range(nw):
            wv = src[o + k]
            lo = src[o + k - 1] if k > 0 else z
            hi = src[o + k + 1] if k + 1 < nw else z
            acc = wv
            for d in range(1, r + 1):
                ud = np.uint64(d)
                ue = np.uint64(64 - d)
                acc |= (wv << ud) | (lo >> ue) | (wv >> ud) | (hi << ue)
            dst[o + k] = acc
        dst[o + nw - 1] &= lastmask


def _k_r_paper_sum(bits, hd, bz, h, w, nw, k):
    """Sum of |bz| over the pixels where the k x k (k odd) dilations of both polarity masks
    (``bits``: h rows of the positive, then h of the negative mask) overlap."""
    r = k // 2
    rem = w - (nw - 1) * 64
    lastmask = np.uint64(0xFFFFFFFFFFFFFFFF) if rem == 64 else (np.uint64(1) << np.uint64(rem)) - np.uint64(1)
    _k_dilate_rows(bits, hd, 2 * h, nw, r, lastmask)
    z = np.uint64(0)
    s = 0.0
    neg = h * nw
    for y in range(h):
        y0 = max(0, y - r)
        y1 = min(h, y + r + 1)
        for kw in range(nw):
            a = z
            c = z
            for yy in range(y0, y1):
                a |= hd[yy * nw + kw]
                c |= hd[neg + yy * nw + kw]
            v = a & c
            while v:
                low = v & (~v + np.uint64(1))
                x = kw * 64 + _DEBRUIJN_TABLE[(low * _DEBRUIJN) >> np.uint64(58)]
                s += abs(bz[y * w + x])
                v ^= low
    return s


def _k_block_mean(bz, h, w, f, coarse, hc, wc, gr, trow):
    """f x f block mean of the flat map bz (h*w) -> coarse (hc x wc, row yc at offset
    (yc + gr) * wc, between gr rows of zeros above and below: the input of :func:`_k_gauss`),
    the map zero-padded at the end to whole blocks (skimage block_reduce): rows of a block
    summed (vectorised), then columns."""
    for x in range(gr * wc):
        coarse[x] = 0.0
        coarse[(hc + gr) * wc + x] = 0.0
    ff = np.float64(f * f)
    wf = (w // f) * f
    for yc in range(hc):
        y0 = yc * f
        y1 = min(h, y0 + f)
        crow = coarse[(yc + gr) * wc : (yc + gr) * wc + wc]
        if f == 2 and y1 == y0 + 2:  # the usual case in one pass (strided slices: no
            r0 = bz[y0 * w : y0 * w + w]  # wrap-around index tests; / 4 is * 0.25 exactly)
            r1 = bz[y0 * w + w : y0 * w + 2 * w]
            a0 = r0[0 : 2 * (w // 2) : 2]
            a1 = r0[1 : 2 * (w // 2) : 2]
            b0 = r1[0 : 2 * (w // 2) : 2]
            b1 = r1[1 : 2 * (w // 2) : 2]
            for xc in range(w // 2):
                crow[xc] = ((a0[xc] + a1[xc]) + (b0[xc] + b1[xc])) * 0.25
            if wf < w:
                crow[wc - 1] = (r0[w - 1] + r1[w - 1]) * 0.25
            continue
        zrow = bz[y0 * w : y0 * w + w]
        for x in range(w):
            trow[x] = zrow[x]
        for yy in range(y0 + 1, y1):
            zrow = bz[yy * w : yy * w + w]
            for x in range(w):
                trow[x] += zrow[x]
        for xc in range(w // f):
            t = trow[xc * f]
            for j in range(1, f):
                t += trow[xc * f + j]
            crow[xc] = t / ff
        if wf < w:
            t = trow[wf]
            for x in range(wf + 1, w):
                t += trow[x]
            crow[wc - 1] = t / ff


def _k_gauss(src, hc, wc, taps, tmp, padrow, dst):
    """Separable Gaussian of the map src (hc x wc, flat, between ``gr`` = kernel radius rows of
    zeros above and below: row y at offset (y + gr) * wc), zero outside (scipy mode
    'constant'): axis 0 then axis 1, each as scipy's symmetric correlation ``w0 x[i] + sum_d
    w_d (x[i-d] + x[i+d])``, into ``dst`` (hc*wc). ``padrow`` has room for a row plus gr on
    both sides."""
    gr = (taps.shape[0] - 1) // 2
    w0 = taps[gr]
    # (row slices throughout: numba tests a computed index for wrap-around, which blocks
    # vectorisation)
    for y in range(hc):
        trow = tmp[y * wc : y * wc + wc]
        o = (y + gr) * wc
        srow = src[o : o + wc]
        for x in range(wc):
            trow[x] = w0 * srow[x]
        for d in range(1, gr + 1):
            wd = taps[gr + d]
            sa = src[o - d * wc : o - d * wc + wc]
            sb = src[o + d * wc : o + d * wc + wc]
            for x in range(wc):
                trow[x] += (sa[x] + sb[x]) * wd
    for x in range(gr):
        padrow[x] = 0.0
        padrow[gr + wc + x] = 0.0
    mid = padrow[gr : gr + wc]
    for y in range(hc):
        trow = tmp[y * wc : y * wc + wc]
        for x in range(wc):
            mid[x] = trow[x]
        drow = dst[y * wc : y * wc + wc]
        for x in range(wc):
            drow[x] = w0 * mid[x]
        for d in range(1, gr + 1):
            wd = taps[gr + d]
            pa = padrow[gr - d : gr - d + wc]
            pb = padrow[gr + d : gr + d + wc]
            for x in range(wc):
                drow[x] += (pa[x] + pb[x]) * wd


def _k_find(parent, i):
    """Root of run i (union-find with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _k_largest_cluster(sm, hc, wc, sgn, thr, sel, rx, parent, rsum):
    """Centroid (y, x) [coarse px] of the 8-connected cluster of ``sgn * sm > thr`` (sm: flat
    hc*wc) with the largest summed ``sgn * sm`` (the centroid's weights too); on ties the
    cluster whose first pixel comes first in raster order (argmax over scipy's labels); (nan,
    nan) without one.

    Clusters are unions of horizontal runs: each row's runs (their sums computed over the run)
    are joined to the runs of the row above that they touch (8-connectivity: column ranges
    overlapping or adjacent), union-find over run indices with the smaller index as root, so a
    cluster's root is its first run in raster order. Buffers: ``sel`` (wc,) uint8, ``rx``
    (R, 2) int64 run columns [x0, x1), ``parent`` (R,) int64, ``rsum`` (R, 3) float64, with
    R >= the number of runs (hc * ((wc + 1) // 2) at most)."""
    nr = 0
    prev_lo = 0
    prev_hi = 0
    for y in range(hc):
        srow = sm[y * wc : y * wc + wc]
        nsel = 0
        for x in range(wc):
            t = sgn * srow[x] > thr
            sel[x] = t
            nsel += t
        cur_lo = nr
        if nsel:
            x = 0
            while x < wc:
                if sel[x] == 0:
                    x += 1
                    continue
                x0 = x
                while x < wc and sel[x] != 0:
                    x += 1
                seg = srow[x0:x]
                fl = 0.0
                sx = 0.0
                for k in range(x - x0):
                    wv = sgn * seg[k]
                    fl += wv
                    sx += wv * (x0 + k)
                rx[nr, 0] = x0
                rx[nr, 1] = x
                rsum[nr, 0] = fl
                rsum[nr, 1] = fl * y
                rsum[nr, 2] = sx
                parent[nr] = nr
                for j in range(prev_lo, prev_hi):  # runs of the row above touching [x0, x)
                    if rx[j, 0] <= x and rx[j, 1] >= x0:
                        a = _k_find(parent, j)
                        b = _k_find(parent, nr)
                        if a < b:
                            parent[b] = a
                        elif b < a:
                            parent[a] = b
                nr += 1
        prev_lo = cur_lo
        prev_hi = nr
    if nr == 0:
        return np.nan, np.nan
    for r in range(nr):  # runs -> their cluster's root (roots come first: index <= run's)
        root = _k_find(parent, r)
        if root != r:
            rsum[root, 0] += rsum[r, 0]
            rsum[root, 1] += rsum[r, 1]
            rsum[root, 2] += rsum[r, 2]
    best = -1.0
    by = np.nan
    bx = np.nan
    for r in range(nr):
        if parent[r] == r and rsum[r, 0] > best:
            best = rsum[r, 0]
            by = rsum[r, 1] / best
            bx = rsum[r, 2] / best
    return by, bx


def _k_parameters(b2, m2, has_mask, h, w, size_mm, area, fac, gidx, taps, tlen, out, nvalid):
    """Every parameter but ``r_value`` of each flat map of ``b2`` (N, h*w) -> out (N, 14) in
    PARAMETER_NAMES order; ``nvalid`` (N,) valid pixel counts. ``fac`` (N,) psep_robust block
    sizes, ``gidx`` (N,) rows of ``taps`` (K, L) holding each map's Gaussian (``tlen`` (K,) taps,
    centred in the row)."""
    n = b2.shape[0]
    nw = (w + 63) // 64
    bz = np.empty(h * w)
    pbytes = np.zeros(2 * h * 64 * nw, dtype=np.uint8)  # bytes beyond the map stay 0
    bits = np.empty(2 * h * nw, dtype=np.uint64)
    hd = np.empty(2 * h * nw, dtype=np.uint64)
    acc = np.empty(11)
    ibuf = np.empty(1, dtype=np.int64)
    fmin = max(1, fac.min()) if n else 1
    hc0 = -(-h // fmin)
    wc0 = -(-w // fmin)
    coarse = np.empty((hc0 + taps.shape[1]) * wc0)  # with the Gaussian's zero rows
    tmpc = np.empty(hc0 * wc0)
    smp = np.empty(hc0 * wc0)
    sel = np.empty(wc0, dtype=np.uint8)
    nruns = hc0 * ((wc0 + 1) // 2)
    rx = np.empty((nruns, 2), dtype=np.int64)
    parent = np.empty(nruns, dtype=np.int64)
    rsum = np.empty((nruns, 3))
    trow = np.empty(w)
    padrow = np.empty(wc0 + taps.shape[1] + 1)
    for i in range(n):
        o = out[i]
        _k_full_res(b2[i], m2[i if has_mask else 0], has_mask, h, w, bz, pbytes, bits, nw, acc, ibuf)
        nval = acc[9]
        nvalid[i] = nval
        if nval == 0:
            for k in range(o.shape[0]):
                o[k] = np.nan
            continue
        sp, sn, fp, fn = acc[0], acc[1], acc[2], acc[3]
        a = area[i]
        tpf = sp * a
        tnf = sn * a
        tuf = tpf + tnf
        o[0] = tuf
        o[1] = tpf
        o[2] = tnf
        o[3] = tpf - tnf
        o[4] = abs(tpf - tnf) / tuf if tuf > 0 else np.nan
        o[5] = (fp + fn) * a
        o[6] = acc[8] / nval
        o[7] = acc[10]
        if fp > 0 and fn > 0:
            o[8] = np.hypot(acc[4] / fp - acc[5] / fn, acc[6] / fp - acc[7] / fn) * size_mm[i]
        else:
            o[8] = np.nan
        o[12] = _k_r_paper_sum(bits, hd, bz, h, w, nw, R_PAPER_DILATION) * a
        # dominant clusters: psep_robust, tilt_deg, lead_sign
        f = fac[i]
        hc = -(-h // f)
        wc = -(-w // f)
        g = gidx[i]
        to = (taps.shape[1] - tlen[g]) // 2
        tp = taps[g, to : to + tlen[g]]
        _k_block_mean(bz, h, w, f, coarse, hc, wc, (tlen[g] - 1) // 2, trow)
        _k_gauss(coarse, hc, wc, tp, tmpc, padrow, smp)
        ryp, rxp = _k_largest_cluster(smp, hc, wc, 1.0, ROBUST_THRESHOLD_GAUSS, sel, rx, parent, rsum)
        ryn, rxn = _k_largest_cluster(smp, hc, wc, -1.0, ROBUST_THRESHOLD_GAUSS, sel, rx, parent, rsum)
        ryp = (ryp + 0.5) * f - 0.5  # coarse -> original pixel coordinates
        rxp = (rxp + 0.5) * f - 0.5
        ryn = (ryn + 0.5) * f - 0.5
        rxn = (rxn + 0.5) * f - 0.5
        o[9] = np.hypot(ryp - ryn, rxp - rxn) * size_mm[i]
        dx = rxp - rxn  # negative -> positive
        dy = ryp - ryn
        if dx != dx or dy != dy:
            o[10] = np.nan
            o[11] = np.nan
        else:
            t = np.degrees(np.arctan2(-dy, -dx)) if dx < 0 else np.degrees(np.arctan2(dy, dx))
            o[10] = t + 180.0 if t <= -90.0 else t
            o[11] = 1.0 if dx > 0 else (-1.0 if dx < 0 else 0.0)
        o[13] = np.nan  # r_value: sharpgen.rvalue


#: kernels and their numba fastmath flags ('reassoc' lets LLVM vectorise the sums: their order
#: then depends on the vector width, a ~1e-16 relative difference; NaN/inf semantics are kept)
_KERNELS = {"_k_pack_bits": False, "_k_full_res": {"reassoc"}, "_k_dilate_rows": False,
            "_k_r_paper_sum": False, "_k_block_mean": False, "_k_gauss": False,
            "_k_find": False, "_k_largest_cluster": False, "_k_parameters": False}
_JIT_LOCK = threading.Lock()
_JITTED: list[bool] = []


def _jit() -> None:
    """Compile this module's kernels on first use (numba caches the machine code on disk next to
    this file, so later processes load it in well under a second; compiling takes ~10-20 s)."""
    if _JITTED:
        return
    with _JIT_LOCK:
        if _JITTED:
            return
        if sys.byteorder != "little":  # pragma: no cover - _k_pack_bits' byte order
            raise RuntimeError("sharpgen's physics kernels need a little-endian machine")
        import numba

        g = globals()
        for name, fastmath in _KERNELS.items():
            g[name] = numba.njit(cache=True, nogil=True, fastmath=fastmath)(g[name])
        _JITTED.append(True)


