from typing import Literal

from fastaudio._errors import (
    FastAudioError as FastAudioError,
)
from fastaudio._errors import (
    PoolExhausted as PoolExhausted,
)
from fastaudio._errors import (
    RingClosed as RingClosed,
)
from fastaudio._errors import (
    RingFull as RingFull,
)
from fastaudio._fastaudio import (
    Block as Block,
)
from fastaudio._fastaudio import (
    BufferPool as BufferPool,
)
from fastaudio._fastaudio import (
    Chunker as Chunker,
)
from fastaudio._fastaudio import (
    RingBuffer as RingBuffer,
)
from fastaudio._fastaudio import (
    float32_to_int16 as float32_to_int16,
)
from fastaudio._fastaudio import (
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
