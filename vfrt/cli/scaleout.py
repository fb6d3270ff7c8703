"""`vfrt run ... --ray [ADDRESS]`: the run command's photos spread over Ray workers.

The run command validates everything first (options, checkpoint config, photos, output folders) as
for any run; this module turns the validated jobs into :mod:`vfrt.runtime.scaleout` calls and reports
progress and the summary.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click


def ray_options(address: str | None, workers: int | None, gpus_per_worker: float | None):
    """The :class:`~vfrt.runtime.scaleout.RayOptions` of ``--ray [ADDRESS]``, or None without ``--ray``.

    ``--ray`` takes an optional value, so ``vfrt run --ray photos/`` would read the folder as the
    address: a value that is no Ray address but an existing path is refused with that explanation.
    """
    if address is None:
        if workers is not None or gpus_per_worker is not None:
            raise click.UsageError("--ray-workers and --ray-gpus-per-worker go with --ray")
        return None
    from vfrt.runtime.scaleout import RayOptions, is_ray_address
    if not is_ray_address(address):
        if Path(address).exists():
            raise click.UsageError(f"--ray took {address!r} as the Ray address: put the IMAGES before --ray "
                                   "(vfrt run photos/ --ray) or name the address (--ray local)")
        raise click.BadParameter(f"{address!r} is not a Ray address: use local, auto, HOST:PORT or ray://HOST:PORT",
                                 param_hint="--ray")
    return RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker)


def skip_finished(targets, cfg, noise, backend: str, resolution: int, overwrite: bool):
    """Split (image, out_dir) targets into those to run and the :class:`PhotoOutcome` of those whose folder is
    complete with these settings already (a rerun after a crash redoes only the rest; ``overwrite`` redoes all)."""
    from vfrt.runtime.run import run_fingerprint
    from vfrt.runtime.scaleout import PhotoOutcome, finished_run
    todo, done = [], []
    for image, out_dir in targets:
        try:
            finished = not overwrite and finished_run(out_dir, run_fingerprint(Path(image), cfg, noise, backend,
                                                                               resolution))
        except OSError:          # an unreadable photo: the run command's checks report it
            finished = False
        if finished:
            done.append(PhotoOutcome(str(image), str(out_dir), "skipped", -1, attempts=0))
        else:
            todo.append((image, out_dir))
    return todo, done


def run_with_ray(jobs, failures, skipped, options, spec, summary_path: Path, quiet: bool) -> None:
    """Run the checked ``jobs`` (image, out_dir, prepared inputs) on Ray with ``spec`` (a WorkerSpec), print
    each photo's fate and the summary, write the summary JSON to ``summary_path``; images that failed
    (here or in ``failures``: (image, out_dir, reason) found by the checks) end in one ClickException."""
    from vfrt.runtime.scaleout import PhotoJob, PhotoOutcome, Retry, ScaleoutError, run_on_ray

    def echo(event) -> None:
        if isinstance(event, Retry):
            click.echo(f"retrying: {event.image} ({event.reason}; attempt {event.attempt} of "
                       f"{options.max_attempts})", err=True)
        elif event.status == "failed":
            click.echo(f"failed: {event.image}: {event.error}", err=True)
        elif event.status == "skipped":
            click.echo(f"already done: {event.folder}")
        else:
            click.echo(f"done: {event.folder}" + ("" if quiet else f" (worker {event.worker}, {event.seconds:.1f} s)"))

    for outcome in skipped:
        click.echo(f"already done: {outcome.folder}")
    photo_jobs = [PhotoJob(Path(image).resolve(), Path(out_dir).resolve(), tuple(prepared))
                  for image, out_dir, prepared in jobs]
    if not quiet:
        click.echo(f"ray ({options.address}): {len(photo_jobs)} photos; starting workers (each loads the model once)"
                   " ...", err=True)
    try:
        summary = run_on_ray(photo_jobs, spec, options, on_event=echo)
    except ScaleoutError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; finished photos are kept and unfinished ones resume from their "
                                   ".partial folders: run the same command again") from None
    checked = [PhotoOutcome(str(image), str(out_dir), "failed", -1, attempts=0, error=why)
               for image, out_dir, why in failures]
    summary = dataclasses.replace(summary, outcomes=skipped + checked + summary.outcomes)
    try:
        summary.write(summary_path)
    except OSError as exc:
        raise click.ClickException(f"cannot write the summary {summary_path}: {exc.strerror or exc}") from exc
    for line in summary_lines(summary):
        click.echo(line)
    click.echo(f"summary: {summary_path}")
    if summary.failures:
        raise click.ClickException(f"{len(summary.failures)} of {len(summary.outcomes)} images failed: "
                                   f"{', '.join(o.image for o in summary.failures)}")


def summary_lines(summary) -> list[str]:
    """The human-readable summary of a :class:`~vfrt.runtime.scaleout.ScaleoutSummary`."""
    workers = ", ".join(f"{w['index']} ({w.get('gpu') or w.get('device')}): {summary.photos_per_worker[w['index']]}"
                        for w in summary.workers)
    return [f"{len(summary.outcomes)} photos: {summary.count('done')} done, {summary.count('skipped')} already done, "
            f"{summary.count('failed')} failed, {summary.retried} retried ({summary.worker_deaths} worker deaths)",
            f"wall {summary.wall_seconds:.1f} s (start-up {summary.startup_seconds:.1f} s): "
            f"{summary.photos_per_hour():.0f} photos/hour, {summary.photos_per_hour(after_startup=True):.0f} after "
            "start-up",
            f"photos per worker: {workers}"]
