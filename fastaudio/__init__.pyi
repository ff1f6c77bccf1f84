from typing import Literal

from fastaudio._errors import (
    FastAudioError as FastAudioError,
    PoolExhausted as PoolExhausted,
    RingClosed as RingClosed,
    RingFull as RingFull,
)
from fastaudio._fastaudio import (
    Block as Block,
    BufferPool as BufferPool,
    Chunker as Chunker,
    RingBuffer as RingBuffer,
    float32_to_int16 as float32_to_int16,
    int16_to_float32 as int16_to_float32,
)

IMPLEMENTATION: Literal["cython", "numpy"]

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
