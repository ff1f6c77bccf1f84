"""The OpenAI speech API door, called with the real `openai` SDK pointed at the server (base_url).

Every response_format decodes (FFmpeg, through PyAV) to the duration of the
same text's PCM; stream_format "audio" streams through
with_streaming_response; "sse" gives speech.audio.delta events, then
speech.audio.done; deterministic settings give gRPC Synthesize's PCM at
24 kHz exactly; errors come in the API's error shape with their statuses.
"""

from __future__ import annotations

import base64
import io
import json

import av
import grpc
import openai
import pytest
from doors import STILL, TINY, TWO_SENTENCES, door_settings, doors_server, grpc_pcm, http_url, idle

from server.doors.openai_api import OPENAI_RATE, OPENAI_VOICES
from speakstream.v1 import stats_pb2, stats_pb2_grpc

TEXT = "Hello there. How are you today?"
DETERMINISTIC = {"noise_scale": 0, "noise_w": 0}
# Encoder priming and the last frame's padding, at most: LAME ~1,100 samples + a 1,152-sample frame,
# AAC 1,024 + 1,024, Opus 312 + a 960-sample frame, at 24 kHz.
_CODEC_SLACK_S = 0.1


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    async with doors_server(door_settings(tmp_path_factory.mktemp("voices"))) as app:
        yield app


@pytest.fixture
def client(app) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http_url(app) + "/v1", api_key="unused", max_retries=0, timeout=60)


async def _speech(client, **fields) -> bytes:
    fields = {"model": "tts-1", "voice": "alloy", "input": TEXT, "extra_body": DETERMINISTIC} | fields
    response = await client.audio.speech.create(**fields)
    return response.content


def _decoded_seconds(data: bytes) -> float:
    """Seconds of audio in `data`, decoded by FFmpeg (the container names the codec)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav"])
async def test_every_response_format_decodes_to_the_texts_duration(client, response_format):
    pcm_s = len(await _speech(client, response_format="pcm")) / 2 / OPENAI_RATE
    data = await _speech(client, response_format=response_format)
    decoded_s = _decoded_seconds(data)
    assert pcm_s <= decoded_s + 1e-3  # codecs pad; none loses audio
    assert decoded_s - pcm_s < _CODEC_SLACK_S, (response_format, decoded_s, pcm_s)
    if response_format in ("flac", "wav"):
        assert decoded_s == pytest.approx(pcm_s, abs=1e-6)  # lossless: exactly the same samples


async def test_the_default_format_is_mp3(client):
    data = await _speech(client, voice="echo")  # no response_format
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "mp3"


async def test_deterministic_pcm_is_grpc_synthesize_at_24_khz(app, client):
    door = await _speech(client, voice=STILL, response_format="pcm", extra_body={})
    assert door == await grpc_pcm(app, TEXT, rate=OPENAI_RATE)
    assert len(door) > OPENAI_RATE  # half a second at least: a real answer


async def test_audio_stream_format_streams_the_same_bytes(app, client):
    whole = await _speech(client, input=TWO_SENTENCES, response_format="pcm")
    pieces = []
    async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TWO_SENTENCES, response_format="pcm", stream_format="audio",
            extra_body=DETERMINISTIC) as response:
        assert response.headers["content-type"] == "audio/pcm"
        async for piece in response.iter_bytes():
            pieces.append(piece)
    assert b"".join(pieces) == whole
    assert len(pieces) > 1  # more than one piece: it streamed


async def test_sse_stream_format_gives_delta_events_then_done(client):
    whole = await _speech(client, response_format="pcm")
    async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="pcm", stream_format="sse",
            extra_body=DETERMINISTIC) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = await response.text()
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    names = [line[len("event: "):] for line in body.splitlines() if line.startswith("event: ")]
    assert [e["type"] for e in events] == names
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and len(events) > 2
    assert events[-1] == {"type": "speech.audio.done",
                          "usage": {"input_tokens": len(TEXT), "output_tokens": 0, "total_tokens": len(TEXT)}}
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole


async def test_sse_of_an_encoded_format_decodes(client):
    async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="nova", input=TEXT, response_format="mp3", stream_format="sse",
            instructions="Speak cheerfully.") as response:  # instructions are accepted and ignored
        body = await response.text()
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert _decoded_seconds(mp3) > 1.0


async def test_openai_voice_names_map_to_the_default_voice_and_names_work_too(app, client):
    by_alias = await _speech(client, voice="shimmer", response_format="pcm")
    by_name = await _speech(client, voice=app.voices.default.name, response_format="pcm")
    by_id_object = await _speech(client, voice={"id": "shimmer"}, response_format="pcm")
    assert by_alias == by_name == by_id_object


async def test_models_and_voices_are_listed(app, client):
    models = [m.id async for m in client.models.list()]
    assert "tts-1" in models and "speakstream" in models
    listing = await client.get("/audio/voices", cast_to=object)  # the SDK's own GET
    tiny = next(v for v in listing["voices"] if v["name"] == TINY)
    assert [s["name"] for s in tiny["speakers"]] == ["alice", "bob", "carol"]
    assert set(listing["openai_voices"]) == set(OPENAI_VOICES)
    assert {v["name"] for v in listing["voices"]} == {v.name for v in app.voices}


async def test_speaker_by_name_through_the_extension_field(client):
    alice = await _speech(client, voice=TINY, response_format="pcm", extra_body={"speaker": "alice"})
    bob = await _speech(client, voice=TINY, response_format="pcm", extra_body={"speaker": "bob"})
    assert len(alice) == len(bob) and alice != bob


async def test_the_request_id_is_honoured_and_returned(client):
    response = await client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm", extra_headers={"x-request-id": "door-42"})
    assert response.headers["x-request-id"] == "door-42"
    response = await client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm")
    assert len(response.headers["x-request-id"]) == 16


@pytest.mark.parametrize("fields, error, param, message", [
    ({"voice": "nobody"}, openai.NotFoundError, "voice", "unknown voice 'nobody'"),
    ({"response_format": "ogg"}, openai.BadRequestError, "response_format", "must be one of"),
    ({"stream_format": "chunks"}, openai.BadRequestError, "stream_format", "must be one of audio, sse"),
    ({"speed": 9}, openai.BadRequestError, "speed", "must be between 0.25 and 4.0"),
    ({"input": "   "}, openai.BadRequestError, "input", "must contain something to speak"),
    ({"model": ""}, openai.BadRequestError, "model", "is required"),
    ({"extra_body": {"speaker": "nobody"}, "voice": TINY}, openai.NotFoundError, "speaker", "no speaker"),
])
async def test_bad_requests_get_the_apis_error_shape_naming_the_field(client, fields, error, param, message):
    with pytest.raises(error) as info:
        await _speech(client, **fields)
    body = info.value.body
    assert body["param"] == param and message in body["message"] and body["message"].startswith(param + ":")
    assert body["type"] == "invalid_request_error"


async def test_text_over_max_chars_is_413(app, client):
    with pytest.raises(openai.APIStatusError) as info:
        await _speech(client, input="a" * (app.settings.max_chars + 1))
    assert info.value.status_code == 413
    assert info.value.body["param"] == "input" and "the limit is" in info.value.body["message"]


async def test_admission_refusal_is_429(tmp_path):
    async with doors_server(door_settings(tmp_path, pool_size=1, max_queue=0)) as app:
        client = openai.AsyncOpenAI(base_url=http_url(app) + "/v1", api_key="x", max_retries=0, timeout=60)
        async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TWO_SENTENCES * 4, response_format="pcm") as holding:
            pieces = holding.iter_bytes()  # kept: dropping the iterator would close the stream
            await anext(pieces)  # admitted and streaming: the only place is taken
            with pytest.raises(openai.RateLimitError) as info:
                await _speech(client)
        assert "at capacity" in info.value.body["message"]
        assert info.value.body["type"] == "rate_limit_error"
        await idle(app)


async def test_a_draining_server_answers_503(tmp_path):
    async with doors_server(door_settings(tmp_path)) as app:
        client = openai.AsyncOpenAI(base_url=http_url(app) + "/v1", api_key="x", max_retries=0, timeout=60)
        app.scheduler.drain()
        with pytest.raises(openai.InternalServerError) as info:
            await _speech(client)
        assert info.value.status_code == 503 and "shutting down" in info.value.body["message"]


async def test_calls_are_counted_per_door_in_stats(app, client):
    before = app.metrics.count(door="http")
    await _speech(client, response_format="pcm")
    with pytest.raises(openai.NotFoundError):
        await _speech(client, voice="nobody")
    await idle(app)
    async with grpc.aio.insecure_channel(app.address) as channel:
        snapshot = (await stats_pb2_grpc.StatsStub(channel).GetStats(stats_pb2.GetStatsRequest())).snapshot
    speech = next(r for r in snapshot.requests.rpcs if r.method == "http:/v1/audio/speech")
    assert speech.door == "http" and speech.by_status["NOT_FOUND"] >= 1
    assert snapshot.requests.by_door["http"] == before + 2
    assert {r.door for r in snapshot.requests.rpcs} == {"grpc", "http", "ws", "wyoming"}
    assert "INTERNAL" not in snapshot.requests.by_status


async def test_disconnecting_mid_stream_cancels_the_inferences(app, client):
    text = TWO_SENTENCES * 20  # ~3,000 characters: 40 segments and more, minutes of audio
    before = app.metrics.count("http:/v1/audio/speech", "CANCELLED")
    async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm",
            extra_headers={"x-request-id": "hang-up"}) as response:
        pieces = response.iter_bytes()
        await anext(pieces)
    # Leaving the block closes the connection with nearly all of the text unspoken.
    await idle(app)
    assert app.metrics.count("http:/v1/audio/speech", "CANCELLED") == before + 1
    runs = [r for r in app.scheduler.run_log if r.owner == "hang-up"]
    assert runs and all(r.ended is not None for r in runs)
    assert len(runs) <= 2 + 2 * app.settings.lookahead_chunks  # the first audio's runs and those in flight
