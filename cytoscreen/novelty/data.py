"""Control profiles for the novelty autoencoder: the split of control wells and the DataModule.

Control (``negcon``) wells are split by well into three sets: ``train`` (fits the weights),
``val`` (early stopping and checkpoint selection) and ``calibration`` (held out entirely; its
reconstruction errors define the null distribution for the conformal p-values).  Every row of a
well (its sites, at site level) goes to the same set, so no well leaks across sets.  The split is
stratified by plate and drawn with a seeded generator, so every DDP process computes the same one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.io import (
    PERT_TYPE,
    PLATE,
    SITE,
    WELL,
    check_numeric_features,
    feature_columns,
)

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "calibration")
#: Split label of wells that are in no set (treatments, and controls absent from the split).
NO_SPLIT = "none"

WellKey = tuple[str, str]


@dataclass(frozen=True)
class NoveltySplit:
    """Control wells (``(plate, well)`` keys) per set."""

    train: tuple[WellKey, ...]
    val: tuple[WellKey, ...]
    calibration: tuple[WellKey, ...]

    def to_dict(self) -> dict[str, list[list[str]]]:
        """Plain lists, as stored in the checkpoint."""
        return {name: [list(k) for k in getattr(self, name)] for name in SPLIT_NAMES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoveltySplit:
        try:
            return cls(
                **{
                    name: tuple((str(p), str(w)) for p, w in data[name])
                    for name in SPLIT_NAMES
                }
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a novelty split record ({err})") from err

    def labels(self, keys: Sequence[WellKey]) -> np.ndarray:
        """Split name of each ``(plate, well)`` key; ``none`` for keys in no set."""
        lookup = {k: name for name in SPLIT_NAMES for k in getattr(self, name)}
        return np.array([lookup.get(k, NO_SPLIT) for k in keys], dtype=object)


def well_keys(profiles: pd.DataFrame) -> list[WellKey]:
    """``(plate, well)`` of every row, as strings."""
    return list(
        zip(profiles[PLATE].astype(str), profiles[WELL].astype(str), strict=True)
    )


def check_profiles(
    profiles: pd.DataFrame, *, features: Sequence[str] | None = None, source: str = "profiles"
) -> list[str]:
    """Check key columns, feature types and missing values; return the feature columns.

    Raises
    ------
    InputDataError
        Missing key columns, no features, non-numeric features, NaN or infinite values, or (for a
        table without ``Metadata_Site``) a well listed twice.
    """
    missing = [c for c in (PLATE, WELL, PERT_TYPE) if c not in profiles.columns]
    if missing:
        raise InputDataError(
            f"{source}: missing column(s) {', '.join(missing)}; the novelty stage needs well "
            f"profiles with plate, well and pert_type metadata"
        )
    features = list(feature_columns(profiles) if features is None else features)
    if not features:
        raise InputDataError(f"{source}: no feature columns (every column starts with Metadata_ or QC_)")
    check_numeric_features(profiles, features, source=source)
    n_bad, bad_cols, bad_rows = 0, [], np.zeros(len(profiles), dtype=bool)
    for start in range(0, len(features), 256):  # column blocks bound the memory used
        block = features[start : start + 256]
        bad = ~np.isfinite(profiles[block].to_numpy(dtype=np.float32, na_value=np.nan))
        if bad.any():
            n_bad += int(bad.sum())
            bad_cols += [block[i] for i in np.flatnonzero(bad.any(axis=0))]
            bad_rows |= bad.any(axis=1)
    if n_bad:
        cols = bad_cols
        shown = ", ".join(cols[:5]) + (" ..." if len(cols) > 5 else "")
        raise InputDataError(
            f"{source}: {n_bad:,} NaN or infinite value(s) in {len(cols)} feature "
            f"column(s) ({shown}) across {int(bad_rows.sum()):,} row(s); the autoencoder "
            f"needs complete profiles: drop these features (profiles feature selection, NA filter) "
            f"or the affected wells"
        )
    if SITE not in profiles.columns:
        dup = profiles.duplicated([PLATE, WELL])
        if dup.any():
            first = profiles.loc[dup, [PLATE, WELL]].astype(str).iloc[0]
            raise InputDataError(
                f"{source}: {int(dup.sum())} well(s) listed more than once (first: "
                f"{first[PLATE]} {first[WELL]}); give well-level profiles, or site-level ones "
                f"with a {SITE} column"
            )
    return features


def split_wells(
    profiles: pd.DataFrame,
    *,
    reference: str = "negcon",
    val_fraction: float = 0.15,
    calibration_fraction: float = 0.3,
    min_train_wells: int = 8,
    min_val_wells: int = 2,
    min_calibration_wells: int = 8,
    seed: int = 0,
    source: str = "profiles",
) -> NoveltySplit:
    """Split the ``reference`` wells into train / val / calibration sets, stratified by plate.

    Within each plate the control wells are put in a random order; each well gets its quantile
    position in that order (plus a random offset, so plates interleave), and the wells sorted by
    position are cut into calibration, val and train in that order.  Every plate so contributes to
    every set in proportion, and the set sizes are exact: ``round(calibration_fraction * n)``,
    ``round(val_fraction * n)`` and the rest.

    Raises
    ------
    ConfigError
        Fractions outside (0, 1) or summing to 1 or more.
    InputDataError
        Fewer wells in a set than its minimum (the message gives the counts and the minimums).
    """
    if not (0 < val_fraction < 1 and 0 < calibration_fraction < 1) or (
        val_fraction + calibration_fraction >= 1
    ):
        raise ConfigError(
            f"novelty.val_fraction ({val_fraction}) and novelty.calibration_fraction "
            f"({calibration_fraction}) must each be in (0, 1) and sum to less than 1, leaving "
            f"wells to train on"
        )
    is_ref = (profiles[PERT_TYPE].astype(str) == reference).to_numpy()
    keys = sorted(set(k for k, r in zip(well_keys(profiles), is_ref, strict=True) if r))
    n = len(keys)
    n_cal = int(round(calibration_fraction * n))
    n_val = int(round(val_fraction * n))
    n_train = n - n_cal - n_val
    short = [
        f"{name} {got} < {need}"
        for name, got, need in (
            ("train", n_train, min_train_wells),
            ("val", n_val, min_val_wells),
            ("calibration", n_cal, min_calibration_wells),
        )
        if got < need
    ]
    if short:
        need_total = max(
            min_train_wells + min_val_wells + min_calibration_wells,
            int(np.ceil(min_val_wells / val_fraction)),
            int(np.ceil(min_calibration_wells / calibration_fraction)),
            int(np.ceil(min_train_wells / (1 - val_fraction - calibration_fraction))),
        )
        raise InputDataError(
            f"{source}: too few control wells: {n} well(s) with {PERT_TYPE} == {reference!r} "
            f"give {', '.join(short)} (set: wells < minimum) at val_fraction {val_fraction} and "
            f"calibration_fraction {calibration_fraction}; the novelty stage needs at least "
            f"about {need_total} control wells: add controls, or lower novelty.min_train_wells / "
            f"min_val_wells / min_calibration_wells"
        )
    rng = np.random.default_rng(seed)
    by_plate: dict[str, list[WellKey]] = {}
    for k in keys:
        by_plate.setdefault(k[0], []).append(k)
    position: dict[WellKey, float] = {}
    for plate in sorted(by_plate):
        wells = by_plate[plate]
        order = rng.permutation(len(wells))
        offset = rng.random()
        for rank, idx in enumerate(order):
            position[wells[idx]] = (rank + offset) / len(wells)
    ranked = sorted(keys, key=lambda k: position[k])
    split = NoveltySplit(
        calibration=tuple(sorted(ranked[:n_cal])),
        val=tuple(sorted(ranked[n_cal : n_cal + n_val])),
        train=tuple(sorted(ranked[n_cal + n_val :])),
    )
    logger.info(
        "%s: %d %s wells on %d plate(s) split into train %d, val %d, calibration %d (seed %d)",
        source, n, reference, len(by_plate), n_train, n_val, n_cal, seed,
    )
    if n_cal < 19:
        logger.warning(
            "%s: only %d calibration wells: the smallest possible p-value is 1/%d = %.3f, so few "
            "or no wells can be called hits; add control wells or raise calibration_fraction",
            source, n_cal, n_cal + 1, 1 / (n_cal + 1),
        )
    return split


class NoveltyDataModule(pl.LightningDataModule):
    """Control rows of a profile table, split by well (see :func:`split_wells`).

    It receives the table (no file reads) and has no ``prepare_data``; ``setup`` draws the split
    on every process with the same seed.  The split is saved in the checkpoint through
    :meth:`state_dict`, so scoring knows the held-out calibration wells.

    Parameters
    ----------
    profiles
        Well (or site, with ``Metadata_Site``) profiles of the whole screen; only rows whose
        ``Metadata_pert_type`` equals ``reference`` are used.
    features
        Feature columns; default :func:`cytoscreen.io.feature_columns`.
    batch_size, num_workers
        DataLoader settings.
    Other keywords
        As :func:`split_wells`.
    """

    def __init__(
        self,
        profiles: pd.DataFrame,
        *,
        features: Sequence[str] | None = None,
        reference: str = "negcon",
        val_fraction: float = 0.15,
        calibration_fraction: float = 0.3,
        min_train_wells: int = 8,
        min_val_wells: int = 2,
        min_calibration_wells: int = 8,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        source: str = "profiles",
    ) -> None:
        super().__init__()
        self.profiles = profiles
        self.features = check_profiles(profiles, features=features, source=source)
        self.split_options = {
            "reference": reference,
            "val_fraction": float(val_fraction),
            "calibration_fraction": float(calibration_fraction),
            "min_train_wells": int(min_train_wells),
            "min_val_wells": int(min_val_wells),
            "min_calibration_wells": int(min_calibration_wells),
            "seed": int(seed),
        }
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.source = source
        self.split: NoveltySplit | None = None
        self._sets: dict[str, Any] = {}

    @property
    def level(self) -> str:
        return "site" if SITE in self.profiles.columns else "well"

    def setup(self, stage: str | None = None) -> None:
        """Draw the split (once) and build the tensors of each set."""
        if self.split is not None:
            return
        import torch
        from torch.utils.data import TensorDataset

        self.split = split_wells(self.profiles, source=self.source, **self.split_options)
        labels = self.split.labels(well_keys(self.profiles))
        is_ref = (self.profiles[PERT_TYPE].astype(str) == self.split_options["reference"]).to_numpy()
        for name in SPLIT_NAMES:
            rows = np.flatnonzero((labels == name) & is_ref)
            x = self.profiles.iloc[rows][self.features].to_numpy(dtype=np.float32)
            self._sets[name] = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)))
        logger.info(
            "%s: %s-level rows for training %d, validation %d, calibration %d (%d features)",
            self.source, self.level, *(len(self._sets[n]) for n in SPLIT_NAMES), len(self.features),
        )

    def _loader(self, name: str, *, shuffle: bool):
        from torch.utils.data import DataLoader

        return DataLoader(
            self._sets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        """The calibration rows (never seen in training or model selection)."""
        return self._loader("calibration", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in the checkpoint: the split and how it was drawn."""
        if self.split is None:
            return {}
        return {
            "split": self.split.to_dict(),
            "level": self.level,
            "features": list(self.features),
            **self.split_options,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check, on resuming, that the stored split is the one this table and seed give."""
        if state_dict.get("split"):
            stored = NoveltySplit.from_dict(state_dict["split"])
            self.setup()
            if self.split != stored:
                raise InputDataError(
                    f"{self.source}: the control-well split stored in the checkpoint differs from "
                    f"the one drawn from this table; resume training on the same table and settings"
                )
