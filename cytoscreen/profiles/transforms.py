"""The screen-level transforms after feature selection: arcsinh, sphering, PCA, Harmony, in that
order.

Each is off unless its ``profiles:`` key turns it on, so a chain is chosen in config alone:

``asinh`` (boolean)
    :func:`asinh`: ``arcsinh`` of every feature (linear near 0, logarithmic in the tails), so a
    few very large normalized values do not dominate cosine similarities.
``spherize`` (a method, or null)
    :func:`cytoscreen.profiles.sphering.sphere`: whitening fitted on the reference rows (negcon)
    of the whole screen, regularised by ``spherize_epsilon`` the ``spherize_regularization`` way
    (``singular``, pycytominer's, or ``shrinkage``) (TVN, JUMP's sphering), applied about the
    reference mean or, with ``spherize_center: normalization``, about the normalization's centre.
``pca_components`` (a count, a variance fraction below 1, or null)
    :func:`cytoscreen.profiles.pca.pca`, fitted on ``pca_reference`` rows (``all`` or ``negcon``).
``harmony`` (boolean)
    :func:`cytoscreen.profiles.harmony.harmony` across ``harmony_batch`` (plates by default), with
    ``harmony_theta``, ``harmony_sigma``, ``harmony_clusters`` and ``harmony_max_iter``.

The order is the usual one: arcsinh tames the tails, whitening on controls follows (it needs the
selected features), PCA to a low dimension, then Harmony on the components.  Every fit is kept;
:func:`write_fits` saves each as ``<output stem>.<operation>.json`` (settings and summary) and
``.parquet`` (per-feature statistics) beside the output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, replace_features
from cytoscreen.profiles.columns import resolve_features

logger = logging.getLogger(__name__)

#: The transforms in the order they run.
TRANSFORMS = ("asinh", "spherize", "pca", "harmony")


@dataclass(frozen=True)
class TransformSettings:
    """Which transforms run and their settings (the ``profiles:`` keys of the same names)."""

    asinh: bool = False
    spherize: str | None = None
    spherize_epsilon: float = 1e-6
    spherize_regularization: str = "singular"
    #: ``reference`` (subtract the reference mean first) or ``normalization`` (apply W as is)
    spherize_center: str = "reference"
    #: rows sphering is fitted on; None uses ``reference`` (with its column/value)
    spherize_reference: str | None = None
    #: the method of ``cytoscreen profiles spherize`` (the chain uses ``spherize``)
    spherize_method: str = "ZCA-cor"
    pca_components: float | int | None = None
    pca_reference: str = "all"
    harmony: bool = False
    harmony_batch: tuple[str, ...] = (io.PLATE,)
    harmony_theta: float = 2.0
    harmony_sigma: float = 0.1
    harmony_clusters: int | None = None
    harmony_max_iter: int = 10
    #: the control rows: a ``reference_mask`` rule (``negcon``, a query) or, from Python, a row mask
    reference: str | pd.Series | np.ndarray = "negcon"
    reference_column: str | None = None
    reference_value: str | Sequence[str] | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> TransformSettings:
        """Settings from a (validated) ``profiles:`` section; absent keys keep their defaults."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: section[k] for k in names if k in section}
        if "harmony_batch" in values:
            batch = values["harmony_batch"]
            values["harmony_batch"] = (batch,) if isinstance(batch, str) else tuple(batch)
        return cls(**values)

    @property
    def enabled(self) -> list[str]:
        """The transforms that run, in order."""
        on = {"asinh": bool(self.asinh), "spherize": self.spherize is not None,
              "pca": self.pca_components is not None, "harmony": bool(self.harmony)}
        return [t for t in TRANSFORMS if on[t]]

    def record(self, steps: Sequence[str] | None = None) -> dict[str, Any]:
        """The settings as a JSON-ready dict, with the transforms that ran (``enabled``)."""
        rec = asdict(self)
        rec["harmony_batch"] = list(self.harmony_batch)
        if not isinstance(self.reference, str):
            rec["reference"] = "the given reference rows"
        rec["enabled"] = list(steps) if steps is not None else self.enabled
        return rec


@dataclass(frozen=True)
class TransformResult:
    """The transformed table and the fit of every transform that ran (by name, in order)."""

    profiles: pd.DataFrame
    fits: dict[str, Any] = field(default_factory=dict)
    #: the table just before the first ``snapshot_before`` transform that ran (else the result)
    snapshot: pd.DataFrame | None = None


def transform_profiles(
    profiles: pd.DataFrame,
    settings: TransformSettings,
    *,
    features: Sequence[str] | None = None,
    steps: Sequence[str] | None = None,
    snapshot_before: Sequence[str] = (),
    source: str = "profiles",
) -> TransformResult:
    """Run the enabled transforms in order (module docstring); the table is returned unchanged when
    none is enabled.

    ``steps`` runs the named transforms instead (``cytoscreen profiles spherize|pca|harmony``):
    sphering then uses ``spherize_method``, and an unset ``pca_components`` keeps every component of
    the reference's rank.  ``snapshot_before`` (e.g. ``("spherize", "pca", "harmony")``) keeps the
    table as it was before the first of those transforms, for steps that must not see them.
    """
    if steps is not None:
        unknown = [t for t in steps if t not in TRANSFORMS]
        if unknown:
            raise ConfigError(f"unknown transform(s) {unknown}; choose from {', '.join(TRANSFORMS)}")
    out, fits = profiles, {}
    ref = {"reference_column": settings.reference_column, "reference_value": settings.reference_value}
    snapshot = None
    for name in [t for t in TRANSFORMS if t in steps] if steps is not None else settings.enabled:
        if snapshot is None and name in snapshot_before:
            snapshot = out
        feats = features if not fits else None  # later steps see the previous step's columns
        if name == "asinh":
            out, fits[name] = asinh(out, features=feats, source=source)
        elif name == "spherize":
            from cytoscreen.profiles.sphering import sphere

            own = settings.spherize_reference
            out, fits[name] = sphere(
                out, features=feats,
                method=settings.spherize if steps is None else settings.spherize_method,
                reference=settings.reference if own is None else own,
                epsilon=settings.spherize_epsilon,
                regularization=settings.spherize_regularization,
                center=settings.spherize_center, source=source,
                **(ref if own is None else {}),
            )
        elif name == "pca":
            from cytoscreen.profiles.pca import pca

            # pca_reference negcon means the control rows of the reference settings
            on_controls = settings.pca_reference == "negcon"
            out, fits[name] = pca(
                out, features=feats, n_components=settings.pca_components,
                reference=settings.reference if on_controls else settings.pca_reference,
                source=source, **(ref if on_controls else {}),
            )
        elif name == "harmony":
            from cytoscreen.profiles.harmony import harmony

            out, fits[name] = harmony(
                out, features=feats, batch=settings.harmony_batch, theta=settings.harmony_theta,
                sigma=settings.harmony_sigma, n_clusters=settings.harmony_clusters,
                max_iter=settings.harmony_max_iter, source=source,
            )
        else:  # pragma: no cover - TRANSFORMS is closed
            raise ConfigError(f"unknown transform {name!r}")
    return TransformResult(out, fits, snapshot if snapshot is not None else out)


@dataclass(frozen=True)
class AsinhRecord:
    """What :func:`asinh` did (it fits nothing, so there is no statistics table)."""

    features: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        return {"operation": "asinh", "definition": "arcsinh(x) of every feature",
                "n_features": len(self.features)}

    def table(self) -> None:
        return None


def asinh(
    profiles: pd.DataFrame, *, features: Sequence[str] | None = None, source: str = "profiles"
) -> tuple[pd.DataFrame, AsinhRecord]:
    """``arcsinh`` of every feature (NaN stays NaN); every other column kept."""
    cols = resolve_features(profiles, features, source=source)
    x = feature_matrix(profiles, cols, dtype=np.float64)
    check_finite(x, cols, source=source)
    return replace_features(profiles, cols, np.arcsinh(x), cols), AsinhRecord(tuple(cols))


def fit_paths(output: str | Path, name: str) -> tuple[Path, Path]:
    """``<stem>.<name>.json`` and ``<stem>.<name>.parquet`` beside ``output``."""
    base = Path(output)
    stem = base.name[: -len(base.suffix)] if base.suffix else base.name
    return base.with_name(f"{stem}.{name}.json"), base.with_name(f"{stem}.{name}.parquet")


def write_fits(result: TransformResult, output: str | Path) -> dict[str, dict[str, Any]]:
    """Save every fit beside ``output`` (see :func:`fit_paths`); returns the records by name, each
    with the paths it was written to."""
    records = {}
    for name, fit in result.fits.items():
        json_path, table_path = fit_paths(output, name)
        table = fit.table()
        rec = {**fit.record(), "statistics": str(table_path) if table is not None else None}
        if table is not None:
            io.write_table(table, table_path)
        io.write_json(rec, json_path)
        logger.info("wrote %s%s", json_path, f" and {table_path}" if table is not None else "")
        records[name] = rec
    return records
