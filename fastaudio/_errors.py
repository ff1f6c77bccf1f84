"""Exceptions shared by both implementations of fastaudio.

They live in their own pure-Python module so that `fastaudio.RingFull` is the
same class whether the Cython extension or the numpy fallback is active, and a
caller's `except` clauses do not depend on which one was imported.
"""

__all__ = ["FastAudioError", "PoolExhausted", "RingClosed", "RingFull"]


class FastAudioError(Exception):
    """Base class of the errors fastaudio raises on purpose."""


class PoolExhausted(FastAudioError, RuntimeError):
    """BufferPool.acquire() found every block in use; nothing was allocated."""


class RingFull(FastAudioError, OverflowError):
    """RingBuffer.write() could not fit all of its data in time; nothing was written."""


class RingClosed(FastAudioError, ValueError):
    """RingBuffer.write() on a ring whose producer side was closed; nothing was written."""
