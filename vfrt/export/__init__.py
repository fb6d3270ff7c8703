"""Exporters: the engine networks (:mod:`vfrt.engines.specs`) built into engine directories.

:mod:`vfrt.export.build` orchestrates ``vfrt build-engines`` (weights once, every network, manifest,
verification, atomic publication); one module per backend does the exporting:

* :mod:`vfrt.export.aoti`     - AOTInductor packages (weights inside; also what the C++ runtime loads),
  compiled several at once in :mod:`vfrt.export.aoti_compile` children (``--jobs``; the scheduler and
  the job types every exporter receives: :mod:`vfrt.export.jobs`);
* :mod:`vfrt.export.onnx`     - ONNX graphs of the six networks, checked and compared with PyTorch
  (``export_onnx_engine``: the ONNX Runtime backend's builder);
* :mod:`vfrt.export.tensorrt` - TensorRT / TensorRT-RTX plans built from those graphs
  (``build_tensorrt_engine``).

The matching executors live in :mod:`vfrt.engines.executors`; which backend to use where:
docs/ENGINES.md. This package sits above :mod:`vfrt.engines`, which never imports it; nothing heavy is
imported here (onnx, onnxruntime, TensorRT and Inductor load when an export starts).
"""
