"""A speaking rate that scales the audio's length, not only each phoneme's (SSML `prosody rate`).

A Piper voice's length scale multiplies each phoneme id's predicted
duration, which is then rounded up to whole frames; at the voice's own pace
the rounding is a good part of a short phoneme's length, so a length scale
of 2 makes a span only ~1.8 times as long (measured on en_US-joe-medium: 153
frames become 275). To make `rate="50%"` mean twice the time, a segment
with its own length scale is encoded at the request's scale first, then at
a length scale estimated from those durations (half a frame of rounding per
id), then, if that missed the asked length by more than MISS, once more at
the secant of the two: three encoder runs, for SSML prosody spans only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from server.inference import Encoded, Scales

_ROUNDING = 0.5  # frames that rounding up adds to an id, on average
MISS = 0.01
"""How far from the asked length (a fraction of it) the second run may land before a third."""


def encode_at_rate(encode: Callable[[Scales], Encoded], scales: Scales, length_scale: Optional[float]) -> Encoded:
    """encode(scales) for a segment at the request's pace; for one with its own `length_scale`,
    the encoding whose audio is `length_scale / scales.length_scale` times as long as at `scales`."""
    if length_scale is None:
        return encode(scales)
    base = encode(scales)
    if base.durations is None:  # no durations to measure: the length scale as it is
        return encode(dataclasses.replace(scales, length_scale=length_scale))
    frames = float(base.durations.sum())
    target = frames * length_scale / scales.length_scale
    rounding = _ROUNDING * np.count_nonzero(base.durations)
    guess = scales.length_scale * (target - rounding) / max(frames - rounding, 1.0)
    encoded = encode(dataclasses.replace(scales, length_scale=guess))
    assert encoded.durations is not None  # the same voice as `base`, which has them
    got = float(encoded.durations.sum())
    if abs(got - target) <= MISS * target or got == frames:
        return encoded
    secant = guess + (target - got) * (guess - scales.length_scale) / (got - frames)
    return encode(dataclasses.replace(scales, length_scale=max(secant, 1e-3)))
