"""Audio encodings: float32 model output to the bytes a client asked for.

Every encoding has a per-stream encoder (`stream_encoder`) that carries its
state across the chunks of one call, and a one-shot form (`encode_whole`)
for the unary Synthesize. PCM (LINEAR16, FLOAT32, WAV's payload) is exact;
G.711 (MULAW, ALAW) and FLAC are libsndfile's (the `soundfile` package),
Ogg/Opus, MP3 and AAC are FFmpeg's libopus, LAME and native AAC encoder (the
`av` package, whose wheels bundle them; MP3 and AAC are served by the HTTP
door only, the gRPC contract has no value for them), each written
incrementally into an in-memory sink: each call to `encode`
returns the bytes the codec has produced so far, so the concatenation of a
stream's chunks is one valid file or byte stream.
"""

from __future__ import annotations

import enum
import io
import struct
from typing import Any, Literal, Protocol

import numpy as np
import soundfile

from server.errors import InvalidArgument


class Encoding(enum.Enum):
    """Output encodings: speakstream.v1.AudioEncoding's, and MP3 and AAC for the HTTP door."""

    LINEAR16 = "linear16"
    FLOAT32 = "float32"
    WAV = "wav"
    MULAW = "mulaw"
    ALAW = "alaw"
    OGG_OPUS = "ogg_opus"
    FLAC = "flac"
    MP3 = "mp3"
    """MPEG-1/2 Layer III frames (no ID3 tag, no Xing header: a stream)."""
    AAC = "aac"
    """AAC-LC in ADTS frames (the stream form of AAC)."""


# The rates Opus encodes at; other rates are resampled up to the next of these.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# Likewise for the MPEG codecs (MP3: MPEG-1, -2 and -2.5 layer III rates).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_CODEC_RATES = {"OGG_OPUS": OPUS_RATES, "MP3": MP3_RATES, "AAC": AAC_RATES}
# (format, subtype, sample type fed to libsndfile) of the libsndfile encodings.
# 16-bit input where the codec stores 16 bits or less, so our rounding and
# clipping (to_int16) decide the samples, exactly as for LINEAR16.
_SOUNDFILE = {
    Encoding.MULAW: ("RAW", "ULAW", "int16"),
    Encoding.ALAW: ("RAW", "ALAW", "int16"),
    Encoding.FLAC: ("FLAC", "PCM_16", "int16"),
}
# Encodings whose streamed encoding runs in a worker thread, not on the event
# loop: Opus costs a few ms of CPU per audio second; the others well under 1 ms
# (docs/BENCHMARKS.md).
OFF_LOOP_ENCODINGS = frozenset({Encoding.OGG_OPUS, Encoding.MP3, Encoding.AAC})

# Opus: 64 kbit/s mono (a fifth of LINEAR16 at 22 kHz), libopus's "audio"
# application, complexity 5 of 10, which keeps the encoder well under a tenth
# of inference CPU (measured: 4.4 ms CPU per audio second at 5, 5.6 ms at 10;
# docs/BENCHMARKS.md). An Ogg page is cut every 20 ms of audio and flushed at
# once, so a stream's bytes leave with the chunk that made them.
OPUS_BITRATE = 64_000
OPUS_COMPLEXITY = 5
_OGG_OPTIONS = {"page_duration": "20000", "flush_packets": "1"}
# MP3 and AAC: 64 kbit/s mono too. No ID3 tag and no Xing header for MP3 (that
# header is patched at the end of a file, which a stream has already sent).
MPEG_BITRATE = 64_000
# The audio codecs PyAV encodes for us (a Literal: PyAV's add_stream then returns an AudioStream).
_PyAvCodec = Literal["libopus", "libmp3lame", "aac"]
# (container, codec, muxer options, frame sample format) of each PyAV encoding.
_PYAV: dict[Encoding, tuple[str, _PyAvCodec, dict[str, str], str]] = {
    Encoding.OGG_OPUS: ("ogg", "libopus", _OGG_OPTIONS, "flt"),
    Encoding.MP3: ("mp3", "libmp3lame", {"write_xing": "0", "id3v2_version": "0", "flush_packets": "1"}, "fltp"),
    Encoding.AAC: ("adts", "aac", {"flush_packets": "1"}, "fltp"),
}

# A streamed WAV's RIFF and data sizes: unknown, so the largest value (the
# convention of streaming WAV writers such as ffmpeg and sox; decoders read
# to the end of the stream).
WAV_UNKNOWN_SIZE = 0xFFFFFFFF


def output_rate(encoding: Encoding, requested: int) -> int:
    """The rate audio is sent at: `requested`, or for Opus, MP3 and AAC the next rate the codec supports."""
    rates = _CODEC_RATES.get(encoding.name)
    if rates is not None:
        return next((rate for rate in rates if rate >= requested), rates[-1])
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

    def encode(self, audio: np.ndarray) -> bytes:
        if audio.size:
            self._file.write(to_int16(audio) if self._dtype == "int16" else audio.astype(np.float32, copy=False))
        return self.sink.take()

    def finish(self) -> bytes:
        self._file.close()
        return self.sink.take()


class _PyAvEncoder:
    """Ogg/Opus, MP3 or AAC through FFmpeg (PyAV), written into a BytesIO; `take` hands out what is new.

    The container is opened on the first encode or finish, which run off the
    event loop (OFF_LOOP_ENCODINGS): that is also where PyAV is first imported.
    """

    def __init__(self, encoding: Encoding, sample_rate: int):
        self._encoding = encoding
        self.sink = io.BytesIO()
        self._taken = 0
        self._pts = 0
        self._rate = sample_rate
        self._format = _PYAV[encoding][3]
        self._container: Any = None  # av.container.OutputContainer once opened
        self._stream: Any = None

    def encode(self, audio: np.ndarray) -> bytes:
        av = _pyav()
        self._open(av)
        if audio.size:
            # Mono: the packed ("flt") and planar ("fltp") layouts are the same bytes.
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32)[np.newaxis, :],
                                               format=self._format, layout="mono")
            frame.sample_rate, frame.pts = self._rate, self._pts
            self._pts += audio.size
            self._mux(frame)
        return self._take()

    def finish(self) -> bytes:
        self._open(_pyav())
        self._mux(None)  # drain the encoder's look-ahead
        self._container.close()
        return self._take()

    def _open(self, av) -> None:
        if self._container is not None:
            return
        container, codec, options, _ = _PYAV[self._encoding]
        self._container = av.open(self.sink, "w", format=container, options=options)
        self._stream = self._container.add_stream(codec, rate=self._rate, layout="mono")
        if self._encoding is Encoding.OGG_OPUS:
            self._stream.bit_rate = OPUS_BITRATE
            self._stream.options = {"compression_level": str(OPUS_COMPLEXITY), "application": "audio"}
        else:
            self._stream.bit_rate = MPEG_BITRATE

    def _mux(self, frame) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _take(self) -> bytes:
        new = self.sink.getbuffer()[self._taken:].tobytes()
        self._taken += len(new)
        return new


def _pyav():
    """PyAV, imported on first use: its FFmpeg libraries take 17 MB of memory (measured),
    which a server that is never asked for Opus, MP3 or AAC need not hold."""
    import av

    return av


def check_rate(encoding: Encoding, sample_rate: int) -> None:
    """InvalidArgument naming sample_rate_hz when `encoding` cannot carry `sample_rate`."""
    rates = _CODEC_RATES.get(encoding.name)
    if rates is not None and sample_rate not in rates:
        raise InvalidArgument("sample_rate_hz", f"{encoding.name} encodes at {', '.join(map(str, rates))} Hz, "
                              f"not {sample_rate}")


def stream_encoder(encoding: Encoding, sample_rate: int) -> StreamEncoder:
    """A fresh encoder for one stream of `encoding` at `sample_rate`."""
    check_rate(encoding, sample_rate)
    if encoding in (Encoding.LINEAR16, Encoding.FLOAT32):
        return _PcmEncoder(encoding)
    if encoding is Encoding.WAV:
        return _WavStreamEncoder(sample_rate)
    if encoding in _PYAV:
        return _PyAvEncoder(encoding, sample_rate)
    return _SoundFileEncoder(encoding, sample_rate)


def encode_whole(audio: np.ndarray, encoding: Encoding, sample_rate: int) -> bytes:
    """The complete encoding of `audio` in one piece (exact WAV and FLAC headers)."""
    check_rate(encoding, sample_rate)
    if encoding in (Encoding.LINEAR16, Encoding.FLOAT32):
        return encode_pcm(audio, encoding)
    if encoding is Encoding.WAV:
        return encode_wav(audio, sample_rate)
    if encoding in _PYAV:
        pyav_encoder = _PyAvEncoder(encoding, sample_rate)
        return pyav_encoder.encode(audio) + pyav_encoder.finish()
    encoder = _SoundFileEncoder(encoding, sample_rate)
    encoder.encode(audio)
    encoder.finish()
    return bytes(encoder.sink.buffer)  # with the totals FLAC patches in at close
