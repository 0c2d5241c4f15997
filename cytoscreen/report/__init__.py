"""Self-contained HTML reports: one per plate (QC, controls, hits) and one for the screen.

- :mod:`cytoscreen.report.data`: pure table functions (plate matrices, Z'-factor, gallery
  selection, summaries),
- :mod:`cytoscreen.report.plots`: inline SVG heatmaps and scatter plots, matplotlib figures as
  data URIs,
- :mod:`cytoscreen.report.thumbnails`: contrast-stretched multi-channel composite thumbnails,
- :mod:`cytoscreen.report.html`: page assembly (``plate_report``, ``screen_report``),
- :mod:`cytoscreen.report.command`: ``cytoscreen report plate|screen``.

Every report opens offline: CSS, JavaScript and images are inline, and a Content-Security-Policy
forbids loading anything from elsewhere.
"""
