"""Report controls: Z' against hand computations, control quality, the readout choice."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io, plate, stats
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
    assert plate.resolve_readout(s)[0] == "Metadata_DNA_MeanIntensity"
    s["Count_Nuclei"] = [3.0]
    assert plate.resolve_readout(s)[0] == "Count_Nuclei"
    s[io.NOVELTY_SCORE] = [np.nan]  # present but empty: skipped
    assert plate.resolve_readout(s)[0] == "Count_Nuclei"
    s[io.NOVELTY_SCORE] = [0.5]
    assert plate.resolve_readout(s) == (io.NOVELTY_SCORE, "auto: novelty score (novelty stage)")
    assert (
        plate.resolve_readout(s, "Metadata_Actin_MeanIntensity")[0] == "Metadata_Actin_MeanIntensity"
    )
    col, note = plate.resolve_readout(s, "Metadata_Mito_MeanIntensity")
    assert col is None and "not in the tables" in note
    assert plate.resolve_readout(s, dna_channel="Hoechst")[0] == io.NOVELTY_SCORE
    assert plate.resolve_readout(pd.DataFrame({"x": [1]}))[0] is None
    # the novelty stage's plate hit readout comes first
    s[io.NOVELTY_ROBUST_Z] = [4.0]
    assert plate.resolve_readout(s)[0] == io.NOVELTY_ROBUST_Z
    assert rc.candidate_readouts(s)[:2] == [io.NOVELTY_ROBUST_Z, io.NOVELTY_SCORE]


def test_in_sample_rule():
    t = pd.DataFrame(
        {
            io.NOVELTY_SCORE: [1e-8, 2e-8, 1.0, 1.1, 5.0],
            io.NOVELTY_SPLIT: ["train", " Val", "calibration", "crossfit", "none"],
            "Count_Nuclei": [10.0, 11.0, 12.0, 13.0, 14.0],
        }
    )
    # train/val wells trained the model: their novelty values are in-sample; cross-fitted and
    # calibration controls are out-of-sample; other readouts are never in-sample
    assert rc.in_sample(t, io.NOVELTY_SCORE).tolist() == [True, True, False, False, False]
    assert not rc.in_sample(t, "Count_Nuclei").any() and not rc.in_sample(t, None).any()
    assert not rc.in_sample(t.drop(columns=io.NOVELTY_SPLIT), io.NOVELTY_SCORE).any()
    v = rc.control_values(t, io.NOVELTY_SCORE)
    assert np.isnan(v[:2]).all() and v[2:].tolist() == [1.0, 1.1, 5.0]
