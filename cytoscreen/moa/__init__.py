"""MoA stage: similarity of treatment profiles, clustering, UMAP display and benchmark metrics.

- :mod:`cytoscreen.moa.similarity`: cosine similarity, nearest neighbours, median treatment
  profiles (through :func:`cytoscreen.profiles.consensus.consensus`).
- :mod:`cytoscreen.moa.cluster`: hierarchical (average linkage, k by silhouette or fixed) and
  Louvain clustering on a kNN graph.
- :mod:`cytoscreen.moa.embed`: seeded UMAP coordinates (for display only, never for metrics).
- :mod:`cytoscreen.moa.metrics`: NSC/NSCB 1-NN accuracy, copairs-style mAP with permutation
  p-values and Benjamini-Hochberg q-values, adjusted Rand index; multi-label MoAs (``"a|b"``).
- :mod:`cytoscreen.moa.replicating`: percent replicating (replicate correlation against a null of
  non-replicate groups).
- :mod:`cytoscreen.moa.evaluate`: the evaluation of a well table (``cytoscreen evaluate``): inputs,
  treatments and the orchestration; :mod:`cytoscreen.moa.evaluate_scores`: its metrics, one
  function each, and the summary record.
- :mod:`cytoscreen.moa.stage`: the screen-level stage that writes moa.parquet (``cytoscreen moa``).
"""
