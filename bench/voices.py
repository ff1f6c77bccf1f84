"""The `voices` section of `make bench`: time to first audio of voice B while voice A streams.

A server with two voices (the bundled model under a second name), one client
streaming voice A back to back; time to first audio (TTFA) of a voice-B
request then, next to a voice-A request under the same load and to voice B idle.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.server_process import ServerProcess
from bench.texts import TEXTS
from server.voices import bundled_voice
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT_S = 120


async def _ttfa(stub, voice: str, text: str) -> float:
    start = time.perf_counter()
    async for _ in stub.SynthesizeStream(pb.SynthesizeRequest(text=text, voice=voice), timeout=_TIMEOUT_S):
        return time.perf_counter() - start
    raise RuntimeError("no audio")


async def _voices_run(address: str, repeats: int) -> dict:
    short = TEXTS["short"]
    long = " ".join([TEXTS["medium"]] * 3)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        first_b = await _ttfa(stub, "voice-b", short)  # includes loading voice B's model
        idle_b = [await _ttfa(stub, "voice-b", short) for _ in range(repeats)]
        stop = asyncio.Event()

        async def voice_a_streams():
            while not stop.is_set():
                async for _ in stub.SynthesizeStream(pb.SynthesizeRequest(text=long), timeout=_TIMEOUT_S):
                    pass

        busy = asyncio.ensure_future(voice_a_streams())
        await _ttfa(stub, "", short)  # A is streaming from here on
        b_busy, a_busy = [], []
        for _ in range(repeats):  # interleaved: B then A under the same load
            b_busy.append(await _ttfa(stub, "voice-b", short))
            a_busy.append(await _ttfa(stub, "", short))
        stop.set()
        await busy
    return {"first_call_voice_b_s": first_b, "idle_voice_b_ttfa_p50_s": statistics.median(idle_b),
            "busy_a_voice_b_ttfa_p50_s": statistics.median(b_busy),
            "busy_a_voice_a_ttfa_p50_s": statistics.median(a_busy), "repeats": repeats}


def bench_voices(server_args: list[str], repeats: int = 15) -> dict:
    """TTFA of voice B while voice A streams (server with the bundled model also named voice-b)."""
    model = bundled_voice().model_path
    with tempfile.TemporaryDirectory() as directory:
        shutil.copyfile(model, Path(directory) / "voice-b.onnx")
        shutil.copyfile(model.with_name(model.name + ".json"), Path(directory) / "voice-b.onnx.json")
        with ServerProcess(["--voice-dir", directory, *server_args]) as server:
            result = asyncio.run(_voices_run(server.address, repeats))
    result["server_args"] = server_args
    return result


def print_voices(r: dict) -> None:
    """A human summary of the voices figures."""
    print(f"\nvoices (server {' '.join(r['server_args']) or 'defaults'}): voice B's first call "
          f"{r['first_call_voice_b_s'] * 1000:.0f} ms (loads its model), then TTFA p50 idle "
          f"{r['idle_voice_b_ttfa_p50_s'] * 1000:.0f} ms; while voice A streams: voice B "
          f"{r['busy_a_voice_b_ttfa_p50_s'] * 1000:.0f} ms, voice A {r['busy_a_voice_a_ttfa_p50_s'] * 1000:.0f} ms")
