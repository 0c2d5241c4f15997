"""The report pages: :func:`plate.plate_report` and :func:`screen.screen_report`.

The plate page assembles its sections from :mod:`.plate_heatmaps`, :mod:`.plate_controls` and
:mod:`.plate_gallery`; every section is a function returning HTML built from
:mod:`cytoscreen.report.components` and the tables of :mod:`cytoscreen.report.wells`,
:mod:`~cytoscreen.report.controls`, :mod:`~cytoscreen.report.gallery` and
:mod:`~cytoscreen.report.tables`.
"""
