"""Audio encodings: float32 model output to the bytes a client asked for."""

from __future__ import annotations

import enum
import io
import wave

import numpy as np


class Encoding(enum.Enum):
    """Output encodings, mirroring speakstream.v1.AudioEncoding."""

    LINEAR16 = "linear16"
    FLOAT32 = "float32"
    WAV = "wav"


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] to int16, clipping what lies beyond."""
    return np.clip(np.rint(audio * 32767.0), -32768, 32767).astype("<i2")


def encode_pcm(audio: np.ndarray, encoding: Encoding) -> bytes:
    """Raw PCM bytes of float32 `audio` (LINEAR16 or FLOAT32, little-endian)."""
    if encoding is Encoding.FLOAT32:
        return audio.astype("<f4", copy=False).tobytes()
    return to_int16(audio).tobytes()


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """A complete mono 16-bit WAV file of float32 `audio`."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(to_int16(audio).tobytes())
    return buffer.getvalue()

