"""The ``vfrt`` command group.

Sub-commands live in their own modules and are imported lazily, so ``vfrt --help`` works
without torch extensions, GPUs, TensorRT or tinycudann.
"""
from __future__ import annotations

import importlib
import logging

import click

# name -> (module, attribute, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("vfrt.cli.run", "run", "Generate novel views (360-degree orbit or one target pose) from one photo."),
    "bench": ("vfrt.cli.bench", "bench", "Benchmark the reference and fast engines (per-K step latency, orbit time, memory)."),
    "make-test-checkpoint": ("vfrt.cli.tiny", "make_test_checkpoint", "Write a seeded tiny random checkpoint in the original formats."),
    "recon": ("vfrt.cli.recon", "recon", "Reconstruct a coloured mesh with NeuS from generated views."),
    "eval-mesh": ("vfrt.cli.recon", "eval_mesh", "Chamfer distance and F-score of a mesh against a reference mesh."),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported only when invoked (or listed with help)."""

    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """vfrt - the ViewFusion Runtime: one photo in, a consistent orbit of views (and a mesh) out."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":  # pragma: no cover
    cli()
