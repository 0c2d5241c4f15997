"""The profiles chain as one function: normalize -> select features (-> spherize -> PCA -> Harmony)
-> consensus.

The MoA benchmarks run it on well profiles (BBBC021: treatments = compound x concentration, negcon
= DMSO); the workflow runs the same steps as separate CLI calls, configured by the same
``profiles:`` keys (:meth:`TransformSettings.from_config`).  Feature selection is optional
(``operations=()``), and so is each operation in it, such as ``correlation_threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.profiles.consensus import DEFAULT_CONSENSUS_BY, consensus
from cytoscreen.profiles.normalize import normalize
from cytoscreen.profiles.screen_scale import screen_scale
from cytoscreen.profiles.select import DEFAULT_OPERATIONS, feature_select
from cytoscreen.profiles.transforms import TransformSettings, transform_profiles


@dataclass(frozen=True)
class ProfileChainResult:
    """The tables of each level, and the feature selection record."""

    normalized: pd.DataFrame
    feature_selected: pd.DataFrame
    consensus: pd.DataFrame
    selection: Mapping[str, Any] = field(default_factory=dict)
    #: the fit of every transform that ran (spherize, pca, harmony), by name
    fits: Mapping[str, Any] = field(default_factory=dict)


def profile_chain(
    wells: pd.DataFrame,
    *,
    normalize_method: str = "mad_robustize",
    reference: str | pd.Series = "negcon",
    by: Sequence[str] = (io.PLATE,),
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    spherize: str | None = None,
    consensus_method: str = "median",
    consensus_by: Sequence[str] = DEFAULT_CONSENSUS_BY,
    features: Sequence[str] | None = None,
    reference_column: str | None = None,
    reference_value: str | Sequence[str] | None = None,
    epsilon: float = 1e-18,
    spherize_epsilon: float = 1e-6,
    select_options: Mapping[str, Any] | None = None,
    transforms: TransformSettings | Mapping[str, Any] | None = None,
    normalize_scale: str = "plate",
) -> ProfileChainResult:
    """Normalize per ``by`` group against the reference, select features on the whole table,
    optionally spherize on the reference rows of the whole table, and build consensus profiles.

    Parameters
    ----------
    wells
        Well profiles (``wells.parquet`` of every plate, or the BBBC021 well table).
    normalize_method, reference, by, epsilon, reference_column, reference_value
        See :func:`cytoscreen.profiles.normalize.normalize`.  ``reference="negcon"`` on a table
        without ``Metadata_pert_type`` uses its DMSO rows.
    operations, select_options
        Feature selection operations (``()`` selects nothing) and further keyword options of
        :func:`cytoscreen.profiles.select.feature_select` (e.g. ``{"corr_threshold": 0.95}``).
    spherize
        ``None`` (default) or a method of :data:`cytoscreen.profiles.normalize.SPHERIZE_METHODS`,
        fitted on the reference rows after feature selection (ignored when ``transforms`` is given).
    normalize_scale
        ``"plate"`` or ``"screen"``: centre per plate, then divide by the reference spread of the
        whole table (:mod:`cytoscreen.profiles.screen_scale`), before feature selection.
    transforms
        The transforms after selection (:class:`~cytoscreen.profiles.transforms.TransformSettings`,
        or a mapping of ``profiles:`` keys such as ``{"spherize": "ZCA", "spherize_epsilon": 0.1,
        "pca_components": 0.99, "harmony": True}``); the reference settings of this call apply.
    consensus_method, consensus_by
        See :func:`cytoscreen.profiles.consensus.consensus`; the default treatment columns fall
        back to ``Metadata_Compound``/``Metadata_Concentration`` when absent.
    """
    normalized = normalize(
        wells,
        features=features,
        method=normalize_method,
        reference=reference,
        reference_column=reference_column,
        reference_value=reference_value,
        by=by,
        epsilon=epsilon,
        spherize_epsilon=spherize_epsilon,
        scale_over=normalize_scale,
        source="normalize",
    )
    if normalize_scale == "screen":
        normalized, _ = screen_scale(
            normalized, method=normalize_method, reference=reference,
            reference_column=reference_column, reference_value=reference_value, epsilon=epsilon,
            source="normalize",
        )
    selection = feature_select(
        normalized,
        features=None if features is None else [f for f in features if f in normalized],
        operations=operations,
        source="select",
        **dict(select_options or {}),
    )
    selected = selection.profiles
    if transforms is None:
        settings = TransformSettings(spherize=spherize, spherize_epsilon=spherize_epsilon)
    elif isinstance(transforms, TransformSettings):
        settings = transforms
    else:
        settings = TransformSettings.from_config(transforms)
    # the reference rows of this call (a name, a query or a row mask) are the transforms' too
    settings = replace(
        settings, reference=reference, reference_column=reference_column,
        reference_value=reference_value,
    )
    fits: dict[str, Any] = {}
    if settings.enabled:
        done = transform_profiles(selected, settings, source="transform")
        selected, fits = done.profiles, done.fits
    cons = consensus(selected, method=consensus_method, by=consensus_by, source="consensus")
    return ProfileChainResult(
        normalized=normalized,
        feature_selected=selected,
        consensus=cons,
        selection=selection.record(),
        fits=fits,
    )
