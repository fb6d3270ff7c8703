"""ONNX export specs (one per network) - planned for the TensorRT / ONNX Runtime milestone.

Nothing is exported yet; this package only reserves its place in the layout (see STYLE.md).
"""
