"""The explorer's state and answers, without HTTP: what ``sharpgen explore``'s page asks for.

:class:`ExploreSession` wraps an :class:`sharpgen.invert.edit.Editor` (generator, directions,
calibration, encoder) and the real-patch database (``embeddings.npz``, ``patches.parquet``,
``patches.zarr``). Every request carries the whole state (stateless server, except uploaded
patches, kept by id):

* ``base``: ``{"seed": N}`` (``sharpgen generate``'s base latent) or ``{"upload": ID}`` (an
  inverted FITS patch, :meth:`ExploreSession.upload`);
* ``edits``: ``[{"target": "tuf", "hold": ["r_value"], "value": 3e22}, ...]`` physical values;
* ``refine``: correction steps on the measured values (0: the calibrated step alone).

:meth:`ExploreSession.render` moves the base code by the calibrated step of every edit (each
relative to the base: ``c = c0 + sum_p eps_p d_p(c0)``, eps_p = (fit(value_p) - fit(base_p)) /
slope_p, clipped to what the base can reach), then up to ``refine`` times corrects every eps_p
by the calibrated slope from the measured miss (:meth:`ExploreSession._apply`), generates the
patch, measures it, finds the k
nearest real patches in SimSiam space and returns everything as JSON-ready dicts with the images
as PNG data URIs (diverging colour map, symmetric scale fixed for the session:
:func:`sharpgen.report.style.symmetric_vmax` of real and generated patches, as the report's
figures use). Bad input raises :class:`ExploreError` with a message for the page.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from sharpgen.parameters import PARAMETERS, REQUESTABLE, is_log_fit, to_fit_space, unit_of

#: parameters shown beside the patch (and of the nearest real patches)
SHOWN = REQUESTABLE
#: largest upload accepted [bytes] (a full-disk SHARP Br record is ~10-30 MB uncompressed)
MAX_UPLOAD = 64 * 2**20


class ExploreError(ValueError):
    """A request the explorer cannot serve; the message is shown on the page."""


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged). One small image
    per update runs fastest on one thread: on a busy 2-core machine the thread hand-offs of a
    second one cost more than they save (measured: 10 ms vs 500 ms per update)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def png_data_uri(image_gauss: np.ndarray, vmax: float, cmap: str) -> str:
    """(S, S) Br [G] -> 'data:image/png;base64,...' drawn with ``cmap`` on [-vmax, vmax],
    north up (row 0 at the bottom, as the report's ``origin='lower'``)."""
    import matplotlib.image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, np.flipud(np.asarray(image_gauss, float)), cmap=cmap, vmin=-vmax, vmax=vmax, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ExploreSession:
    """See the module docstring. ``results``: the pipeline's results folder."""

    def __init__(self, results: str | Path = "results", *, k: int = 5, device: str = "cpu",
                 editor=None, invert_cfg: Mapping | None = None, render_threads: int | None = 1):
        from sharpgen.embed import load_embeddings
        from sharpgen.invert.edit import Editor
        from sharpgen.report.style import DIV_CMAP, symmetric_vmax
        from sharpgen.store import PatchStore, image_count, read_images

        self.results = Path(results)
        self.k = int(k)
        self.render_threads = render_threads
        self.editor = editor or Editor.from_results(self.results, invert_cfg=invert_cfg, device=device)
        ed = self.editor
        self.lock = threading.Lock()
        self.uploads: dict[str, dict] = {}
        self.cmap = DIV_CMAP
        self.store = PatchStore.open(self.results / "data" / "patches.zarr", self.results / "data" / "patches.parquet")
        # what the page shows of a neighbour (not every record's path and times)
        self.table = self.store.partial_table(["harpnum", "t_rec", "split", "source", *SHOWN])
        emb = load_embeddings(self.results / "ssl" / "embeddings.npz", encoder_hash=ed.encoder_info.get("hash"))
        if len(emb["row"]) != len(self.table):
            raise ExploreError(f"embedding store has {len(emb['row'])} rows, the patch table {len(self.table)}: "
                               "rerun the pipeline")
        self.emb, self.emb_rows = emb["embeddings"], emb["row"]
        # one colour scale for the session: the report's symmetric_vmax of real and generated patches
        rng = np.random.default_rng(0)
        real = self.store.read(np.sort(rng.choice(self.store.n, min(200, self.store.n), replace=False)))
        gen_path = self.results / "samples" / "generated.zarr"
        gen = ed.pool_images[:200] if ed.pool_images is not None else \
            read_images(gen_path, np.arange(min(200, image_count(gen_path)))) if gen_path.exists() else real[:0]
        self.vmax = symmetric_vmax(np.concatenate([real.ravel(), np.asarray(gen).ravel()]) * ed.ctx.clip_gauss)
        self._thumbs: dict[int, str] = {}
        self._bases: dict[str, tuple] = {}

    # ---- static description --------------------------------------------------------------------
    def config(self) -> dict:
        """Sliders (one per calibrated target, with its hold choices), units, colour scale."""
        ed = self.editor
        targets: dict[str, list] = {}
        for key, cal in ed.calibrated().items():
            targets.setdefault(cal["target"], []).append(sorted(cal.get("hold", [])))
        sliders = [{"target": t, "unit": unit_of(t, ed.ctx.mode), "log": bool(is_log_fit(t)),
                    "holds": sorted(holds, key=lambda h: (len(h), h)),
                    "description": PARAMETERS[t].description}
                   for t, holds in sorted(targets.items(), key=lambda kv: list(REQUESTABLE).index(kv[0])
                                          if kv[0] in REQUESTABLE else 99)]
        from sharpgen.report.style import source_name

        return {"sliders": sliders, "k": self.k, "vmax_gauss": self.vmax, "cmap": self.cmap,
                "data_source": source_name(self.table),
                "space": ed.space, "units": ed.ctx.units, "size": int(ed.G.size),
                "shown": [{"name": p, "unit": unit_of(p, ed.ctx.mode)} for p in SHOWN],
                "max_rel_error": ed.max_rel_error, "max_upload_bytes": MAX_UPLOAD,
                "colorbar": png_data_uri(np.linspace(-self.vmax, self.vmax, 256)[:, None], self.vmax, self.cmap)}

    # ---- bases -----------------------------------------------------------------------------------
    def base_code(self, base: Mapping) -> tuple[np.ndarray, dict]:
        """(code (D,), info) of ``{"seed": N}`` or ``{"upload": ID}``."""
        if not isinstance(base, Mapping):
            raise ExploreError("base must be {'seed': N} or {'upload': ID}")
        if "upload" in base:
            up = self.uploads.get(str(base["upload"]))
            if up is None:
                raise ExploreError(f"unknown upload {base['upload']!r}: upload the FITS file again")
            return up["code"], {"kind": "upload", "name": up["name"], "rel_error": up["rel_error"]}
        try:
            seed = int(base.get("seed", 0))
        except (TypeError, ValueError):
            raise ExploreError(f"seed must be a whole number >= 0, got {base.get('seed')!r}") from None
        if seed < 0 or seed > 2**32 - 1:
            raise ExploreError(f"seed must be between 0 and {2**32 - 1}, got {seed}")
        return self.editor.base_from_seed(seed), {"kind": "seed", "seed": seed}

    def upload(self, data: bytes, name: str = "upload.fits") -> dict:
        """Invert an uploaded FITS patch (SHARP Br record or sharpgen FITS) -> its id, the real
        patch image, the inversion quality; refused (ExploreError) when it is not a usable FITS
        file or the inversion is worse than the edit bound."""
        import tempfile

        from sharpgen.invert.edit import EditError, read_input

        if not data:
            raise ExploreError("the uploaded file is empty")
        if len(data) > MAX_UPLOAD:
            raise ExploreError(f"the uploaded file is {len(data) / 2**20:.1f} MB, more than {MAX_UPLOAD // 2**20} MB")
        if not data[:9] == b"SIMPLE  =":
            raise ExploreError(f"{name} is not a FITS file (it does not start with 'SIMPLE  ='): upload a SHARP "
                               "Br record (.fits) or a patch written by sharpgen generate / edit")
        uid = hashlib.sha256(data).hexdigest()[:16]
        ed = self.editor
        with tempfile.TemporaryDirectory() as tmp:
            safe = "".join(c for c in Path(name).name if c.isalnum() or c in "._-") or "upload.fits"
            if not safe.lower().endswith((".fits", ".fit", ".fts")):
                safe += ".fits"
            path = Path(tmp) / safe
            path.write_bytes(data)
            try:
                patch, _ = read_input(path, ed.encoder_info.get("meta", {}))
            except (EditError, OSError, ValueError) as err:
                raise ExploreError(f"{name}: {' '.join(str(err).replace(str(path), name).split())}") from None
        with self.lock:
            t0 = time.perf_counter()
            inv = ed.invert(patch)
            seconds = time.perf_counter() - t0
            before = ed.measure(patch[None]).iloc[0]
        rel = float(inv.rel_error[0])
        out = {"upload": uid, "name": name, "rel_error": rel, "bound": ed.max_rel_error,
               "seconds": seconds, "real_image": png_data_uri(patch * ed.ctx.clip_gauss, self.vmax, self.cmap),
               "reconstruction_image": png_data_uri(inv.images[0] * ed.ctx.clip_gauss, self.vmax, self.cmap),
               "real_measured": {p: _num(before[p]) for p in SHOWN}}
        if not rel <= ed.max_rel_error:
            raise ExploreError(f"{name}: the inversion is too poor to edit (relative pixel error {rel:.3f} > "
                               f"{ed.max_rel_error:.3f}, invert.max_rel_error; docs/inversion.md)")
        self.uploads[uid] = {"code": inv.codes[0], "name": name, "rel_error": rel, "patch": patch}
        return out

    # ---- one view ------------------------------------------------------------------------------
    def _edit_code(self, code: np.ndarray, base_df, edits) -> tuple[list[dict], dict]:
        """Check the edits against what the base can reach -> (moves: one per edit with a value:
        target, unit direction d (D,), calibrated eps, eps range, slope, requested value; slider
        ranges per target)."""
        ed = self.editor
        moves = []
        sliders = {}
        if not isinstance(edits, list):
            raise ExploreError("edits must be a list of {target, hold, value}")
        for e in edits:
            if not isinstance(e, Mapping) or "target" not in e:
                raise ExploreError(f"bad edit {e!r}: expected {{target, hold, value}}")
            target, hold = str(e["target"]), [str(h) for h in (e.get("hold") or [])]
            try:
                spec, cal = ed.direction(target, hold)
            except ValueError as err:
                raise ExploreError(str(err)) from None
            y0 = float(to_fit_space(target, np.array([base_df[target]]))[0])
            r = ed.reach(spec, cal, code, y0)
            lo, hi = r["range"]
            info = {"key": spec.key, "min": _num(lo), "max": _num(hi), "base": _num(base_df[target]),
                    "unit": unit_of(target, ed.ctx.mode)}
            sliders[target] = info
            value = e.get("value")
            if value is None:
                continue
            v = _num(value)
            if v is None:
                raise ExploreError(f"{target}: {value!r} is not a number")
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ExploreError(f"{target}: this patch cannot move along {spec.key!r} (its value is undefined "
                                   "or the calibrated range is empty); choose another seed or hold")
            tolerance = 1e-9 * max(abs(lo), abs(hi), 1.0)
            if not lo - tolerance <= v <= hi + tolerance:
                raise ExploreError(f"{target}={v:.4g} is outside the range [{lo:.4g}, {hi:.4g}] {info['unit']} "
                                   f"this patch can reach along {spec.key!r} (calibrated eps in "
                                   f"[{cal['eps_min']:g}, {cal['eps_max']:g}])")
            info["value"] = v
            slope = float(cal["slope"])
            if not (np.isfinite(slope) and slope != 0.0):
                raise ExploreError(f"{target}: the calibrated slope of {spec.key!r} is {slope:g}: "
                                   "this direction does not move it (see calibration.json)")
            eps = (float(to_fit_space(target, np.array([v]))[0]) - y0) / slope
            moves.append({"target": target, "value": v, "slope": slope, "range": r["eps"], "y0": y0,
                          "d": ed.field.per_base(spec, np.asarray(code, np.float64)[None])[0],
                          "eps": float(np.clip(eps if np.isfinite(eps) else 0.0, *r["eps"]))})
        return moves, sliders

    def _apply(self, code: np.ndarray, moves: list[dict], refine: int, tol: float = 0.02):
        """code + sum_p eps_p d_p, then up to ``refine`` secant corrections on the measured values
        (as ``sharpgen generate`` refines: the slope through the last two measured points -- the
        base at eps 0 first -- when it has the calibrated sign and at least 0.2 x its size, else
        the calibrated slope; within each eps range); the iterate with the smallest largest
        relative error wins. -> (code, image, measured)."""
        from sharpgen.parameters import relative_error

        ed = self.editor
        best = None
        for it in range(1 + max(0, int(refine))):
            new = (code.astype(np.float64) + sum(m["eps"] * m["d"] for m in moves)).astype(np.float32)
            img = ed.render(new)[0]
            df = ed.measure(img[None]).iloc[0]
            errs = [relative_error(m["target"], df[m["target"]], m["value"]) for m in moves]
            worst = max((e if np.isfinite(e) else np.inf for e in errs), default=0.0)
            if best is None or worst < best[0]:
                best = (worst, new, img, df)
            if worst <= tol or it == refine:
                break
            for m in moves:
                y = float(to_fit_space(m["target"], np.array([df[m["target"]]]))[0])
                y_req = float(to_fit_space(m["target"], np.array([m["value"]]))[0])
                if not (np.isfinite(y) and np.isfinite(y_req)):
                    continue
                prev_eps, prev_y = m.get("prev", (0.0, m["y0"]))
                step = m["eps"] - prev_eps  # 0 when eps sits at its range's end (python floats)
                sec = (y - prev_y) / step if step != 0.0 else float("nan")
                usable = np.isfinite(sec) and np.sign(sec) == np.sign(m["slope"]) and abs(sec) > 0.2 * abs(m["slope"])
                m["prev"] = (m["eps"], y)
                m["eps"] = float(np.clip(m["eps"] + (y_req - y) / (sec if usable else m["slope"]), *m["range"]))
        return best[1], best[2], best[3]

    def _base(self, base: Mapping):
        """(code, info, image, measured) of a base, cached (the last 64 bases)."""
        key = json.dumps(base, sort_keys=True, default=str)
        if key not in self._bases:
            code, info = self.base_code(base)
            img = self.editor.render(code)[0]
            if len(self._bases) >= 64:
                self._bases.pop(next(iter(self._bases)))
            self._bases[key] = (code, info, img, self.editor.measure(img[None]).iloc[0])
        return self._bases[key]

    def neighbours(self, image: np.ndarray) -> list[dict]:
        """k nearest real patches of ``image`` in SimSiam space, with HARP, time, parameters."""
        from sharpgen.retrieval import topk_cosine
        from sharpgen.ssl import embed

        q = embed(self.editor.encoder, image[None])
        idx, sim = topk_cosine(q, self.emb, self.k, normalized=True)
        out = []
        for rank, (i, s) in enumerate(zip(idx[0], sim[0]), start=1):
            row = int(self.emb_rows[i])
            rec = self.table.iloc[row]
            if row not in self._thumbs:
                self._thumbs[row] = png_data_uri(self.store.read([row])[0] * self.store.clip_gauss, self.vmax, self.cmap)
            out.append({"rank": rank, "row": row, "similarity": float(s),
                        "harpnum": int(rec["harpnum"]) if "harpnum" in rec else None,
                        "t_rec": str(rec.get("t_rec", "")), "split": str(rec.get("split", "")),
                        "params": {p: _num(rec[p]) for p in SHOWN if p in rec}, "image": self._thumbs[row]})
        return out

    def render(self, request: Mapping) -> dict:
        """One view: request {base, edits} -> image, measured parameters, sliders, neighbours,
        timings [ms]."""
        if not isinstance(request, Mapping):
            raise ExploreError("the request must be a JSON object {base, edits}")
        ed = self.editor
        t = {"start": time.perf_counter()}
        with self.lock, torch_threads(self.render_threads):
            code, base_info, base_img, base_df = self._base(request.get("base", {"seed": 0}))
            t["base"] = time.perf_counter()
            moves, sliders = self._edit_code(code, base_df, request.get("edits", []))
            refine = request.get("refine", 0)
            if not isinstance(refine, int) or not 0 <= refine <= 5:
                raise ExploreError(f"refine must be a whole number of steps from 0 to 5, got {refine!r}")
            if moves:
                new, img, m = self._apply(code, moves, refine)
            else:
                new, img, m = code, base_img, base_df
            t["generate+measure"] = time.perf_counter()
            nbrs = self.neighbours(img)
            t["neighbours"] = time.perf_counter()
            uri = png_data_uri(img * ed.ctx.clip_gauss, self.vmax, self.cmap)
        t["png"] = time.perf_counter()
        keys = list(t)
        timing = {k: 1000 * (t[k] - t[prev]) for prev, k in zip(keys, keys[1:])}
        timing["total"] = 1000 * (t["png"] - t["start"])
        return {"image": uri, "measured": {p: _num(m[p]) for p in SHOWN},
                "base_measured": {p: _num(base_df[p]) for p in SHOWN}, "sliders": sliders,
                "neighbours": nbrs, "base": base_info, "timing_ms": timing,
                "code_norm": float(np.sqrt(np.mean(new.astype(np.float64) ** 2)))}

    def default_edits(self) -> list[dict]:
        """Every slider at its base value (no hold where the unconditional direction exists)."""
        return [{"target": s["target"], "hold": s["holds"][0], "value": None} for s in self.config()["sliders"]]

