"""engine section of `make bench`: the windowed decoder engine against the whole-graph floor.

- windows: the audio of every bench text decoded in the server's windows
  (deterministic settings) against the same segments run whole: SNR;
- greeting: time to first audio for a two-sentence greeting, against the floor
  for its first sentence run whole (the encoder is most of the cost there);
- after a cancel: TTFA of a call made right after a stream was cancelled
  mid-way, against idle TTFA (a cancelled call must free the worker at once);
- words: throughput at concurrency 4 with word timestamps against none;
- whole graph: the same server with --no-decoder-windows (the first
  generation's engine), idle TTFA and throughput at concurrency 8, side by side;
- 2-D convolutions: bare ONNX Runtime's parallel throughput on the voice's
  graph as the server rewrites it (server/conv2d.py) against the voice's own
  graph (the floor), so a ratio above 1 can be told apart from the rewrite.

Rounds interleave the variants; figures are medians over rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import numpy as np

from bench.floor import Floor, single_thread_session
from bench.server_process import ServerProcess
from bench.texts import TEXTS
from clients.channel import Connection, open_aio_channel
from server import graph
from server.config import Settings
from server.engine import plan_windows
from server.frontend import Frontend
from server.inference import Scales
from server.pool import VoiceSessions
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

GREETING = "Hello there. How can I help you today?"
_TIMEOUT_S = 120
_DETERMINISTIC = Scales(noise_scale=0.0, length_scale=1.0, noise_w=0.0)


def window_snr(floor: Floor) -> dict:
    """SNR (dB) of each bench text decoded in the server's windows against its segments run whole."""
    settings = Settings()
    split = VoiceSessions(floor.voice, settings)
    frontend = Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes, None,
                        settings.first_clause_cut)
    out = {}
    for name, text in TEXTS.items():
        worst = float("inf")
        for n, segment in enumerate(frontend.segments(text, floor.voice.config)):
            reference = floor.default.run(None, _feeds(segment.ids))[0].reshape(-1)
            encoded = split.encode(segment.ids, _DETERMINISTIC, 0)
            first = settings.first_window_frames if n == 0 else settings.window_frames
            windows = plan_windows(encoded.frames, first, settings.window_frames)
            audio = np.concatenate([split.decode(encoded, a, b) for a, b in windows])
            noise = float(np.sum((audio.astype(np.float64) - reference) ** 2))
            power = float(np.sum(reference.astype(np.float64) ** 2))
            snr = float("inf") if noise == 0 else 10 * np.log10(power / noise)
            worst = min(worst, snr)
        out[name] = worst
    return out


def _feeds(ids) -> dict:
    return {"input": np.asarray(ids, np.int64)[None, :], "input_lengths": np.array([len(ids)], np.int64),
            "scales": _DETERMINISTIC.as_array()}


async def _ttfa(stub, request: pb.SynthesizeRequest) -> tuple[float, float, float]:
    """(time to first audio, total, audio seconds) of one stream."""
    start = time.perf_counter()
    first, samples, rate = None, 0, 22050
    async for chunk in stub.SynthesizeStream(request, timeout=_TIMEOUT_S):
        if first is None and chunk.num_samples:
            first = time.perf_counter() - start
        samples += chunk.num_samples
        rate = chunk.sample_rate_hz
    if first is None:
        raise RuntimeError("SynthesizeStream answered no audio")
    return first, time.perf_counter() - start, samples / rate


async def _after_cancel(stub) -> float:
    """TTFA of a medium call made right after a long stream is cancelled mid-way."""
    call = stub.SynthesizeStream(pb.SynthesizeRequest(text=TEXTS["long"]), timeout=_TIMEOUT_S)
    for _ in range(3):
        await call.read()
    call.cancel()
    return (await _ttfa(stub, pb.SynthesizeRequest(text=TEXTS["medium"])))[0]


async def _throughput(stub, concurrency: int, seconds: float, timestamps: pb.Timestamps) -> float:
    """Audio seconds per second with `concurrency` clients looping over the bench texts."""
    texts, stop, audio = list(TEXTS.values()), time.perf_counter() + seconds, []

    async def client(i: int) -> None:
        n = i
        while time.perf_counter() < stop:
            request = pb.SynthesizeRequest(text=texts[n % len(texts)], timestamps=timestamps)
            audio.append((await _ttfa(stub, request))[2])
            n += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return sum(audio) / (time.perf_counter() - start)


async def _windowed_rounds(address: str, rounds: int, seconds: float) -> dict:
    out: dict = {"greeting": [], "medium": [], "after_cancel": [], "none_c4": [], "words_c4": []}
    async with open_aio_channel(Connection(address)) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        await _ttfa(stub, pb.SynthesizeRequest(text=GREETING))
        for _ in range(rounds):
            for _ in range(5):
                out["greeting"].append((await _ttfa(stub, pb.SynthesizeRequest(text=GREETING)))[0])
                out["medium"].append((await _ttfa(stub, pb.SynthesizeRequest(text=TEXTS["medium"])))[0])
                out["after_cancel"].append(await _after_cancel(stub))
            out["none_c4"].append(await _throughput(stub, 4, seconds, pb.TIMESTAMPS_UNSPECIFIED))
            out["words_c4"].append(await _throughput(stub, 4, seconds, pb.TIMESTAMPS_WORDS))
    return {key: statistics.median(values) for key, values in out.items()}


async def _whole_graph(address: str, rounds: int, seconds: float) -> dict:
    out: dict = {name: [] for name in TEXTS} | {"c8": []}
    async with open_aio_channel(Connection(address)) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        await _ttfa(stub, pb.SynthesizeRequest(text=GREETING))
        for _ in range(rounds):
            for name, text in TEXTS.items():
                out[name].append((await _ttfa(stub, pb.SynthesizeRequest(text=text)))[0])
            out["c8"].append(await _throughput(stub, 8, seconds, pb.TIMESTAMPS_UNSPECIFIED))
    return {key: statistics.median(values) for key, values in out.items()}


def conv2d_gain(floor: Floor, rounds: int, seconds: float) -> dict:
    """Bare ONNX Runtime, the floor's parallel runs (two callers, medium text) on the voice's
    own graph and on its 2-D rewrite, in interleaved rounds: medians in audio-s per s."""
    rewritten = graph.load(str(floor.voice.model_path), split_decoder=False, cache_dir=Settings().graph_cache)
    assert isinstance(rewritten, graph.WholeGraph)  # split_decoder=False
    session = single_thread_session(rewritten.model)
    ids = [s.ids for s in floor.segments(TEXTS["medium"])]
    own, conv2d = [], []
    for _ in range(rounds):
        own.append(floor.parallel(ids, 2, seconds)["audio_s_per_s"])
        conv2d.append(floor.parallel(ids, 2, seconds, session)["audio_s_per_s"])
    return {"own": statistics.median(own), "conv2d": statistics.median(conv2d),
            "ratio": statistics.median(conv2d) / statistics.median(own)}


def run(server_args: tuple = (), rounds: int = 3, seconds: float = 10.0) -> dict:
    """The section's figures (see the module docstring)."""
    floor = Floor()
    greeting_floor = floor.sequential(floor.first_sentence_ids(GREETING))
    snr = window_snr(floor)
    print("  bare ONNX Runtime: the voice's own graph and its 2-D rewrite ...", file=sys.stderr)
    conv2d = conv2d_gain(floor, rounds, seconds)
    del floor
    print("  windowed engine ...", file=sys.stderr)
    with ServerProcess(list(server_args)) as server:
        windowed = asyncio.run(_windowed_rounds(server.address, rounds, seconds))
    print("  whole-graph engine (--no-decoder-windows) ...", file=sys.stderr)
    with ServerProcess([*server_args, "--no-decoder-windows"]) as server:
        whole = asyncio.run(_whole_graph(server.address, rounds, seconds))
    return {
        "window_snr_db": snr,
        "greeting": {"ttfa_p50_s": windowed["greeting"], "floor_first_sentence_s": greeting_floor,
                     "ratio": windowed["greeting"] / greeting_floor},
        "after_cancel": {"ttfa_p50_s": windowed["after_cancel"], "idle_ttfa_p50_s": windowed["medium"],
                         "ratio": windowed["after_cancel"] / windowed["medium"]},
        "words": {"none_c4": windowed["none_c4"], "words_c4": windowed["words_c4"],
                  "cost_pct": 100 * (1 - windowed["words_c4"] / windowed["none_c4"])},
        "whole_graph": whole,
        "conv2d_floor": conv2d,
    }


def print_table(r: dict) -> None:
    """A human summary of the section."""
    print("\nengine: windows vs whole segments, SNR (dB, worst segment): "
          + ", ".join(f"{k} {v:.1f}" for k, v in r["window_snr_db"].items()))
    g, c, w = r["greeting"], r["after_cancel"], r["words"]
    print(f"greeting TTFA p50 {g['ttfa_p50_s']*1000:.0f} ms vs floor of its first sentence "
          f"{g['floor_first_sentence_s']*1000:.0f} ms: {g['ratio']:.2f}x")
    print(f"TTFA right after a cancelled stream {c['ttfa_p50_s']*1000:.0f} ms vs idle "
          f"{c['idle_ttfa_p50_s']*1000:.0f} ms: {c['ratio']:.2f}x")
    print(f"throughput at concurrency 4: {w['none_c4']:.1f} audio-s/s without timestamps, "
          f"{w['words_c4']:.1f} with WORDS ({w['cost_pct']:+.1f}% cost)")
    wg = r["whole_graph"]
    print("whole-graph engine (--no-decoder-windows): TTFA p50 "
          + ", ".join(f"{k} {wg[k]*1000:.0f} ms" for k in TEXTS) + f"; concurrency 8 {wg['c8']:.1f} audio-s/s")
    cf = r["conv2d_floor"]
    print(f"bare ONNX Runtime, two callers: voice's own graph {cf['own']:.1f} audio-s/s, its 2-D rewrite "
          f"{cf['conv2d']:.1f} ({cf['ratio']:.2f}x)")
