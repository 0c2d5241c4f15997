"""Sphering, PCA and Harmony after feature selection: each pinned to its definition."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from cytoscreen import cli, io
from cytoscreen.argparse_ import section_defaults
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.normalize import spherize
from cytoscreen.profiles.pca import fit_pca, pca
from cytoscreen.profiles.sphering import sphere
from cytoscreen.profiles.transforms import TransformSettings, transform_profiles
from tests.fixtures.profiles import synthetic_wells

HAS_HARMONYPY = importlib.util.find_spec("harmonypy") is not None


def _wells(**kw) -> pd.DataFrame:
    df = synthetic_wells(plates=2, wells=60, features=8, negcon=30, seed=3, dtype=np.float64, **kw)
    return df.drop(columns=["f1", "f2", "f3"])  # correlated, discrete and constant features


# --- sphering ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_sphering_whitens_the_controls_and_equals_spherize(method):
    df = _wells()
    feats = io.feature_columns(df)
    out, fit = sphere(df, method=method, epsilon=0.0)
    cols = io.feature_columns(out)
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    x = out[cols].to_numpy(np.float64)
    # whitened negcon covariance = identity (float32 output)
    np.testing.assert_allclose(np.cov(x[neg].T), np.eye(len(feats)), atol=1e-5)
    assert fit.n_reference == 60 and fit.reference_rule == "Metadata_pert_type == 'negcon'"
    assert fit.record()["rank"] == len(feats) and fit.record()["null_weight"] is None
    # the same numbers as profiles.normalize.spherize on the whole table (pycytominer parity there)
    ref = spherize(df, method=method, by=(), epsilon=0.0)
    np.testing.assert_array_equal(x, ref[cols].to_numpy(np.float64))
    assert list(out.columns[: len(io.metadata_columns(df))]) == io.metadata_columns(df)


@pytest.mark.parametrize("method", ["ZCA", "PCA"])
def test_saved_sphering_statistics_rebuild_the_transform(method):
    df = _wells()
    feats = io.feature_columns(df)
    # fewer controls than features + 1: rank-deficient, the unseen directions get null_weight
    neg = df.index[df[io.PERT_TYPE] == "negcon"][:4]
    mask = df.index.isin(neg)
    out, fit = sphere(df, method=method, reference=mask, epsilon=1e-3)
    table, rec = fit.table(), fit.record()
    assert rec["rank"] == 3 and rec["n_unseen_directions"] == len(feats) - 3
    center, scale = table["center"].to_numpy(), table["scale"].to_numpy()
    axes = table[[f"axis_{i}" for i in range(1, 4)]].to_numpy()  # d x r
    gains = np.sqrt(rec["n_reference_rows"] - 1) / (np.asarray(rec["singular_values"]) + 1e-3)
    z = (df[feats].to_numpy() - center) / scale
    got = out[io.feature_columns(out)].to_numpy(np.float64)
    if method == "ZCA":
        w = axes @ np.diag(gains - rec["null_weight"]) @ axes.T + rec["null_weight"] * np.eye(len(feats))
        np.testing.assert_allclose(z @ w, got, rtol=1e-4, atol=1e-4)
    else:  # the first r principal columns are a_i v_i
        np.testing.assert_allclose(z @ (axes * gains), got[:, :3], rtol=1e-4, atol=1e-4)


def test_sphering_pycytominer_parity():
    from pycytominer.operations.transform import Spherize

    df = _wells()
    feats = io.feature_columns(df)
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    out, _ = sphere(df, method="ZCA-cor", epsilon=1e-6)
    theirs = np.asarray(
        Spherize(method="ZCA-cor", epsilon=1e-6, return_numpy=True).fit(df.loc[neg, feats]).transform(df[feats])
    )
    if np.abs(np.cov(theirs[neg].T) - np.eye(len(feats))).max() > 1e-3:
        pytest.skip("installed pycytominer has the spherize bug #747 (fixed by PR #748)")
    np.testing.assert_allclose(out[feats].to_numpy(np.float64), theirs, atol=1e-5, rtol=1e-5)


# --- PCA --------------------------------------------------------------------------------------
def test_pca_equals_numpy_svd():
    df = _wells()
    feats = io.feature_columns(df)
    x = df[feats].to_numpy()
    out, fit = pca(df, n_components=3)
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    scores = out[["PC1", "PC2", "PC3"]].to_numpy(np.float64)
    for i in range(3):  # equal up to the sign of each axis
        sign = np.sign(scores[:, i] @ (u[:, i] * s[i]))
        np.testing.assert_allclose(scores[:, i], sign * u[:, i] * s[i], rtol=1e-5, atol=1e-5)
        assert np.abs(fit.components[i]).argmax() == np.argmax(fit.components[i])  # svd_flip
    np.testing.assert_allclose(fit.explained_variance, s[:3] ** 2 / (len(x) - 1))
    np.testing.assert_allclose(fit.explained_variance_ratio, s[:3] ** 2 / (s**2).sum())
    assert io.feature_columns(out) == ["PC1", "PC2", "PC3"]
    assert fit.table()["feature"].tolist() == feats and fit.record()["n_components"] == 3


def test_pca_matches_scikit_learn_and_variance_fraction():
    from sklearn.decomposition import PCA

    df = _wells()
    x = df[io.feature_columns(df)].to_numpy()
    fit = fit_pca(x, io.feature_columns(df), n_components=0.9)
    ref = PCA(n_components=0.9, svd_solver="full").fit(x)
    assert len(fit.components) == ref.n_components_
    np.testing.assert_allclose(np.abs(fit.transform(x)), np.abs(ref.transform(x)), atol=1e-8)
    assert fit.explained_variance_ratio.sum() >= 0.9 > fit.explained_variance_ratio[:-1].sum()
    assert len(fit_pca(x, io.feature_columns(df), n_components=99).components) == x.shape[1]
    with pytest.raises(ConfigError, match="integer >= 1 or a variance fraction"):
        fit_pca(x, io.feature_columns(df), n_components=2.5)


def test_pca_fitted_on_controls_only():
    df = _wells()
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    out, fit = pca(df, n_components=2, reference="negcon")
    x = df[io.feature_columns(df)].to_numpy()
    np.testing.assert_allclose(fit.center, x[neg].mean(axis=0))
    assert fit.n_reference == int(neg.sum()) and len(out) == len(df)
    with pytest.raises(InputDataError, match=r"missing \(NaN\) feature value"):
        bad = df.copy()
        bad.loc[0, "f0"] = np.nan
        pca(bad, n_components=2)


# --- Harmony ----------------------------------------------------------------------------------
def _two_batches(seed: int = 0) -> pd.DataFrame:
    """3 treatments x 2 batches x 30 wells; the batch shifts every well by a large offset."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(3, 6))
    shift = rng.normal(0, 6, size=6)
    rows = []
    for b in range(2):
        for t in range(3):
            x = centres[t] + rng.normal(0, 0.5, size=(30, 6)) + b * shift
            for r, v in enumerate(x):
                rows.append({io.PLATE: f"B{b}", io.WELL: f"{t}-{r}", io.PERTURBATION: f"t{t}",
                             **{f"f{i}": v[i] for i in range(6)}})
    return pd.DataFrame(rows)


def _separation(df: pd.DataFrame) -> dict[str, float]:
    """Silhouette of the batches and of the treatments, the fraction of each well's 10 nearest
    wells that lie in the other batch, and the treatment accuracy of the nearest other-batch well."""
    from sklearn.metrics import silhouette_score

    x = df[io.feature_columns(df)].to_numpy(np.float64)
    b, t = df[io.PLATE].to_numpy(), df[io.PERTURBATION].to_numpy()
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    knn = np.argsort(d, axis=1)[:, :10]
    d[b[:, None] == b[None]] = np.inf
    return {
        "batch_sil": float(silhouette_score(x, b)),
        "treatment_sil": float(silhouette_score(x, t)),
        "mixing": float((b[knn] != b[:, None]).mean()),
        "cross_nn": float((t[d.argmin(axis=1)] == t).mean()),
    }


@pytest.mark.skipif(not HAS_HARMONYPY, reason="harmonypy not installed")
def test_harmony_mixes_batches_and_keeps_treatments():
    from cytoscreen.profiles.harmony import harmony

    df = _two_batches()
    before = _separation(df)
    out, fit = harmony(df, n_clusters=3)
    after = _separation(out)
    assert before["batch_sil"] > 0.4 and before["mixing"] == 0  # the batches lie apart
    assert after["batch_sil"] < 0.1 and after["mixing"] > before["mixing"]
    # treatment structure kept: treatments separate better, other-batch neighbours match
    assert after["treatment_sil"] > max(before["treatment_sil"], 0.6)
    assert after["cross_nn"] >= 0.95
    rec = fit.record()
    assert rec["batch_sizes"] == {"B0": 90, "B1": 90} and rec["n_clusters"] == 3
    assert fit.table().shape == (6, 4)
    assert io.feature_columns(out) == io.feature_columns(df)
    with pytest.raises(InputDataError, match="at least two batches"):
        harmony(df[df[io.PLATE] == "B0"])


def test_harmony_without_harmonypy_is_a_config_error(monkeypatch):
    import builtins

    from cytoscreen.profiles import harmony as mod

    real = builtins.__import__

    def no_harmonypy(name, *args, **kwargs):
        if name == "harmonypy":
            raise ImportError("No module named 'harmonypy'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_harmonypy)
    with pytest.raises(ConfigError, match="pip install -c constraints.txt harmonypy"):
        mod.harmony(_two_batches())


# --- the chain and its config keys ------------------------------------------------------------
def test_settings_defaults_are_the_schema_defaults_and_all_off():
    d = section_defaults("profiles")
    s = TransformSettings.from_config(d)
    assert s == TransformSettings() and s.enabled == []
    for key in ("pca_components", "pca_reference", "harmony", "harmony_batch", "harmony_theta",
                "harmony_sigma", "harmony_clusters", "harmony_max_iter"):
        assert key in d
    on = TransformSettings.from_config({**d, "spherize": "ZCA", "pca_components": 3, "harmony": True})
    assert on.enabled == ["spherize", "pca", "harmony"]


def test_chain_order_spherize_then_pca():
    df = _wells()
    res = transform_profiles(df, TransformSettings(spherize="ZCA", pca_components=2))
    white, _ = sphere(df, method="ZCA")
    expected, _ = pca(white, n_components=2)
    np.testing.assert_allclose(
        res.profiles[["PC1", "PC2"]].to_numpy(), expected[["PC1", "PC2"]].to_numpy(), atol=1e-6
    )
    assert list(res.fits) == ["spherize", "pca"]


@pytest.mark.skipif(not HAS_HARMONYPY, reason="harmonypy not installed")
def test_select_command_runs_the_chain_and_saves_fits(tmp_path):
    df = _wells()
    src, out = tmp_path / "n.parquet", tmp_path / "fs.parquet"
    df.to_parquet(src)
    rc = cli.main(["profiles", "select", str(src), str(out), "--operations", "variance_threshold",
                   "--spherize", "ZCA", "--pca-components", "3", "--harmony"])
    assert rc == 0
    got = pd.read_parquet(out)
    assert io.feature_columns(got) == ["PC1", "PC2", "PC3"]
    rec = json.loads((tmp_path / "fs.selection.json").read_text())
    assert rec["spherize"]["method"] == "ZCA" and rec["pca"]["n_components"] == 3
    assert rec["harmony"]["batch_columns"] == [io.PLATE]
    for name in ("spherize", "pca", "harmony"):
        assert json.loads((tmp_path / f"fs.{name}.json").read_text())["operation"] == name
        assert (tmp_path / f"fs.{name}.parquet").exists()
    pcs = pd.read_parquet(tmp_path / "fs.pca.parquet")
    assert pcs.columns.tolist() == ["feature", "center", "PC1", "PC2", "PC3"]
    params = io.read_provenance(out)["parameters"]
    assert params["transforms"]["enabled"] == ["spherize", "pca", "harmony"]


def test_chain_takes_transform_keys_and_a_reference_mask():
    from cytoscreen.profiles.chain import profile_chain

    df = _wells()
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    res = profile_chain(
        df, operations=(), normalize_method="standardize", reference=pd.Series(neg),
        transforms={"spherize": "ZCA", "pca_components": 0.95, "pca_reference": "negcon"},
    )
    assert list(res.fits) == ["spherize", "pca"]
    assert res.fits["spherize"].n_reference == int(neg.sum())
    assert res.fits["pca"].n_reference == int(neg.sum())
    assert io.feature_columns(res.feature_selected)[0] == "PC1"
    assert res.selection["operations"] == []


def test_single_transform_actions(tmp_path):
    df = _wells()
    src = tmp_path / "fs.parquet"
    df.to_parquet(src)
    out = tmp_path / "pcs.parquet"
    assert cli.main(["profiles", "pca", str(src), str(out), "--pca-components", "2"]) == 0
    expected, _ = pca(df, n_components=2)
    got = pd.read_parquet(out)
    np.testing.assert_allclose(got[["PC1", "PC2"]].to_numpy(), expected[["PC1", "PC2"]].to_numpy())
    assert json.loads((tmp_path / "pcs.pca.json").read_text())["n_components"] == 2
    white = tmp_path / "white.parquet"
    assert cli.main(["profiles", "spherize", str(src), str(white), "--method", "ZCA",
                     "--spherize-epsilon", "0"]) == 0
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    x = pd.read_parquet(white)[io.feature_columns(df)].to_numpy(np.float64)
    np.testing.assert_allclose(np.cov(x[neg].T), np.eye(x.shape[1]), atol=1e-5)
    assert io.read_provenance(white)["parameters"]["enabled"] == ["spherize"]
    if HAS_HARMONYPY:
        two = tmp_path / "two.parquet"
        _two_batches().to_parquet(two)
        assert cli.main(["profiles", "harmony", str(two), str(tmp_path / "h.parquet"),
                         "--harmony-clusters", "3"]) == 0
        assert json.loads((tmp_path / "h.harmony.json").read_text())["n_clusters"] == 3


# --- shrinkage sphering and arcsinh (G's chain) -------------------------------------------------
@pytest.mark.parametrize("n_controls", [60, 4])
def test_shrinkage_sphering_is_the_ridge_inverse_square_root(n_controls):
    df = _wells()
    feats = io.feature_columns(df)
    neg = df.index[df[io.PERT_TYPE] == "negcon"][:n_controls]
    mask = df.index.isin(neg)
    out, fit = sphere(df, method="ZCA", reference=mask, epsilon=0.1, regularization="shrinkage")
    x = df[feats].to_numpy()
    ref = x[mask]
    c = np.cov(ref.T)  # ddof 1
    delta = 0.1 * np.trace(c) / len(feats)
    vals, vecs = np.linalg.eigh(c + delta * np.eye(len(feats)))
    w = vecs @ np.diag(vals**-0.5) @ vecs.T  # (C + delta I)^(-1/2)
    expected = (x - ref.mean(axis=0)) @ w
    np.testing.assert_allclose(out[feats].to_numpy(np.float64), expected, rtol=1e-4, atol=1e-4)
    rec = fit.record()
    assert rec["regularization"] == "shrinkage" and rec["shrinkage_delta"] == pytest.approx(delta)
    assert rec["rank"] == min(n_controls - 1, len(feats))
    if n_controls < len(feats):  # unseen directions keep the largest gain delta^-1/2
        assert rec["null_weight"] == pytest.approx(delta**-0.5)


@pytest.mark.parametrize(("regularization", "method"), [("shrinkage", "ZCA"), ("singular", "ZCA-cor")])
def test_spherize_center_normalization_applies_w_about_the_origin(regularization, method):
    df = _wells()
    feats = io.feature_columns(df)
    x = df[feats].to_numpy()
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    kw = {"method": method, "epsilon": 0.1, "regularization": regularization}
    about_ref, fit_ref = sphere(df, **kw)
    about_origin, fit = sphere(df, center="normalization", **kw)
    mu = x[neg].mean(axis=0)
    # the same W: W((x - mu)/s) with the reference centre, W(x/s) about the origin, so the two
    # differ by the constant row W(mu/s) (the whitened reference mean)
    shift = fit_ref.fit.transform(np.zeros((1, len(feats)))) * -1  # W(mu/s)
    np.testing.assert_allclose(fit.fit.transform(mu[None, :]), shift, rtol=1e-9, atol=1e-12)
    got = about_origin[feats].to_numpy(np.float64)
    np.testing.assert_allclose(got, about_ref[feats].to_numpy(np.float64) + shift, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, fit.fit.transform(x), rtol=1e-5, atol=1e-5)
    if regularization == "shrinkage":  # W = (C + delta I)^(-1/2), applied to x itself
        c = np.cov(x[neg].T)
        vals, vecs = np.linalg.eigh(c + 0.1 * np.trace(c) / len(feats) * np.eye(len(feats)))
        np.testing.assert_allclose(got, x @ (vecs @ np.diag(vals**-0.5) @ vecs.T), rtol=1e-4, atol=1e-4)
    # the controls keep their offset: their mean is W(mu/s), not 0
    np.testing.assert_allclose(got[neg].mean(axis=0), shift[0], rtol=1e-4, atol=1e-4)
    assert np.abs(shift).max() > 0.1
    assert fit.record()["center"] == "normalization" and fit_ref.record()["center"] == "reference"
    table = fit.table()
    np.testing.assert_allclose(table["reference_mean"], mu, rtol=1e-12)
    assert (table["center"] == 0).all() and "reference_mean" not in fit_ref.table()
    res = transform_profiles(df, TransformSettings(spherize=method, spherize_epsilon=0.1,
                                                   spherize_regularization=regularization,
                                                   spherize_center="normalization"))
    np.testing.assert_array_equal(res.profiles[feats].to_numpy(), about_origin[feats].to_numpy())
    with pytest.raises(ConfigError, match="unknown sphering centre"):
        sphere(df, center="median")


def test_shrinkage_approaches_whitening_and_rejects_pca():
    df = _wells()
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    out, _ = sphere(df, method="ZCA-cor", epsilon=1e-9, regularization="shrinkage")
    x = out[io.feature_columns(out)].to_numpy(np.float64)
    np.testing.assert_allclose(np.cov(x[neg].T), np.eye(x.shape[1]), atol=1e-4)
    with pytest.raises(ConfigError, match="ZCA and ZCA-cor"):
        sphere(df, method="PCA", regularization="shrinkage")
    with pytest.raises(ConfigError, match="unknown sphering regularization"):
        sphere(df, regularization="tikhonov")


def test_asinh_runs_first_and_is_recorded(tmp_path):
    df = _wells()
    feats = io.feature_columns(df)
    res = transform_profiles(df, TransformSettings(asinh=True, spherize="ZCA",
                                                   spherize_regularization="shrinkage",
                                                   spherize_epsilon=0.1))
    assert list(res.fits) == ["asinh", "spherize"]
    bent = df.copy()
    bent[feats] = np.arcsinh(df[feats])
    expected, _ = sphere(bent, method="ZCA", epsilon=0.1, regularization="shrinkage")
    np.testing.assert_allclose(res.profiles[feats].to_numpy(), expected[feats].to_numpy(), atol=1e-5)
    src, out = tmp_path / "n.parquet", tmp_path / "a.parquet"
    df.to_parquet(src)
    assert cli.main(["profiles", "asinh", str(src), str(out)]) == 0
    np.testing.assert_allclose(pd.read_parquet(out)[feats].to_numpy(), np.arcsinh(df[feats].to_numpy()),
                               rtol=1e-6)
    assert json.loads((tmp_path / "a.asinh.json").read_text())["statistics"] is None
    assert cli.main(["profiles", "select", str(src), str(tmp_path / "s.parquet"), "--operations",
                     "variance_threshold", "--asinh", "--spherize", "ZCA",
                     "--spherize-regularization", "shrinkage", "--spherize-epsilon", "0.1"]) == 0
    rec = json.loads((tmp_path / "s.selection.json").read_text())
    assert rec["asinh"]["operation"] == "asinh" and rec["spherize"]["regularization"] == "shrinkage"


# --- normalize_scale: screen -------------------------------------------------------------------
def test_screen_scale_centres_per_plate_and_scales_once(tmp_path):
    from cytoscreen.profiles.chain import profile_chain
    from cytoscreen.profiles.normalize import normalize

    df = _wells()
    feats = io.feature_columns(df)
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    centred = normalize(df, scale_over="screen")
    by_hand = df[feats].to_numpy().copy()
    for plate in df[io.PLATE].unique():
        rows = (df[io.PLATE] == plate).to_numpy()
        by_hand[rows] -= np.median(df.loc[rows & neg, feats].to_numpy(), axis=0)
    np.testing.assert_allclose(centred[feats].to_numpy(), by_hand, rtol=1e-5, atol=1e-5)
    mad = 1.4826 * np.median(np.abs(by_hand[neg] - np.median(by_hand[neg], axis=0)), axis=0)
    res = profile_chain(df, operations=(), normalize_scale="screen")
    np.testing.assert_allclose(res.normalized[feats].to_numpy(), by_hand / mad, rtol=1e-4, atol=1e-4)
    # the CLI: normalize per plate with --scale screen, then select divides and saves the scale
    src = tmp_path / "w.parquet"
    df.to_parquet(src)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profiles:\n  normalize_scale: screen\n")
    assert cli.main(["profiles", "normalize", str(src), str(tmp_path / "n.parquet"), "--config", str(cfg)]) == 0
    assert cli.main(["profiles", "select", str(tmp_path / "n.parquet"), str(tmp_path / "s.parquet"),
                     "--config", str(cfg), "--operations", "variance_threshold"]) == 0
    scale = pd.read_parquet(tmp_path / "s.scale.parquet").set_index("feature")["scale"]
    np.testing.assert_allclose(scale[feats].to_numpy(), mad, rtol=1e-5)
    assert json.loads((tmp_path / "s.selection.json").read_text())["scale"]["over"] == "screen"


def test_spherize_reference_apart_from_the_normalize_reference():
    df = _wells()
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    res = transform_profiles(df, TransformSettings(spherize="ZCA", reference="all",
                                                   spherize_reference="negcon"))
    assert res.fits["spherize"].n_reference == int(neg.sum())
    res = transform_profiles(df, TransformSettings(spherize="ZCA", reference="all"))
    assert res.fits["spherize"].n_reference == len(df)


def test_select_writes_the_untransformed_table(tmp_path):
    df = _wells()
    feats = io.feature_columns(df)
    src, out, pre = tmp_path / "n.parquet", tmp_path / "s.parquet", tmp_path / "pre.parquet"
    df.to_parquet(src)
    assert cli.main(["profiles", "select", str(src), str(out), "--operations", "variance_threshold",
                     "--asinh", "--spherize", "ZCA", "--pca-components", "2",
                     "--untransformed", str(pre)]) == 0
    before = pd.read_parquet(pre)
    # asinh applied, sphering and PCA not
    np.testing.assert_allclose(before[feats].to_numpy(), np.arcsinh(df[feats].to_numpy()), rtol=1e-6)
    assert io.feature_columns(pd.read_parquet(out)) == ["PC1", "PC2"]
    assert io.read_provenance(pre)["parameters"]["before"] == ["spherize", "pca", "harmony"]
