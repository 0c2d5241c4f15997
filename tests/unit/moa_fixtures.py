"""Synthetic well tables for the MoA tests (hand-built Gaussian profiles; no images).

Every MoA is a random direction in feature space; its compounds lie near that direction (a small
compound-specific deviation), doses scale the effect, and wells add Gaussian noise.  DMSO wells are
noise around zero.  Plates are batches: every compound sits on the plates of one batch (as in
BBBC021, where a compound was imaged in one week).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cytoscreen.io import BATCH, CONCENTRATION, MOA, PERT_TYPE, PERTURBATION, PLATE, WELL


def synthetic_wells(
    *,
    n_moas: int = 4,
    compounds_per_moa: int = 3,
    doses: tuple[float, ...] = (1.0, 3.0),
    replicates: int = 3,
    n_dmso: int = 4,
    n_batches: int = 2,
    n_features: int = 24,
    compound_sd: float = 0.25,
    noise_sd: float = 0.3,
    seed: int = 0,
) -> pd.DataFrame:
    """Well-level profiles with known MoA classes.

    Replicate r of a compound goes to plate ``B<batch>_P<r>``; each batch has ``replicates``
    plates, each with ``n_dmso`` DMSO wells.  Compound ``c`` of MoA ``m`` is in batch
    ``(m + c) % n_batches``, so every MoA with 2+ compounds spans two batches.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_moas, n_features))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = []
    feats = []
    for m in range(n_moas):
        for c in range(compounds_per_moa):
            direction = centres[m] + compound_sd * rng.normal(size=n_features) / np.sqrt(n_features)
            batch = (m + c) % n_batches
            for dose in doses:
                effect = 3.0 * np.log1p(dose) * direction
                for r in range(replicates):
                    rows.append(
                        {
                            PLATE: f"B{batch + 1}_P{r + 1}",
                            BATCH: f"B{batch + 1}",
                            PERTURBATION: f"moa{m + 1}-cpd{c + 1}",
                            CONCENTRATION: float(dose),
                            PERT_TYPE: "trt",
                            MOA: f"MoA {m + 1}",
                        }
                    )
                    feats.append(effect + noise_sd * rng.normal(size=n_features))
    for b in range(n_batches):
        for r in range(replicates):
            for _ in range(n_dmso):
                rows.append(
                    {
                        PLATE: f"B{b + 1}_P{r + 1}",
                        BATCH: f"B{b + 1}",
                        PERTURBATION: "DMSO",
                        CONCENTRATION: 0.0,
                        PERT_TYPE: "negcon",
                        MOA: "control",
                    }
                )
                feats.append(noise_sd * rng.normal(size=n_features))
    meta = pd.DataFrame(rows)
    meta[WELL] = meta.groupby(PLATE).cumcount().map(lambda i: f"{'ABCDEFGH'[i // 12]}{i % 12 + 1:02d}")
    x = pd.DataFrame(np.asarray(feats, dtype=np.float32), columns=[f"DNA_f{i}" for i in range(n_features)])
    cols = [PLATE, WELL, BATCH, PERTURBATION, CONCENTRATION, PERT_TYPE, MOA]
    return pd.concat([meta[cols], x], axis=1)


def synthetic_treatments(
    *, n_moas: int = 6, per_moa: int = 8, n_features: int = 30, spread: float = 0.35, seed: int = 0
) -> pd.DataFrame:
    """Treatment-level profiles: Gaussian clusters around random unit directions, one per MoA."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_moas, n_features))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_moas), per_moa)
    x = centres[labels] + spread * rng.normal(size=(len(labels), n_features)) / np.sqrt(n_features)
    meta = pd.DataFrame(
        {
            PERTURBATION: [f"moa{m + 1}-cpd{i % per_moa + 1}" for i, m in enumerate(labels)],
            CONCENTRATION: 1.0,
            PERT_TYPE: "trt",
            MOA: [f"MoA {m + 1}" for m in labels],
        }
    )
    return pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(n_features)])], axis=1)


def rename_for_evaluate(wells: pd.DataFrame) -> pd.DataFrame:
    """The column names of the external `cytoscreen evaluate` call (BBBC021 style), no pert type."""
    return wells.drop(columns=[PERT_TYPE, BATCH]).rename(
        columns={PERTURBATION: "Metadata_Compound", CONCENTRATION: "Metadata_Concentration"}
    )
