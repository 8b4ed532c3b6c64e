"""Classifier two-sample test (C2ST): can a small CNN tell real Br patches from generated ones?

Lopez-Paz & Oquab (2017): train a classifier to separate two samples; its held-out accuracy
is ~0.5 when the distributions are the same and grows towards 1 as they differ. Here the
samples are real patches (in the pipeline: the held-out val + test split, unseen by the GAN)
and generated ones, both (N, S, S) float32 in [-1, 1] (Br / clip_gauss).

The protocol is fixed (:data:`PROTOCOL`; nothing in it is configurable, so numbers from
different runs and generators compare):

* balanced classes: ``n = min(len(real), len(generated), max_per_class)`` images per class,
  a seeded random subset of the larger side;
* input: two channels, ``x`` and ``sign(x) sqrt(|x|)`` (the second lifts the weak-field texture
  -- noise, plage -- that the linear one hides below a few per cent of the clip);
* classifier (:class:`C2stNet`): four 3x3 stride-2 convolutions 2->8->16->32->64, each with
  batch norm and ReLU, global average and max pooling, a linear layer to one logit (~25k
  weights);
* stratified, *grouped* ``folds``-fold cross-validation: images of one group (the frames of one
  HARP: near-duplicates) always share a fold, otherwise the classifier recognises a region it
  saw with its label in training and the accuracy exceeds 0.5 for identical distributions
  (measured: real train vs real held-out patches, 0.82 ungrouped); for each fold a fresh network (seeded) is trained
  for ``epochs`` epochs (Adam, lr 1e-3, weight decay 1e-4, batch 32, seeded shuffling, no
  augmentation) on the other folds and predicts its fold; every image is predicted exactly once;
* ``repeats`` independent repeats (seeds ``seed``, ``seed + 1``, ...: another balanced subset of
  the larger side, other folds, other network initialisations); the first repeat is the single
  run of the protocol before repeats were added (2026-12-01), bit for bit;
* reported: ``accuracy``, the mean over the repeats of the accuracy over all held-out predictions
  of a repeat, each repeat's accuracy and their spread, per-fold accuracies, and the one-sided
  binomial p-value of a repeat's correct predictions under chance (0.5; the largest over the
  repeats). One repeat is not a stable number: on one generator (`blur` + `signed`, 288
  held-out patches per class) five seeds gave 0.82-0.95 (mean 0.857, std 0.054), so a
  difference of 0.05-0.1 between two single runs says nothing (docs/gan.md).

Bit-reproducible on the CPU for a given torch version and thread count (seeded initialisation,
shuffling and subsets; deterministic algorithms).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpgen import warmup

logger = logging.getLogger(__name__)

#: the fixed protocol (see the module docstring); written into every result
PROTOCOL = {
    "classifier": "C2stNet: 4 x (conv3x3 s2 + BN + ReLU) 2-8-16-32-64, avg+max pool, linear",
    "input": "x, sign(x) sqrt(|x|)",
    "folds": 5,
    "epochs": 15,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "max_per_class": 1000,
    "augmentation": "none",
    "repeats": 3,
}


class C2stError(ValueError):
    """Inputs a C2ST cannot run on (too few images, mismatched shapes)."""


class C2stNet(nn.Module):
    """(B, 2, S, S) -> logit (B,): four stride-2 conv + BN + ReLU blocks, avg + max pooling."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        layers, cin = [], 2
        for c in widths:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)).squeeze(1)


def c2st_input(images: np.ndarray) -> torch.Tensor:
    """(N, S, S) in [-1, 1] -> (N, 2, S, S) float32: x and sign(x) sqrt(|x|)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    return torch.cat([x, x.sign() * x.abs().sqrt()], dim=1)


def stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """(N,) {0, 1} labels -> (N,) fold index in 0..folds-1, each class spread evenly.

    groups: optional (N,) group ids; all rows of a group (within a class) share a fold: groups in
    a seeded random order each go to the fold of that class holding the fewest rows so far.
    """
    out = np.empty(labels.size, dtype=np.int64)
    groups = np.arange(labels.size) if groups is None else np.asarray(groups)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        ids, inverse = np.unique(groups[idx], return_inverse=True)
        sizes = np.bincount(inverse)
        load = np.zeros(folds, dtype=np.int64)
        fold_of = np.empty(ids.size, dtype=np.int64)
        for gi in rng.permutation(ids.size):
            f = int(np.argmin(load))
            fold_of[gi] = f
            load[f] += sizes[gi]
        out[idx] = fold_of[inverse]
    return out


def _train_and_predict(x_tr, y_tr, x_te, seed: int, epochs: int, batch: int, lr: float,
                       wd: float) -> np.ndarray:
    """Fresh seeded :class:`C2stNet` trained on (x_tr, y_tr); logits of x_te (numpy)."""
    torch.manual_seed(seed)
    net = C2stNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed + 1)
    n = x_tr.shape[0]
    net.train()
    for size in {min(batch, n), n % batch}:  # each batch shape's first step, on throw-away copies
        if size >= 2:                        # (CPU first-pass differences: sharpgen.warmup)
            warmup.once(("c2st_step", size, tuple(x_tr.shape[1:])), lambda: warmup.rehearse(
                lambda m, o: _fit_step(m, o, x_tr[:size], y_tr[:size]), net, opt))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i: i + batch]
            if idx.numel() < 2:  # batch norm needs two samples
                continue
            _fit_step(net, opt, x_tr[idx], y_tr[idx])
    net.eval()
    with torch.no_grad():
        return torch.cat([warmup.call(net, x_te[i: i + 256], ("c2st_eval",))
                          for i in range(0, x_te.shape[0], 256)]).numpy()


def _fit_step(net: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> None:
    """One Adam step of the classifier on images ``xb`` (B, 1, S, S) with labels ``yb`` (B,)."""
    loss = F.binary_cross_entropy_with_logits(net(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def c2st(real: np.ndarray, generated: np.ndarray, *, real_groups=None, generated_groups=None,
         seed: int = 0,
         folds: int = PROTOCOL["folds"], epochs: int = PROTOCOL["epochs"],
         max_per_class: int = PROTOCOL["max_per_class"], repeats: int = PROTOCOL["repeats"],
         threads: int | None = None) -> dict:
    """Cross-validated accuracy of a small CNN telling ``real`` from ``generated``, averaged
    over ``repeats`` independent repeats (seeds ``seed`` .. ``seed + repeats - 1``).

    real, generated: (N, S, S) / (M, S, S) float32 in [-1, 1]; real_groups / generated_groups:
    optional (N,) / (M,) group ids (e.g. HARP numbers: frames of one region are near-duplicates
    and must not be split between training and test folds). ``folds``, ``epochs``,
    ``max_per_class`` and ``repeats`` default to the fixed :data:`PROTOCOL` (tests shrink them).
    Returns a JSON-able dict: ``accuracy`` (mean over repeats of the accuracy over all held-out
    predictions of a repeat), ``accuracy_repeats`` (list, one per repeat) and
    ``accuracy_repeats_std`` (their standard deviation, ddof 1; 0 for one repeat),
    ``fold_accuracy`` (list, folds of every repeat in order), ``accuracy_std`` (over those folds),
    ``n_per_class``, ``n_correct`` (summed over repeats), ``p_value`` (one-sided binomial vs
    0.5 of a repeat; the largest), ``auc`` (mean over repeats), ``seconds`` and ``protocol``.
    """
    real = np.asarray(real, dtype=np.float32)
    generated = np.asarray(generated, dtype=np.float32)
    if real.ndim != 3 or generated.ndim != 3 or real.shape[1:] != generated.shape[1:]:
        raise C2stError(f"C2ST needs two image stacks (N, S, S) of the same S, got {real.shape} and {generated.shape}")
    n = min(real.shape[0], generated.shape[0], int(max_per_class))
    if n < 2 * folds:
        raise C2stError(f"C2ST needs >= {2 * folds} images per class for {folds} folds, got {n}")
    if int(repeats) < 1:
        raise C2stError(f"C2ST needs >= 1 repeat, got {repeats}")
    t0 = time.perf_counter()
    runs = [_c2st_once(real, generated, real_groups, generated_groups, seed + r, folds, epochs, n,
                       threads) for r in range(int(repeats))]
    acc = [r["accuracy"] for r in runs]
    aucs = [r["auc"] for r in runs]
    folds_all = [a for r in runs for a in r["fold_accuracy"]]
    out = {
        "accuracy": float(np.mean(acc)),
        "accuracy_repeats": acc,
        "accuracy_repeats_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
        "fold_accuracy": folds_all,
        "accuracy_std": float(np.std(folds_all)),
        "auc": None if any(a is None for a in aucs) else float(np.mean(aucs)),
        "n_per_class": int(n),
        "n_groups": runs[0]["n_groups"],
        "n_correct": int(sum(r["n_correct"] for r in runs)),
        "p_value": float(max(r["p_value"] for r in runs)),
        "seconds": float(time.perf_counter() - t0),
        "protocol": {**PROTOCOL, "folds": int(folds), "epochs": int(epochs),
                     "max_per_class": int(max_per_class), "repeats": int(repeats), "seed": int(seed)},
    }
    logger.info("C2ST: accuracy %.3f (repeats %s), n=%d per class, p <= %.2g, %.0f s", out["accuracy"],
                [round(a, 3) for a in acc], n, out["p_value"], out["seconds"])
    return out


def _c2st_once(real: np.ndarray, generated: np.ndarray, real_groups, generated_groups, seed: int,
               folds: int, epochs: int, n: int, threads: int | None) -> dict:
    """One repeat of :func:`c2st` (inputs checked there): ``n`` images per class drawn with
    ``seed``, grouped folds, a fresh network per fold. Returns accuracy, fold_accuracy, auc,
    n_groups, n_correct and p_value."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    ri = np.sort(rng.choice(real.shape[0], n, replace=False))
    gi = np.sort(rng.choice(generated.shape[0], n, replace=False))
    x = c2st_input(np.concatenate([real[ri], generated[gi]]))
    y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)

    def group_ids(groups, rows, m, tag):
        if groups is None:
            return np.array([f"{tag}{i}" for i in rows])
        groups = np.asarray(groups)
        if groups.shape != (m,):
            raise C2stError(f"{tag} groups must have shape ({m},), got {groups.shape}")
        return np.array([f"{tag}{v}" for v in groups[rows]])

    groups = np.concatenate([group_ids(real_groups, ri, real.shape[0], "r"),
                             group_ids(generated_groups, gi, generated.shape[0], "g")])
    fold = stratified_folds(y.astype(int), folds, rng, groups)
    if any(np.unique(y[fold == k]).size < 2 for k in range(folds)):
        raise C2stError(f"too few groups for {folds} folds with both classes in each")
    yt = torch.from_numpy(y)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    logits = np.empty(2 * n, dtype=np.float32)
    try:
        for k in range(folds):
            te, tr = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            logits[te] = _train_and_predict(x[tr], yt[tr], x[te], seed=seed * 1000 + k, epochs=epochs,
                                            batch=PROTOCOL["batch_size"], lr=PROTOCOL["lr"],
                                            wd=PROTOCOL["weight_decay"])
    finally:
        torch.set_num_threads(old_threads)
    correct = (logits > 0) == (y > 0.5)
    fold_acc = [float(correct[fold == k].mean()) for k in range(folds)]
    k_correct = int(correct.sum())
    try:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, logits))
    except ValueError:
        auc = None
    out = {
        "accuracy": float(correct.mean()),
        "fold_accuracy": fold_acc,
        "auc": auc,
        "n_groups": {"real": int(np.unique(groups[y > 0.5]).size),
                     "generated": int(np.unique(groups[y < 0.5]).size)},
        "n_correct": k_correct,
        "p_value": float(stats.binomtest(k_correct, 2 * n, 0.5, alternative="greater").pvalue),
    }
    logger.debug("C2ST repeat (seed %d): accuracy %.3f (folds %s)", seed, out["accuracy"],
                 [round(a, 3) for a in fold_acc])
    return out


# --------------------------------------------------------------------------------------------
# Diagnostics: what tells the classifier which sample is generated?
# --------------------------------------------------------------------------------------------


def low_pass(images: np.ndarray, sigma_px: float) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32: each image Gaussian-filtered with ``sigma_px`` pixels
    (edges replicated), one vectorised call over the stack."""
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(images, dtype=np.float32), (0, sigma_px, sigma_px),
                                   mode="nearest").astype(np.float32)


def quantile_map(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32: every pixel value of ``images`` replaced by the value of
    the same rank in the pixel distribution of ``reference`` (any shape), so the pooled pixel
    histogram of the result is ``reference``'s while each image keeps its spatial ordering."""
    flat = np.asarray(images, dtype=np.float32).ravel()
    ref = np.sort(np.asarray(reference, dtype=np.float32).ravel())
    order = np.argsort(flat, kind="stable")
    pos = ((np.arange(flat.size) + 0.5) * (ref.size / flat.size)).astype(np.int64)
    out = np.empty_like(flat)
    out[order] = ref[np.minimum(pos, ref.size - 1)]
    return out.reshape(np.shape(images))


def polarity_masks(images: np.ndarray, threshold: float) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32 in {-1, 0, 1}: the sign of the pixels with |x| > threshold
    (the strong-field polarity map the PSEP and R parameters start from), 0 elsewhere."""
    x = np.asarray(images, dtype=np.float32)
    return (np.sign(x) * (np.abs(x) > threshold)).astype(np.float32)


def block_mean(images: np.ndarray, k: int) -> np.ndarray:
    """(N, S, S) -> (N, S/k, S/k) float32: means of k x k blocks (S divisible by k)."""
    x = np.asarray(images, dtype=np.float32)
    n, s, _ = x.shape
    return x.reshape(n, s // k, k, s // k, k).mean(axis=(2, 4))


def high_pass_where(images: np.ndarray, threshold: float, weak: bool, sigma_px: float = 2.0) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32: the high-pass ``x - low_pass(x, sigma_px)`` kept only
    where the low-passed field is weak (``|low_pass| < threshold``, ``weak=True``) or strong
    (the rest), 0 elsewhere -- where in the field the texture differs."""
    x = np.asarray(images, dtype=np.float32)
    lp = low_pass(x, sigma_px)
    keep = (np.abs(lp) < threshold) if weak else (np.abs(lp) >= threshold)
    return np.where(keep, x - lp, 0.0).astype(np.float32)


def weak_texture(images: np.ndarray, threshold: float, sigma_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) -> (high-pass (N, S, S) float32, weak (N, S, S) bool): ``x - low_pass(x,
    sigma_px)`` and where the low-passed field is under ``threshold`` -- the weak-field texture --
    without exact zeros (a crop's zero padding holds no texture to compare)."""
    x = np.asarray(images, dtype=np.float32)
    lp = low_pass(x, sigma_px)
    return (x - lp).astype(np.float32), (np.abs(lp) < threshold) & (x != 0)


def shuffle_where(values: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32: each image's values inside ``mask`` permuted at random
    among its own masked pixels (seeded), 0 outside. Keeps every image's value distribution and
    mask, removes all spatial structure. Vectorised: the masked pixels in random order
    (``argsort`` of random keys, unmasked keys infinite) are written to the masked pixels in
    order (a stable ``argsort`` of the mask); past each image's count both lists hold its
    unmasked pixels in the same order, which the mask then zeroes."""
    v = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    m = np.asarray(mask, dtype=bool).reshape(v.shape)
    keys = np.where(m, np.random.default_rng(seed).random(v.shape), np.inf)
    source = np.argsort(keys, axis=1, kind="stable")
    target = np.argsort(~m, axis=1, kind="stable")
    out = np.empty_like(v)
    np.put_along_axis(out, target, np.take_along_axis(v, source, axis=1), axis=1)
    return np.where(m, out, 0.0).astype(np.float32).reshape(np.shape(values))


def whiten_where(values: np.ndarray, mask: np.ndarray, sigma_px: float = 4.0) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32: ``values`` inside ``mask`` divided by their local rms
    (a Gaussian window of ``sigma_px`` over the masked pixels only), 0 outside: the texture's
    amplitude and its modulation across the image removed, its spatial pattern kept. Scaled by
    0.1 so that the result stays in the classifier's input range."""
    from scipy import ndimage

    h = np.where(mask, values, 0.0).astype(np.float32)
    var = ndimage.gaussian_filter(h * h, (0, sigma_px, sigma_px), mode="nearest")
    weight = ndimage.gaussian_filter(np.asarray(mask, np.float32), (0, sigma_px, sigma_px), mode="nearest")
    rms = np.sqrt(var / np.maximum(weight, 1e-6)) + 1e-6
    return np.where(mask, 0.1 * h / rms, 0.0).astype(np.float32)


def randomise_phases(values: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """(N, S, S) -> (N, S, S) float32: each image of ``values`` (0 outside ``mask``) with its
    Fourier amplitudes kept and its phases replaced by those of seeded white noise, then masked
    again. Keeps each image's own 2D power spectrum (second-order statistics), removes the shapes
    of its features and everything beyond second order."""
    h = np.where(mask, values, 0.0).astype(np.float64)
    noise = np.fft.fft2(np.random.default_rng(seed).standard_normal(h.shape))
    phase = noise / np.maximum(np.abs(noise), 1e-12)
    y = np.real(np.fft.ifft2(np.abs(np.fft.fft2(h)) * phase))
    return np.where(mask, y, 0.0).astype(np.float32)


def _texture_view(kind: str, threshold: float):
    """A weak-field texture view (real, generated) -> (real', generated') of kind ``shuffled``,
    ``whitened`` or ``phase_random`` (seeds 0 for the real images, 1 for the generated)."""
    def one(x, seed):
        hp, weak = weak_texture(x, threshold)
        if kind == "shuffled":
            return shuffle_where(hp, weak, seed)
        if kind == "whitened":
            return whiten_where(hp, weak)
        return randomise_phases(hp, weak, seed)

    return lambda r, g: (one(r, 0), one(g, 1))


def diagnostic_views(clip_gauss: float, strong_gauss: float = 150.0) -> dict:
    """The views :func:`c2st_diagnostics` compares, name -> function (real, generated) ->
    (real', generated'), images in [-1, 1] (Br / ``clip_gauss``). Each removes one kind of
    information from *both* samples (except ``pixel_values_matched``, which gives the generated
    images the real pooled pixel histogram), so the accuracy that remains says whether that
    information was what told them apart. The ``weak_texture_*`` views take the high-pass in weak
    field (:func:`weak_texture`, padding excluded) and keep one kind of information of it:
    ``shuffled`` its value distribution (:func:`shuffle_where`), ``whitened`` its spatial pattern
    without amplitude (:func:`whiten_where`), ``phase_random`` each image's power spectrum
    (:func:`randomise_phases`)."""
    thr = strong_gauss / clip_gauss
    return {
        "as_is": lambda r, g: (r, g),
        "low_pass_1px": lambda r, g: (low_pass(r, 1.0), low_pass(g, 1.0)),
        "low_pass_2px": lambda r, g: (low_pass(r, 2.0), low_pass(g, 2.0)),
        "high_pass_2px": lambda r, g: (r - low_pass(r, 2.0), g - low_pass(g, 2.0)),
        "high_pass_weak_field": lambda r, g: (high_pass_where(r, thr, True), high_pass_where(g, thr, True)),
        "high_pass_strong_field": lambda r, g: (high_pass_where(r, thr, False), high_pass_where(g, thr, False)),
        "weak_texture_shuffled": _texture_view("shuffled", thr),
        "weak_texture_whitened": _texture_view("whitened", thr),
        "weak_texture_phase_random": _texture_view("phase_random", thr),
        "pixel_values_matched": lambda r, g: (r, quantile_map(g, r)),
        "strong_polarity_masks": lambda r, g: (polarity_masks(r, thr), polarity_masks(g, thr)),
        "block_mean_4px": lambda r, g: (block_mean(r, 4), block_mean(g, 4)),
    }


def c2st_diagnostics(real: np.ndarray, generated: np.ndarray, *, clip_gauss: float,
                     real_groups=None, views: list[str] | None = None, seed: int = 0,
                     **protocol) -> dict:
    """The fixed-protocol :func:`c2st` of ``real`` vs ``generated`` (N, S, S in [-1, 1]) on
    each view of :func:`diagnostic_views` (all, or the names in ``views``). The floor to
    compare with, real vs real, needs a second real sample (``benchmarks/diagnose_c2st.py`` runs
    it: train vs held-out split). ``protocol``: ``folds`` / ``epochs`` / ``max_per_class`` / ``repeats``
    (tests shrink them). Returns name -> {"accuracy", "auc", "p_value", "n_per_class"}."""
    table = diagnostic_views(clip_gauss)
    names = list(table) if views is None else list(views)
    unknown = [v for v in names if v not in table]
    if unknown:
        raise C2stError(f"unknown C2ST diagnostic view(s) {unknown}; known: {list(table)}")
    out = {}
    for name in names:
        r, g = table[name](np.asarray(real, dtype=np.float32), np.asarray(generated, dtype=np.float32))
        res = c2st(r, g, real_groups=real_groups, seed=seed, **protocol)
        out[name] = {k: res[k] for k in ("accuracy", "auc", "p_value", "n_per_class")}
    return out
