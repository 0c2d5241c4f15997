"""Dose response per compound: a monotone trend test and a fitted 4-parameter log-logistic EC50.

- :mod:`cytoscreen.dose.fit`: :func:`~cytoscreen.dose.fit.trend_test` (Spearman),
  :func:`~cytoscreen.dose.fit.fit_log_logistic` (EC50, Hill slope, top, bottom) and
  :func:`~cytoscreen.dose.fit.dose_response` (the per-compound table),
- :mod:`cytoscreen.dose.command`: ``cytoscreen dose NOVELTY.parquet OUT.parquet --readout COLUMN``.
"""
