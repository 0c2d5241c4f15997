"""Novelty scoring streamed plate by plate (campaign scale).

:func:`cytoscreen.novelty.score.score_profiles` holds the whole screen, its reconstructions and its
residuals at once (~14 MB per 384-well plate of 1,280 features, so about 500 plates in 8 GB).  The
scores themselves are per row, and the poscon-direction readout is per plate; only the p-values
(against every control well of the screen), the BH q-values over every tested well, the robust z and
the Z' need the whole screen, and those need only a few numbers per well.  :func:`score_plates`
therefore scores one plate at a time (:func:`~cytoscreen.novelty.score.score_chunk`), hands each
plate's residuals to a writer, keeps the small per-well table, and finishes with
:func:`~cytoscreen.novelty.score.finish_scores`: the same output as the in-memory path, with peak
memory of about one plate plus ~100 bytes per well.

The table is read and written plate by plate with :mod:`cytoscreen.io.stream`.

``novelty.streaming`` picks the path in ``cytoscreen novelty score``: ``never`` (in memory),
``always``, or ``auto``: streamed above :data:`cytoscreen.io.stream.STREAM_ABOVE_ROWS` input rows
when the table's plates are contiguous.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)

# --- scoring ------------------------------------------------------------------------------------
def score_plates(
    tables: Iterable[tuple[str, pd.DataFrame]],
    crossfit,
    *,
    residuals: Callable[[pd.DataFrame], None] | None = None,
    hit_q: float = 0.05,
    site_aggregate: str = "median",
    exclude_pert_types: Sequence[str] = ("empty",),
    pvalue: str = "auto",
    conformal_min_controls: int = 200,
    batch_size: int = 4096,
    source: str = "screen",
):
    """:func:`~cytoscreen.novelty.score.score_profiles` of a screen given one plate table at a time.

    Parameters
    ----------
    tables
        ``(name, table)`` per plate (or per group of whole plates); a plate may not come twice.
    residuals
        Called with each plate's residual table (reconstruction - input) as it is scored, e.g.
        :meth:`cytoscreen.io.stream.ParquetStream.write`; the returned ``residuals`` is then an empty table.

    Returns
    -------
    NoveltyScores
        As :func:`~cytoscreen.novelty.score.score_profiles` on the stacked tables (wells in the
        order of the plates given).
    """
    from cytoscreen.novelty.score import finish_scores, score_chunk

    wells, scores, poscon_z = [], [], []
    seen: set[str] = set()
    n_rows = 0
    empty = None
    for name, df in tables:
        if io.PLATE in df.columns:
            plates = set(df[io.PLATE].astype(str).unique())
            again = plates & seen
            if again:
                raise InputDataError(
                    f"{name}: plate {sorted(again)[0]} came in an earlier table too; streamed "
                    f"scoring needs each plate's rows together"
                )
            seen |= plates
        chunk = score_chunk(df, crossfit, site_aggregate=site_aggregate, batch_size=batch_size,
                            source=str(name))
        wells.append(chunk.wells)
        scores.append(chunk.well_scores)
        poscon_z.append(chunk.poscon_z)
        if residuals is not None:
            residuals(chunk.residuals)
        empty = chunk.residuals.iloc[:0]
        n_rows += len(df)
        del chunk, df
    if not wells:
        raise InputDataError(f"{source}: no plate tables to score")
    table = pd.concat(wells, ignore_index=True)
    logger.info("%s: scored %d plate table(s), %d rows; p-values and q-values over the screen",
                source, len(wells), n_rows)
    return finish_scores(
        table, np.concatenate(scores), np.concatenate(poscon_z), crossfit, residuals=empty,
        n_rows=n_rows, hit_q=hit_q, exclude_pert_types=exclude_pert_types, pvalue=pvalue,
        conformal_min_controls=conformal_min_controls, source=source,
    )
