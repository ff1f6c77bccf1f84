"""Audio encodings: float32 model output to the bytes a client asked for.

Every encoding has a per-stream encoder (`stream_encoder`) that carries its
state across the chunks of one call, and a one-shot form (`encode_whole`)
for the unary Synthesize. PCM (LINEAR16, FLOAT32, WAV's payload) is exact;
G.711 (MULAW, ALAW), FLAC and Ogg/Opus are libsndfile's (the `soundfile`
package), written incrementally into an in-memory sink: each call to
`encode` returns the bytes the codec has produced so far, so the
concatenation of a stream's chunks is one valid file or byte stream.
"""

from __future__ import annotations

import enum
import struct
from typing import Protocol

import numpy as np
import soundfile

from server.errors import InvalidArgument


class Encoding(enum.Enum):
    """Output encodings, mirroring speakstream.v1.AudioEncoding."""

    LINEAR16 = "linear16"
    FLOAT32 = "float32"
    WAV = "wav"
    MULAW = "mulaw"
    ALAW = "alaw"
    OGG_OPUS = "ogg_opus"
    FLAC = "flac"


# The rates Opus encodes at; other rates are resampled up to the next of these.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# (format, subtype, sample type fed to libsndfile) of the libsndfile encodings.
# 16-bit input where the codec stores 16 bits or less, so our rounding and
# clipping (to_int16) decide the samples, exactly as for LINEAR16.
_SOUNDFILE = {
    Encoding.MULAW: ("RAW", "ULAW", "int16"),
    Encoding.ALAW: ("RAW", "ALAW", "int16"),
    Encoding.FLAC: ("FLAC", "PCM_16", "int16"),
    Encoding.OGG_OPUS: ("OGG", "OPUS", "float32"),
}
# Encodings whose streamed encoding runs in a worker thread, not on the event
# loop: Opus costs ~12 ms of CPU per audio second (libsndfile's cffi calls
# release the GIL); the others cost well under 1 ms (docs/BENCHMARKS.md).
OFF_LOOP_ENCODINGS = frozenset({Encoding.OGG_OPUS})
# libsndfile's SFC_SET_OGG_PAGE_LATENCY_MS: an Ogg page is cut every this many
# ms of audio (libsndfile's minimum; its default, 1000 ms, would hold a
# stream's first bytes back for a second).
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302
_OGG_PAGE_LATENCY_MS = 50.0
# Opus bit rate. At 64 kbit/s libopus codes speech in its MDCT (CELT) mode,
# which costs ~2.5x less CPU than the SILK/hybrid modes it picks at its
# default (~40 kbit/s for mono), at a fifth of LINEAR16's size at 22 kHz
# (docs/BENCHMARKS.md, Encodings and resampling). libsndfile sets the bit rate
# through SFC_SET_COMPRESSION_LEVEL: level = 1 - (bit rate - 6000) / 250000.
OPUS_BITRATE = 64_000
_SFC_SET_COMPRESSION_LEVEL = 0x1301
# A streamed WAV's RIFF and data sizes: unknown, so the largest value (the
# convention of streaming WAV writers such as ffmpeg and sox; decoders read
# to the end of the stream).
WAV_UNKNOWN_SIZE = 0xFFFFFFFF


def output_rate(encoding: Encoding, requested: int) -> int:
    """The rate audio is sent at: `requested`, or for Opus the next rate Opus supports."""
    if encoding is Encoding.OGG_OPUS:
        return next((rate for rate in OPUS_RATES if rate >= requested), OPUS_RATES[-1])
    return requested


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] to int16, clipping what lies beyond."""
    return np.clip(np.rint(audio * 32767.0), -32768, 32767).astype("<i2")


def encode_pcm(audio: np.ndarray, encoding: Encoding) -> bytes:
    """Raw PCM bytes of float32 `audio` (LINEAR16 or FLOAT32, little-endian)."""
    if encoding is Encoding.FLOAT32:
        return audio.astype("<f4", copy=False).tobytes()
    return to_int16(audio).tobytes()


def wav_header(sample_rate: int, num_samples: int | None) -> bytes:
    """The 44-byte header of a mono 16-bit WAV file; None samples = unknown length (streamed)."""
    if num_samples is None:
        riff_size = data_size = WAV_UNKNOWN_SIZE
    else:
        data_size = 2 * num_samples
        riff_size = 36 + data_size
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data_size))


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """A complete mono 16-bit WAV file of float32 `audio`, with its exact length."""
    return wav_header(sample_rate, audio.size) + to_int16(audio).tobytes()


class StreamEncoder(Protocol):
    """Encodes one stream, chunk by chunk."""

    def encode(self, audio: np.ndarray) -> bytes:
        """Bytes for float32 `audio` (those the codec has ready; may be empty)."""

    def finish(self) -> bytes:
        """The bytes still held back, at the end of the stream."""


class _PcmEncoder:
    def __init__(self, encoding: Encoding):
        self._encoding = encoding

    def encode(self, audio: np.ndarray) -> bytes:
        return encode_pcm(audio, self._encoding)

    def finish(self) -> bytes:
        return b""


class _WavStreamEncoder:
    """A header with unknown sizes before the first samples, then 16-bit PCM."""

    def __init__(self, sample_rate: int):
        self._header = wav_header(sample_rate, None)

    def encode(self, audio: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + to_int16(audio).tobytes()

    def finish(self) -> bytes:
        return self._header  # a stream without audio still gets its header


class _Sink:
    """A seekable in-memory file for libsndfile; `take` hands out what is new.

    A codec that seeks back to patch what was already handed out (FLAC's
    STREAMINFO totals at close) patches only the buffer: a stream keeps the
    first version, which decoders accept (FLAC: "length unknown").
    """

    def __init__(self):
        self.buffer = bytearray()
        self._pos = 0
        self._taken = 0

    def write(self, data) -> int:
        data = bytes(data)
        end = self._pos + len(data)
        self.buffer[self._pos:end] = data
        self._pos = end
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self.buffer)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""  # write-only: libsndfile never needs to read back what it wrote

    def take(self) -> bytes:
        new = bytes(self.buffer[self._taken:])
        self._taken = len(self.buffer)
        return new


class _SoundFileEncoder:
    """A libsndfile encoder writing into a _Sink."""

    def __init__(self, encoding: Encoding, sample_rate: int):
        fmt, subtype, self._dtype = _SOUNDFILE[encoding]
        self.sink = _Sink()
        self._file = soundfile.SoundFile(self.sink, "w", samplerate=sample_rate, channels=1,
                                         format=fmt, subtype=subtype)
        if fmt == "OGG":
            _command_double(self._file, _SFC_SET_OGG_PAGE_LATENCY_MS, _OGG_PAGE_LATENCY_MS)
            _command_double(self._file, _SFC_SET_COMPRESSION_LEVEL, 1.0 - (OPUS_BITRATE - 6000) / 250_000)

    def encode(self, audio: np.ndarray) -> bytes:
        if audio.size:
            self._file.write(to_int16(audio) if self._dtype == "int16" else audio.astype(np.float32, copy=False))
        return self.sink.take()

    def finish(self) -> bytes:
        self._file.close()
        return self.sink.take()


def _command_double(file: soundfile.SoundFile, command: int, value: float) -> None:
    """libsndfile's sf_command with a double argument (soundfile wraps neither of ours)."""
    argument = soundfile._ffi.new("double*", value)
    soundfile._snd.sf_command(file._file, command, argument, soundfile._ffi.sizeof("double"))


def check_rate(encoding: Encoding, sample_rate: int) -> None:
    """InvalidArgument naming sample_rate_hz when `encoding` cannot carry `sample_rate`."""
    if encoding is Encoding.OGG_OPUS and sample_rate not in OPUS_RATES:
        raise InvalidArgument("sample_rate_hz", f"Opus encodes at {', '.join(map(str, OPUS_RATES))} Hz, "
                              f"not {sample_rate}")


def stream_encoder(encoding: Encoding, sample_rate: int) -> StreamEncoder:
    """A fresh encoder for one stream of `encoding` at `sample_rate`."""
    check_rate(encoding, sample_rate)
    if encoding in (Encoding.LINEAR16, Encoding.FLOAT32):
        return _PcmEncoder(encoding)
    if encoding is Encoding.WAV:
        return _WavStreamEncoder(sample_rate)
    return _SoundFileEncoder(encoding, sample_rate)


def encode_whole(audio: np.ndarray, encoding: Encoding, sample_rate: int) -> bytes:
    """The complete encoding of `audio` in one piece (exact WAV and FLAC headers)."""
    check_rate(encoding, sample_rate)
    if encoding in (Encoding.LINEAR16, Encoding.FLOAT32):
        return encode_pcm(audio, encoding)
    if encoding is Encoding.WAV:
        return encode_wav(audio, sample_rate)
    encoder = _SoundFileEncoder(encoding, sample_rate)
    encoder.encode(audio)
    encoder.finish()
    return bytes(encoder.sink.buffer)  # with the totals FLAC patches in at close
