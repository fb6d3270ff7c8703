"""What can go wrong between a request and a job, each with the HTTP status the API answers.

The page shows the same messages; the job worker never raises these (a failed job records its
message instead).
"""
from __future__ import annotations


class ServeError(Exception):
    """Base of the serve errors. ``status`` is the HTTP status code the API answers with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UploadRejected(ServeError):
    """An uploaded photo is not accepted: empty, too large, not an image, truncated, too many pixels."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class SettingsError(ServeError):
    """The job settings are out of range or inconsistent (e.g. single mode without a target pose)."""

    status = 422


class QueueFull(ServeError):
    """The bounded job queue has no room; ``retry_after_s`` is a hint for the client."""

    status = 503

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobNotFound(ServeError):
    """No job with this id (or no such file in the job's folder)."""

    status = 404


class JobStateError(ServeError):
    """The action does not fit the job's state (cancel a finished job, reconstruct before the views exist)."""

    status = 409
