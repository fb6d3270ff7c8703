"""``ServeConfig``: the server's limits and places, validated once (built by ``vfrt serve`` or a caller)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from vfrt.recon.config import ReconConfig

MiB = 2**20


@dataclass(frozen=True)
class ServeConfig:
    """Where jobs live and how much one request and the queue may take.

    Attributes:
        runs_dir: one folder per job (``<runs_dir>/<job id>/``, see :mod:`vfrt.serve.store`).
        host, port: where the HTTP server listens (loopback by default).
        max_upload_bytes: largest accepted photo file (each photo of a job).
        max_pixels: largest accepted photo, width x height (checked before decoding).
        max_extra_inputs: extra input views a multi-input job may carry.
        queue_size: jobs that may wait for a worker (running ones not counted); more -> 503.
        retry_after_s: the ``Retry-After`` a full queue answers with.
        max_views, max_steps: upper bounds of a job's orbit size and DDIM steps (each
            ``views x steps`` is GPU time that one request may claim).
        batch_size: queued jobs with the same sampling settings that a worker takes together
            (1 until the pipeline can sample several objects in one step).
        recon: the reconstruction settings of the "reconstruct" stage.
        ui: serve the web page at ``/`` (else the HTTP API only).
    """

    runs_dir: Path = Path("serve_runs")
    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000
    max_extra_inputs: int = 4
    queue_size: int = 16
    retry_after_s: int = 30
    max_views: int = 72
    max_steps: int = 250
    batch_size: int = 1
    recon: ReconConfig = field(default_factory=ReconConfig)
    ui: bool = True

    def __post_init__(self):
        object.__setattr__(self, "runs_dir", Path(self.runs_dir))
        checks = [
            (1 <= self.port <= 65535, f"port must be in 1..65535, got {self.port}"),
            (self.max_upload_bytes >= 1024, f"max_upload_bytes must be >= 1024, got {self.max_upload_bytes}"),
            (self.max_pixels >= 64 * 64, f"max_pixels must be >= 4096, got {self.max_pixels}"),
            (self.max_extra_inputs >= 0, "max_extra_inputs must be >= 0"),
            (self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}"),
            (self.retry_after_s >= 1, "retry_after_s must be >= 1"),
            (self.max_views >= 2, "max_views must be >= 2"),
            (self.max_steps >= 2, "max_steps must be >= 2"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (bool(self.host.strip()), "host must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def public(self) -> bool:
        """True when ``host`` is not a loopback address: other machines can reach the server."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:          # a host name other than localhost
            return True
