"""End-to-end synthesis against the real server, voice and channel."""

import io
import time
import wave

import grpc
import numpy as np
import pytest

from speakstream.v1 import synthesizer_pb2 as pb

_THREE_SENTENCES = (
    "The first sentence is short. "
    "The second one is a little longer than the first. "
    "And the third sentence, which closes this small paragraph, is the longest of the three by far."
)
_TIMEOUT = 60


def _deterministic(text: str, **fields) -> pb.SynthesizeRequest:
    return pb.SynthesizeRequest(text=text, noise_scale=0.0, noise_w=0.0, **fields)


async def _collect(stub, request):
    chunks, received = [], []
    async for chunk in stub.SynthesizeStream(request, timeout=_TIMEOUT):
        chunks.append(chunk)
        received.append(time.monotonic())
    return chunks, received


async def test_stream_yields_ordered_chunks_with_contiguous_offsets(stub):
    chunks, _ = await _collect(stub, _deterministic(_THREE_SENTENCES))
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    offsets = [c.sample_offset for c in chunks]
    assert offsets == list(np.cumsum([0] + [c.num_samples for c in chunks[:-1]]))
    assert all(len(c.audio) == 2 * c.num_samples for c in chunks)
    assert all(c.sample_rate_hz == 22050 and c.encoding == pb.AUDIO_ENCODING_LINEAR16 for c in chunks)
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]


async def test_stream_gives_one_text_span_per_sentence(stub):
    chunks, _ = await _collect(stub, _deterministic(_THREE_SENTENCES))
    spans = {}
    for c in chunks:
        start, end = spans.get(c.sentence_index, (c.text_span.start, c.text_span.end))
        spans[c.sentence_index] = (min(start, c.text_span.start), max(end, c.text_span.end))
    assert sorted(spans) == [0, 1, 2]
    sentences = [_THREE_SENTENCES[a:b].strip() for a, b in (spans[i] for i in range(3))]
    assert sentences[0] == "The first sentence is short."
    assert sentences[1] == "The second one is a little longer than the first."
    assert sentences[2].startswith("And the third sentence") and sentences[2].endswith("by far.")


async def test_first_chunk_arrives_before_the_last_sentence_is_synthesized(app, stub):
    completed_at_first_chunk = None
    before = app.scheduler.counters.runs_completed
    # Default noise: not cached, so every segment is a real inference.
    async for _chunk in stub.SynthesizeStream(pb.SynthesizeRequest(text=_THREE_SENTENCES), timeout=_TIMEOUT):
        if completed_at_first_chunk is None:
            completed_at_first_chunk = app.scheduler.counters.runs_completed - before
    total_runs = app.scheduler.counters.runs_completed - before
    assert total_runs >= 3
    # The last sentence's inference had not finished when the first audio was in hand.
    assert completed_at_first_chunk < total_runs


async def test_unary_wav_has_as_many_samples_as_the_stream(stub):
    text = "Hello there. How are you?"
    response = await stub.Synthesize(_deterministic(text, encoding=pb.AUDIO_ENCODING_WAV), timeout=_TIMEOUT)
    with wave.open(io.BytesIO(response.audio)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        frames = wav.getnframes()
        pcm = np.frombuffer(wav.readframes(frames), dtype="<i2")
    chunks, _ = await _collect(stub, _deterministic(text))
    assert frames == response.num_samples == sum(c.num_samples for c in chunks)
    streamed = np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")
    assert np.array_equal(pcm, streamed)
    assert 1.0 < frames / 22050 < 3.5
    assert [(s.start, s.end) for s in response.sentences][0][0] == 0


async def test_audio_is_speech_not_silence_or_clipping(stub):
    response = await stub.Synthesize(_deterministic("Hello there. How are you?"), timeout=_TIMEOUT)
    pcm = np.frombuffer(response.audio, dtype="<i2").astype(np.float64) / 32768
    rms = np.sqrt(np.mean(pcm ** 2))
    clipped = np.mean(np.abs(pcm) > 0.999)
    assert 0.02 < rms < 0.5
    assert clipped < 0.001
    # Speech has pauses and voiced parts: frame energy varies a lot.
    frames = pcm[: pcm.size // 441 * 441].reshape(-1, 441)
    energy = np.sqrt((frames ** 2).mean(axis=1))
    assert energy.max() > 10 * np.percentile(energy, 10)


async def test_float32_stream_matches_linear16(stub):
    text = "Float samples, please."
    f32, _ = await _collect(stub, _deterministic(text, encoding=pb.AUDIO_ENCODING_FLOAT32))
    i16, _ = await _collect(stub, _deterministic(text))
    a = np.frombuffer(b"".join(c.audio for c in f32), dtype="<f4")
    b = np.frombuffer(b"".join(c.audio for c in i16), dtype="<i2") / 32767
    assert a.size == b.size
    assert np.max(np.abs(np.clip(a, -1, 1) - b)) < 1e-4


async def test_chunk_ms_bounds_every_chunk(stub):
    chunks, _ = await _collect(stub, _deterministic("Short pieces of audio, please.", chunk_ms=100))
    assert len(chunks) > 3
    assert all(c.num_samples <= 2205 for c in chunks)


async def test_list_voices_lists_the_bundled_voice(stub):
    response = await stub.ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)
    voices = {v.name: v for v in response.voices}
    joe = voices["en_US-joe-medium"]
    assert (joe.language, joe.sample_rate_hz, joe.num_speakers, joe.quality, joe.is_default) == \
        ("en_US", 22050, 1, "medium", True)


@pytest.mark.parametrize("fields, code, field", [
    (dict(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text"),
    (dict(text="   \n\t "), grpc.StatusCode.INVALID_ARGUMENT, "text"),
    (dict(text="hi", voice="no-such-voice"), grpc.StatusCode.NOT_FOUND, "voice"),
    (dict(text="hi", speed=9.0), grpc.StatusCode.INVALID_ARGUMENT, "speed"),
    (dict(text="hi", speed=0.0), grpc.StatusCode.INVALID_ARGUMENT, "speed"),
    (dict(text="hi", noise_scale=-1.0), grpc.StatusCode.INVALID_ARGUMENT, "noise_scale"),
    (dict(text="hi", noise_w=float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "noise_w"),
    (dict(text="hi", sentence_silence_s=9.0), grpc.StatusCode.INVALID_ARGUMENT, "sentence_silence_s"),
    (dict(text="hi", speaker_id=3), grpc.StatusCode.NOT_FOUND, "speaker_id"),
    (dict(text="hi", chunk_ms=5), grpc.StatusCode.INVALID_ARGUMENT, "chunk_ms"),
    (dict(text="hi", sample_rate_hz=7999), grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    (dict(text="hi", sample_rate_hz=96000), grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    (dict(text="hi", speaker="nobody"), grpc.StatusCode.NOT_FOUND, "speaker"),
    (dict(text="hi", encoding=99), grpc.StatusCode.INVALID_ARGUMENT, "encoding"),
    (dict(text="x" * 10_001), grpc.StatusCode.INVALID_ARGUMENT, "text"),
])
@pytest.mark.parametrize("rpc", ["Synthesize", "SynthesizeStream"])
async def test_bad_request_gets_a_status_naming_the_field(stub, rpc, fields, code, field):
    request = pb.SynthesizeRequest(**fields)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if rpc == "Synthesize":
            await stub.Synthesize(request, timeout=_TIMEOUT)
        else:
            await _collect(stub, request)
    assert info.value.code() == code
    assert info.value.details().startswith(f"{field}:")


async def test_a_repeated_deterministic_request_is_served_from_the_cache(app, stub):
    request = _deterministic("The cache remembers this exact sentence, word for word.")
    first, _ = await _collect(stub, request)
    runs = app.scheduler.counters.runs_started
    hits = app.synthesizer.cache.hits
    again, _ = await _collect(stub, request)
    assert app.scheduler.counters.runs_started == runs  # no inference the second time
    assert app.synthesizer.cache.hits - hits == len(again)
    assert b"".join(c.audio for c in again) == b"".join(c.audio for c in first)
    noisy, _ = await _collect(stub, pb.SynthesizeRequest(text=request.text))
    assert app.scheduler.counters.runs_started > runs  # noise on: never cached


async def test_a_unary_call_sends_its_request_id_with_the_answer_not_before(stub):
    """Headers sent mean a call has started, and a balancer may no longer retry it elsewhere:
    a unary call's request id comes with its response (and with its status if it fails)."""
    ok = stub.Synthesize(pb.SynthesizeRequest(text="Answered."), timeout=_TIMEOUT,
                         metadata=(("x-request-id", "unary-ok"),))
    await ok
    assert dict(await ok.initial_metadata())["x-request-id"] == "unary-ok"
    refused = stub.Synthesize(pb.SynthesizeRequest(text="", voice=""), timeout=_TIMEOUT,
                              metadata=(("x-request-id", "unary-refused"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await refused
    assert "x-request-id" not in dict(await refused.initial_metadata() or ())
    assert dict(await refused.trailing_metadata())["x-request-id"] == "unary-refused"
