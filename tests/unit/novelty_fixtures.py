"""Synthetic well tables for the novelty tests (hand-built; no images).

Controls are Gaussian profiles on a low-rank manifold (a few latent factors plus noise) with a
per-plate offset; treatments are either drawn from the same distribution (null screens) or shifted
along a few features (strong phenotypes), which the autoencoder cannot reconstruct.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cytoscreen.io import (
    CONCENTRATION,
    MOA,
    PERT_TYPE,
    PERTURBATION,
    PLATE,
    SITE,
    WELL,
    well_from_row_col,
)

#: Novelty settings small enough for tests on two shared cores (merged into the config section).
FAST_NOVELTY = {
    "hidden_sizes": [32],
    "latent_size": 4,
    "dropout": 0.0,
    "batch_size": 64,
    "learning_rate": 0.01,
    "weight_decay": 0.0,
    "patience": 5,
    "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 15, "enable_model_summary": False},
}


def novelty_config(**overrides) -> dict:
    """The schema's novelty section with FAST_NOVELTY and ``overrides`` merged in."""
    from cytoscreen.config import load_config

    section = {**FAST_NOVELTY, **overrides}
    section["trainer"] = {**FAST_NOVELTY["trainer"], **overrides.get("trainer", {})}
    return load_config(None, {"novelty": section})["novelty"]


def synthetic_wells(
    *,
    n_plates: int = 4,
    n_rows: int = 8,
    n_cols: int = 12,
    negcon_cols: tuple[int, ...] = (1, 2, 11, 12),
    n_features: int = 24,
    n_factors: int = 3,
    noise: float = 0.3,
    plate_offset: float = 0.3,
    shift: float = 0.0,
    n_shifted: int = 3,
    n_phenotypes: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    """A well table: negcon wells in ``negcon_cols``, treatment wells elsewhere.

    With ``shift == 0`` every treatment is inert (a controls-only screen).  Otherwise treatment
    ``k`` (of ``n_phenotypes``) moves its wells by ``shift`` along ``n_shifted`` features of its own.
    """
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(n_factors, n_features)) / np.sqrt(n_factors)
    shifted = [rng.choice(n_features, size=n_shifted, replace=False) for _ in range(n_phenotypes)]
    signs = [rng.choice([-1.0, 1.0], size=n_shifted) for _ in range(n_phenotypes)]
    records, rows = [], []
    for p in range(n_plates):
        plate = f"P{p + 1}"
        offset = rng.normal(scale=plate_offset, size=n_features)
        for r in range(n_rows):
            for c in range(1, n_cols + 1):
                x = rng.normal(size=n_factors) @ loadings + rng.normal(scale=noise, size=n_features)
                x = x + offset
                if c in negcon_cols:
                    meta = ("negcon", "DMSO", 0.0, "control")
                else:
                    k = (r * n_cols + c) % n_phenotypes
                    meta = ("trt", f"cpd{k}", 1.0, f"moa{k}")
                    if shift:
                        x[shifted[k]] += shift * signs[k]
                records.append((plate, well_from_row_col(r, c), *meta))
                rows.append(x)
    meta = pd.DataFrame(records, columns=[PLATE, WELL, PERT_TYPE, PERTURBATION, CONCENTRATION, MOA])
    feats = pd.DataFrame(
        np.asarray(rows, dtype=np.float32), columns=[f"DNA_test_{i}" for i in range(n_features)]
    )
    return pd.concat([meta, feats], axis=1)


def to_sites(wells: pd.DataFrame, *, n_sites: int = 2, noise: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Site-level table: each well repeated ``n_sites`` times with extra noise."""
    rng = np.random.default_rng(seed)
    feats = [c for c in wells.columns if not c.startswith("Metadata_")]
    parts = []
    for s in range(1, n_sites + 1):
        part = wells.copy()
        part.insert(2, SITE, s)
        jitter = rng.normal(scale=noise, size=(len(part), len(feats)))
        part[feats] = (part[feats].to_numpy() + jitter).astype(np.float32)
        parts.append(part)
    return pd.concat(parts, ignore_index=True).sort_values([PLATE, WELL, SITE], ignore_index=True)
