"""`vfrt make-test-checkpoint`: a seeded tiny random checkpoint in the original formats."""
from __future__ import annotations

import click


@click.command("make-test-checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--image-size", default=64, show_default=True, help="Image resolution the tiny model works at.")
def make_test_checkpoint(out_dir: str, seed: int, image_size: int) -> None:
    """Write tiny.ckpt, tiny.safetensors and tiny.yaml into OUT_DIR (random weights: for tests and demos)."""
    from vfrt.models import write_tiny_checkpoint
    if image_size % 8:
        raise click.BadParameter("must be a multiple of 8", param_hint="--image-size")
    tc = write_tiny_checkpoint(out_dir, seed=seed, image_size=image_size)
    click.echo(f"wrote {tc.ckpt}\n      {tc.safetensors}\n      {tc.yaml}")
