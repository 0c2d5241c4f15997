"""Tables for the profiles tests: seeded synthetic wells/sites and the BBBC021 slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io

DATA = Path(__file__).resolve().parents[1] / "data" / "bbbc021"
BBBC021_WELLS = DATA / "wells.csv.gz"
BBBC021_META = ["Metadata_Plate", "Metadata_Well", "Metadata_Compound", "Metadata_Concentration",
                "Metadata_moa"]
DMSO_QUERY = "Metadata_Compound == 'DMSO'"
NEGCON_QUERY = "Metadata_pert_type == 'negcon'"


def bbbc021_wells() -> pd.DataFrame:
    """78 BBBC021 wells of 3 replicate plates, 516 raw CellProfiler features (float64)."""
    return pd.read_csv(BBBC021_WELLS)


def well_names(n: int) -> list[str]:
    return [io.well_from_row_col(i // 12, i % 12 + 1) for i in range(n)]


def synthetic_wells(
    *,
    plates: int = 3,
    wells: int = 24,
    features: int = 12,
    negcon: int = 6,
    seed: int = 0,
    dtype: type = np.float32,
) -> pd.DataFrame:
    """Wells with correlated features, plate offsets, a few discrete and near-constant features.

    Treatments are ``c0``..``c3`` at two concentrations, each replicated on every plate; the first
    ``negcon`` wells of a plate are DMSO negcon.  Feature ``f0`` and ``f1`` are strongly correlated,
    ``f2`` is a count (few distinct values), ``f3`` is almost constant (frequency rule).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(plates):
        offset = rng.normal(0, 2, features)
        scale = rng.uniform(0.5, 2, features)
        latent = rng.normal(size=(wells, 3))
        load = rng.normal(size=(3, features))
        x = (latent @ load + rng.normal(0, 0.5, (wells, features))) * scale + offset
        if features > 3:
            x[:, 1] = x[:, 0] * 1.5 + rng.normal(0, 0.05, wells)
            x[:, 2] = rng.poisson(3, wells)
            x[:, 3] = 1.0
            x[rng.integers(wells), 3] = 2.0
        for w, name in enumerate(well_names(wells)):
            if w < negcon:
                pert, conc, ptype, moa = "DMSO", 0.0, "negcon", "control"
            else:
                k = (w - negcon) % 8
                pert, conc, ptype, moa = f"c{k % 4}", float(1 + k // 4), "trt", f"moa{k % 2}"
            rows.append(
                {io.PLATE: f"P{p + 1}", io.WELL: name, io.PERT_TYPE: ptype,
                 io.PERTURBATION: pert, io.CONCENTRATION: conc, io.MOA: moa,
                 **{f"f{j}": x[w, j] for j in range(features)}}
            )
    df = pd.DataFrame(rows)
    feats = [f"f{j}" for j in range(features)]
    df[feats] = df[feats].astype(dtype)
    return df


def synthetic_sites(
    *, plates: int = 2, wells: int = 12, sites: int = 3, features: int = 6, seed: int = 0
) -> pd.DataFrame:
    """Site rows (float32 features) with QC flag columns; site 1 of well A02 of each plate is blurry."""
    base = synthetic_wells(plates=plates, wells=wells, features=features, negcon=4, seed=seed)
    rng = np.random.default_rng(seed + 1)
    feats = io.feature_columns(base)
    parts = []
    for s in range(1, sites + 1):
        part = base.copy()
        part.insert(2, io.SITE, s)
        noise = rng.normal(0, 0.3, (len(part), len(feats))).astype(np.float32)
        part[feats] = part[feats].to_numpy() + noise
        part["Metadata_DNA_FocusScore"] = rng.uniform(0, 1, len(part))
        parts.append(part)
    sites_df = pd.concat(parts).sort_values([io.PLATE, io.WELL, io.SITE], kind="stable")
    sites_df = sites_df.reset_index(drop=True)
    sites_df["QC_blurry"] = (sites_df[io.WELL] == "A02") & (sites_df[io.SITE] == 1)
    sites_df["QC_saturated"] = False
    return sites_df
