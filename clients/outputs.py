"""Where speakstream-say puts audio besides the sound card: a WAV file, an encoded file, raw PCM on stdout.

Each output has the Player's shape: open(sample_rate) at the first chunk,
write(pcm) per chunk, finish() at the end, abort() on failure.
"""

from __future__ import annotations

import wave
from typing import BinaryIO, Optional


class WavOutput:
    """Writes mono int16 PCM to a WAV file, created at the first chunk.

    A call that fails before any audio leaves no file; one interrupted later
    leaves a valid WAV of the audio received so far.
    """

    def __init__(self, path: str):
        self.path = path
        self.samples = 0
        self._wav: Optional[wave.Wave_write] = None

    def open(self, sample_rate: int) -> None:
        """Create the file with the stream's rate."""
        self._wav = wave.open(self.path, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    def write(self, pcm: bytes) -> None:
        """Append int16 samples."""
        assert self._wav is not None, "open() first"
        self._wav.writeframes(pcm)
        self.samples += len(pcm) // 2

    def finish(self) -> None:
        """Close the file (the header gets the final length)."""
        if self._wav is not None:
            self._wav.close()
            self._wav = None

    abort = finish


class EncodedOutput:
    """Writes the server's encoded bytes (FLAC, Ogg/Opus, G.711) to a file as they come.

    A stream's chunks concatenate to one valid file, so nothing is rewritten
    at the end. Like WavOutput, the file is created at the first chunk.
    """

    def __init__(self, path: str):
        self.path = path
        self._file: Optional[BinaryIO] = None

    def open(self, sample_rate: int) -> None:
        """Create the file (the rate is in the encoded stream itself, or implied for G.711)."""
        self._file = open(self.path, "wb")

    def write(self, data: bytes) -> None:
        """Append the chunk's bytes."""
        assert self._file is not None, "open() first"
        self._file.write(data)

    def finish(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    abort = finish


class RawOutput:
    """Writes int16 PCM as it arrives to a binary stream (standard output), for piping."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream

    def open(self, sample_rate: int) -> None:
        """Nothing to prepare: raw PCM has no header."""

    def write(self, pcm: bytes) -> None:
        """Write and flush at once, so a reader downstream hears it now."""
        self._stream.write(pcm)
        self._stream.flush()

    def finish(self) -> None:
        """Flush what is left."""
        self._stream.flush()

    def abort(self) -> None:
        """Nothing to undo."""
