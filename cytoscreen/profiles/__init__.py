"""Profiles stage: sites -> wells -> normalized -> feature-selected -> consensus profiles.

Modules
-------
aggregate
    :func:`aggregate`: site (or cell) rows to wells, median or mean, QC-failed sites left out.
normalize
    :func:`normalize` per plate against reference wells (``mad_robustize``, ``standardize``,
    ``robustize``, ``spherize``) and :func:`spherize`.
select
    :func:`feature_select` (``variance_threshold``, ``correlation_threshold``, ``drop_na_columns``,
    ``blocklist``, ``drop_outliers``) with a record of what each operation dropped.
consensus
    :func:`consensus`: one row per treatment, ``median`` or ``modz``.
screen_scale
    ``normalize_scale: screen``: one reference spread per feature for the whole screen.
sphering, pca, harmony
    The transforms after selection, each fitted and its statistics kept: ``sphering.sphere``
    (whitening on negcon, TVN), ``pca.pca``, ``harmony.harmony`` (batch correction, harmonypy).
transforms
    :class:`TransformSettings` (the ``profiles:`` keys that turn them on) and
    :func:`transform_profiles`: spherize -> pca -> harmony in that order.
chain
    :func:`profile_chain`: normalize -> select -> (transforms) -> consensus in one call.
reference, columns, arrays, groups
    Shared helpers: reference rows (``negcon`` is :func:`cytoscreen.plate.negcon_rule`), column
    resolution and checks, feature matrices, groups and grouped medians.
stage, command
    ``cytoscreen profiles aggregate|normalize|select|consensus|spherize|pca|harmony INPUT...
    OUTPUT``: read, operate, write.

Every function takes and returns DataFrames, keeps row order and ``Metadata_*`` columns, treats as
features exactly the columns :func:`cytoscreen.io.feature_columns` names, and writes float32
features.  Method names and definitions are pycytominer's; results agree with it within 1e-5
(``tests/unit/test_profiles_pycytominer.py``).
"""

from cytoscreen.profiles.aggregate import AGGREGATE_METHODS, aggregate
from cytoscreen.profiles.chain import ProfileChainResult, profile_chain
from cytoscreen.profiles.consensus import CONSENSUS_METHODS, consensus
from cytoscreen.profiles.normalize import NORMALIZE_METHODS, SPHERIZE_METHODS, normalize, spherize
from cytoscreen.profiles.select import (
    DEFAULT_OPERATIONS,
    SELECT_OPERATIONS,
    FeatureSelection,
    apply_selection,
    feature_select,
)
from cytoscreen.profiles.transforms import TRANSFORMS, TransformSettings, transform_profiles

__all__ = [
    "AGGREGATE_METHODS",
    "CONSENSUS_METHODS",
    "DEFAULT_OPERATIONS",
    "NORMALIZE_METHODS",
    "SELECT_OPERATIONS",
    "SPHERIZE_METHODS",
    "TRANSFORMS",
    "FeatureSelection",
    "ProfileChainResult",
    "TransformSettings",
    "aggregate",
    "apply_selection",
    "consensus",
    "feature_select",
    "normalize",
    "profile_chain",
    "spherize",
    "transform_profiles",
]
