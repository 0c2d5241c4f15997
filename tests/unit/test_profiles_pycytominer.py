"""Agreement with pycytominer itself (a test-only dependency) on BBBC021 and synthetic tables.

Values agree within 1e-5 relative to max(1, |value|) (our features are float32, pycytominer's
float64, and mad_robustize of a feature constant in the controls reaches 1e18), selections agree as
column sets.  pycytominer 1.7 works under pandas 3, so it is called directly; its
``variance_threshold`` of pycytominer <= 1.2 (freq_cut/unique_cut) is ``frequency_threshold`` in
newer releases and is called by whichever name the installed version has.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.profiles import aggregate, consensus, feature_select, normalize
from cytoscreen.profiles.normalize import fit_spherize
from tests.fixtures.profiles import (
    BBBC021_META,
    DMSO_QUERY,
    NEGCON_QUERY,
    bbbc021_wells,
    synthetic_sites,
    synthetic_wells,
)

pc = pytest.importorskip("pycytominer")
pytestmark = pytest.mark.filterwarnings("ignore")

TOL = 1e-5


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    ok = ~np.isnan(theirs)
    err = np.abs(ours[ok] - theirs[ok]) / np.maximum(1.0, np.abs(theirs[ok]))
    assert err.max(initial=0) < TOL, f"max relative difference {err.max()}"


def pyc_variance_name() -> str:
    from pycytominer import operations

    return "frequency_threshold" if hasattr(operations, "frequency_threshold") else (
        "variance_threshold"
    )


def pyc_ops(ops):
    return [pyc_variance_name() if op == "variance_threshold" else op for op in ops]


def feats_of(df: pd.DataFrame) -> list[str]:
    return io.feature_columns(df)


def pyc_normalize_by_plate(df, features, meta, query, method, **kw):
    parts = [
        pc.normalize(g, features=features, meta_features=meta, samples=query, method=method, **kw)
        for _, g in df.groupby(io.PLATE, sort=False)
    ]
    return pd.concat(parts).loc[df.index]


@pytest.fixture(scope="module")
def bbbc():
    return bbbc021_wells()


@pytest.fixture(scope="module")
def bbbc_normalized(bbbc):
    out = normalize(bbbc)
    feats = feats_of(out)
    out[feats] = out[feats].astype(np.float64)  # both tools see the same numbers
    return out


@pytest.mark.parametrize("method", ["mad_robustize", "standardize", "robustize"])
def test_normalize_bbbc021(bbbc, method):
    feats = feats_of(bbbc)
    ours = normalize(bbbc, method=method)  # negcon -> Metadata_Compound == DMSO
    theirs = pyc_normalize_by_plate(bbbc, feats, BBBC021_META, DMSO_QUERY, method)
    assert list(ours.columns) == list(bbbc.columns)
    assert ours[BBBC021_META].equals(bbbc[BBBC021_META])
    assert_close(ours[feats].to_numpy(), theirs[feats].to_numpy())


@pytest.mark.parametrize("method", ["mad_robustize", "standardize", "robustize"])
@pytest.mark.parametrize("reference", ["negcon", "all"])
def test_normalize_synthetic(method, reference):
    df = synthetic_wells(plates=3, wells=30, features=10, seed=4)
    df.loc[5, "f4"] = np.nan  # a missing value is skipped by both
    feats = feats_of(df)
    meta = io.metadata_columns(df)
    ours = normalize(df, method=method, reference=reference)
    query = NEGCON_QUERY if reference == "negcon" else "all"
    theirs = pyc_normalize_by_plate(df, feats, meta, query, method)
    assert_close(ours[feats].to_numpy(), theirs[feats].to_numpy())
    assert ours[feats].dtypes.eq(np.float32).all()


@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_matches_pycytominer_and_whitens(method):
    from pycytominer.operations.transform import Spherize

    df = synthetic_wells(plates=1, wells=80, features=8, negcon=40, seed=2, dtype=np.float64)
    df = df.drop(columns=["f3"])  # nearly constant
    feats = feats_of(df)
    ours = normalize(df, method="spherize", spherize_method=method, by=())
    out_cols = feats_of(ours)
    a = ours[out_cols].to_numpy(np.float64)
    ref = (df[io.PERT_TYPE] == "negcon").to_numpy()

    # the mathematical definition: the reference rows come out white (cov = I)
    assert np.abs(np.cov(a[ref].T) - np.eye(len(feats))).max() < 1e-4
    if method.startswith("PCA"):
        assert out_cols == [f"PC{i}" for i in range(1, len(feats) + 1)]
    else:  # ZCA is the symmetric whitening matrix
        fit = fit_spherize(df.loc[ref, feats].to_numpy(), feats, method=method, epsilon=0)
        assert np.allclose(fit.weights, fit.weights.T, atol=1e-10)

    s = Spherize(method=method, epsilon=1e-6, return_numpy=True).fit(df.loc[ref, feats])
    theirs = np.asarray(s.transform(df[feats]))
    if np.abs(np.cov(theirs[ref].T) - np.eye(len(feats))).max() > 1e-3:
        pytest.skip("installed pycytominer has the spherize bug #747 (fixed by PR #748)")
    assert_close(a, theirs)


def test_spherize_zca_cor_definition():
    """ZCA-cor = P^-1/2 V^-1/2 (Kessy et al. 2018) on the centered reference."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 3
    fit = fit_spherize(x, [f"f{i}" for i in range(5)], method="ZCA-cor", epsilon=0)
    sd = x.std(axis=0, ddof=1)
    corr = np.corrcoef(x.T)
    vals, vecs = np.linalg.eigh(corr)
    p_inv_sqrt = vecs @ np.diag(vals**-0.5) @ vecs.T
    expected = (x - x.mean(axis=0)) / sd @ p_inv_sqrt
    np.testing.assert_allclose(fit.transform(x), expected, atol=1e-8)


OPS = ["variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers"]


@pytest.mark.parametrize("op", OPS)
def test_select_each_operation_bbbc021(bbbc_normalized, op):
    feats = feats_of(bbbc_normalized)
    ours = feature_select(bbbc_normalized, operations=[op])
    theirs = pc.feature_select(bbbc_normalized, features=feats, operation=pyc_ops([op]))
    assert set(ours.kept) == set(feats_of(theirs)), op
    assert ours.profiles.shape[0] == len(bbbc_normalized)


def test_select_chain_and_blocklist_bbbc021(bbbc_normalized):
    feats = feats_of(bbbc_normalized)
    ops = ["drop_na_columns", "variance_threshold", "correlation_threshold", "blocklist",
           "drop_outliers"]
    block = ["Cells_AreaShape_Center_X", "Cells_AreaShape_Center_Y", "Nuclei_AreaShape_Center_X"]
    ours = feature_select(bbbc_normalized, operations=ops, blocklist=block)
    theirs = pc.feature_select(bbbc_normalized, features=feats, operation=pyc_ops(ops),
                               blocklist=block)
    assert set(ours.kept) == set(feats_of(theirs))
    assert 50 < len(ours.kept) < len(feats)


@pytest.mark.parametrize("op", OPS)
def test_select_each_operation_synthetic(op):
    df = synthetic_wells(plates=4, wells=24, features=30, seed=11)
    feats = feats_of(df)
    df[feats] = df[feats].astype(np.float64)
    rng = np.random.default_rng(0)
    df.loc[rng.choice(len(df), 10, replace=False), "f5"] = np.nan  # 10% missing: dropped
    df.loc[0, "f6"] = np.nan  # 1% missing: kept
    df.loc[3, "f7"] = 900.0  # an outlier
    ours = feature_select(df, operations=[op], corr_threshold=0.8)
    theirs = pc.feature_select(df, features=feats, operation=pyc_ops([op]), corr_threshold=0.8)
    assert set(ours.kept) == set(feats_of(theirs))
    assert ours.operations[0].dropped or op == "drop_outliers"


def test_select_samples_negcon_synthetic():
    df = synthetic_wells(plates=2, wells=40, features=20, seed=5)
    feats = feats_of(df)
    df[feats] = df[feats].astype(np.float64)
    ops = ["variance_threshold", "correlation_threshold"]
    ours = feature_select(df, operations=ops, samples="negcon", corr_threshold=0.7)
    theirs = pc.feature_select(df, features=feats, operation=pyc_ops(ops), samples=NEGCON_QUERY,
                               corr_threshold=0.7)
    assert set(ours.kept) == set(feats_of(theirs))


@pytest.mark.parametrize("method", ["median", "mean"])
def test_aggregate_synthetic(method):
    sites = synthetic_sites(plates=2, wells=12, sites=4)
    sites.loc[5, "f1"] = np.nan
    feats = feats_of(sites)
    ours = aggregate(sites, method=method, exclude_qc_failed=False)
    theirs = pc.aggregate(sites, strata=[io.PLATE, io.WELL], features=feats, operation=method)
    merged = ours.merge(theirs, on=[io.PLATE, io.WELL], suffixes=("", "_pyc"))
    assert len(merged) == len(ours) == len(theirs)
    assert_close(merged[feats].to_numpy(), merged[[f + "_pyc" for f in feats]].to_numpy())


def test_aggregate_qc_excluded_equals_pycytominer_on_passing_sites():
    sites = synthetic_sites(plates=2, wells=12, sites=3)
    feats = feats_of(sites)
    ours = aggregate(sites)
    passing = sites[~sites["QC_blurry"]]
    theirs = pc.aggregate(passing, strata=[io.PLATE, io.WELL], features=feats)
    merged = ours.merge(theirs, on=[io.PLATE, io.WELL], suffixes=("", "_pyc"))
    assert_close(merged[feats].to_numpy(), merged[[f + "_pyc" for f in feats]].to_numpy())


@pytest.mark.parametrize("method", ["median", "modz"])
def test_consensus_bbbc021(bbbc_normalized, method):
    selected = feature_select(bbbc_normalized).profiles
    feats = feats_of(selected)
    by = ["Metadata_Compound", "Metadata_Concentration"]
    ours = consensus(selected, method=method)  # default columns fall back to compound x conc
    theirs = pc.consensus(selected, replicate_columns=by, features=feats, operation=method)
    assert len(ours) == len(theirs) == 21
    merged = ours.merge(theirs, on=by, suffixes=("", "_pyc"))
    assert len(merged) == 21
    assert_close(merged[feats].to_numpy(), merged[[f + "_pyc" for f in feats]].to_numpy())


@pytest.mark.parametrize("modz_method", ["spearman", "pearson"])
def test_modz_synthetic(modz_method):
    df = synthetic_wells(plates=4, wells=20, features=15, seed=9)
    feats = feats_of(df)
    by = [io.PERTURBATION, io.CONCENTRATION]
    ours = consensus(df, method="modz", modz_method=modz_method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = pc.consensus(df, replicate_columns=by, features=feats, operation="modz",
                              modz_args={"method": modz_method})
    merged = ours.merge(theirs, on=by, suffixes=("", "_pyc"))
    assert len(merged) == len(ours) == len(theirs)
    assert_close(merged[feats].to_numpy(), merged[[f + "_pyc" for f in feats]].to_numpy())
