"""Exporters: the engine networks (:mod:`vfrt.engines.specs`) built into engine directories.

:mod:`vfrt.export.build` orchestrates ``vfrt build-engines`` (weights once, every network, manifest,
verification, atomic publication); one module per backend does the exporting (:mod:`vfrt.export.aoti`:
AOTInductor packages). This package sits above :mod:`vfrt.engines`, which never imports it.
"""
