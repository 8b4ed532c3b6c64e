"""Report figures: pure plotting functions on synthetic arrays, and every figure builder on a tiny
result tree written with the upstream stages' own writers (so format drift is caught here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import types

from sharpgen import imagestats as M
from sharpgen import report
from sharpgen.report import data_gan, directions, retrieval, style, training

# every public name of the report modules, as one namespace
R = types.SimpleNamespace(**{k: v for m in (style, data_gan, directions, retrieval, training)
                             for k, v in vars(m).items() if not k.startswith("_")})

S = 32
N_REAL = 24
N_GEN = 48


def _bipoles(rng, n, s=S, noise=8.0):
    """(n, s, s) Gauss: a random bipole plus Gaussian noise."""
    y, x = np.mgrid[:s, :s]
    out = rng.normal(0, noise, (n, s, s))
    for i in range(n):
        cx, cy = rng.uniform(s * 0.3, s * 0.6, 2)
        a, d = rng.uniform(200, 900), rng.uniform(2, s / 5)
        out[i] += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 6)
        out[i] -= a * np.exp(-((x - cx - d) ** 2 + (y - cy) ** 2) / 6)
    return out


# --------------------------------------------------------------------------------------------
# image statistics
# --------------------------------------------------------------------------------------------

def test_noise_sigma_recovers_white_noise(rng):
    imgs = rng.normal(0, 25.0, (4, 64, 64))
    imgs[:, 20:30, 20:30] += 800.0  # a strong compact feature barely moves the robust estimate
    sig = M.noise_sigma(imgs)
    assert sig.shape == (4,)
    np.testing.assert_allclose(sig, 25.0, rtol=0.1)


def test_radial_power_spectrum_white_noise_is_flat(rng):
    imgs = rng.normal(0, 3.0, (16, 64, 64))
    k, p = M.radial_power_spectrum(imgs)
    assert k.shape == (33,) and p.shape == (16, 33)
    assert k[0] == 0 and k[-1] == pytest.approx(0.5)
    # white noise: flat spectrum at sigma^2 (mean removed, so k = 0 is ~0)
    assert p[:, 0].max() < 1e-9
    np.testing.assert_allclose(p[:, 2:].mean(axis=0), 9.0, rtol=0.3)
    # a single Fourier mode shows up at its radius
    y, x = np.mgrid[:64, :64]
    wave = np.cos(2 * np.pi * 8 * x / 64)
    k, p = M.radial_power_spectrum(wave)
    assert int(np.argmax(p[0])) == 8


def test_mean_gradient_of_a_ramp():
    ramp = np.tile(np.arange(32, dtype=float) * 5.0, (32, 1))  # 5 G per pixel along x
    np.testing.assert_allclose(M.mean_gradient(ramp), [5.0])
    with pytest.raises(ValueError, match="shape"):
        M.mean_gradient(np.zeros(5))


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------

def test_latent_projection_boundary_is_vertical_line(rng):
    z = rng.normal(size=(200, 10))
    n = rng.normal(size=10)
    b = 0.4
    xy, v = R.latent_projection(z, n, b)
    # x is the signed distance to the hyperplane n.z + b = 0
    np.testing.assert_allclose(xy[:, 0], (z @ n + b) / np.linalg.norm(n))
    assert abs(v @ n) < 1e-9 and np.linalg.norm(v) == pytest.approx(1.0)
    # points on the boundary land on x = 0 whatever their other coordinates
    on = z - np.outer((z @ n + b) / (n @ n), n)
    xy_on, _ = R.latent_projection(on, n, b)
    np.testing.assert_allclose(xy_on[:, 0], 0, atol=1e-9)
    with pytest.raises(ValueError, match="zero vector"):
        R.latent_projection(z, np.zeros(10))


def test_grid_thumbnails_one_per_cell_and_inside_it(rng):
    xy = rng.normal(size=(500, 2))
    cells = R.grid_thumbnails(xy, 5, 4, lims=((-2, 2), (-2, 2)))
    bounds = [c[1] for c in cells]
    assert len(set(bounds)) == len(bounds) <= 20
    for idx, (x0, x1, y0, y1) in cells:
        assert x0 <= xy[idx, 0] <= x1 and y0 <= xy[idx, 1] <= y1
    # cells do not overlap: their interiors are disjoint by construction of the grid
    xs = sorted({b[0] for b in bounds})
    assert all(b - a >= 0.8 - 1e-9 for a, b in zip(xs, xs[1:]))


def test_format_value_and_labels():
    assert R.format_value("tuf", 3.1e22) == "tuf=3.10e+22 Mx"
    assert R.format_value("psep", 12.345) == "psep=12.3 Mm"
    assert R.format_value("r_value", float("nan")) == "r_value=nan"
    assert R.param_label("psep") == "psep [Mm]"
    assert R.is_log_param("tuf", np.array([1e20, 1e21])) and not R.is_log_param("psep")
    assert not R.is_log_param("tuf", np.zeros(3))  # all-zero column cannot go on a log axis


# --------------------------------------------------------------------------------------------
# plotting functions on synthetic arrays
# --------------------------------------------------------------------------------------------

def _colorbar_labels(fig):
    return [ax.get_ylabel() for ax in fig.axes]


def test_sample_grid_symmetric_gauss_scale(rng, tmp_path):
    real, gen = _bipoles(rng, 10), _bipoles(rng, 10)
    fig = R.fig_sample_grid(real, gen, 2, 3, seed=1, real_labels=[f"HARP {i}" for i in range(10)])
    ims = [im for ax in fig.axes for im in ax.get_images()]
    assert len(ims) == 12
    lo, hi = ims[0].get_clim()
    assert lo == -hi and hi > 0  # centred on 0 G
    assert r"$B_r$ [G]" in _colorbar_labels(fig)
    R.save_figure(fig, tmp_path / "g.png", tmp_path / "g.pdf")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "g.pdf").read_bytes()[:4] == b"%PDF"


def test_save_figure_is_reproducible(rng, tmp_path):
    real = _bipoles(rng, 6)
    for name in ("a", "b"):
        R.save_figure(R.fig_sample_grid(real, real, 2, 2, seed=3), tmp_path / f"{name}.png",
                      tmp_path / f"{name}.pdf")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


def test_parameter_distributions_log_axes_and_scores(rng):
    df = pd.DataFrame({"tuf": 10 ** rng.normal(22, 0.4, 50), "psep": rng.uniform(5, 40, 50),
                       "r_value": rng.normal(4, 0.5, 50)})
    fig = R.fig_parameter_distributions(df, df * 1.1, ["tuf", "psep", "r_value", "absent"],
                                        scores={"tuf": {"wasserstein_norm": 0.12, "ks": 0.3}})
    axes = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_xscale() for ax in axes] == ["log", "linear", "linear"]
    texts = [t.get_text() for t in axes[0].texts]
    assert any("0.120" in t and "KS = 0.300" in t for t in texts)


def test_retrieval_scatter_reports_correlations(rng):
    q = 10 ** rng.normal(22, 0.5, 80)
    pairs = pd.concat([
        pd.DataFrame({"method": "simsiam", "parameter": "tuf", "query": q, "match": q}),
        pd.DataFrame({"method": "random", "parameter": "tuf", "query": q,
                      "match": rng.permutation(q)}),
    ])
    fig = R.fig_retrieval_scatter(pairs, ["tuf"], ["simsiam", "random"])
    t0 = fig.axes[0].texts[0].get_text()
    assert t0.startswith("r = 1.00") and "= 1.00" in t0.splitlines()[1]
    t1 = fig.axes[1].texts[0].get_text()
    assert abs(float(t1.splitlines()[0].split("=")[1])) < 0.5


def test_entanglement_centred_on_zero():
    m = pd.DataFrame([[1.0, 0.2], [-3.0, 1.0]], index=["a", "b"], columns=["a", "b"])
    fig = R.fig_entanglement({"unc": m, "cond": m * 0.5})
    norm = fig.axes[0].get_images()[0].norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax and norm.vmax >= 1


def test_entanglement_cells_carry_their_standard_error(tmp_path):
    """A finite standard error is written under its cell's value ("± 0.05"), a missing one is
    not, and the builder takes them from traversal_metrics.json's entanglement_se."""
    m = pd.DataFrame([[1.0, 0.2], [-3.0, 1.0]], index=["a", "b"], columns=["a", "b"])
    se = pd.DataFrame([[np.nan, 0.05], [0.31, np.nan]], index=["a", "b"], columns=["a", "b"])
    fig = R.fig_entanglement({"unc": m}, errors={"unc": se})
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["-3.00\n±0.31", "0.20\n±0.05", "1.00", "1.00"], texts

    d = {"tuf": {"target": "tuf", "hold": [], "n_base": 128,
                 "entanglement": {"tuf": 1.0, "psep": 0.4}, "entanglement_se": {"tuf": 0.0, "psep": 0.07}},
         "psep|tuf": {"target": "psep", "hold": ["tuf"], "n_base": 128,
                      "entanglement": {"tuf": -0.06, "psep": 1.0},
                      "entanglement_se": {"tuf": 0.049, "psep": 0.0}}}
    d["psep"] = {"target": "psep", "hold": [], "n_base": 128, "entanglement": {"tuf": 0.5, "psep": 1.0}}
    path = tmp_path / "traversal_metrics.json"
    path.write_text(json.dumps({"directions": d, "std_fit_space": {"tuf": 1.0, "psep": 1.0}}))
    fig = R.build_entanglement({"traversal_metrics": path}, {})
    cells = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "-0.06\n±0.05" in cells and "0.40\n±0.07" in cells
    assert "0.50" in cells  # a direction without entanglement_se (an older run): the value alone
    assert "over 128 walks" in fig._suptitle.get_text().replace("\n", " ")


def test_traversals_and_retrieval_examples_layout(rng):
    imgs = _bipoles(rng, 5)
    strips = [{"label": "tuf", "images": imgs, "steps": np.linspace(-2, 2, 5),
               "annotations": [f"v{i}" for i in range(5)]}] * 2
    fig = R.fig_traversals(strips)
    assert sum(len(ax.get_images()) for ax in fig.axes) == 10
    assert [ax.get_xlabel() for ax in fig.axes[:5]] == [f"v{i}" for i in range(5)]
    fig = R.fig_retrieval_examples(imgs[:2], {"simsiam": imgs[2:4], "oracle_physical_euclidean": imgs[3:5]},
                                   {"simsiam": ["HARP 1\nt", "HARP 2\nt"],
                                    "oracle_physical_euclidean": ["HARP 3\nt", "HARP 4\nt"]})
    titles = [ax.get_title() for ax in fig.axes]
    assert "SimSiam" in titles and "oracle: physical (Euclidean)" in titles


def test_training_curves_skip_absent_columns():
    log = pd.DataFrame({"step": np.arange(100), "d_loss": np.ones(100), "g_loss": np.ones(100)})
    fig = R.fig_training_curves(log, "step", [("losses", ["d_loss", "g_loss"], "loss"),
                                              ("throughput", ["images_per_s"], "img/s")], "GAN")
    assert [ax.get_title() for ax in fig.axes] == ["losses"]


# --------------------------------------------------------------------------------------------
# builders on a tiny result tree written by the upstream modules
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A tiny results/ tree: patch store, generator, samples, directions, retrieval, logs."""
    torch = pytest.importorskip("torch")

    from sharpgen import directions as dr
    from sharpgen import gan, patches, sampling
    from sharpgen import retrieval as retr
    from sharpgen.atomic import write_json, write_parquet
    from sharpgen.measure import MeasurementContext, generate_and_measure, make_renderer
    from sharpgen.physics import PixelScale, compute_parameters
    from sharpgen.store import PatchStore

    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(7)
    clip = 1000.0
    scale = PixelScale.cea(bin_factor=8)
    real = np.clip(_bipoles(rng, N_REAL) / clip, -1, 1).astype(np.float32)
    params = compute_parameters(real.astype(np.float64) * clip, scale)
    table = pd.concat([pd.DataFrame({
        "row": np.arange(N_REAL), "harpnum": 100 + np.arange(N_REAL) // 2,
        "t_rec": [f"2011.02.{1 + i % 28:02d}_00:00:00_TAI" for i in range(N_REAL)],
        "split": np.array(["train", "val", "test"])[np.arange(N_REAL) % 3],
        "pixel_size_mm": scale.size_mm, "pixel_area_cm2": scale.area_cm2,
        "pixel_size_arcsec": scale.size_arcsec}), params], axis=1)
    pcfg = patches.PatchConfig.from_mapping(dict(mode="crop", size=S, bin=8, clip_gauss=clip))
    patches.write_store(root / "patches.zarr", real, table, patches.store_attrs(pcfg, table, "test"))
    write_parquet(root / "patches.parquet", table)

    torch.manual_seed(0)
    G = gan.build_generator("paper", S)
    torch.save({"arch": "paper", "size": S, "nz": 100, "state_dict": G.state_dict()},
               root / "generator.pt")
    G = gan.load_generator(root / "generator.pt")
    z = sampling.draw_latents(N_GEN, 100, seed=1)
    ctx = MeasurementContext.from_store(PatchStore.open(root / "patches.zarr"))
    images, gparams = generate_and_measure(G, z, ctx)
    # the random generator is nearly uniform: add the latent's first coordinate to make the
    # parameters vary with z so boundaries and traversals are meaningful
    images = np.clip(images + 0.3 * z[:, :1, None] * _bipoles(rng, N_GEN)[:, :, :] / 900, -1, 1)
    images = images.astype(np.float32)
    gparams = compute_parameters(images.astype(np.float64) * clip, scale)
    sampling.write_latents(root / "latents.parquet", z, gparams)
    sampling.write_images(root / "generated.zarr", images, {"clip_gauss": clip})
    quality = sampling.quality_report(table, gparams, real, images, clip)
    write_json(root / "quality.json", quality)

    dcfg = {"parameters": ["tuf", "tpf", "tnf"], "val_fraction": 0.25, "seed": 0,
            "conditional": [{"target": "tuf", "hold": ["tpf"]}],
            "traversal": {"n_base": 3, "eps_max": 2.0, "n_eps": 5}}
    lat = pd.read_parquet(root / "latents.parquet")
    arrays, summary = dr.fit_boundaries(dr.latents_from_table(lat), lat, dcfg)
    dr.save_boundaries(root / "boundaries.npz", arrays)
    write_json(root / "boundaries.json", {"parameters": summary, "n_samples": N_GEN,
                                          "classifier": "linear_svc", "labels": "median"})
    normals = dr.load_boundaries(root / "boundaries.npz")
    specs = dr.direction_specs(dcfg["parameters"], dcfg["conditional"])
    vectors = {s.key: s.vector(normals) for s in specs}
    render = make_renderer(G, ctx, dcfg["parameters"])
    trav = dr.traverse(render, rng.normal(size=(3, 100)), vectors, dr.eps_grid(2.0, 5))
    write_parquet(root / "traversals.parquet", trav)
    std = {p: 1.0 for p in dcfg["parameters"]}
    tm = dr.traversal_metrics(trav, dcfg["parameters"], std)
    write_json(root / "traversal_metrics.json", {"directions": tm, "std_fit_space": std,
                                                 "eps": dr.eps_grid(2.0, 5).tolist()})
    strips = dr.make_strips(G, dr.load_direction_field(root / "boundaries.npz"), ctx, ["tuf", "tuf|tpf"],
                            seed=0, n_steps=3, eps_max=2.0)
    with open(root / "strips.npz", "wb") as fh:
        np.savez(fh, **strips)
    cal = dr.build_calibration(trav, {**dcfg, "calibration": {"n_bootstrap": 5}}, ctx.to_dict())
    cal["evaluation"] = {k: {"median_rel_error": 0.05, "median_rel_error_calibrated_step": 0.08,
                             "refusal_rate": 0.1, "p90_rel_error": 0.2} for k in cal["directions"]}
    write_json(root / "calibration.json", cal)

    # retrieval: matches of every method for 6 generated queries
    frames, corr = [], {}
    q = lat.iloc[:6].reset_index(drop=True)
    for i, method in enumerate(("simsiam", "params_euclidean", "params_mahalanobis", "random")):
        rows = (np.arange(6) * (i + 1)) % N_REAL
        frames.append(retr.match_table("generated", method, q["sample"].to_numpy(), q, rows,
                                            np.zeros(6), table))
        corr[method] = retr.correlations(q, table.iloc[rows].reset_index(drop=True))
    write_parquet(root / "matches.parquet", pd.concat(frames, ignore_index=True))
    from sharpgen.memorisation import memorisation_check

    tr_rows = np.flatnonzero(table["split"] == "train")
    held = np.flatnonzero(table["split"] != "train")
    mem = memorisation_check(images[:10], np.arange(10), real[tr_rows], tr_rows, real[held], clip_gauss=clip, n_pairs=3)
    write_json(root / "evaluation.json", {"generated": {"correlations": corr}, "memorisation": mem})
    # inversion (rule invert_real) of the held-out patches, without an encoder: pixel + prior
    from sharpgen.invert.stage import run_invert_real

    run_invert_real(root / "generator.pt", None, root / "patches.zarr", root / "patches.parquet",
                    root / "generated.zarr", root / "latents.parquet",
                    {"n_patches": 6, "steps": 3, "restarts": 1, "init": "random", "device": "cpu"},
                    root / "inversion.json", root / "inversions.parquet", root / "reconstructions.npz")

    # real-record retrieval (rule real_records) with a seeded untrained encoder, when
    # ../shared/data has real records
    from sharpgen import embed as embed_mod
    from sharpgen import ssl as ssl_mod
    from sharpgen.real_records import real_record_files, run_real_records, write_outputs

    if real_record_files():
        from sharpgen.store import PatchStore

        torch.manual_seed(0)
        model = ssl_mod.SimSiam({"width": 4, "depth": [1, 1], "proj_hidden": 16, "dim": 8, "pred_hidden": 8})
        ssl_mod.save_encoder(root / "encoder.pt", model, {"size": S, "clip_gauss": clip, "mode": "crop"})
        embed_mod.run_embed(root / "encoder.pt", root / "patches.zarr", root / "patches.parquet",
                            root / "embeddings.npz", device="cpu")
        with pytest.MonkeyPatch.context() as mp:  # the stage reads columns, never the whole table
            mp.setattr(PatchStore, "table", property(lambda self: pytest.fail("real_records loaded the whole table")))
            rr, arrays = run_real_records(root / "encoder.pt", root / "embeddings.npz", root / "patches.zarr",
                                          root / "patches.parquet", root / "generated.zarr", root / "latents.parquet",
                                          real_record_files(), {"mode": "crop", "size": S, "bin": 8,
                                                                "clip_gauss": clip},
                                          {"n_generated_queries": 12, "k": 3})
        write_outputs(rr, arrays, root / "real_records.json", root / "real_records.npz")

    pd.DataFrame({"step": np.arange(0, 60, 2), "d_loss": rng.random(30), "g_loss": rng.random(30),
                  "d_real": rng.random(30), "d_fake": rng.random(30),
                  "images_per_s": 100 + rng.random(30), "elapsed_s": np.arange(30.0)}
                 ).to_csv(root / "gan_log.csv", index=False)
    pd.DataFrame({"epoch": np.arange(5), "lr": 0.05, "loss": -np.linspace(0.2, 0.9, 5),
                  "std_z": 0.2, "std_p": 0.2, "monitor_std": 0.18,
                  "monitor_effective_rank": np.linspace(3, 9, 5), "seconds": 2.0}
                 ).to_csv(root / "ssl_log.csv", index=False)
    return root


CFG = {"seed": 0, "dpi": 60, "grid": {"rows": 2, "cols": 2}, "realism_images": 12,
       "latent_map": {"parameters": ["tuf"], "max_points": 40, "cols": 4, "rows": 3},
       "retrieval": {"query_set": "generated", "n_examples": 2}}


def _inputs(root):
    return {"patches": root / "patches.zarr", "table": root / "patches.parquet",
            "generated": root / "generated.zarr", "latents": root / "latents.parquet",
            "quality": root / "quality.json", "boundaries": root / "boundaries.npz",
            "boundaries_json": root / "boundaries.json", "generator": root / "generator.pt",
            "traversal_metrics": root / "traversal_metrics.json",
            "traversals": root / "traversals.parquet", "calibration": root / "calibration.json",
            "matches": root / "matches.parquet", "strips": root / "strips.npz",
            "evaluation": root / "evaluation.json", "reconstructions": root / "reconstructions.npz",
            "inversions": root / "inversions.parquet", "inversion": root / "inversion.json",
            "summary": root / "real_records.json", "real_patches": root / "real_records.npz"}


def _n_images(fig):
    return sum(len(ax.get_images()) for ax in fig.axes)


#: what each figure must show on the tiny tree (CFG: 2x2 grids, 2 examples, latent map 4x3,
#: strips: 2 directions x 3 steps; 4 calibrated directions; 3 closest memorisation pairs)
EXPECTED_IMAGES = {"samples": 2 * 2 * 2, "inversion": 2 * 6, "traversals": 2 * 3, "retrieval_examples": 2 * (1 + 3),
                   "entanglement": 2, "memorisation": 2 * 3}


@pytest.mark.parametrize("name", sorted(set(report.FIGURES) - {"training_gan", "training_ssl"}))
def test_every_builder_makes_its_figure(tree, name, tmp_path, monkeypatch):
    """Each builder draws what its caption promises from the tree's data (counts of panels,
    images and labelled values), and saves a PNG + PDF that reopen -- without building the
    whole patch table (PatchStore.table)."""
    import matplotlib.image as mpimg

    from sharpgen.store import PatchStore

    def no_table(self):
        raise AssertionError("a figure builder loaded the whole patch table")

    monkeypatch.setattr(PatchStore, "table", property(no_table))

    kw = {"param": "tuf"} if name == "latent_map" else {}
    if name == "real_records" and not (tree / "real_records.json").exists():
        pytest.skip("no real SHARP records in ../shared/data (rule real_records is left out too)")
    fig = report.build(name, _inputs(tree), CFG, **kw)
    assert isinstance(fig, Figure)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " ".join(
        ax.get_title() + ax.get_xlabel() + ax.get_ylabel() for ax in fig.axes)
    if name in EXPECTED_IMAGES:
        assert _n_images(fig) == EXPECTED_IMAGES[name], (name, _n_images(fig))
    if name == "parameters":
        drawn = [ax for ax in fig.axes if ax.patches]
        legends = [t.get_text() for ax in drawn if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert len(drawn) == 8 and legends and all("n=" in t for t in legends)
    elif name == "latent_map":
        assert 0 < _n_images(fig) <= 4 * 3 and "tuf" in texts
    elif name == "retrieval_scatter":
        assert "r = " in texts and "R = 0 agreement" in texts  # r_value panels say how zeros count
        assert sum(1 for ax in fig.axes if ax.get_title()) == 4  # one title per method column
    elif name == "svm_accuracy":
        table = fig.axes[0].tables[0]
        labels = {c.get_text().get_text() for (r, c_), c in table.get_celld().items() if c_ == -1}
        assert labels == {"tuf", "tpf", "tnf"}
    elif name == "calibration":
        assert sum(1 for ax in fig.axes if ax.lines) == 4 and "calibrated step" in texts
    elif name == "realism":
        assert sum(1 for ax in fig.axes if ax.lines or ax.patches) >= 3
    elif name == "memorisation":
        assert "nearest training patch" in texts and "ratio of medians" in texts
    R.save_figure(fig, tmp_path / f"{name}.png", tmp_path / f"{name}.pdf", dpi=40)
    png = mpimg.imread(tmp_path / f"{name}.png")
    assert png.ndim == 3 and png.shape[0] > 50 and png.std() > 0.01  # not blank
    assert (tmp_path / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_training_builders(tree):
    assert report.build("training_gan", {"log": tree / "gan_log.csv"}, CFG).axes
    fig = report.build("training_ssl", {"log": tree / "ssl_log.csv"}, CFG)
    assert any("effective rank" in ax.get_title() for ax in fig.axes)


def test_traversal_annotations_are_measured_values(tree):
    """Every strip image is labelled with the value measured on that very image: re-measure the
    stored strip images and compare with the numbers printed under them."""
    import re

    from sharpgen.measure import MeasurementContext, measure
    from sharpgen.store import PatchStore

    fig = report.build("traversals", _inputs(tree), CFG)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_images()]
    assert len(labels) == 6
    with np.load(tree / "strips.npz") as f:
        images = f["images"]
    ctx = MeasurementContext.from_store(PatchStore.open(tree / "patches.zarr"))
    for i, lab in enumerate(labels):
        m = measure(images[i // 3, i % 3][None], ctx).iloc[0]
        shown = dict(re.findall(r"(\w+)=([-+0-9.e]+)", lab))
        assert float(shown["tuf"]) == pytest.approx(m["tuf"], rel=6e-3)  # printed to 3 digits
        if i >= 3:  # the conditional row also shows the held value
            assert float(shown["tpf"]) == pytest.approx(m["tpf"], rel=6e-3)
    assert all(lab.endswith("Mx") or "\n" in lab for lab in labels)
    # beside the conditional row: what its held parameter did over all the measured walks
    walks = json.loads((tree / "traversal_metrics.json").read_text())["directions"]
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    cond = [k for k in walks if "|" in k and walks[k].get("held")]
    assert cond and len(notes) == 1, notes
    held = next(iter(walks[cond[0]]["held"].values()))
    assert f"median {held['conditional']:+.2f}" in notes[0]
    assert f"|{held['conditional_abs_per_base']:.2f}|" in notes[0]
    assert f"over {walks[cond[0]]['n_base']} walks" in notes[0]
    bare = report.build("traversals", {"strips": tree / "strips.npz"}, CFG)  # the one walk alone
    assert not [t for ax in bare.axes for t in ax.texts]


def test_retrieval_examples_label_records(tree):
    fig = report.build("retrieval_examples", _inputs(tree), CFG)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_images()]
    assert sum(lab.startswith("HARP 1") for lab in labels) == 2 * 3  # 2 queries x 3 methods
    assert any(lab.startswith("generated #") for lab in labels)


def test_latent_map_unknown_parameter(tree):
    with pytest.raises(ValueError, match="no boundary for parameter 'psep'"):
        report.build("latent_map", _inputs(tree), CFG, param="psep")


def test_calibration_curves_start_at_zero(tree):
    cal = json.loads((tree / "calibration.json").read_text())
    curves = R.calibration_curves(pd.read_parquet(tree / "traversals.parquet"), list(cal["directions"]))
    at0 = curves[np.isclose(curves["eps"], 0)]
    np.testing.assert_allclose(at0["median"], 0)
    assert set(curves["direction"]) == {"tuf", "tpf", "tnf", "tuf (tpf held)"}


def test_every_figure_rule_has_a_builder_and_a_caption(repo_root):
    import re

    smk = (repo_root / "rules" / "report.smk").read_text()
    block = smk[smk.index("_FIGURES = {"):smk.index("for _name, (_inputs, _category) in _FIGURES.items():")]
    names = re.findall(r'^    "([a-z_]+)": \(', block, flags=re.M)
    assert set(names) == set(report.FIGURES) - {"latent_map"}
    captions = repo_root / "rules" / "report" / "captions"
    for name in [*report.FIGURES, "pipeline", "metrics"]:
        text = (captions / f"{name}.rst").read_text()
        assert len(text.split()) > 30, f"caption of {name} is too short"


def test_noise_sigma_ignores_masked_zero_pixels(rng):
    img = rng.normal(0, 10.0, (64, 64))
    img[:, :40] = 0.0  # off-disk / NaN-filled region stored as exact zeros
    img[0, 50] = np.nan
    np.testing.assert_allclose(M.noise_sigma(img), [10.0], rtol=0.15)
    assert np.isnan(M.noise_sigma(np.zeros((1, 8, 8))))[0]
