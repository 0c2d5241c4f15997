"""Self-contained HTML reports: one per plate (QC, controls, hits) and one for the screen.

Tables (pure functions of DataFrames, no file I/O):

- :mod:`cytoscreen.report.settings`: the ``report:`` config section (:class:`ReportSettings`),
- :mod:`cytoscreen.report.wells`: the per-well summary, well positions and plate matrices,
- :mod:`cytoscreen.report.controls`: Z'-factor and control quality, the readout choice,
- :mod:`cytoscreen.report.gallery`: which sites get a thumbnail,
- :mod:`cytoscreen.report.tables`: plate summary, hit list, clusters, PCA, evaluation rows.

Rendering:

- :mod:`cytoscreen.report.plots`: inline SVG heatmaps and scatter plots, matplotlib figures as
  data URIs,
- :mod:`cytoscreen.report.thumbnails`: contrast-stretched multi-channel composite thumbnails,
- :mod:`cytoscreen.report.components`: HTML building blocks and the page shell (CSS, script and
  template are package data in ``assets/``),
- :mod:`cytoscreen.report.pages`: the plate page (``plate_report``, one module per section) and
  the screen page (``screen_report``),
- :mod:`cytoscreen.report.command`: ``cytoscreen report plate|screen``.

Every report opens offline: CSS, JavaScript and images are inline, and a Content-Security-Policy
forbids loading anything from elsewhere.
"""
