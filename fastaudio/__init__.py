"""fastaudio: the playback client's audio path at C speed.

- BufferPool: fixed blocks allocated once; acquire()/release() never allocate,
  and a block is never recycled while a view of it is alive (BufferError).
- RingBuffer: lock-free single-producer single-consumer ring between the
  network thread and the audio callback; explicit overflow and underrun policy.
- Chunker: network chunks in, fixed-size frames out, zero-copy where possible.
- float32_to_int16 / int16_to_float32: PCM conversion into a caller's buffer.

The Cython extension (``fastaudio._fastaudio``) is used when it is built; a
numpy implementation with the same API (``fastaudio._fallback``) takes over
when it is missing, or when the environment variable FASTAUDIO_PUREPYTHON is
set to a non-empty value. IMPLEMENTATION says which one is active.
"""

import os as _os

if _os.environ.get("FASTAUDIO_PUREPYTHON"):
    from fastaudio import _fallback as _impl

    IMPLEMENTATION = "numpy"
else:
    try:
        from fastaudio import _fastaudio as _impl

        IMPLEMENTATION = "cython"
    except ImportError:
        from fastaudio import _fallback as _impl

        IMPLEMENTATION = "numpy"

from fastaudio._errors import FastAudioError, PoolExhausted, RingClosed, RingFull

Block = _impl.Block
BufferPool = _impl.BufferPool
Chunker = _impl.Chunker
RingBuffer = _impl.RingBuffer
float32_to_int16 = _impl.float32_to_int16
int16_to_float32 = _impl.int16_to_float32

__all__ = [
    "IMPLEMENTATION",
    "Block",
    "BufferPool",
    "Chunker",
    "FastAudioError",
    "PoolExhausted",
    "RingBuffer",
    "RingClosed",
    "RingFull",
    "float32_to_int16",
    "int16_to_float32",
]
