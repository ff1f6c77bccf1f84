"""doors section of `make bench`: the HTTP and Wyoming doors against gRPC and the floor.

Two servers run side by side, idle but for the call being measured: one
with --http-port and --wyoming-port, one without. Each round, in random
order, measures:

- time to the first audio byte of POST /v1/audio/speech (stream_format
  "audio", response_format "pcm", 24 kHz) on a kept-alive HTTP/1.1
  connection, and of gRPC SynthesizeStream (LINEAR16 at 24 kHz, the same
  output) on the same server: the HTTP door's cost over gRPC's (target
  <= 1.2x);
- Wyoming streaming: synthesize-start, then the first sentence and the
  first letter of the next in one synthesize-chunk; from sending that chunk
  (the letter makes the sentence certain) to the first audio-chunk, against
  the floor for the sentence's first segment (bare ONNX Runtime, the
  server's phoneme ids, bench/floor.py; target <= 1.25x);
- gRPC SynthesizeStream on the server without doors: with the doors on
  and idle, gRPC must not be slower by more than the noise (the spread of
  the doors-off figures between the two halves of the rounds).

Default noise scales, so the audio cache is not involved. Medians over rounds.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

import grpc
from wyoming.client import AsyncTcpClient
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop

from bench.floor import Floor
from bench.server_process import ServerProcess
from bench.texts import TEXTS
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

RATE = 24_000
TEXT = TEXTS["medium"]
_TIMEOUT_S = 60


async def _http_first_byte_s(address: str, text: str) -> float:
    """Seconds from sending POST /v1/audio/speech to its first audio byte, on a connection opened
    beforehand (as a pooled client has one; raw HTTP/1.1, the lightest client there is)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm",
                       "stream_format": "audio"}).encode()
    try:
        start = time.perf_counter()
        writer.write(b"POST /v1/audio/speech HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        status = await reader.readline()
        assert status.split()[1] == b"200", status
        while await reader.readline() != b"\r\n":
            pass
        first = None
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            await reader.readexactly(size + 2)
            first = first or time.perf_counter()
        if first is None:
            raise RuntimeError("POST /v1/audio/speech answered no audio")
        return first - start
    finally:
        writer.close()


async def _grpc_first_chunk_s(stub, text: str) -> float:
    request = pb.SynthesizeRequest(text=text, encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hz=RATE)
    start = time.perf_counter()
    first = None
    async for chunk in stub.SynthesizeStream(request, timeout=_TIMEOUT_S):
        if chunk.num_samples and first is None:
            first = time.perf_counter()
    if first is None:
        raise RuntimeError("SynthesizeStream answered no audio")
    return first - start


async def _wyoming_first_audio_s(address: str, sentence: str, rest: str) -> float:
    host, port = address.rsplit(":", 1)
    async with AsyncTcpClient(host, int(port)) as client:
        await client.write_event(SynthesizeStart().event())
        start = time.perf_counter()
        await client.write_event(SynthesizeChunk(text=sentence + " " + rest[0]).event())
        while True:
            event = await asyncio.wait_for(client.read_event(), _TIMEOUT_S)
            if event.type == "audio-chunk":
                first = time.perf_counter() - start
                break
        await client.write_event(SynthesizeChunk(text=rest[1:]).event())
        await client.write_event(SynthesizeStop().event())
        while (await asyncio.wait_for(client.read_event(), _TIMEOUT_S)).type != "synthesize-stopped":
            pass
    return first


async def _rounds(doors: ServerProcess, plain: ServerProcess, rounds: int, sentence: str, rest: str) -> dict:
    async with grpc.aio.insecure_channel(doors.address) as on_channel, \
            grpc.aio.insecure_channel(plain.address) as off_channel:
        on, off = pb_grpc.SynthesizerStub(on_channel), pb_grpc.SynthesizerStub(off_channel)
        arms = {
            "http_s": lambda: _http_first_byte_s(doors.doors["http"], TEXT),
            "grpc_doors_on_s": lambda: _grpc_first_chunk_s(on, TEXT),
            "grpc_doors_off_s": lambda: _grpc_first_chunk_s(off, TEXT),
            "wyoming_s": lambda: _wyoming_first_audio_s(doors.doors["wyoming"], sentence, rest),
        }
        for arm in arms.values():  # warm: first calls pay one-off costs (connections, first encodes)
            await arm()
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(rounds):
            order = list(arms)
            random.shuffle(order)
            for name in order:
                times[name].append(await arms[name]())
    return times


def run(server_args: list[str], rounds: int = 15) -> dict:
    """Start both servers, measure, and return the figures (seconds) with their ratios."""
    floor = Floor()
    sentence, rest = TEXT.split(". ", 1)
    sentence += "."
    first_segment = floor.segments(sentence)[0]
    floor_s = floor.sequential(first_segment.ids)
    del floor
    with ServerProcess([*server_args, "--http-port", "0", "--wyoming-port", "0"]) as doors, \
            ServerProcess(server_args) as plain:
        times = asyncio.run(_rounds(doors, plain, rounds, sentence, rest))
    med = {name: statistics.median(values) for name, values in times.items()}
    off = times["grpc_doors_off_s"]
    half = len(off) // 2
    noise = abs(statistics.median(off[:half]) - statistics.median(off[half:])) if half else 0.0
    return {
        "rounds": rounds, "text": TEXT, "first_sentence": sentence,
        "floor_first_segment_s": floor_s, "floor_first_segment_phonemes": len(first_segment.phonemes),
        "median_s": med, "all_s": times,
        "http_vs_grpc": med["http_s"] / med["grpc_doors_on_s"],
        "wyoming_vs_floor": med["wyoming_s"] / floor_s,
        "grpc_doors_on_minus_off_s": med["grpc_doors_on_s"] - med["grpc_doors_off_s"],
        "grpc_noise_s": noise,
    }


def print_table(r: dict) -> None:
    """A human summary of the doors figures."""
    m = r["median_s"]
    print(f"\ndoors: time to first audio, medians of {r['rounds']} interleaved rounds")
    print(f"  POST /v1/audio/speech (pcm, stream_format audio) {1000 * m['http_s']:7.1f} ms")
    print(f"  gRPC SynthesizeStream, same server              {1000 * m['grpc_doors_on_s']:7.1f} ms"
          f"   HTTP / gRPC = {r['http_vs_grpc']:.2f} (target <= 1.2)")
    print(f"  Wyoming streaming, first sentence                {1000 * m['wyoming_s']:7.1f} ms"
          f"   / floor {1000 * r['floor_first_segment_s']:.1f} ms = {r['wyoming_vs_floor']:.2f} (target <= 1.25)")
    print(f"  gRPC SynthesizeStream, server without doors      {1000 * m['grpc_doors_off_s']:7.1f} ms"
          f"   doors on - off = {1000 * r['grpc_doors_on_minus_off_s']:+.1f} ms "
          f"(noise {1000 * r['grpc_noise_s']:.1f} ms)")
