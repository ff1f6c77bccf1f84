"""Calls are counted per door in Stats, in Prometheus and in speakstream-stats' table."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import grpc
import openai
import pytest
import websockets
from doors import door_settings, doors_server, http_url, idle
from prometheus_client.parser import text_string_to_metric_families
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from clients.stats import format_table
from speakstream.v1 import stats_pb2, stats_pb2_grpc
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    async with doors_server(door_settings(tmp_path_factory.mktemp("voices"), metrics_port=0)) as app:
        yield app


async def _one_call_per_door(app) -> None:
    async with grpc.aio.insecure_channel(app.address) as channel:
        await pb_grpc.SynthesizerStub(channel).Synthesize(pb.SynthesizeRequest(text="Hi."), timeout=60)
    client = openai.AsyncOpenAI(base_url=http_url(app) + "/v1", api_key="x", max_retries=0, timeout=60)
    await client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="pcm")
    async with websockets.connect(http_url(app, "ws") + "/v1/audio/live") as ws:
        await ws.send(json.dumps({"type": "start"}))
        await ws.send(json.dumps({"type": "text", "text": "Hi."}))
        await ws.send(json.dumps({"type": "close"}))
        async for _ in ws:
            pass
    async with AsyncTcpClient("127.0.0.1", app.doors.wyoming_port) as wyoming:
        await wyoming.write_event(Synthesize(text="Hi.").event())
        while (await wyoming.read_event()).type != "audio-stop":
            pass
    await idle(app)


async def test_each_door_counts_its_own_calls_everywhere(app):
    await _one_call_per_door(app)
    async with grpc.aio.insecure_channel(app.address) as channel:
        snapshot = (await stats_pb2_grpc.StatsStub(channel).GetStats(stats_pb2.GetStatsRequest())).snapshot
    assert dict(snapshot.requests.by_door) == {"grpc": 1, "http": 1, "ws": 1, "wyoming": 1}
    doors = {r.method: r.door for r in snapshot.requests.rpcs}
    assert doors["http:/v1/audio/speech"] == "http" and doors["ws:/v1/audio/live"] == "ws"
    assert doors["wyoming:synthesize"] == "wyoming" and doors["Synthesize"] == "grpc"
    assert snapshot.latency.time_to_first_audio.count == 4  # every door's first audio, in one histogram

    url = f"http://127.0.0.1:{app.metrics_port}/metrics"
    scrape = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=30).read().decode())
    samples = {(s.labels["door"], s.labels["code"]): s.value for family in text_string_to_metric_families(scrape)
               for s in family.samples if s.name == "speakstream_door_requests_total"}
    assert samples == {("grpc", "OK"): 1, ("http", "OK"): 1, ("ws", "OK"): 1, ("wyoming", "OK"): 1}

    table = format_table(snapshot)
    for door in ("grpc", "http", "ws", "wyoming"):
        assert f"  door {door:<13} total 1" in table
    assert table.index("door http") < table.index("http:/v1/audio/speech") < table.index("door ws")
