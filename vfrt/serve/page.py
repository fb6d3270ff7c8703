"""The web page (Gradio): upload a photo, see its mask, choose a mode and the sampler settings,
follow the job (view k of N, ETA), look at the views and the turntable, reconstruct and turn the
mesh around, download the results.

The page is a client of the same :class:`~vfrt.serve.service.JobService` as the HTTP API: its
jobs wait in the same queue and appear in ``GET /api/jobs``. Handlers that follow a job are
generators that yield at each change of the job; they run with no Gradio concurrency limit
because the job queue is the limit.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from vfrt.runtime.segment import SEGMENT_METHODS
from vfrt.serve.errors import ServeError
from vfrt.serve.service import JobService
from vfrt.serve.settings import JobSettings

#: results offered for download, when present (relative to the job folder)
DOWNLOADS = ("views.zip", "run/transforms.json", "run/run.json", "run/orbit.mp4", "run/grid.png",
             "run/noise.npz", "recon/mesh.glb", "recon/mesh.obj", "recon/mesh.ply", "recon/recon.json")
#: how often a following handler refreshes when nothing changed (elapsed time keeps counting)
POLL_S = 1.0

_MODES = [("Orbit", "orbit"), ("Single pose", "single"), ("Extra input views", "multi")]


def describe(status: dict) -> str:
    """One status line (Markdown) for a job status of :meth:`JobService.status`."""
    head = f"**Job `{status['id']}`**"
    state, p = status["state"], status["progress"]
    if state == "queued":
        where = status["queue_position"]
        return f"{head} · waiting in the queue" + (f" (position {where})" if where else "") \
            + (f" · {status['message']}" if status["message"] else "")
    if state == "running":
        what = "generating" if status["stage"] == "views" else "reconstructing the mesh"
        unit = "view" if p["unit"] == "views" else "training step"
        line = f"{head} · {what}"
        if p["total"]:
            line += f" · {unit} {p['done']} of {p['total']}"
        if p["elapsed_s"] is not None:
            line += f" · {p['elapsed_s']:.0f} s elapsed"
        if p["eta_s"] is not None:
            line += f" · about {p['eta_s']:.0f} s left"
        return line + (f" · {status['message']}" if status["message"] else "")
    return f"{head} · {state}" + (f": {status['message']}" if status["message"] else "")


def _auto_temp(mode: str) -> float:
    """The original's temperature of the generated references for a mode (1.0 with several inputs)."""
    from vfrt.runtime.sampler import SamplerConfig
    return SamplerConfig.for_mode(mode).auto_temp


def _finished(status: dict) -> bool:
    return status["state"] not in ("queued", "running")


def build_page(service: JobService) -> gr.Blocks:
    """The Blocks of the page (mounted at ``/`` by :func:`vfrt.serve.app.create_app`)."""
    d = JobSettings()
    folder = service.config.runs_dir

    with gr.Blocks(title="vfrt serve", delete_cache=(600, 3600)) as page:
        job_id = gr.State(None)
        gr.Markdown("## vfrt — novel views of an object from one photo\n"
                    "Upload a photo (a cut-out RGBA image, or any photo: the object is segmented), generate a "
                    "multi-view-consistent orbit with ViewFusion on Zero123, then reconstruct a mesh. "
                    "Every job is also reachable through the [HTTP API](/docs).")
        with gr.Row():
            with gr.Column(scale=2):
                photo = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"],
                                 height=240, elem_id="photo")
                segment = gr.Radio(list(SEGMENT_METHODS), value=d.segment, elem_id="segment",
                                   label="Segmentation of photos without alpha (auto: rembg if installed, else GrabCut)")
                with gr.Row():
                    model_input = gr.Image(label="Model input", interactive=False, height=150, elem_id="model-input")
                    mask = gr.Image(label="Mask", interactive=False, height=150, elem_id="mask")
                mode = gr.Radio(_MODES, value=d.mode, label="Mode", elem_id="mode")
                with gr.Row(visible=False) as single_box:
                    polar = gr.Number(d.polar, label="Polar delta (°, negative = up)", elem_id="polar")
                    azimuth = gr.Number(d.azimuth, label="Azimuth delta (°)", elem_id="azimuth")
                    radius = gr.Number(d.radius, label="Radius delta", elem_id="radius")
                with gr.Column(visible=False) as multi_box:
                    extra_files = gr.File(file_count="multiple", file_types=["image"], label="Extra input views",
                                          elem_id="extra-images")
                    extra_poses = gr.Textbox(label="Their poses relative to the photo, one per view",
                                             placeholder="0,180; 0,90   (polar,azimuth[,radius] in degrees)",
                                             elem_id="extra-poses")
                with gr.Accordion("Sampler settings (the original's defaults)", open=False, elem_id="settings"):
                    with gr.Row():
                        views = gr.Number(d.views, precision=0, label="Views in the orbit", elem_id="views")
                        steps = gr.Number(d.steps, precision=0, label="DDIM steps", elem_id="steps")
                        seed = gr.Number(d.seed, precision=0, label="Seed", elem_id="seed")
                    with gr.Row():
                        guidance = gr.Number(d.guidance, label="Guidance scale", elem_id="guidance")
                        eta = gr.Number(d.eta, label="DDIM eta", elem_id="eta")
                        elevation = gr.Number(d.elevation, label="Input elevation (°)", elem_id="elevation")
                    with gr.Row():
                        inference_temp = gr.Number(d.inference_temp, label="Input view temperature",
                                                   elem_id="inference-temp")
                        auto_temp = gr.Number(_auto_temp(d.mode), label="Generated views temperature",
                                              elem_id="auto-temp")
                        noise_mode = gr.Radio(["exact", "shared", "fast"], value=d.noise_mode, label="Noise",
                                              elem_id="noise-mode")
                    low_ring = gr.Number(d.low_ring, precision=0, elem_id="low-ring",
                                         label=f"Views on a ring {d.low_ring_polar:g}° below the orbit, so that the "
                                               "mesh has an underside (0: none; orbit mode)")
                with gr.Row():
                    generate_btn = gr.Button("Generate views", variant="primary", elem_id="generate")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a photo to start.", elem_id="status")
                gallery = gr.Gallery(label="Views", columns=6, height="auto", object_fit="contain",
                                     elem_id="views-gallery")
                with gr.Row():
                    video = gr.Video(label="Turntable", autoplay=True, loop=True, height=260, elem_id="turntable")
                    mesh = gr.Model3D(label="Mesh (drag to turn)", clear_color=(1.0, 1.0, 1.0, 1.0), height=260,
                                      elem_id="mesh")
                recon_btn = gr.Button("Reconstruct 3D mesh", interactive=False, elem_id="reconstruct")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                with gr.Accordion("Earlier jobs", open=False):
                    earlier = gr.Dropdown(label="Show the results of an earlier job", choices=[], elem_id="earlier")

        results = [status, gallery, video, downloads, recon_btn]

        def show(st: dict) -> dict:
            """Component updates for a job status (results only once they exist)."""
            out = {status: describe(st)}
            if _finished(st):
                job_folder = folder / st["id"]
                out[gallery] = [(str(job_folder / v), Path(v).stem) for v in st["views"]]
                mp4 = job_folder / "run" / "orbit.mp4"
                out[video] = str(mp4) if mp4.is_file() else None
                files = set(st["files"])
                out[downloads] = [str(job_folder / f) for f in DOWNLOADS if f in files] or None
                out[recon_btn] = gr.update(interactive=st["has_views"] and not st["has_mesh"]
                                           and st["settings"]["mode"] != "single")
            return out

        def mesh_of(current):
            """The mesh of the shown job, set by its own event after the results: Gradio's 3D viewer
            drops a mesh whose value arrives together with other updates while its renderer is still
            loading (seen with Gradio 6.31 on a busy machine)."""
            if not current:
                return None
            st = service.status(current)
            return str(folder / current / "recon" / "mesh.glb") if st["has_mesh"] else None

        def follow(st: dict):
            while True:
                yield show(st)
                if _finished(st):
                    return
                st = service.wait(st["id"], st["version"], POLL_S)

        def preview(path, method):
            if not path:
                return None, None
            from vfrt.runtime.preprocess import ImageInputError, prepare_image
            from vfrt.runtime.segment import SegmentationError
            from vfrt.serve.uploads import check_image
            cfg = service.config
            try:
                check_image(Path(path).read_bytes(), Path(path).name, max_bytes=cfg.max_upload_bytes,
                            max_pixels=cfg.max_pixels)
                prepared = prepare_image(path, service.resolution, True, method)
            except (ServeError, ImageInputError, SegmentationError) as exc:
                gr.Warning(getattr(exc, "message", str(exc)))
                return None, None
            return prepared.input_uint8(), Image.fromarray(prepared.mask.astype(np.uint8) * 255)

        def generate(path, extras, poses_text, mode_, segment_, views_, steps_, seed_, guidance_, eta_, elevation_,
                     inference_temp_, auto_temp_, noise_mode_, polar_, azimuth_, radius_, low_ring_):
            if not path:
                raise gr.Error("Upload a photo first.")
            extras = (extras or []) if mode_ == "multi" else []
            poses = [p.strip() for p in (poses_text or "").split(";") if p.strip()] if mode_ == "multi" else []
            try:
                settings = JobSettings.parse(dict(
                    mode=mode_, segment=segment_, views=views_, steps=steps_, seed=seed_, guidance=guidance_,
                    eta=eta_, elevation=elevation_, inference_temp=inference_temp_, auto_temp=auto_temp_,
                    noise_mode=noise_mode_, polar=polar_, azimuth=azimuth_, radius=radius_, extra_poses=poses,
                    low_ring=low_ring_ if mode_ == "orbit" else 0))
                photos = [(Path(p).read_bytes(), Path(p).name) for p in [path, *extras]]
                st = service.submit(photos, settings)
            except ServeError as exc:
                raise gr.Error(exc.message) from None
            yield {job_id: st["id"], gallery: [], video: None, mesh: None, downloads: None,
                   recon_btn: gr.update(interactive=False)}
            yield from follow(st)

        def reconstruct(current):
            if not current:
                raise gr.Error("Generate views first.")
            try:
                st = service.reconstruct(current)
            except ServeError as exc:
                raise gr.Error(exc.message) from None
            yield {recon_btn: gr.update(interactive=False)}
            yield from follow(st)

        def cancel(current):
            if not current:
                return "Nothing to cancel."
            try:
                return describe(service.cancel(current))
            except ServeError as exc:
                return exc.message

        def list_jobs():
            choices = [(f"{j['id']} · {j['settings']['mode']} · {j['state']}", j["id"]) for j in service.jobs()]
            return gr.update(choices=choices, value=None)

        def show_job(chosen):
            if not chosen:
                return {}
            try:
                st = service.status(chosen)
            except ServeError as exc:
                raise gr.Error(exc.message) from None
            return {job_id: chosen, **show(st)} if _finished(st) else {job_id: chosen, status: describe(st)}

        inputs = [photo, extra_files, extra_poses, mode, segment, views, steps, seed, guidance, eta, elevation,
                  inference_temp, auto_temp, noise_mode, polar, azimuth, radius, low_ring]
        photo.change(preview, [photo, segment], [model_input, mask], show_progress="minimal")
        segment.change(preview, [photo, segment], [model_input, mask], show_progress="minimal")
        mode.change(lambda m: (gr.update(visible=m == "single"), gr.update(visible=m == "multi"), _auto_temp(m)),
                    mode, [single_box, multi_box, auto_temp])
        generate_btn.click(generate, inputs, [job_id, mesh, *results], concurrency_limit=None, show_progress="hidden") \
            .then(mesh_of, job_id, mesh)
        recon_btn.click(reconstruct, job_id, results, concurrency_limit=None, show_progress="hidden") \
            .then(mesh_of, job_id, mesh)
        cancel_btn.click(cancel, job_id, status, concurrency_limit=None)
        page.load(list_jobs, None, earlier)
        earlier.input(show_job, earlier, [job_id, *results]).then(mesh_of, job_id, mesh)
    return page
