"""The doors' own errors, and the HTTP status of every error a door answers (docs/OPERATIONS.md, Status codes)."""

from __future__ import annotations

import grpc

from server.doors.calls import TextTooLong
from server.errors import DeadlineExceeded, SpeakstreamError, TooLarge

# gRPC status name -> HTTP status.
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 500,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class SlowRequest(DeadlineExceeded):
    """The request did not arrive within --http-read-timeout-s (408)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class Unauthenticated(SpeakstreamError):
    """No valid bearer token (401), the same message whatever was wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


def http_status(exc: SpeakstreamError) -> int:
    """The HTTP status of an error: 413 for sizes, 408 for a slow request, else by its gRPC code."""
    if isinstance(exc, (TextTooLong, TooLarge)):
        return 413
    if isinstance(exc, SlowRequest):
        return 408
    return _HTTP_STATUS.get(exc.code.name, 500)
