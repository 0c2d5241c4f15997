"""BBBC021 MoA benchmark: profiles chain + evaluation on the Ljosa et al. 2013 well profiles.

Data: ``benchmarks/data/bbbc021/`` (three files from cytomining/cytominergallery, BSD licence; see
SOURCE.md there): 632 wells x 516 CellProfiler per-well mean features, joined to compound and
concentration through the image table and to MoA through the MoA table.  DMSO wells are the
negative controls (``Metadata_pert_type = negcon``); the NSCB batch is the week, the prefix of the
plate name (``Week4_27481`` -> ``Week4``).

Each variant runs :func:`cytoscreen.profiles.chain.profile_chain` (per-plate normalization
against the plate's DMSO wells, feature selection on the whole table, optional whitening fitted
on DMSO wells, consensus per compound x concentration) and then
:func:`cytoscreen.moa.evaluate.evaluate_profiles` on the feature-selected wells with the consensus
as treatment profiles.  One JSON line per variant goes to stdout (and to ``--out``):

    python benchmarks/bbbc021_moa.py                      # every variant
    python benchmarks/bbbc021_moa.py --variants default modz

The default variant is chosen by principle, not by its score here; see ``VARIANTS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing
    sys.path.insert(0, str(ROOT))

from cytoscreen import io  # noqa: E402
from cytoscreen.moa.evaluate import evaluate_profiles  # noqa: E402

logger = logging.getLogger("bbbc021_moa")

DATA = Path(__file__).resolve().parent / "data" / "bbbc021"
WELLS_FILE = "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz"
IMAGE_FILE = "BBBC021_v1_image.csv.gz"
MOA_FILE = "BBBC021_v1_moa.csv"
NEGCON = "DMSO"
BATCH_REGEX = r"^(Week\d+)"
DEFAULT_SELECT = ("drop_na_columns", "variance_threshold", "correlation_threshold")


def load_bbbc021(data: Path = DATA) -> pd.DataFrame:
    """The 632 annotated wells: Metadata_Plate, _Well, _perturbation, _concentration, _moa,
    _pert_type (negcon for DMSO), _Batch (the week) and the 516 features (float64).

    Raises
    ------
    ValueError
        If the join does not give every well a compound and a MoA.
    """
    wells = pd.read_csv(data / WELLS_FILE).rename(
        columns={"Image_Metadata_Plate": io.PLATE, "Image_Metadata_Well": io.WELL}
    )
    images = pd.read_csv(
        data / IMAGE_FILE,
        usecols=[
            "Image_Metadata_Plate_DAPI",
            "Image_Metadata_Well_DAPI",
            "Image_Metadata_Compound",
            "Image_Metadata_Concentration",
        ],
    )
    images.columns = [io.PLATE, io.WELL, io.PERTURBATION, io.CONCENTRATION]
    images = images.drop_duplicates([io.PLATE, io.WELL])  # 4 sites per well
    moa = pd.read_csv(data / MOA_FILE)
    moa.columns = [io.PERTURBATION, io.CONCENTRATION, io.MOA]
    meta = images.merge(moa, on=[io.PERTURBATION, io.CONCENTRATION], how="left")
    table = meta.merge(wells, on=[io.PLATE, io.WELL], how="right", validate="one_to_one")
    if table[io.MOA].isna().any() or len(table) != len(wells):
        raise ValueError("BBBC021 join left wells without compound or MoA")
    meta = table[[io.PLATE, io.WELL, io.PERTURBATION, io.CONCENTRATION, io.MOA]].copy()
    meta.insert(2, io.BATCH, table[io.PLATE].str.extract(BATCH_REGEX, expand=False))
    meta.insert(5, io.PERT_TYPE, np.where(table[io.PERTURBATION] == NEGCON, "negcon", "trt"))
    feats = io.feature_columns(table)
    return pd.concat([meta, table[feats].astype(np.float64)], axis=1)


# --- transforms not in the profiles stage (benchmark-only variants) -------------------------------
def _replace_features(table: pd.DataFrame, x: np.ndarray, prefix: str) -> pd.DataFrame:
    meta = table[io.metadata_columns(table)].reset_index(drop=True)
    feats = pd.DataFrame(x, columns=[f"{prefix}{i + 1}" for i in range(x.shape[1])])
    return pd.concat([meta, feats], axis=1)


def shrinkage_whiten(wells: pd.DataFrame) -> pd.DataFrame:
    """ZCA whitening with the Ledoit-Wolf shrinkage covariance of the DMSO wells.

    Typical-variation normalization (Ando et al. 2017) with a covariance estimator that stays
    well conditioned when control wells barely outnumber features (330 vs ~340 here); the
    shrinkage intensity is Ledoit-Wolf's closed form, so nothing is tuned on this table.
    """
    from sklearn.covariance import LedoitWolf

    feats = io.feature_columns(wells)
    x = wells[feats].to_numpy(np.float64)
    ref = (wells[io.PERT_TYPE] == "negcon").to_numpy()
    mu = x[ref].mean(axis=0)
    cov = LedoitWolf().fit(x[ref] - mu).covariance_
    w, v = np.linalg.eigh(cov)
    return _replace_features(wells, (x - mu) @ (v / np.sqrt(w)) @ v.T, "TVN")


def asinh(wells: pd.DataFrame) -> pd.DataFrame:
    """arcsinh of every feature: linear near 0, logarithmic for large robust z-scores."""
    feats = io.feature_columns(wells)
    out = wells.copy()
    out[feats] = np.arcsinh(wells[feats].to_numpy(np.float64))
    return out


def zero_spread_features(wells: pd.DataFrame) -> list[str]:
    """Features whose MAD over the DMSO wells of some plate is zero (mad_robustize undefined)."""
    feats = io.feature_columns(wells)
    ref = wells[wells[io.PERT_TYPE] == "negcon"]
    med = ref.groupby(io.PLATE)[feats].transform("median")
    mad = (ref[feats] - med).abs().groupby(ref[io.PLATE]).median()
    return [f for f in feats if (mad[f] == 0).any()]


def _median_of_wells(wells: pd.DataFrame) -> pd.DataFrame:
    from cytoscreen.moa.similarity import treatment_profiles

    return treatment_profiles(wells, by=[io.PERTURBATION, io.CONCENTRATION])


@dataclass(frozen=True)
class Variant:
    """A pipeline variant: profile_chain keyword arguments plus an optional well transform."""

    description: str
    chain: Mapping[str, Any] | Callable[[pd.DataFrame], Mapping[str, Any]] | None = field(default_factory=dict)
    transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None


_WITH_OUTLIERS = (*DEFAULT_SELECT, "drop_outliers")

#: The default is "default": the workflow's profiles defaults (pycytominer's mad_robustize per
#: plate against DMSO, drop_na/variance/correlation feature selection, median consensus), plus
#: pycytominer's drop_outliers operation.  Why: a feature with zero MAD in one plate's controls
#: (here the EulerNumber features) is divided by epsilon = 1e-18 and reaches 1e16, a numerical
#: artefact that then dominates every cosine similarity; dropping features with |value| > 500 is
#: the standard pycytominer operation that removes such columns (zero_spread_blocklist removes
#: only them, with the same NSC/NSCB).  Whitening
#: and arcsinh are not defaults: the pycytominer spherize is undefined when controls barely
#: outnumber features, and the other two trade NSC against NSCB on this table (see README).
VARIANTS: dict[str, Variant] = {
    "as_given": Variant("raw well means, no normalization (what evaluate sees if run first)", None),
    "workflow_default": Variant(
        "profiles defaults: mad_robustize per plate vs DMSO; drop_na, variance, correlation "
        "selection; median consensus",
        {},
    ),
    "default": Variant(
        "workflow_default + drop_outliers (|value| > 500) feature selection [DEFAULT]",
        {"operations": _WITH_OUTLIERS},
    ),
    "zero_spread_blocklist": Variant(
        "workflow_default + blocklist of the features with zero DMSO MAD in some plate",
        lambda w: {
            "operations": (*DEFAULT_SELECT, "blocklist"),
            "select_options": {"blocklist": zero_spread_features(w)},
        },
    ),
    "no_selection": Variant(
        "mad_robustize per plate, only drop_outliers as selection",
        {"operations": ("drop_outliers",)},
    ),
    "standardize": Variant(
        "default with standardize (z-score vs DMSO) per plate",
        {"operations": _WITH_OUTLIERS, "normalize_method": "standardize"},
    ),
    "robustize": Variant(
        "default with robustize (median/IQR vs DMSO) per plate",
        {"operations": _WITH_OUTLIERS, "normalize_method": "robustize"},
    ),
    "spherize_zca_cor": Variant(
        "default + spherize ZCA-cor fitted on DMSO wells (pycytominer definition)",
        {"operations": _WITH_OUTLIERS, "spherize": "ZCA-cor"},
    ),
    "pca_whiten": Variant(
        "default + PCA-cor whitening fitted on DMSO wells (pycytominer definition)",
        {"operations": _WITH_OUTLIERS, "spherize": "PCA-cor"},
    ),
    "shrinkage_whiten": Variant(
        "default + ZCA whitening with the Ledoit-Wolf covariance of DMSO wells (benchmark-only)",
        {"operations": _WITH_OUTLIERS},
        shrinkage_whiten,
    ),
    "no_correlation": Variant(
        "default without correlation_threshold (drop_na, variance, drop_outliers)",
        {"operations": ("drop_na_columns", "variance_threshold", "drop_outliers")},
    ),
    "spherize_zca_eps0.1": Variant(
        "default + ZCA sphering on DMSO wells (TVN), epsilon 0.1",
        {"operations": _WITH_OUTLIERS, "transforms": {"spherize": "ZCA", "spherize_epsilon": 0.1}},
    ),
    "pca_0.99": Variant(
        "default + PCA on all wells keeping 99% of the variance",
        {"operations": _WITH_OUTLIERS, "transforms": {"pca_components": 0.99}},
    ),
    "pca_harmony": Variant(
        "default + PCA (99% variance) + Harmony across plates (harmonypy)",
        {"operations": _WITH_OUTLIERS,
         "transforms": {"pca_components": 0.99, "harmony": True, "harmony_batch": [io.PLATE]}},
    ),
    "modz": Variant(
        "default with MODZ consensus (Spearman-weighted replicates)",
        {"operations": _WITH_OUTLIERS, "consensus_method": "modz"},
    ),
    "asinh": Variant(
        "default + arcsinh of the robust z-scores (benchmark-only)",
        {"operations": _WITH_OUTLIERS},
        asinh,
    ),
    "asinh_shrinkage_whiten": Variant(
        "default + arcsinh + Ledoit-Wolf whitening (benchmark-only)",
        {"operations": _WITH_OUTLIERS},
        lambda w: shrinkage_whiten(asinh(w)),
    ),
}


def run_variant(name: str, wells: pd.DataFrame, *, null_size: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Profiles chain + evaluation of one variant; a JSON-ready record."""
    variant = VARIANTS[name]
    start = time.perf_counter()
    if variant.chain is None:
        selected, consensus = wells, None
    else:
        from cytoscreen.profiles.chain import profile_chain

        chain = variant.chain(wells) if callable(variant.chain) else dict(variant.chain)
        result = profile_chain(wells, **chain)
        selected, consensus = result.feature_selected, result.consensus
        if variant.transform is not None:
            selected = variant.transform(selected)
            consensus = (
                _median_of_wells(selected) if variant.chain.get("consensus_method", "median") == "median" else None
            )
    evaluation = evaluate_profiles(
        selected,
        compound_col=io.PERTURBATION,
        dose_col=io.CONCENTRATION,
        moa_col=io.MOA,
        batch_col=io.PLATE,
        batch_regex=BATCH_REGEX,
        pert_type_col=io.PERT_TYPE,
        treatments=consensus,
        null_size=null_size,
        seed=seed,
        cluster=True,
        source=f"bbbc021[{name}]",
    )
    s = evaluation.summary
    return {
        "variant": name,
        "default": name == "default",
        "description": variant.description,
        "nsc": s["nsc"],
        "nscb": s["nscb"],
        "map_replicate": s["map_replicate"],
        "percent_replicating": s["percent_replicating"],
        "map_moa": s["map_moa"],
        "cluster_ari": s["cluster_ari"],
        "replicate_fraction_significant": s["map_replicate_details"]["fraction_significant"],
        "moa_fraction_significant": s["map_moa_details"]["fraction_significant"],
        "n_features": s["n_features"],
        "n_treatments_nsc": s["nsc_details"]["n_queries"],
        "n_treatments_nscb": s["nscb_details"]["n_queries"],
        "nscb_dropped_moas": s["nscb_details"]["dropped_moas"],
        "batch": f"{io.PLATE} ~ {BATCH_REGEX}",
        "null_size": null_size,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--null-size", type=int, default=10000, help="mAP permutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with the three files")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the pipeline steps")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    wells = load_bbbc021(args.data)
    lines = []
    for name in args.variants:
        record = run_variant(name, wells, null_size=args.null_size, seed=args.seed)
        line = json.dumps(record)
        print(line, flush=True)
        lines.append(line)
    if args.out:
        io.write_text("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
