"""Domain errors, each carrying the gRPC status code it maps to.

Modules below the servicer raise these; service.py turns them into
`context.abort(code, message)`. Anything else that escapes is a bug and
becomes INTERNAL.
"""

import errno
from typing import Optional

import grpc


class SpeakstreamError(Exception):
    """Base class: an error with a gRPC status code and a user-facing message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(SpeakstreamError):
    """A request field is missing or out of range; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(SpeakstreamError):
    """A named voice or speaker does not exist."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class Overloaded(SpeakstreamError):
    """The admission queue is full; retry later or elsewhere."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooLarge(SpeakstreamError):
    """A response would exceed a size limit (unary audio over --max-response-mb)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class DeadlineExceeded(SpeakstreamError):
    """The call's deadline passed before its work could finish."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(SpeakstreamError):
    """The server is draining and takes no new calls."""

    code = grpc.StatusCode.UNAVAILABLE


class InferenceFailed(SpeakstreamError):
    """A model session failed while running this call; the pool replaces it."""

    code = grpc.StatusCode.INTERNAL


class VoiceLoadError(Exception):
    """A voice's model or config file is missing or unreadable (start-up error)."""


class BindError(Exception):
    """A port to listen on could not be opened (start-up error); the one-line message names the flag to change."""

    def __init__(self, flag: str, host: str, port: int, error: Optional[OSError] = None):
        if error is not None and error.errno == errno.EADDRINUSE:
            message = f"port {port} on {host} is in use (another speakstream-server?); choose another with {flag}"
        else:
            reason = error.strerror if error is not None and error.strerror else "the address could not be bound"
            message = f"cannot listen on {host}:{port}: {reason}; check --host and {flag}"
        super().__init__(message)
        self.flag = flag


class VoiceUnavailable(SpeakstreamError):
    """A listed voice's model failed to load on first use; the message names the file."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, problem: str):
        super().__init__(f"voice: {problem}")
        self.field = "voice"
