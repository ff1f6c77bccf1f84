"""Where speakstream-say puts audio besides the sound card: a WAV file, an encoded file, raw PCM on stdout.

Each output has the Player's shape: open(sample_rate) at the first chunk,
write(pcm) per chunk, finish() at the end, abort() on failure.
"""

from __future__ import annotations

import errno
import os
import wave
from typing import BinaryIO, Optional

import numpy as np
import soundfile

# RIFF sizes are 32-bit: the data chunk, the header and the RIFF size field within 4 GiB.
_WAV_MAX_DATA_BYTES = 0xFFFFFFFF - 36


class WavOutput:
    """Writes mono int16 PCM to a WAV file, created at the first chunk.

    A call that fails before any audio leaves no file; one interrupted later
    leaves a valid WAV of the audio received so far.
    """

    def __init__(self, path: str):
        self.path = path
        self.created = False
        self.samples = 0
        self._file: Optional[BinaryIO] = None
        self._wav: Optional[wave.Wave_write] = None

    def open(self, sample_rate: int) -> None:
        """Create the file with the stream's rate.

        :raises OSError: the file cannot be created.
        """
        # Opened here, not by wave.open(path): a Wave_write whose file failed
        # to open prints a traceback from its __del__.
        self._file = open(self.path, "wb")
        self.created = True
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    def write(self, pcm: bytes) -> None:
        """Append int16 samples.

        :raises OSError: the WAV would be over its 4 GiB limit.
        """
        assert self._wav is not None, "open() first"
        if 2 * self.samples + len(pcm) > _WAV_MAX_DATA_BYTES:
            raise OSError(errno.EFBIG, "a WAV file holds at most 4 GiB of audio; write FLAC instead "
                                       "(-o out.flac)", self.path)
        self._wav.writeframes(pcm)
        self.samples += len(pcm) // 2

    def finish(self) -> None:
        """Close the file (the header gets the final length)."""
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._file is not None:
            self._file.close()  # wave leaves a file it was given open
            self._file = None

    abort = finish


class SoundFileOutput:
    """Writes mono int16 PCM to a FLAC, Ogg/Opus or G.711 file through libsndfile, created at the first chunk.

    speakstream-say encodes the file itself from the server's PCM: a long
    text comes in several calls, and separately encoded FLAC or Opus streams
    do not join into one file. Closing the file (at the end, or after an
    interruption) writes its true length into the header when the file is
    seekable (FLAC's STREAMINFO; Ogg pages carry their own positions).

    :param format_: libsndfile's (format, subtype), e.g. ("FLAC", "PCM_16").
    """

    def __init__(self, path: str, format_: tuple[str, str]):
        self.path = path
        self.created = False
        self._format, self._subtype = format_
        self._file: Optional[soundfile.SoundFile] = None

    def open(self, sample_rate: int) -> None:
        """Create the file with the stream's rate.

        :raises OSError: the file cannot be created.
        """
        # Opened here so a failure is an OSError naming the file (libsndfile says "System error").
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.created = True
        try:
            self._file = soundfile.SoundFile(fd, "w", samplerate=sample_rate, channels=1,
                                             format=self._format, subtype=self._subtype, closefd=True)
        except BaseException:
            os.close(fd)
            raise

    def write(self, pcm: bytes) -> None:
        """Encode and append int16 samples."""
        assert self._file is not None, "open() first"
        self._file.write(np.frombuffer(pcm, np.int16))

    def finish(self) -> None:
        """Close the file: the encoder's last frames, the header's length."""
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
