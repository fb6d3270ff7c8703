"""Exporters: the engine networks (:mod:`vfrt.engines.specs`) as files other runtimes load.

* :mod:`vfrt.export.onnx`     - ONNX graphs of the six networks, checked and compared with PyTorch;
  ``export_onnx_engine`` is the ONNX Runtime backend's builder.
* :mod:`vfrt.export.tensorrt` - TensorRT / TensorRT-RTX plans built from those graphs;
  ``build_tensorrt_engine`` is the TensorRT backend's builder.

The matching executors live in :mod:`vfrt.engines.executors` (``onnxruntime``, ``tensorrt``); which
backend to use where: docs/ENGINES.md. Nothing heavy is imported here (onnx, onnxruntime and TensorRT
load when an export starts).
"""
