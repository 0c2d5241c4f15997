"""Control quality of a plate: Z'-factor of a readout over the negcon and poscon wells.

- :func:`control_quality`: Z' = 1 - 3 (sd_p + sd_n) / |mu_p - mu_n| (sample standard deviations,
  ``ddof=1``; :func:`cytoscreen.stats.z_prime`) and the robust Z' (medians, 1.4826 x MAD).
- The readout of the control-quality section is :func:`cytoscreen.plate.resolve_readout`
  (``report.readout``; the dose stage uses the same rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.plate import has_values
from cytoscreen.report.wells import NOVELTY_PREFIX
from cytoscreen.stats import z_prime

#: Novelty splits whose control wells trained the model: their novelty values are in-sample.
IN_SAMPLE_SPLITS = ("train", "val")


def z_prime_verdict(z: float) -> str:
    """The usual reading of a Z'-factor: excellent (>= 0.5), acceptable (0-0.5), poor (< 0)."""
    if not np.isfinite(z):
        return "n/a"
    return "excellent" if z >= 0.5 else "acceptable" if z >= 0 else "poor"


@dataclass(frozen=True)
class ControlQuality:
    """Negcon vs poscon statistics of one readout over the wells of a plate."""

    readout: str | None
    n_negcon: int = 0
    n_poscon: int = 0
    mean_negcon: float = float("nan")
    sd_negcon: float = float("nan")
    mean_poscon: float = float("nan")
    sd_poscon: float = float("nan")
    z_prime: float = float("nan")
    robust_z_prime: float = float("nan")
    n_in_sample: int = 0
    note: str = ""

    @property
    def verdict(self) -> str:
        return z_prime_verdict(self.z_prime)


def in_sample(table: pd.DataFrame, readout: str | None) -> pd.Series:
    """True for the wells whose ``readout`` value is in-sample: a novelty column
    (``Metadata_Novelty_*``) of a control well the model trained on (``Metadata_Novelty_Split``
    train or val).  The autoencoder memorises those wells, so they score near zero and never enter a
    control distribution or Z'; calibration wells and cross-fitted controls are out-of-sample."""
    if readout is None or not str(readout).startswith(NOVELTY_PREFIX) or io.NOVELTY_SPLIT not in table.columns:
        return pd.Series(False, index=table.index)
    return table[io.NOVELTY_SPLIT].astype(str).str.strip().str.lower().isin(IN_SAMPLE_SPLITS)


def control_values(table: pd.DataFrame, readout: str) -> pd.Series:
    """``readout`` as floats, NaN where it is missing or :func:`in_sample`."""
    values = pd.to_numeric(table[readout], errors="coerce").astype(float)
    return values.mask(in_sample(table, readout))


def control_quality(
    summary: pd.DataFrame, readout: str | None, *, negcon: str = "negcon", poscon: str = "poscon"
) -> ControlQuality:
    """Z' (and robust Z') of ``readout`` over the negcon and poscon wells of a well summary, from
    out-of-sample values only (:func:`control_values`)."""
    if readout is None or readout not in summary.columns:
        return ControlQuality(readout=readout, note=f"readout {readout} is not available")
    pert = summary[io.PERT_TYPE].astype(str).str.lower()
    values = control_values(summary, readout)
    controls = pert.isin([negcon, poscon])
    n_in_sample = int((in_sample(summary, readout) & controls).sum())
    neg = values[pert == negcon].dropna().to_numpy()
    pos = values[pert == poscon].dropna().to_numpy()
    notes = []
    if len(neg) < 2 or len(pos) < 2:
        notes.append(
            f"Z' needs at least two {negcon} and two {poscon} wells with a value; "
            f"found {len(neg)} and {len(pos)}"
        )
    if n_in_sample:
        notes.append(
            f"{n_in_sample} control well(s) trained the novelty model (split train/val); their "
            f"in-sample values are left out"
        )
    return ControlQuality(
        readout=readout,
        n_negcon=len(neg),
        n_poscon=len(pos),
        mean_negcon=float(neg.mean()) if len(neg) else float("nan"),
        sd_negcon=float(neg.std(ddof=1)) if len(neg) > 1 else float("nan"),
        mean_poscon=float(pos.mean()) if len(pos) else float("nan"),
        sd_poscon=float(pos.std(ddof=1)) if len(pos) > 1 else float("nan"),
        z_prime=z_prime(pos, neg),
        robust_z_prime=z_prime(pos, neg, robust=True),
        n_in_sample=n_in_sample,
        note="; ".join(notes),
    )


def candidate_readouts(summary: pd.DataFrame, *, count_column: str = "Count_Nuclei") -> list[str]:
    """Columns worth a Z' line: novelty robust z and score, cell count, every channel's mean intensity."""
    cols = [io.NOVELTY_ROBUST_Z, io.NOVELTY_SCORE, count_column]
    cols += [c for c in summary.columns if str(c).endswith("_MeanIntensity")]
    return [c for c in dict.fromkeys(cols) if has_values(summary, c)]

