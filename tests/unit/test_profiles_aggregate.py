"""Site -> well aggregation: statistics by hand, QC exclusion, metadata handling, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles import aggregate, groups
from cytoscreen.profiles.aggregate import join_qc
from cytoscreen.profiles.columns import N_SITES_QC_FAILED
from cytoscreen.profiles.groups import group_reduce
from tests.fixtures.profiles import synthetic_sites


def tiny_sites() -> pd.DataFrame:
    return pd.DataFrame(
        {
            io.PLATE: ["P1"] * 5 + ["P2"] * 2,
            io.WELL: ["B02", "B02", "B02", "A01", "A01", "A01", "A01"],
            io.SITE: [1, 2, 3, 1, 2, 1, 2],
            io.PERT_TYPE: ["trt"] * 3 + ["negcon"] * 4,
            "Metadata_DNA_FocusScore": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            "QC_blurry": [False, False, True, False, False, False, False],
            "a": np.array([1, 2, 100, 4, 6, 7, 9], dtype=np.float32),
            "b": np.array([3, 1, 2, 0, 0, 5, 5], dtype=np.float32),
        }
    )


def test_median_by_hand_and_qc_exclusion(caplog):
    with caplog.at_level(logging.INFO):
        out = aggregate(tiny_sites())
    # first-appearance order: P1/B02, P1/A01, P2/A01; the blurry site (a=100) is left out
    assert out[io.WELL].tolist() == ["B02", "A01", "A01"]
    assert out["a"].tolist() == [1.5, 5.0, 8.0]
    assert out["b"].tolist() == [2.0, 0.0, 5.0]
    assert out[io.N_SITES].tolist() == [2, 2, 2]
    assert out[N_SITES_QC_FAILED].tolist() == [1, 0, 0]
    assert out["a"].dtype == np.float32
    # QC flags summarised by the count; metadata varying within a well dropped
    assert not io.qc_columns(out)
    assert io.SITE not in out and "Metadata_DNA_FocusScore" not in out
    assert io.PERT_TYPE in out
    assert "excluded 1 of 7 site rows that failed QC (QC_blurry: 1)" in caplog.text


def test_mean_and_include_qc_failed():
    out = aggregate(tiny_sites(), method="mean", exclude_qc_failed=False)
    assert out["a"].tolist()[0] == pytest.approx(103 / 3)
    assert out[io.N_SITES].tolist() == [3, 2, 2]


def test_well_with_every_site_failed_is_dropped_and_named(caplog):
    sites = tiny_sites()
    sites.loc[sites[io.PLATE] == "P2", "QC_blurry"] = True
    with caplog.at_level(logging.WARNING):
        out = aggregate(sites)
    assert len(out) == 2
    assert "1 group(s) have no site that passed QC" in caplog.text and "P2" in caplog.text


def test_all_failed_is_an_error():
    sites = tiny_sites()
    sites["QC_blurry"] = True
    with pytest.raises(InputDataError, match="failed QC"):
        aggregate(sites)


def test_median_matches_pandas_on_uneven_groups_with_nan():
    rng = np.random.default_rng(1)
    n = 500
    codes = rng.integers(0, 37, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[rng.integers(0, n, 20), rng.integers(0, 6, 20)] = np.nan
    _, codes = np.unique(codes, return_inverse=True)
    x[codes == 0, 2] = np.nan  # a group whose feature is entirely missing
    ngroups = codes.max() + 1
    for method in ("median", "mean"):
        ours = group_reduce(x, codes, ngroups, method)
        ref = pd.DataFrame(x.astype(np.float64)).groupby(codes).agg(method).to_numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)



@pytest.mark.parametrize("n", range(1, 20))
def test_sorting_and_median_networks(n):
    from cytoscreen.profiles.groups import median_network, sorting_network

    v = np.random.default_rng(n).integers(0, 4, (n, 400))  # many ties
    full, mid = v.copy(), v.copy()
    for net, w in ((sorting_network(n), full), (median_network(n), mid)):
        for i, j in net:
            w[i], w[j] = np.minimum(w[i], w[j]), np.maximum(w[i], w[j])
    np.testing.assert_array_equal(full, np.sort(v, axis=0))
    middle = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    np.testing.assert_array_equal(mid[middle], full[middle])
    assert len(median_network(n)) <= len(sorting_network(n))


@pytest.mark.parametrize("order", ["C", "F"])
def test_median_equals_pandas_exactly_on_runs_of_equal_groups(order, monkeypatch):
    """Runs of equal-size groups (13 and 14 sites, as after QC), tiles smaller than a run, both
    memory orders: every value equals pandas' median bit for bit (float32, even sizes via float64)."""
    monkeypatch.setattr(groups, "_TILE_LANES", 64)
    rng = np.random.default_rng(2)
    counts = np.r_[np.full(7, 14), np.full(40, 13), [1, 2]]
    codes = np.repeat(np.arange(len(counts)), counts)
    x = np.asarray(rng.normal(size=(len(codes), 70)).astype(np.float32), order=order)
    x[::7, 3] = np.nan
    ours = group_reduce(x, codes, len(counts), "median")
    ref = pd.DataFrame(x).groupby(codes).median().to_numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)

@pytest.mark.parametrize("order", ["C", "F"])
def test_large_groups_take_the_partition_median_with_the_same_values(order, monkeypatch):
    """Groups above _NETWORK_MAX_ROWS (a campaign's DMSO treatment: tens of thousands of wells) use
    np.partition a few features at a time: bit-equal to the network and to pandas, odd and even
    sizes, NaN columns, small feature chunks."""
    rng = np.random.default_rng(3)
    counts = np.r_[[301, 300], np.full(3, 13), [300]]
    codes = np.repeat(np.arange(len(counts)), counts)
    x = np.asarray(rng.normal(size=(len(codes), 40)).astype(np.float32), order=order)
    x[::11, 5] = np.nan
    ref = pd.DataFrame(x).groupby(codes).median().to_numpy()
    monkeypatch.setattr(groups, "_NETWORK_MAX_ROWS", 10**6)
    network = group_reduce(x, codes, len(counts), "median")
    monkeypatch.setattr(groups, "_NETWORK_MAX_ROWS", 100)
    monkeypatch.setattr(groups, "_TILE_LANES", 64)  # chunks of a few features
    partition = group_reduce(x, codes, len(counts), "median")
    assert partition.dtype == np.float32
    np.testing.assert_array_equal(partition, ref)
    np.testing.assert_array_equal(partition, network)


def test_synthetic_sites_shape():
    sites = synthetic_sites(plates=2, wells=12, sites=3)
    out = aggregate(sites)
    assert len(out) == 24
    assert out.loc[out[io.WELL] == "A02", io.N_SITES].tolist() == [2, 2]


def test_duplicate_sites_error():
    sites = pd.concat([tiny_sites(), tiny_sites().iloc[:1]])
    with pytest.raises(InputDataError, match="share their Metadata_Plate/Metadata_Well/Metadata_Site"):
        aggregate(sites)


def test_non_numeric_feature_error():
    sites = tiny_sites()
    sites["compound"] = "x"
    with pytest.raises(InputDataError, match="not numeric.*compound"):
        aggregate(sites)


def test_infinite_values_error():
    sites = tiny_sites()
    sites.loc[0, "a"] = np.inf
    with pytest.raises(InputDataError, match="1 infinite feature value"):
        aggregate(sites)


def test_unknown_method_and_missing_group_column():
    with pytest.raises(ConfigError, match="unknown aggregation method"):
        aggregate(tiny_sites(), method="max")
    with pytest.raises(InputDataError, match="column Metadata_Nope not in the table"):
        aggregate(tiny_sites(), by=("Metadata_Nope",))


def test_join_qc_adds_missing_flags():
    sites = tiny_sites().drop(columns=["QC_blurry"])
    qc = tiny_sites()[[io.PLATE, io.WELL, io.SITE, "QC_blurry"]]
    joined = join_qc(sites, qc)
    assert joined["QC_blurry"].tolist() == tiny_sites()["QC_blurry"].tolist()
    assert join_qc(tiny_sites(), qc) is not None
