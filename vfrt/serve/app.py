"""The ASGI app of ``vfrt serve``: the HTTP API, with the page mounted at ``/``."""
from __future__ import annotations

import os

from fastapi import FastAPI

from vfrt.serve.api import create_api
from vfrt.serve.service import JobService


def create_app(service: JobService) -> FastAPI:
    """The API (``/api/...``, ``/docs``) plus, when ``service.config.ui``, the Gradio page at ``/``.

    Gradio is told not to phone home, to load no web fonts (the page works offline) and to accept
    uploads up to the server's photo limit; it may serve result files from the runs folder only, keeps no
    run history in the browser and offers no monitoring endpoint.
    """
    app = create_api(service)
    if not service.config.ui:
        return app
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from vfrt.serve.page import build_page
    theme = gr.themes.Default(font=["system-ui", "Helvetica", "Arial", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(app, build_page(service), path="/", theme=theme,
                               max_file_size=service.config.max_upload_bytes,
                               allowed_paths=[str(service.config.runs_dir.resolve())],
                               footer_links=["settings"], run_history=False, enable_monitoring=False,
                               show_error=True)
