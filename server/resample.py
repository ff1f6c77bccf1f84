"""Sample rate conversion with libsoxr (the `soxr` package), streamed.

A stream's resampler keeps the filter's state from one piece of audio to
the next, so chunk seams are as smooth as the inside of a chunk, and the
concatenated output equals resampling the whole utterance at once (within
float rounding); the last piece flushes the filter's tail.
"""

from __future__ import annotations

import numpy as np
import soxr

# libsoxr's "HQ": 20-bit precision, passband to 91% of Nyquist; its cost is
# in docs/BENCHMARKS.md (encoding section), next to VHQ.
QUALITY = "HQ"
RATE_RANGE = (8000, 48000)


class StreamResampler:
    """Resamples one stream of float32 mono audio, piece by piece."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = QUALITY):
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = (None if in_rate == out_rate else
                        soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality))

    def process(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        """The output for `audio`; `last` flushes what the filter still holds."""
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(np.ascontiguousarray(audio, dtype=np.float32), last=last)


def resample(audio: np.ndarray, in_rate: int, out_rate: int, quality: str = QUALITY) -> np.ndarray:
    """One-shot resampling of a whole utterance (the reference streams are held to)."""
    if in_rate == out_rate:
        return audio
    return soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), in_rate, out_rate, quality=quality)
