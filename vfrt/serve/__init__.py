"""``vfrt serve``: a web page and an HTTP API over one job queue (the ``serve`` extra).

::

    uploads.py   photo checks (size, type by decoding, pixels, truncation) -> 413 / 415 / 400
    settings.py  JobSettings: the request's settings -> RunConfig (validated by the runtime)
    store.py     a job's folder (run/ = the `vfrt run` folder), job.json, safe file lookup
    queue.py     the bounded FIFO with the batch hook
    service.py   JobService: submit / cancel / reconstruct / status; one worker thread per GPU
    api.py       FastAPI routes (OpenAPI at /docs)
    page.py      the Gradio page, a client of the same service
    app.py       create_app: API + page in one ASGI app

The layers below know nothing of this package; ``vfrt/cli/serve.py`` builds the pipelines and a
:class:`~vfrt.serve.config.ServeConfig` and runs the app with uvicorn.
"""
from vfrt.serve.config import ServeConfig

__all__ = ["ServeConfig"]
