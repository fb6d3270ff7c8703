"""The HTTP API (FastAPI; OpenAPI at ``/openapi.json``, interactive docs at ``/docs``).

==========================================  ==========================================================
``POST /api/jobs``                          multipart: ``image`` (+ ``extra_images``) and the
                                            :class:`~vfrt.serve.settings.JobSettings` fields -> 202
                                            and the job (its ``id``); 413/415/400 for a bad photo,
                                            422 for bad settings, 503 + ``Retry-After`` when full
``GET /api/jobs``                           every job, newest first (also those of earlier runs)
``GET /api/jobs/{id}``                      state, stage, progress (done/total, ETA), result files
``POST /api/jobs/{id}/cancel``              cancel (a running job stops after its current view)
``POST /api/jobs/{id}/reconstruct``         queue the mesh stage of a finished job -> 202
``GET /api/jobs/{id}/files/{path}``         one result file, e.g. ``run/transforms.json``,
                                            ``views.zip``, ``recon/mesh.glb`` (404 outside the job)
``GET /api/info``                           workers, queue load, limits and default settings
==========================================  ==========================================================

Errors are ``{"detail": "<message>"}`` with the status of the :mod:`vfrt.serve.errors` class.
"""
from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from vfrt.serve.errors import QueueFull, ServeError, SettingsError, UploadRejected
from vfrt.serve.service import JobService
from vfrt.serve.settings import JobSettings

#: form fields that are not settings
_FILE_FIELDS = {"image", "extra_images"}


def error_response(exc: ServeError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as more than ``limit`` arrive."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadRejected(f"{upload.filename or 'the photo'} is larger than this server accepts "
                             f"({limit / 2**20:.1f} MiB)", 413)
    return data


def api_router(service: JobService) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["jobs"])

    body_limit = submit_body_limit(service)

    @router.post("/jobs", status_code=202, summary="Submit a job: a photo and its settings", max_body_size=body_limit,
                 responses={400: {"description": "empty, truncated or corrupt image"},
                            413: {"description": "file or image too large"},
                            415: {"description": "not an accepted image type"},
                            422: {"description": "invalid settings"},
                            503: {"description": "queue full (Retry-After given)"}})
    async def submit(request: Request, image: Annotated[UploadFile, File(description="The photo (RGBA or not).")],
                     settings: Annotated[JobSettings, Form()],
                     extra_images: Annotated[list[UploadFile], File(description="Multi mode: extra input views, "
                                                                    "one per extra_poses entry.")] = []):
        form = await request.form()
        unknown = sorted(set(form.keys()) - set(JobSettings.model_fields) - _FILE_FIELDS)
        if unknown:
            raise SettingsError(f"unknown field(s): {', '.join(unknown)}")
        limit = service.config.max_upload_bytes
        photos = [(await _read_limited(f, limit), f.filename) for f in [image, *extra_images]]
        # decoding and writing the photos takes a moment: keep it off the event loop
        return await run_in_threadpool(service.submit, photos, settings)

    @router.get("/jobs", summary="List jobs, newest first")
    def list_jobs():
        return service.jobs()

    @router.get("/jobs/{job_id}", summary="A job's state, progress and result files")
    def get_job(job_id: str):
        return service.status(job_id)

    @router.post("/jobs/{job_id}/cancel", summary="Cancel a job (a running one stops after its current view)")
    def cancel_job(job_id: str):
        return service.cancel(job_id)

    @router.post("/jobs/{job_id}/reconstruct", status_code=202, summary="Reconstruct a mesh from a job's views")
    def reconstruct_job(job_id: str):
        return service.reconstruct(job_id)

    @router.get("/jobs/{job_id}/files/{path:path}", summary="Download one file of a job",
                response_class=FileResponse)
    def get_file(job_id: str, path: str):
        return FileResponse(service.file(job_id, path))

    @router.get("/info", summary="Workers, queue load, limits and default settings")
    def info():
        return service.info()

    return router


def submit_body_limit(service: JobService) -> int:
    """Largest ``POST /api/jobs`` body: every photo at its limit plus 1 MiB of form fields."""
    cfg = service.config
    return cfg.max_upload_bytes * (1 + cfg.max_extra_inputs) + 2**20


class DeclaredBodyLimit:
    """ASGI middleware: a job submission that *declares* a body over the limit is answered 413 with
    a message at once. A body without a length (chunked) is cut off while it streams in by the
    route's own limit (Starlette's ``max_body_size``), before the form parser spools it to disk."""

    def __init__(self, app, limit: int, path: str = "/api/jobs"):
        self.app, self.limit, self.path = app, limit, path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.limit:
                response = JSONResponse({"detail": _too_large(self.limit)}, status_code=413)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _too_large(limit: int | None) -> str:
    return "the request is larger than this server accepts" + (f" ({limit / 2**20:.1f} MiB in all)" if limit else "")


def create_api(service: JobService) -> FastAPI:
    """The FastAPI app with the job API, the body-size limit and ServeError -> JSON errors."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await run_in_threadpool(service.stop)      # running jobs stop at a view boundary and resume later

    app = FastAPI(title="vfrt serve", version=_version(), summary="ViewFusion novel views and meshes over HTTP",
                  description=__doc__, lifespan=lifespan)
    app.include_router(api_router(service))
    app.add_exception_handler(ServeError, lambda request, exc: error_response(exc))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(DeclaredBodyLimit, limit=submit_body_limit(service))
    return app


async def _http_error(request: Request, exc: StarletteHTTPException):
    """FastAPI's answer, but a body over the route's limit (Starlette's 413) says what the limit is."""
    if exc.status_code == 413:
        return JSONResponse({"detail": _too_large(request.scope.get(MAX_BODY_SIZE_SCOPE_KEY))}, status_code=413)
    return await http_exception_handler(request, exc)


def _version() -> str:
    from vfrt.version import __version__
    return __version__
