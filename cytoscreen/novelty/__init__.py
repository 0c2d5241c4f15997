"""Novelty stage: an autoencoder trained on negative-control profiles scores every well.

Wells the model reconstructs badly are phenotypically novel.  Reconstruction errors are turned
into conformal p-values against held-out control wells, Benjamini-Hochberg q-values and hit calls
(:mod:`cytoscreen.novelty.score`).  The model (:mod:`~cytoscreen.novelty.model`), the data module
(:mod:`~cytoscreen.novelty.data`) and the Trainer set-up (:mod:`~cytoscreen.novelty.train`) import
torch and Lightning, so this package imports them only on demand.
"""
