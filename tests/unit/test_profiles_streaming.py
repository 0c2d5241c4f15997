"""Streamed (plate by plate) feature selection and consensus equal the in-memory ones."""

import inspect

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError
from cytoscreen.profiles.consensus import consensus
from cytoscreen.profiles.select import feature_select
from cytoscreen.profiles.streaming import SelectionStats, select_from_stats, stream_consensus, stream_select


def _screen(n_plates=4, wells=40, n_feat=30, seed=0, nan=False):
    rng = np.random.default_rng(seed)
    plates = []
    for p in range(n_plates):
        z = rng.normal(size=(wells, 6))
        x = z @ rng.normal(size=(6, n_feat)) + 0.3 * rng.normal(size=(wells, n_feat)) + p
        x[:, 1] = x[:, 0] * 2 + 0.01 * rng.normal(size=wells)  # correlated pair
        x[:, 2] = np.round(x[:, 2] > 5)  # few distinct values: frequency rule
        x[:, 3] *= 1000  # outliers
        if nan:
            x[: wells // 5, 4] = np.nan  # 20 % missing: drop_na_columns
        df = pd.DataFrame(x.astype(np.float32), columns=[f"f{j:02d}" for j in range(n_feat)])
        df.insert(0, io.PLATE, f"P{p}")
        df.insert(1, io.WELL, [f"A{w + 1:02d}" for w in range(wells)])
        df.insert(2, io.PERT_TYPE, ["negcon" if w < 8 else "trt" for w in range(wells)])
        df.insert(3, io.PERTURBATION, ["DMSO" if w < 8 else f"c{(w + p) % 12}" for w in range(wells)])
        plates.append(df)
    return plates


def _write(tmp_path, plates):
    paths = []
    for df in plates:
        path = tmp_path / f"{df[io.PLATE].iloc[0]}.parquet"
        df.to_parquet(path, index=False)
        paths.append(path)
    return paths


@pytest.mark.parametrize("samples", ["all", "negcon"])
def test_stream_select_drops_the_same_columns(tmp_path, samples):
    plates = _screen(nan=True)
    ops = ("drop_na_columns", "variance_threshold", "correlation_threshold", "drop_outliers")
    whole = feature_select(pd.concat(plates, ignore_index=True), operations=ops, samples=samples,
                           corr_threshold=0.8)
    streamed = stream_select(_write(tmp_path, plates), operations=ops, samples=samples,
                             corr_threshold=0.8)
    assert streamed.kept == whole.kept
    assert [r.dropped for r in streamed.operations] == [r.dropped for r in whole.operations]
    assert streamed.n_samples == whole.n_samples
    dropped = {r.operation: r.dropped for r in streamed.operations}
    assert "f04" in dropped["drop_na_columns"] and "f03" in dropped["drop_outliers"]
    if samples == "all":
        assert "f02" in dropped["variance_threshold"]
        assert {"f00", "f01"} & set(dropped["correlation_threshold"])


def test_streamed_correlation_equals_in_memory():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 100).astype(np.float32)
    stats = SelectionStats(tuple(f"f{j}" for j in range(12)))
    for chunk in np.array_split(x, 7):
        stats.update(chunk)
    np.testing.assert_allclose(stats.correlation(range(12)), np.corrcoef(x.T.astype(np.float64)),
                               atol=1e-9)
    assert stats.n_rows == 500 and (stats.n_valid == 500).all()
    np.testing.assert_allclose(stats.max_abs, np.abs(x).max(axis=0))


def test_reservoir_sample_is_uniform_and_bounded():
    stats = SelectionStats(("a",), sample_rows=100, seed=3)
    for start in range(0, 10_000, 250):
        stats.update(np.arange(start, start + 250, dtype=np.float32)[:, None])
    sample = stats.sample[:, 0]
    assert len(sample) == 100 and len(np.unique(sample)) == 100
    # a uniform sample of 0..9999: its mean is within 4 standard errors of 4999.5
    assert abs(sample.mean() - 4999.5) < 4 * 2887 / 10


def test_spearman_is_refused():
    stats = SelectionStats(("a", "b"))
    stats.update(np.ones((3, 2)))
    with pytest.raises(ConfigError, match="pearson"):
        select_from_stats(stats, operations=("correlation_threshold",), corr_method="spearman")


def test_streamed_options_are_feature_selects():
    """select_from_stats takes feature_select's settings with feature_select's defaults (one
    definition), and the same checks."""
    from cytoscreen.profiles.select import SELECTION_OPTIONS, feature_select, selection_options

    defaults = selection_options()
    signature = inspect.signature(feature_select).parameters
    assert defaults == {k: signature[k].default for k in SELECTION_OPTIONS}
    assert defaults["corr_threshold"] == 0.9 and defaults["blocklist"] == ()
    assert selection_options(na_cutoff=0.5)["na_cutoff"] == 0.5
    stats = SelectionStats(("a", "b"))
    stats.update(np.ones((3, 2)))
    with pytest.raises(TypeError, match="corr_cut"):
        select_from_stats(stats, corr_cut=0.5)
    with pytest.raises(ConfigError, match="blocklist operation needs feature names"):
        select_from_stats(stats, operations=("blocklist",))
    with pytest.raises(ConfigError, match="unknown feature selection operation"):
        select_from_stats(stats, operations=("sphere",))


@pytest.mark.parametrize("method", ["median", "modz"])
def test_stream_consensus_equals_in_memory(tmp_path, method):
    plates = _screen(n_feat=8)
    by = [io.PERTURBATION]
    whole = consensus(pd.concat(plates, ignore_index=True), by=by, method=method)
    whole = whole.sort_values(by, ignore_index=True)
    streamed = stream_consensus(((str(i), df) for i, df in enumerate(plates)), tmp_path / "spill",
                                by=by, n_buckets=3, method=method)
    assert list(streamed[io.PERTURBATION]) == list(whole[io.PERTURBATION])
    assert list(streamed[io.N_WELLS]) == list(whole[io.N_WELLS])
    feats = [f"f{j:02d}" for j in range(8)]
    np.testing.assert_allclose(streamed[feats].to_numpy(), whole[feats].to_numpy(), atol=1e-5)
    assert not list((tmp_path / "spill").iterdir())


@pytest.mark.parametrize("method", ["median", "modz"])
@pytest.mark.parametrize("order", ["sorted", "first"])
def test_stream_consensus_same_table_as_in_memory(tmp_path, method, order):
    """Same rows, same order, same values and dtypes as the in-memory consensus (two ``by`` columns,
    missing values); the features are one float32 block with contiguous columns."""
    plates = _screen(n_feat=8, nan=True)
    for p, df in enumerate(plates):
        df.insert(4, io.CONCENTRATION, np.where(np.arange(len(df)) % 3 == 0, 1.0, 10.0) + p % 2)
    by = [io.PERTURBATION, io.CONCENTRATION]
    whole = consensus(pd.concat(plates, ignore_index=True), by=by, method=method)
    if order == "sorted":
        whole = whole.sort_values(by, kind="stable", ignore_index=True)
    streamed = stream_consensus(((str(i), df) for i, df in enumerate(plates)), tmp_path / "spill",
                                by=by, n_buckets=4, method=method, order=order)
    pd.testing.assert_frame_equal(streamed, whole, check_exact=True)
    assert len(streamed) > 20 and streamed[io.N_WELLS].max() > 1
    assert streamed["f03"].to_numpy().flags.c_contiguous
    assert not list((tmp_path / "spill").iterdir())
    with pytest.raises(ConfigError, match="order"):
        stream_consensus(iter([]), tmp_path / "spill", by=by, order="random")
