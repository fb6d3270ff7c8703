"""NeuS reconstruction from generated views: hash-grid encoding (reference + fused Triton
kernel), visual hull, fields, renderer, trainer, mesh extraction, colour baking, demo renderer,
test objects and metrics.

Imports nothing from other ``vfrt`` subpackages but the orbit cameras (``vfrt.runtime.cameras``).
Heavy modules (trimesh, scikit-image, xatlas, Triton) are imported lazily by the functions that
need them.
"""
from vfrt.runtime.cameras import write_transforms_json
from vfrt.recon.config import HashGridConfig, ReconConfig
from vfrt.recon.errors import (ConfigError, EmptySurfaceError, InputDataError, OutputDirError, ReconError,
                               TrainingDivergedError)
from vfrt.recon.pipeline import ReconResult, check_out_dir, default_out_dir, reconstruct

__all__ = [
    "ConfigError", "EmptySurfaceError", "HashGridConfig", "InputDataError", "OutputDirError", "ReconConfig",
    "ReconError", "ReconResult", "TrainingDivergedError", "check_out_dir", "default_out_dir", "reconstruct",
    "write_transforms_json",
]
