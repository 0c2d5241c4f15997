"""Novelty stage: autoencoders trained on negative-control profiles score every well.

Wells the models reconstruct badly are phenotypically novel.  The models are cross-fitted over
folds of the control wells (:mod:`~cytoscreen.novelty.data`), so every control well is scored by a
model that never saw it; those out-of-sample scores are the null of the p-values, Benjamini-Hochberg
q-values and hit calls, and of the per-plate robust z readout (:mod:`cytoscreen.novelty.score`).
The settings (:mod:`~cytoscreen.novelty.settings`) are plain Python; the model
(:mod:`~cytoscreen.novelty.model`), the data module and the Trainer set-up
(:mod:`~cytoscreen.novelty.train`) import torch and Lightning, so this package imports them only on
demand.
"""
