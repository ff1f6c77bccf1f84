"""Request knobs: their ranges, defaults and validation.

Everything a client can set is checked here, before any work, and a bad
value raises InvalidArgument/NotFound naming the proto field.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.encoding import Encoding
from server.errors import InvalidArgument, NotFound
from server.pool import Scales
from server.voices import Voice

SPEED_RANGE = (0.25, 4.0)
NOISE_RANGE = (0.0, 2.0)
SILENCE_RANGE_S = (0.0, 5.0)
CHUNK_MS_RANGE = (20, 10_000)
DEFAULT_SENTENCE_SILENCE_S = 0.2


@dataclass(frozen=True)
class SynthesisOptions:
    """A validated request: what to say, with which voice and settings."""

    text: str
    voice: Voice
    speaker_id: int
    scales: Scales
    sentence_silence_s: float
    encoding: Encoding
    chunk_ms: int

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz."""
        return self.voice.config.sample_rate

    @property
    def deterministic(self) -> bool:
        """True when both noise scales are 0: the same text gives the same audio."""
        return self.scales.noise_scale == 0 and self.scales.noise_w == 0


def check_text(text: str, max_chars: int) -> str:
    """The text if it is non-blank and within the size limit."""
    if not text or not text.strip():
        raise InvalidArgument("text", "must contain something to speak")
    if len(text) > max_chars:
        raise InvalidArgument("text", f"is {len(text)} characters; the limit is {max_chars}")
    return text


def check_range(field: str, value: float, bounds: tuple[float, float]) -> float:
    """`value` if it lies within bounds (NaN never does)."""
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def check_speaker(voice: Voice, speaker_id: int | None) -> int:
    """The speaker id, 0 when not set; NotFound when the voice has no such speaker."""
    if speaker_id is None:
        return 0
    if not 0 <= speaker_id < voice.config.num_speakers:
        raise NotFound("speaker_id", f"voice {voice.name} has speakers 0 to "
                       f"{voice.config.num_speakers - 1}, not {speaker_id}")
    return speaker_id


def scales_for(voice: Voice, speed: float | None, noise_scale: float | None,
               noise_w: float | None) -> Scales:
    """Model scales from the request, falling back to the voice's defaults."""
    cfg = voice.config
    speed = 1.0 if speed is None else check_range("speed", speed, SPEED_RANGE)
    noise_scale = cfg.noise_scale if noise_scale is None else check_range("noise_scale", noise_scale, NOISE_RANGE)
    noise_w = cfg.noise_w if noise_w is None else check_range("noise_w", noise_w, NOISE_RANGE)
    return Scales(noise_scale=noise_scale, length_scale=cfg.length_scale / speed, noise_w=noise_w)


def check_chunk_ms(chunk_ms: int) -> int:
    """0 (one chunk per segment) or a duration within CHUNK_MS_RANGE."""
    if chunk_ms:
        check_range("chunk_ms", chunk_ms, CHUNK_MS_RANGE)
    return chunk_ms
