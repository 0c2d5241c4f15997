"""Image QC per site: focus, saturation and intensity per channel, and per-plate flags.

Metrics per site and channel are columns ``Metadata_<Channel>_<Metric>`` (so they never count as
features), see :mod:`cytoscreen.qc.metrics`; the bool ``QC_*`` flags are described in
:mod:`cytoscreen.qc.flags`.  :func:`run_qc` is what the workflow's ``qc`` step does: read and
measure every site (:func:`measure`), then flag (:func:`flag`).  Which site failed is
:func:`cytoscreen.plate.qc_failed` (re-exported here as :func:`failed`).
"""

from __future__ import annotations

import logging

import pandas as pd

from cytoscreen import io
from cytoscreen.plate import qc_failed as failed
from cytoscreen.qc.flags import FLAGS, flag
from cytoscreen.qc.measure import measure
from cytoscreen.qc.metrics import METRICS, image_metrics, metric_column
from cytoscreen.qc.settings import QCSettings

logger = logging.getLogger(__name__)


def run_qc(images: pd.DataFrame, settings: QCSettings) -> pd.DataFrame:
    """Measure and flag one plate's ``images.parquet`` table: the ``qc.parquet`` table."""
    channels = list(dict.fromkeys(images[io.CHANNEL]))
    metrics = measure(images, batch_size=settings.batch_size, threads=settings.threads)
    flagged = flag(metrics, channels=channels, settings=settings)
    counts = {f: int(flagged[f].sum()) for f in FLAGS}
    logger.info("QC: %d sites, flagged %s", len(flagged), ", ".join(f"{n} {f}" for f, n in counts.items()))
    return flagged


__all__ = ["FLAGS", "METRICS", "QCSettings", "failed", "flag", "image_metrics", "measure", "metric_column",
           "run_qc"]
