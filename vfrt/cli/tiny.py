"""`vfrt make-test-checkpoint`: a seeded tiny random checkpoint in the original formats."""
from __future__ import annotations

import click


@click.command("make-test-checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random weights.")
@click.option("--image-size", type=click.IntRange(min=16, max=1024), default=64, show_default=True,
              help="Image resolution the tiny model works at: a multiple of 16 (8x VAE, 2x UNet), 16..1024.")
def make_test_checkpoint(out_dir: str, seed: int, image_size: int) -> None:
    """Write tiny.ckpt, tiny.safetensors and tiny.yaml into OUT_DIR (random weights: for tests and demos)."""
    from vfrt.models import write_tiny_checkpoint
    if image_size % 16:
        raise click.BadParameter(f"{image_size} is not a multiple of 16 (8x VAE, 2x UNet)", param_hint="--image-size")
    try:
        tc = write_tiny_checkpoint(out_dir, seed=seed, image_size=image_size)
    except OSError as exc:
        raise click.ClickException(f"cannot write into {out_dir}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {tc.ckpt}\n      {tc.safetensors}\n      {tc.yaml}")
