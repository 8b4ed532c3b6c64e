"""What tells the C2ST classifier a generated patch from a real one? (issue 19 diagnostic)

Runs the fixed-protocol classifier two-sample test (:mod:`sharpgen.c2st`) of a pipeline's
generated samples against its held-out real patches on several *views* of both samples
(:func:`sharpgen.c2st.diagnostic_views`: as is, low-passed, high-passed, the high-pass in weak
or strong field only, with the generated pixel values mapped onto the real pixel histogram,
strong-field polarity masks only, 4x4 block means, and the weak-field texture with its values
shuffled within each image, whitened by its local rms, or with random Fourier phases), and the floor: real train patches vs real
held-out patches (HARP-grouped folds). A view whose accuracy stays near 1 did not remove what gives the generator away. Not a benchmark (not
run by ``make bench``); ~1 minute per view and repeat on one CPU thread with the default sizes
(the protocol's 3 repeats; ``--repeats 1`` for a quick look). ``--unpadded`` keeps only the
held-out patches whose crop window lies inside their record: ~a quarter of the real crops are
zero-padded at the edges (exact zeros), which a generator can only imitate (docs/gan.md).

    .venv/bin/python benchmarks/diagnose_c2st.py results            # a finished pipeline run
    .venv/bin/python benchmarks/diagnose_c2st.py results --views as_is low_pass_2px --json d.json
    .venv/bin/python benchmarks/diagnose_c2st.py results --views as_is --unpadded   # no padded crops
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sharpgen.c2st import c2st, c2st_diagnostics, diagnostic_views  # noqa: E402
from sharpgen.store import PatchStore, image_count, read_images  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a pipeline's results/ folder")
    ap.add_argument("--views", nargs="+", default=None,
                    help=f"views to run (default all: {', '.join(diagnostic_views(1000.0))})")
    ap.add_argument("--no-reference", action="store_true", help="skip real train vs held-out")
    ap.add_argument("--generated", type=int, default=2000, help="generated samples to read")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None,
                    help="C2ST repeats per view (default: the protocol's, sharpgen.c2st.PROTOCOL)")
    ap.add_argument("--unpadded", action="store_true",
                    help="held-out real patches without zero padding only (pad_fraction 0: the crop "
                         "window lies inside the record); the generated samples stay all")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    store = PatchStore.open(a.results / "data" / "patches.zarr", a.results / "data" / "patches.parquet")
    clip = float(store.attrs.get("clip_gauss", 1000.0))
    held, train = store.rows("heldout"), store.rows("train")
    harps = store.column("harpnum")
    if a.unpadded:
        held = held[np.asarray(store.column("pad_fraction"))[held] == 0]
    real = store.read(held)
    images = a.results / "samples" / "generated.zarr"
    gen = read_images(images, rows=np.arange(min(a.generated, image_count(images))))
    print(f"held-out real {real.shape[0]} patches ({np.unique(harps[held]).size} HARPs), "
          f"generated {gen.shape[0]}, clip {clip:g} G; C2ST accuracy (0.5 = indistinguishable)")
    rep = {} if a.repeats is None else {"repeats": a.repeats}
    out = {}
    for name in a.views or list(diagnostic_views(clip)):
        res = c2st_diagnostics(real, gen, clip_gauss=clip, real_groups=harps[held], views=[name],
                               **rep)[name]
        out[name] = res
        print(f"  {name:24s} accuracy {res['accuracy']:.3f}  AUC {res['auc']:.3f}", flush=True)
    if not a.no_reference:
        res = c2st(store.read(train), real, real_groups=harps[train], generated_groups=harps[held], **rep)
        out["reference_real_train_vs_heldout"] = {k: res[k] for k in ("accuracy", "auc", "p_value",
                                                                     "n_per_class")}
        print(f"  {'real train vs held-out':24s} accuracy {res['accuracy']:.3f}  AUC {res['auc']:.3f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
