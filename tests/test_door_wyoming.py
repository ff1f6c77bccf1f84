"""The Wyoming door, called with the `wyoming` package's async TCP client (as Home Assistant calls it).

describe lists every voice and its speakers; synthesize answers audio-start,
audio-chunks, audio-stop with gRPC Synthesize's PCM; the streaming form
speaks a sentence before synthesize-stop and ends with synthesize-stopped;
garbage and oversize events get an error event and the connection closes,
the server staying healthy.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from doors import STILL, TINY, TWO_SENTENCES, door_settings, doors_server, grpc_pcm, idle
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

_TIMEOUT = 60


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    async with doors_server(door_settings(tmp_path_factory.mktemp("voices"))) as app:
        yield app


def _client(app) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", app.doors.wyoming_port, read_timeout=_TIMEOUT)


async def _until(client, last_type: str) -> list:
    """Events up to and including the first of `last_type`."""
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, f"connection closed before {last_type}: {[e.type for e in events]}"
        events.append(event)
        if event.type == last_type:
            return events


def _pcm(events) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


async def test_describe_lists_every_voice_and_its_speakers(app):
    async with _client(app) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await client.read_event())
    program, = info.tts
    assert program.supports_synthesize_streaming and program.installed
    voices = {v.name: v for v in program.voices}
    assert set(voices) == {v.name for v in app.voices}
    assert [s.name for s in voices[TINY].speakers] == ["alice", "bob", "carol"]
    assert voices[STILL].languages == ["en_US"] and voices[STILL].speakers is None


async def test_synthesize_gives_grpc_synthesizes_pcm(app):
    async with _client(app) as client:
        await client.write_event(Synthesize(text=TWO_SENTENCES, voice=SynthesizeVoice(name=STILL)).event())
        events = await _until(client, "audio-stop")
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-1] == "audio-stop" and set(types[1:-1]) == {"audio-chunk"}
    assert len(types) > 3  # chunks as inference makes them, not one at the end
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    assert _pcm(events) == await grpc_pcm(app, TWO_SENTENCES)


async def test_a_speaker_by_name_and_by_number(app):
    async with _client(app) as client:
        await client.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name=TINY, speaker="bob")).event())
        by_name = _pcm(await _until(client, "audio-stop"))
        await client.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name=TINY, speaker="1")).event())
        by_number = _pcm(await _until(client, "audio-stop"))
    assert by_name == by_number == await grpc_pcm(app, "Hello.", voice=TINY, speaker="bob")


async def test_streaming_speaks_a_sentence_before_the_stop(app):
    first, rest = TWO_SENTENCES.split(". ", 1)
    async with _client(app) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name=STILL)).event())
        for word in (first + ". " + rest[:1]).split(" "):
            await client.write_event(SynthesizeChunk(text=word + " ").event())
        early = await _until(client, "audio-chunk")  # before synthesize-stop is sent
        await client.write_event(Synthesize(text=TWO_SENTENCES).event())  # Home Assistant's copy: ignored
        await client.write_event(SynthesizeChunk(text=rest[1:]).event())
        await client.write_event(SynthesizeStop().event())
        events = early + await _until(client, "synthesize-stopped")
        await client.write_event(Ping(text="still there?").event())
        pong = await client.read_event()
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert types.count("audio-start") == 1 and types.count("audio-stop") == 1
    assert Pong.is_type(pong.type) and pong.data["text"] == "still there?"
    # Streamed words (each with its space) speak what the whole text speaks.
    assert _pcm(events) == await grpc_pcm(app, " ".join((first + ". " + rest[:1]).split(" ")) + " " + rest[1:])


async def test_a_bad_request_is_an_error_event(app):
    async with _client(app) as client:
        await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event())
        event = await client.read_event()
        assert Error.is_type(event.type)
        error = Error.from_event(event)
        assert error.code == "not_found" and error.text.startswith("voice: unknown voice 'nobody'")
        assert await client.read_event() is None  # and the connection closes


def _event_bytes(header: dict, data: bytes = b"", payload: bytes = b"") -> bytes:
    return json.dumps(header).encode() + b"\n" + data + payload


@pytest.mark.parametrize("raw, field", [
    (b"this is not json\n", "header"),
    (b"[1, 2, 3]\n", "header"),
    (_event_bytes({"data": {}}), "type"),
    (_event_bytes({"type": "synthesize", "data_length": 10 ** 9}), "data_length"),
    (_event_bytes({"type": "synthesize", "payload_length": 10 ** 9}), "payload_length"),
    (_event_bytes({"type": "synthesize", "payload_length": -1}), "payload_length"),
    (_event_bytes({"type": "synthesize", "data_length": 5}, b"{bad}"), "data"),
    (b"{" + b" " * (70 * 1024) + b"}\n", "event"),
    (_event_bytes({"type": "synthesize-chunk", "data": {"text": "x"}}), "type"),
    (_event_bytes({"type": "synthesize", "data": {"text": 5}}), "text"),
])
async def test_garbage_and_oversize_events_get_an_error_and_the_connection_closes(app, raw, field):
    reader, writer = await asyncio.open_connection("127.0.0.1", app.doors.wyoming_port)
    try:
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), _TIMEOUT)
        header = json.loads(line)
        assert header["type"] == "error"
        data = json.loads(await reader.readexactly(header["data_length"]))
        assert data["text"].startswith(field + ":") and data["code"] == "invalid_argument"
        assert await asyncio.wait_for(reader.read(), _TIMEOUT) == b""  # closed
    finally:
        writer.close()
    await idle(app)
    async with _client(app) as client:  # the server is fine
        await client.write_event(Describe().event())
        assert Info.is_type((await client.read_event()).type)


async def test_a_text_over_max_chars_is_an_error(app):
    async with _client(app) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="word " * (app.settings.max_chars // 5)).event())
        await client.write_event(SynthesizeChunk(text="one more").event())
        events = await _until(client, "error")
    assert "the limit is" in Error.from_event(events[-1]).text
    await idle(app)


async def test_hanging_up_mid_stream_stops_the_inferences(app):
    before = app.metrics.count("wyoming:synthesize", "CANCELLED")
    async with _client(app) as client:
        await client.write_event(Synthesize(text=TWO_SENTENCES * 20).event())
        await _until(client, "audio-chunk")
    await idle(app)
    assert app.metrics.count("wyoming:synthesize", "CANCELLED") == before + 1
    assert app.metrics.count(door="wyoming", status="INTERNAL") == 0
