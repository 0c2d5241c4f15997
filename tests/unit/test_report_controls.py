"""Report controls: Z' against hand computations, control quality, the readout choice."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io, stats
from cytoscreen.report import controls as rc


def _wells(names, **cols):
    df = pd.DataFrame({io.WELL: names})
    for k, v in cols.items():
        df[k] = v
    return df



# --- Z' -------------------------------------------------------------------------------------------
def test_z_prime_matches_hand_computation():
    pos, neg = [10.0, 12.0, 14.0], [1.0, 2.0, 3.0]
    # mu_p 12, sd_p 2, mu_n 2, sd_n 1  ->  1 - 3 * 3 / 10
    assert stats.z_prime(pos, neg) == pytest.approx(0.1)
    assert stats.z_prime(neg, pos) == pytest.approx(0.1)  # symmetric
    # robust: medians 12 and 2, MADs 2 and 1 -> 1 - 3 * 1.4826 * 3 / 10
    assert stats.z_prime(pos, neg, robust=True) == pytest.approx(1 - 3 * 1.4826 * 3 / 10)
    assert stats.z_prime([1.0, np.nan, 3.0], [10.0, 10.0, 10.0, 10.0]) == pytest.approx(
        1 - 3 * np.sqrt(2) / 8
    )
    assert np.isnan(stats.z_prime([1.0], [2.0, 3.0]))
    assert np.isnan(stats.z_prime([1.0, 2.0], [1.0, 2.0]))
    assert rc.z_prime_verdict(0.7) == "excellent" and rc.z_prime_verdict(0.2) == "acceptable"
    assert rc.z_prime_verdict(-1) == "poor" and rc.z_prime_verdict(float("nan")) == "n/a"


def test_control_quality_on_a_well_summary():
    summary = pd.DataFrame(
        {
            io.PERT_TYPE: ["poscon"] * 3 + ["negcon"] * 3 + ["trt"],
            "r": [10.0, 12.0, 14.0, 1.0, 2.0, 3.0, 100.0],
        }
    )
    cq = rc.control_quality(summary, "r")
    assert (cq.n_poscon, cq.n_negcon) == (3, 3)
    assert cq.z_prime == pytest.approx(0.1) and cq.verdict == "acceptable"
    assert (cq.mean_poscon, cq.sd_poscon, cq.mean_negcon, cq.sd_negcon) == pytest.approx(
        (12, 2, 2, 1)
    )
    missing = rc.control_quality(summary, "nope")
    assert np.isnan(missing.z_prime) and "not available" in missing.note
    few = rc.control_quality(summary.iloc[2:], "r")
    assert np.isnan(few.z_prime) and "at least two" in few.note


def test_resolve_readout_order():
    s = pd.DataFrame({"Metadata_DNA_MeanIntensity": [1.0], "Metadata_Actin_MeanIntensity": [2.0]})
    assert rc.resolve_readout(s)[0] == "Metadata_DNA_MeanIntensity"
    s["Count_Nuclei"] = [3.0]
    assert rc.resolve_readout(s)[0] == "Count_Nuclei"
    s[io.NOVELTY_SCORE] = [np.nan]  # present but empty: skipped
    assert rc.resolve_readout(s)[0] == "Count_Nuclei"
    s[io.NOVELTY_SCORE] = [0.5]
    assert rc.resolve_readout(s) == (io.NOVELTY_SCORE, "auto: novelty score (novelty stage)")
    assert (
        rc.resolve_readout(s, "Metadata_Actin_MeanIntensity")[0] == "Metadata_Actin_MeanIntensity"
    )
    col, note = rc.resolve_readout(s, "Metadata_Mito_MeanIntensity")
    assert col is None and "not in the tables" in note
    assert rc.resolve_readout(s, dna_channel="Hoechst")[0] == io.NOVELTY_SCORE
    assert rc.resolve_readout(pd.DataFrame({"x": [1]}))[0] is None
