"""The WebSocket live endpoint (/v1/audio/live), called with the `websockets` package.

First audio comes before the text is finished; clear drops the pending turn;
close speaks the rest and ends with `done` and a normal close; hanging up
stops the inferences; bad frames get an error frame and a 4000 + status
close code; the deterministic PCM equals gRPC Synthesize's.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from doors import STILL, TWO_SENTENCES, door_settings, doors_server, grpc_pcm, http_url, idle

_TIMEOUT = 60
CALL = "ws:/v1/audio/live"


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    async with doors_server(door_settings(tmp_path_factory.mktemp("voices"))) as app:
        yield app


def _url(app) -> str:
    return http_url(app, "ws") + "/v1/audio/live"


async def _send(ws, **frame) -> None:
    await ws.send(json.dumps(frame))


async def _next_json(ws) -> dict:
    """The next JSON frame, skipping binary audio frames."""
    while True:
        message = await asyncio.wait_for(ws.recv(), _TIMEOUT)
        if isinstance(message, str):
            return json.loads(message)


async def _collect(ws) -> tuple[list[dict], bytes, dict]:
    """(audio frames, their audio, the done frame) until the server's done."""
    frames, audio = [], bytearray()
    while True:
        message = await asyncio.wait_for(ws.recv(), _TIMEOUT)
        if isinstance(message, bytes):
            audio += message
            continue
        frame = json.loads(message)
        if frame["type"] == "done":
            return frames, bytes(audio), frame
        assert frame["type"] == "audio", frame
        frames.append(frame)


async def test_first_audio_comes_before_the_text_is_finished(app):
    first, rest = TWO_SENTENCES.split(". ", 1)
    async with websockets.connect(_url(app)) as ws:
        await _send(ws, type="start", voice=STILL)
        ready = await _next_json(ws)
        assert ready["type"] == "ready" and ready["sample_rate"] == 22050 and ready["format"] == "pcm"
        await _send(ws, type="text", text=first + ". ")
        await _send(ws, type="text", text=rest[:1])  # the next sentence's first letter ends the first
        audio = await _next_json(ws)
        assert audio["type"] == "audio" and audio["sentence_index"] == 0  # while the text is unfinished
        await _send(ws, type="text", text=rest[1:])
        await _send(ws, type="close")
        frames, _, done = await _collect(ws)
        await asyncio.wait_for(ws.wait_closed(), _TIMEOUT)
        assert ws.close_code == 1000
    assert done["characters"] == len(TWO_SENTENCES)
    assert {f["sentence_index"] for f in frames} == {0, 1}


async def test_the_whole_text_speaks_grpc_synthesizes_pcm(app):
    async with websockets.connect(_url(app)) as ws:
        await _send(ws, type="start", voice=STILL, format="pcm")
        await _next_json(ws)
        await _send(ws, type="text", text=TWO_SENTENCES)
        await _send(ws, type="close")
        frames, audio, done = await _collect(ws)
    assert audio == await grpc_pcm(app, TWO_SENTENCES)
    assert done["num_samples"] == len(audio) // 2 == sum(f["num_samples"] for f in frames)
    assert [f["sequence"] for f in frames] == list(range(len(frames)))
    assert frames[-1]["final"] and frames[-1]["bytes"] == 0


async def test_clear_drops_the_pending_turn_and_the_call_goes_on(app):
    long_text = TWO_SENTENCES * 10
    async with websockets.connect(_url(app), additional_headers={"x-request-id": "ws-clear"}) as ws:
        await _send(ws, type="start", voice=STILL)
        assert (await _next_json(ws))["request_id"] == "ws-clear"
        await _send(ws, type="text", text=long_text)  # its sentences are spoken as they complete
        assert (await _next_json(ws))["type"] == "audio"
        await _send(ws, type="clear")
        await _send(ws, type="text", text="Short.")
        await _send(ws, type="close")
        frames, audio, done = await _collect(ws)
    whole = await grpc_pcm(app, long_text)
    assert len(audio) < len(whole) / 3  # most of the long text was never spoken
    assert frames[-1]["text_span"][1] == len(long_text) + len("Short.")  # the new turn was spoken


async def test_hanging_up_stops_the_calls_inferences(app):
    before = app.metrics.count(CALL, "CANCELLED")
    async with websockets.connect(_url(app), additional_headers={"x-request-id": "ws-gone"}) as ws:
        await _send(ws, type="start")
        await _next_json(ws)
        await _send(ws, type="text", text=TWO_SENTENCES * 20)
        await _send(ws, type="flush")
        assert (await _next_json(ws))["type"] == "audio"
    await idle(app)  # no call admitted, no inference running
    assert app.metrics.count(CALL, "CANCELLED") == before + 1
    runs = [r for r in app.scheduler.run_log if r.owner == "ws-gone"]
    assert runs and len(runs) <= 2 + 2 * app.settings.lookahead_chunks


@pytest.mark.parametrize("frames, status, field", [
    ([{"type": "text", "text": "Hello."}], 400, "type"),  # no start first
    ([{"type": "start", "voice": "nobody"}], 404, "voice"),
    ([{"type": "start", "format": "ogg"}], 400, "format"),
    ([{"type": "start", "speed": "fast"}], 400, "speed"),
    ([{"type": "start", "max_pending_ms": 5}], 400, "max_pending_ms"),
    ([{"type": "start"}, {"type": "shout"}], 400, "type"),
    ([{"type": "start"}, {"type": "text", "text": 5}], 400, "text"),
    ([{"type": "start"}, "not json"], 400, "frame"),
    ([{"type": "start"}, b"\x00\x01"], 400, "frame"),
    ([{"type": "start"}, {"type": "close"}, {"type": "text", "text": "more"}], 400, "type"),
])
async def test_bad_frames_get_an_error_frame_and_a_close_code(app, frames, status, field):
    async with websockets.connect(_url(app)) as ws:
        for frame in frames:
            await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
        error = await _next_json(ws)
        while error["type"] != "error":
            error = await _next_json(ws)
        assert error["status"] == status and error["field"] == field and error["message"].startswith(field + ":")
        await asyncio.wait_for(ws.wait_closed(), _TIMEOUT)
        assert ws.close_code == 4000 + status
    await idle(app)


async def test_text_over_max_chars_is_413(app):
    async with websockets.connect(_url(app)) as ws:
        await _send(ws, type="start")
        await _next_json(ws)
        await _send(ws, type="text", text="word " * (app.settings.max_chars // 5))
        await _send(ws, type="text", text="one more")
        frame = await _next_json(ws)
        while frame["type"] != "error":
            frame = await _next_json(ws)
        assert frame["status"] == 413 and "the limit is" in frame["message"]
        await asyncio.wait_for(ws.wait_closed(), _TIMEOUT)
        assert ws.close_code == 4413
    await idle(app)


async def test_a_frame_over_the_size_limit_closes_the_socket(app):
    async with websockets.connect(_url(app), max_size=None) as ws:
        await _send(ws, type="start")
        await _next_json(ws)
        await ws.send(json.dumps({"type": "text", "text": "a" * 200_000}))
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), _TIMEOUT)
        assert info.value.rcvd.code == 1009  # message too big
    await idle(app)


async def test_word_timings_come_with_the_audio_frames(app):
    async with websockets.connect(_url(app)) as ws:
        await _send(ws, type="start", voice=STILL, timestamps="words")
        await _next_json(ws)
        await _send(ws, type="text", text=TWO_SENTENCES)
        await _send(ws, type="close")
        frames, audio, done = await _collect(ws)
    words = [w for f in frames for w in f.get("words", [])]
    assert [TWO_SENTENCES[slice(*w["text_span"])] for w in words] == [
        word.strip(".,") for word in TWO_SENTENCES.split()]
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts) and all(w["end_s"] > w["start_s"] for w in words)
    rate = 22050
    for frame in frames:  # a word comes with the chunk that holds its first sample
        for w in frame.get("words", []):
            assert frame["sample_offset"] <= round(w["start_s"] * rate) < frame["sample_offset"] + frame["num_samples"]
    assert words[-1]["end_s"] <= done["audio_s"]


async def test_an_unknown_timestamps_value_is_400(app):
    async with websockets.connect(_url(app)) as ws:
        await _send(ws, type="start", timestamps="syllables")
        error = await _next_json(ws)
    assert error["status"] == 400 and error["field"] == "timestamps"

