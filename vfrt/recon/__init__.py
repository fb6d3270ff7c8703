"""NeuS reconstruction from generated views: hash-grid encoding (reference + fused Triton
kernel), fields, renderer, trainer, mesh extraction, demo renderer and mesh metrics.

Self-contained: imports nothing from other ``vfrt`` subpackages. Heavy modules (trimesh,
scikit-image, Triton) are imported lazily by the functions that need them.
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
