"""The ``vfrt`` command group.

Sub-commands live in their own modules and are imported lazily, so ``vfrt --help`` works
without torch extensions, GPUs, TensorRT or tinycudann.

``-v`` / ``-q`` (more / less logging) are accepted before the sub-command and after it
(``vfrt -v run x.png`` = ``vfrt run -v x.png``): the group adds the same two options to every
command it hands out, and all occurrences count together.
"""
from __future__ import annotations

import importlib
import logging

import click

from vfrt import __version__

# name -> (module, attribute, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("vfrt.cli.run", "run", "Generate novel views (360-degree orbit or one target pose) from one photo."),
    "build-engines": ("vfrt.cli.build_engines", "build_engines", "Build the networks once into engines (AOTInductor) so later runs start fast."),
    "bench": ("vfrt.cli.bench", "bench", "Benchmark the reference and fast engines (per-K step latency, orbit time, memory)."),
    "make-test-checkpoint": ("vfrt.cli.tiny", "make_test_checkpoint", "Write a seeded tiny random checkpoint in the original formats."),
    "recon": ("vfrt.cli.recon", "recon", "Reconstruct a coloured mesh with NeuS from generated views."),
    "eval-mesh": ("vfrt.cli.recon", "eval_mesh", "Chamfer distance and F-score of a mesh against a reference mesh."),
    "doctor": ("vfrt.cli.doctor", "doctor", "What this installation can do: versions, GPU, extras, segmentation, weights, built engines."),
    "serve": ("vfrt.cli.serve", "serve", "Serve a web page and an HTTP API: photo in, views, turntable and mesh out."),
}


_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_VERBOSITY_KEY = "vfrt.verbosity"


def _verbosity_callback(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """Add this occurrence's -v / -q count to the run's total and set the log level from it:
    WARNING by default, -v INFO, -vv DEBUG, -q ERROR, -qq CRITICAL."""
    counts = ctx.find_root().meta.setdefault(_VERBOSITY_KEY, {"verbose": 0, "quiet": 0})
    counts[param.name] += value or 0
    level = logging.WARNING - 10 * min(counts["verbose"], 2) + 10 * min(counts["quiet"], 2)
    logging.basicConfig(level=level, format=_LOG_FORMAT)    # a no-op when logging is configured already
    logging.getLogger().setLevel(level)


def verbosity(ctx: click.Context) -> int:
    """The run's -v count minus its -q count (0 by default; negative: quiet)."""
    counts = ctx.find_root().meta.get(_VERBOSITY_KEY, {"verbose": 0, "quiet": 0})
    return counts["verbose"] - counts["quiet"]


def verbosity_options() -> list[click.Option]:
    """Fresh ``-v/--verbose`` and ``-q/--quiet`` options (counted; processed before other options)."""
    return [click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                         callback=_verbosity_callback, help="More logging (-v info, -vv debug)."),
            click.Option(["-q", "--quiet"], count=True, expose_value=False, is_eager=True,
                         callback=_verbosity_callback, help="Less logging (-q errors only).")]


class LazyGroup(click.Group):
    """A click group whose commands are imported only when invoked (or listed with help)."""

    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        command = getattr(importlib.import_module(module), attr)
        if not any(p.name == "verbose" for p in command.params):   # once per command object
            command.params.extend(verbosity_options())
        return command

    def format_commands(self, ctx, formatter):
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             params=verbosity_options())
@click.version_option(__version__, "--version", prog_name="vfrt", message="%(prog)s %(version)s")
def cli() -> None:
    """vfrt - the ViewFusion Runtime: one photo in, a consistent orbit of views (and a mesh) out."""


if __name__ == "__main__":  # pragma: no cover
    cli()
