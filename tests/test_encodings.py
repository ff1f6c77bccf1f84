"""Every encoding and output rate, end to end: decoded back, compared with LINEAR16 at the voice's rate.

Decoding uses libsndfile (the soundfile package), an independent reader of
each format; references come from the same deterministic request in
LINEAR16 / FLOAT32, resampled once, whole, with soxr.
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import soundfile
from servers import start_server

from server.resample import StreamResampler, resample
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TEXT = "Press one for sales. Press two for support. Or stay on the line, and someone will answer shortly."
_TIMEOUT = 60
_NATIVE = 22050
# soundfile's RAW reading parameters of the headerless encodings.
_RAW = {pb.AUDIO_ENCODING_MULAW: "ULAW", pb.AUDIO_ENCODING_ALAW: "ALAW"}


def _request(**fields) -> pb.SynthesizeRequest:
    return pb.SynthesizeRequest(text=_TEXT, noise_scale=0.0, noise_w=0.0, **fields)


async def _stream(stub, **fields) -> tuple[bytes, list]:
    chunks = [c async for c in stub.SynthesizeStream(_request(**fields), timeout=_TIMEOUT)]
    return b"".join(c.audio for c in chunks), chunks


def _read_all(data: bytes, **raw) -> tuple[np.ndarray, int]:
    """Every sample of `data` as int16, read block by block.

    Block reads through libsndfile's own call: a streamed FLAC's header says
    "length unknown", which soundfile.read would try to allocate.
    """
    with soundfile.SoundFile(io.BytesIO(data), **raw) as f:
        blocks = []
        while True:
            block = np.empty(4096, np.int16)
            n = soundfile._snd.sf_readf_short(f._file, soundfile._ffi.cast("short *", block.ctypes.data), 4096)
            if n <= 0:
                return np.concatenate(blocks) if blocks else block[:0], f.samplerate
            blocks.append(block[:n])


def _decode(data: bytes, encoding: int, rate: int) -> tuple[np.ndarray, int]:
    """int16 samples and rate of `data` in `encoding`."""
    if encoding == pb.AUDIO_ENCODING_LINEAR16:
        return np.frombuffer(data, "<i2"), rate
    if encoding == pb.AUDIO_ENCODING_FLOAT32:
        floats = np.frombuffer(data, "<f4")
        return np.clip(np.rint(floats * 32767.0), -32768, 32767).astype(np.int16), rate
    if encoding in _RAW:
        return _read_all(data, format="RAW", subtype=_RAW[encoding], samplerate=rate, channels=1)
    return _read_all(data)


def _snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    reference, decoded = reference.astype(np.float64), decoded.astype(np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((decoded - reference) ** 2))


@pytest.fixture(scope="module")
async def linear16(channel) -> np.ndarray:
    """The reference: deterministic LINEAR16 at the voice's rate."""
    response = await pb_grpc.SynthesizerStub(channel).Synthesize(_request(), timeout=_TIMEOUT)
    return np.frombuffer(response.audio, "<i2")


@pytest.fixture(scope="module")
async def native_float(channel) -> np.ndarray:
    """The same at full float precision."""
    request = _request(encoding=pb.AUDIO_ENCODING_FLOAT32)
    response = await pb_grpc.SynthesizerStub(channel).Synthesize(request, timeout=_TIMEOUT)
    return np.frombuffer(response.audio, "<f4")


_EXACT = [pb.AUDIO_ENCODING_LINEAR16, pb.AUDIO_ENCODING_FLOAT32, pb.AUDIO_ENCODING_WAV, pb.AUDIO_ENCODING_FLAC]


@pytest.mark.parametrize("encoding", _EXACT)
@pytest.mark.parametrize("rpc", ["Synthesize", "SynthesizeStream"])
async def test_pcm_wav_and_flac_decode_to_exactly_the_linear16_samples(stub, linear16, rpc, encoding):
    if rpc == "Synthesize":
        response = await stub.Synthesize(_request(encoding=encoding), timeout=_TIMEOUT)
        data, rate, samples = response.audio, response.sample_rate_hz, response.num_samples
    else:
        data, chunks = await _stream(stub, encoding=encoding, chunk_ms=100)
        rate, samples = chunks[0].sample_rate_hz, sum(c.num_samples for c in chunks)
        assert {c.encoding for c in chunks} == {encoding}
    decoded, decoded_rate = _decode(data, encoding, rate)
    assert (rate, decoded_rate, samples) == (_NATIVE, _NATIVE, linear16.size)
    np.testing.assert_array_equal(decoded, linear16)


async def test_a_streamed_wav_starts_with_a_header_of_unknown_length(stub):
    data, chunks = await _stream(stub, encoding=pb.AUDIO_ENCODING_WAV, chunk_ms=100)
    assert chunks[0].audio[:4] == b"RIFF" and chunks[0].audio[40:44] == b"\xff\xff\xff\xff"
    assert all(len(c.audio) == 2 * c.num_samples for c in chunks[1:])
    whole = await stub.Synthesize(_request(encoding=pb.AUDIO_ENCODING_WAV), timeout=_TIMEOUT)
    assert int.from_bytes(whole.audio[40:44], "little") == 2 * whole.num_samples
    assert whole.audio[44:] == data[44:]


@pytest.mark.parametrize("encoding", list(_RAW))
@pytest.mark.parametrize("rpc", ["Synthesize", "SynthesizeStream"])
async def test_g711_decodes_close_to_linear16(stub, linear16, rpc, encoding):
    if rpc == "Synthesize":
        data = (await stub.Synthesize(_request(encoding=encoding), timeout=_TIMEOUT)).audio
    else:
        data, chunks = await _stream(stub, encoding=encoding, chunk_ms=100)
        assert all(len(c.audio) == c.num_samples for c in chunks)  # one byte a sample, nothing held back
    decoded, _ = _decode(data, encoding, _NATIVE)
    assert decoded.size == linear16.size
    # G.711's logarithmic 8-bit steps keep speech ~38 dB above the error.
    assert _snr_db(linear16, decoded) > 30


async def test_telephony_rate_mulaw(stub, native_float):
    response = await stub.Synthesize(_request(encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hz=8000),
                                     timeout=_TIMEOUT)
    assert response.sample_rate_hz == 8000 and len(response.audio) == response.num_samples
    decoded, _ = _decode(response.audio, pb.AUDIO_ENCODING_MULAW, 8000)
    reference = np.rint(resample(native_float, _NATIVE, 8000) * 32767)
    assert decoded.size == reference.size
    assert _snr_db(reference, decoded) > 30


@pytest.mark.parametrize("rpc", ["Synthesize", "SynthesizeStream"])
async def test_ogg_opus_decodes_to_the_same_speech(stub, native_float, rpc):
    if rpc == "Synthesize":
        response = await stub.Synthesize(_request(encoding=pb.AUDIO_ENCODING_OGG_OPUS), timeout=_TIMEOUT)
        data, rate = response.audio, response.sample_rate_hz
    else:
        data, chunks = await _stream(stub, encoding=pb.AUDIO_ENCODING_OGG_OPUS, chunk_ms=100)
        rate = chunks[0].sample_rate_hz
        assert data[:4] == b"OggS"
        assert sum(bool(c.audio) for c in chunks) > len(chunks) // 2  # pages leave as audio comes
    assert rate == 24000  # 22,050 Hz rounds up to a rate Opus codes at
    decoded, decoded_rate = _decode(data, pb.AUDIO_ENCODING_OGG_OPUS, rate)
    reference = resample(native_float, _NATIVE, rate)
    assert decoded_rate == rate
    assert abs(decoded.size - reference.size) <= 0.025 * rate  # duration within 25 ms
    n = min(decoded.size, reference.size)
    correlation = np.corrcoef(decoded[:n].astype(np.float64), reference[:n])[0, 1]
    assert correlation > 0.9


@pytest.mark.parametrize("requested, sent", [(0, 24000), (8000, 8000), (22050, 24000), (44100, 48000)])
async def test_opus_rounds_the_rate_up_to_one_it_codes_at(stub, requested, sent):
    _, chunks = await _stream(stub, encoding=pb.AUDIO_ENCODING_OGG_OPUS, sample_rate_hz=requested)
    assert {c.sample_rate_hz for c in chunks} == {sent}


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
async def test_streamed_resampling_equals_resampling_the_whole_utterance(stub, native_float, rate):
    reference = resample(native_float, _NATIVE, rate)
    # chunk_ms=0: one chunk per synthesized piece, so every seam is a resampler call's edge.
    data, chunks = await _stream(stub, encoding=pb.AUDIO_ENCODING_FLOAT32, sample_rate_hz=rate)
    streamed = np.frombuffer(data, "<f4")
    assert len(chunks) >= 3 and {c.sample_rate_hz for c in chunks} == {rate}
    assert streamed.size == reference.size == sum(c.num_samples for c in chunks)
    assert np.sqrt(np.mean((streamed - reference) ** 2)) < 1e-3
    for chunk in chunks[1:]:  # no discontinuity where one piece's output meets the next
        seam = chunk.sample_offset
        window = slice(max(seam - 32, 0), seam + 32)
        assert np.max(np.abs(streamed[window] - reference[window])) < 1e-3, f"seam at {seam}"
    whole = await stub.Synthesize(_request(encoding=pb.AUDIO_ENCODING_FLOAT32, sample_rate_hz=rate),
                                  timeout=_TIMEOUT)
    np.testing.assert_array_equal(np.frombuffer(whole.audio, "<f4"), reference)


def test_stream_resampler_pieces_of_any_size_equal_one_shot():
    rng = np.random.default_rng(7)
    t = np.arange(3 * _NATIVE) / _NATIVE
    audio = (0.5 * np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, audio.size), 40, replace=False))
    resampler = StreamResampler(_NATIVE, 16000)
    pieces = np.split(audio, cuts)
    streamed = np.concatenate([resampler.process(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)])
    reference = resample(audio, _NATIVE, 16000)
    assert streamed.size == reference.size
    assert np.max(np.abs(streamed - reference)) < 1e-4
    # And the output is a smooth sine: no sample-to-sample jump beyond the signal's own slope.
    assert np.max(np.abs(np.diff(streamed))) < 2 * np.pi * 300 / 16000 * 0.5 * 1.05


def _maps_pyav(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "libavcodec" in maps.read()


async def test_pyav_is_loaded_only_once_a_call_asks_for_what_it_encodes():
    # PyAV's FFmpeg libraries hold 17 MB: a server never asked for Opus, MP3 or AAC does not map them.
    process, address = await start_server("--log-level", "WARNING")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            await stub.Synthesize(_request(encoding=pb.AUDIO_ENCODING_FLAC), timeout=_TIMEOUT)
            assert not _maps_pyav(process.pid)
            opus = await stub.Synthesize(_request(encoding=pb.AUDIO_ENCODING_OGG_OPUS), timeout=_TIMEOUT)
            assert opus.audio[:4] == b"OggS" and _maps_pyav(process.pid)
    finally:
        process.terminate()
        await process.wait()
