"""Helpers for the segment tests: a random-weight Cellpose model file, a stand-in segmenter, and
the tiny synthetic plate ingested and QC'd into a results folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cytoscreen import io

CHANNELS = {"w1": "DNA", "w2": "Tubulin", "w3": "Actin"}
PLATE = "SYN001"


def random_cellpose_model(path: Path, *, seed: int = 0, diam_mean: float = 17.0) -> Path:
    """Save a Cellpose 3 ``CellposeModel`` with random initial weights (offline, seeded)."""
    import torch
    from cellpose import models

    torch.manual_seed(seed)
    model = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diam_mean)
    model.net.save_model(str(path))
    return path


class ThresholdModel:
    """Stands in for ``cellpose.models.CellposeModel``: same ``eval`` signature and return shape.

    Objects are the Otsu foreground of the image (nuclei: ``channels=[0, 0]``; cells:
    ``channels=[1, 2]``, the cytoplasm channel first on axis 0), split between the peaks of the
    smoothed distance transform (a seeded split scaled by ``diameter``, like a watershed).  On the
    synthetic screen it counts nuclei with Spearman rho ~0.9 against the truth.  ``calls`` records
    which objects it was asked for and at which diameter.
    """

    def __init__(self, diam_mean: float = 17.0) -> None:
        self.diam_mean = diam_mean
        self.diam_labels = diam_mean
        self.calls: list[tuple[str, float | None]] = []

    @staticmethod
    def _otsu(x: np.ndarray) -> float:
        hist, edges = np.histogram(x, 256)
        centres = (edges[:-1] + edges[1:]) / 2
        w0 = np.cumsum(hist)
        w1 = w0[-1] - w0
        s0 = np.cumsum(hist * centres)
        m0 = s0 / np.maximum(w0, 1)
        m1 = (s0[-1] - s0) / np.maximum(w1, 1)
        return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])

    def eval(self, x, *, channels=None, channel_axis=None, diameter=None, **kwargs):
        from scipy import ndimage

        x = np.asarray(x, dtype=np.float32)
        kind = "cells" if channels == [1, 2] else "nuclei"
        img = x[0] if kind == "cells" else x
        self.calls.append((kind, diameter))
        d = float(diameter or self.diam_labels)
        mask = img > self._otsu(img)
        dist = ndimage.distance_transform_edt(mask)
        smooth = ndimage.gaussian_filter(dist, max(d / 7.0, 0.5))
        window = max(int(round(d / 2)) | 1, 3)
        peaks = (smooth == ndimage.maximum_filter(smooth, size=window)) & mask & (dist > 2)
        markers, n = ndimage.label(peaks)
        labels = np.zeros(img.shape, np.int64)
        if n:
            # every foreground pixel joins its nearest peak
            _, (iy, ix) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
            labels = np.where(mask, markers[iy, ix], 0)
        sizes = np.bincount(labels.ravel())
        small = sizes < int(kwargs.get("min_size", 15))
        small[0] = False
        labels[small[labels]] = 0
        ids = np.unique(labels)
        ids = ids[ids > 0]
        lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
        lut[ids] = np.arange(1, len(ids) + 1)
        return lut[labels], [None, None, None], np.zeros(256, np.float32)


def write_segment_config(path: Path, plates_tsv: Path, results: Path, **segment) -> Path:
    cfg = {"plates": str(plates_tsv), "results": str(results), "reports": str(path.parent / "reports"),
           "channels": dict(CHANNELS), "segment": {"enabled": True, **segment},
           "features": {"backbone": "test_tiny", "num_workers": 0}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def ingest_plate(screen: Path, results: Path, plate: str = PLATE) -> tuple[Path, Path]:
    """Run the real ingest and QC commands for one plate; return (images.parquet, qc.parquet)."""
    from cytoscreen.cli import main

    cfg = write_segment_config(results.parent / "ingest_config.yaml", screen / "plates.tsv", results)
    images = results / plate / "images.parquet"
    qc = results / plate / "qc.parquet"
    assert main(["-q", "ingest", "--config", str(cfg), "--plate", plate, "--out", str(images)]) == 0
    assert main(["-q", "qc", str(images), str(qc), "--config", str(cfg)]) == 0
    return images, qc


def truth_counts(screen: Path, plate: str = PLATE) -> pd.DataFrame:
    """True nuclei per site: Metadata_Well, Metadata_Site, n_cells."""
    truth = pd.read_csv(screen / "truth" / f"{plate}.tsv", sep="\t")
    truth = truth.rename(columns={"well": io.WELL, "site": io.SITE})
    truth[io.SITE] = truth[io.SITE].astype(np.int64)
    return truth[[io.WELL, io.SITE, "n_cells"]]
