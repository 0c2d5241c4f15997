"""Control profiles for the novelty autoencoder: cross-fitting folds and the DataModule.

Control wells (``novelty.reference``, negcon by default, recognised by
:func:`cytoscreen.plate.pert_type_mask`) are dealt by well into ``K`` folds
(:func:`crossfit_folds`, stratified by plate, seeded).  Model ``k`` trains on every control well
outside fold ``k`` (a few of those held out as its validation wells for early stopping) and scores
the wells of fold ``k`` out of sample, so every control well gets a score from a model that never
saw it and the null distribution of the p-values uses all controls.  Every row of a well (its
sites, at site level) stays in its well's fold, so no well leaks into its own model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from cytoscreen.errors import InputDataError
from cytoscreen.io import (
    PERT_TYPE,
    PLATE,
    SITE,
    WELL,
    check_numeric_features,
    feature_columns,
)
from cytoscreen.plate import pert_type_mask

logger = logging.getLogger(__name__)

#: Split label of wells that are in no fold (treatments, and controls absent from the folds).
NO_SPLIT = "none"
#: Split label of control wells, each scored by the model of its fold (out of sample).
CROSSFIT = "crossfit"
#: Fewest control wells the stage cross-fits; below it every well gets a NaN score (a warning).
MIN_CONTROL_WELLS = 3

WellKey = tuple[str, str]


@dataclass(frozen=True)
class NoveltyFolds:
    """Control wells (``(plate, well)`` keys) held out of each model, and each model's
    validation wells (drawn from its training wells; empty when too few)."""

    held_out: tuple[tuple[WellKey, ...], ...]
    val: tuple[tuple[WellKey, ...], ...]

    def __len__(self) -> int:
        return len(self.held_out)

    @property
    def controls(self) -> tuple[WellKey, ...]:
        """Every control well of the folds, sorted."""
        return tuple(sorted(k for fold in self.held_out for k in fold))

    def train(self, k: int) -> tuple[WellKey, ...]:
        """Training wells of model ``k``: the controls outside fold ``k`` less its val wells."""
        skip = set(self.held_out[k]) | set(self.val[k])
        return tuple(w for w in self.controls if w not in skip)

    def to_dict(self) -> dict[str, list]:
        """Plain lists, as stored in the checkpoint."""
        return {
            "held_out": [[list(w) for w in fold] for fold in self.held_out],
            "val": [[list(w) for w in fold] for fold in self.val],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoveltyFolds:
        try:
            return cls(
                held_out=tuple(tuple((str(p), str(w)) for p, w in f) for f in data["held_out"]),
                val=tuple(tuple((str(p), str(w)) for p, w in f) for f in data["val"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a novelty cross-fitting record ({err})") from err

    def fold_of(self, keys: Sequence[WellKey]) -> np.ndarray:
        """Fold index of each ``(plate, well)`` key; -1 for keys in no fold."""
        lookup = {w: k for k, fold in enumerate(self.held_out) for w in fold}
        return np.array([lookup.get(key, -1) for key in keys], dtype=np.int64)

    def labels(self, keys: Sequence[WellKey]) -> np.ndarray:
        """``crossfit`` for the control wells of the folds, ``none`` for the others."""
        return np.where(self.fold_of(keys) >= 0, CROSSFIT, NO_SPLIT).astype(object)


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
    missing = [c for c in (PLATE, WELL) if c not in profiles.columns]
    if missing:
        raise InputDataError(
            f"{source}: missing column(s) {', '.join(missing)}; the novelty stage needs well "
            f"profiles with plate and well metadata (and {PERT_TYPE} or a DMSO perturbation "
            f"column for the controls)"
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


def reference_rows(profiles: pd.DataFrame, reference: str = "negcon") -> np.ndarray:
    """Rows of the control wells: :func:`cytoscreen.plate.pert_type_mask` of ``reference``."""
    return pert_type_mask(profiles, reference)


def crossfit_folds(
    profiles: pd.DataFrame,
    *,
    reference: str = "negcon",
    folds: int = 5,
    val_fraction: float = 0.15,
    seed: int = 0,
    source: str = "profiles",
) -> NoveltyFolds:
    """Deal the ``reference`` wells into ``min(folds, n)`` folds, stratified by plate.

    Plate by plate, the control wells are put in a random order and dealt round-robin into the
    folds (the deal continues across plates), so every plate contributes to every fold in proportion
    and fold sizes differ by at most one.  Model ``k``'s validation wells are
    ``round(val_fraction * n_train)`` of its training wells, drawn stratified by plate; none when
    that leaves fewer than 2 wells to train on (early stopping then watches the training wells).

    Fewer than :data:`MIN_CONTROL_WELLS` control wells give no folds (a warning).
    """
    keys = sorted(set(k for k, r in zip(well_keys(profiles), reference_rows(profiles, reference),
                                          strict=True) if r))
    n = len(keys)
    if n < MIN_CONTROL_WELLS:
        logger.warning(
            "%s: only %d %s control well(s) (< %d): no novelty model can be cross-fitted; every "
            "well gets a NaN score and no hits. Add control wells to the platemap",
            source, n, reference, MIN_CONTROL_WELLS,
        )
        return NoveltyFolds(held_out=(), val=())
    rng = np.random.default_rng(seed)
    n_folds = min(int(folds), n)
    dealt: list[list[WellKey]] = [[] for _ in range(n_folds)]
    counter = 0
    for plate_wells in _by_plate(keys).values():  # round-robin, continued across plates
        for idx in rng.permutation(len(plate_wells)):
            dealt[counter % n_folds].append(plate_wells[idx])
            counter += 1
    held_out = tuple(tuple(sorted(f)) for f in dealt)
    vals = []
    for fold in held_out:
        rest = [k for k in keys if k not in set(fold)]
        n_val = int(round(val_fraction * len(rest)))
        if len(rest) - n_val < 2:
            n_val = 0
        vals.append(tuple(sorted(_stratified_order(rest, rng)[:n_val])))
    out = NoveltyFolds(held_out=held_out, val=tuple(vals))
    n_plates = len(_by_plate(keys))
    logger.info(
        "%s: %d %s wells on %d plate(s) dealt into %d cross-fitting folds of %s wells (seed %d)",
        source, n, reference, n_plates, n_folds, "/".join(str(len(f)) for f in held_out), seed,
    )
    if n_folds < int(folds):
        logger.warning("%s: %d control wells: %d folds instead of novelty.folds = %d",
                       source, n, n_folds, folds)
    if not all(vals):
        logger.warning(
            "%s: too few control wells for validation wells in %d of %d folds; early stopping "
            "watches the training loss there", source, sum(1 for v in vals if not v), n_folds,
        )
    return out


def _by_plate(keys: Sequence[WellKey]) -> dict[str, list[WellKey]]:
    by_plate: dict[str, list[WellKey]] = {}
    for k in sorted(keys):
        by_plate.setdefault(k[0], []).append(k)
    return by_plate


def _stratified_order(keys: Sequence[WellKey], rng: np.random.Generator) -> list[WellKey]:
    """``keys`` ordered by a seeded position that interleaves plates in proportion."""
    by_plate = _by_plate(keys)
    position: dict[WellKey, float] = {}
    for plate in sorted(by_plate):
        wells = by_plate[plate]
        order = rng.permutation(len(wells))
        offset = rng.random()
        for rank, idx in enumerate(order):
            position[wells[idx]] = (rank + offset) / len(wells)
    return sorted(keys, key=lambda k: (position[k], k))


class NoveltyDataModule(pl.LightningDataModule):
    """Training and validation rows of one cross-fitting model (no file reads).

    Parameters
    ----------
    profiles
        Well (or site, with ``Metadata_Site``) profiles of the whole screen.
    train_wells, val_wells
        ``(plate, well)`` keys of the model's training and validation control wells; with no
        validation wells the validation loss is computed on the training rows.
    features
        Feature columns; default :func:`cytoscreen.io.feature_columns`.
    batch_size, num_workers
        DataLoader settings.
    """

    def __init__(
        self,
        profiles: pd.DataFrame,
        *,
        train_wells: Sequence[WellKey],
        val_wells: Sequence[WellKey] = (),
        features: Sequence[str] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        source: str = "profiles",
    ) -> None:
        super().__init__()
        self.profiles = profiles
        self.features = check_profiles(profiles, features=features, source=source)
        self.train_wells = tuple(train_wells)
        self.val_wells = tuple(val_wells)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.source = source
        self._sets: dict[str, Any] = {}

    @property
    def level(self) -> str:
        return "site" if SITE in self.profiles.columns else "well"

    def setup(self, stage: str | None = None) -> None:
        """Build the tensors of the training and validation rows (once)."""
        if self._sets:
            return
        import torch
        from torch.utils.data import TensorDataset

        keys = well_keys(self.profiles)
        sets = {"train": set(self.train_wells), "val": set(self.val_wells or self.train_wells)}
        for name, wells in sets.items():
            rows = np.flatnonzero([k in wells for k in keys])
            x = self.profiles.iloc[rows][self.features].to_numpy(dtype=np.float32)
            self._sets[name] = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)))
        logger.debug(
            "%s: %s-level rows for training %d, validation %d (%d features)",
            self.source, self.level, len(self._sets["train"]), len(self._sets["val"]), len(self.features),
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
