"""The profiles chain as one function: normalize -> select features (-> spherize) -> consensus.

The MoA benchmark runs it on the BBBC021 well profiles (treatments = compound x concentration,
negcon = DMSO); the workflow runs the same steps as separate CLI calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.profiles.consensus import DEFAULT_CONSENSUS_BY, consensus
from cytoscreen.profiles.normalize import normalize
from cytoscreen.profiles.normalize import spherize as spherize_profiles
from cytoscreen.profiles.select import DEFAULT_OPERATIONS, feature_select


@dataclass(frozen=True)
class ProfileChainResult:
    """The tables of each level, and the feature selection record."""

    normalized: pd.DataFrame
    feature_selected: pd.DataFrame
    consensus: pd.DataFrame
    selection: Mapping[str, Any] = field(default_factory=dict)


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
        Feature selection operations and further keyword options of
        :func:`cytoscreen.profiles.select.feature_select` (e.g. ``{"corr_threshold": 0.95}``).
    spherize
        ``None`` (default) or a method of :data:`cytoscreen.profiles.normalize.SPHERIZE_METHODS`,
        fitted on the reference rows after feature selection.
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
    if spherize is not None:
        selected = spherize_profiles(
            selected,
            method=spherize,
            reference=reference,
            reference_column=reference_column,
            reference_value=reference_value,
            epsilon=spherize_epsilon,
            source="spherize",
        )
    cons = consensus(selected, method=consensus_method, by=consensus_by, source="consensus")
    return ProfileChainResult(
        normalized=normalized,
        feature_selected=selected,
        consensus=cons,
        selection=selection.record(),
    )
