"""The `encoding` and `voices` sections of `make bench`.

encoding: the cost of each output encoding and of resampling (to 8, 16,
44.1 and 48 kHz), per audio second, next to inference time per audio second
measured in the same process on the same text: the server's own frontend,
sessions (VoiceSessions.run), encoders and resamplers, fed segment by
segment as a stream is. Arms are interleaved in a shuffled order every
repeat and medians are reported, so a noisy neighbour hits every arm alike.

voices: a server with two voices (the bundled model under a second name),
one client streaming voice A back to back; time to first audio (TTFA) of a
voice-B request then, next to a voice-A request under the same load and to
voice B idle.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = ("Your order has shipped and should arrive on Thursday. "
        "You can track the parcel from the link in your confirmation email. "
        "Is there anything else I can do for you?")
RATES = (8000, 16000, 44100, 48000)


def _pieces() -> tuple[list, list[np.ndarray], float, int]:
    """The text's segments, their audio (deterministic), and the voice's sessions and rate."""
    from server.config import Settings
    from server.frontend import Frontend
    from server.pool import Scales, VoiceSessions
    from server.voices import bundled_voice

    voice, settings = bundled_voice(), Settings()
    sessions = VoiceSessions(voice, settings)
    segments = list(Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes)
                    .segments(TEXT, voice.config))
    scales = Scales(0.0, voice.config.length_scale, 0.0)
    audio = [sessions.run(s.ids, scales, 0) for s in segments]
    return (lambda: [sessions.run(s.ids, scales, 0) for s in segments]), audio, voice.config.sample_rate


def _timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process: every ORT thread counts)."""
    start, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - start, time.process_time() - cpu


def _encode_stream(encoding, rate: int, pieces: list[np.ndarray]) -> None:
    from server.encoding import stream_encoder

    encoder = stream_encoder(encoding, rate)
    for piece in pieces:
        encoder.encode(piece)
    encoder.finish()


def _resample_stream(in_rate: int, out_rate: int, quality: str, pieces: list[np.ndarray]) -> None:
    from server.resample import StreamResampler

    resampler = StreamResampler(in_rate, out_rate, quality)
    for i, piece in enumerate(pieces):
        resampler.process(piece, last=i == len(pieces) - 1)


def bench_encoding(repeats: int = 15) -> dict:
    """Milliseconds per audio second, wall and CPU: inference, each encoding, resampling (HQ and VHQ).

    Inference runs on all cores (intra-op threads), encoders and resamplers on
    one: CPU time is the cost that competes with inference for the machine,
    wall time what one call waits. Both are reported; the target is on CPU.
    """
    from server.encoding import Encoding, output_rate
    from server.resample import QUALITY, resample

    infer, pieces, native = _pieces()
    audio_s = sum(p.size for p in pieces) / native
    arms = {"inference": infer}
    opus_rate = output_rate(Encoding.OGG_OPUS, native)
    opus_pieces = [resample(p, native, opus_rate) for p in pieces]  # Opus gets audio at its own rate
    for encoding in Encoding:
        source = opus_pieces if encoding is Encoding.OGG_OPUS else pieces
        rate = opus_rate if encoding is Encoding.OGG_OPUS else native
        arms[f"encode {encoding.name}"] = lambda e=encoding, s=source, r=rate: _encode_stream(e, r, s)
    for rate in RATES:
        for quality in (QUALITY, "VHQ"):
            arms[f"resample {rate} {quality}"] = (
                lambda r=rate, q=quality: _resample_stream(native, r, q, pieces))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    order = list(arms)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            times[name].append(_timed(arms[name]))
    out = {"audio_s": audio_s, "repeats": repeats}
    for clock, index in (("wall", 0), ("cpu", 1)):
        ms = {name: 1000 * statistics.median(t[index] for t in ts) / audio_s for name, ts in times.items()}
        inference = ms.pop("inference")
        encodings = {k.split(" ", 1)[1]: v for k, v in ms.items() if k.startswith("encode ")}
        resampling = {k.split(" ", 1)[1]: v for k, v in ms.items() if k.startswith("resample ")}
        together = sum(encodings.values()) + sum(v for k, v in resampling.items() if k.endswith(QUALITY))
        out[clock] = {"inference_ms_per_audio_s": inference, "encoding_ms_per_audio_s": encodings,
                      "resampling_ms_per_audio_s": resampling,
                      "all_encodings_and_hq_resampling_ms_per_audio_s": together,
                      "all_vs_inference_pct": 100 * together / inference}
    return out


def print_encoding(r: dict) -> None:
    cpu, wall = r["cpu"], r["wall"]
    print(f"\nencoding and resampling, ms per audio second ({r['audio_s']:.1f} s of audio, "
          f"medians of {r['repeats']} interleaved repeats)")
    print(f"  {'':22} {'CPU ms':>8} {'of inf.':>8} {'wall ms':>8} {'of inf.':>8}")
    rows = [("inference", cpu["inference_ms_per_audio_s"], wall["inference_ms_per_audio_s"])]
    rows += [("encode " + k, v, wall["encoding_ms_per_audio_s"][k]) for k, v in cpu["encoding_ms_per_audio_s"].items()]
    rows += [("resample " + k, v, wall["resampling_ms_per_audio_s"][k])
             for k, v in cpu["resampling_ms_per_audio_s"].items()]
    for name, c, w in rows:
        print(f"  {name:22} {c:8.3f} {100 * c / cpu['inference_ms_per_audio_s']:7.2f}% "
              f"{w:8.3f} {100 * w / wall['inference_ms_per_audio_s']:7.2f}%")
    print(f"  every encoding + every HQ resampling: CPU {cpu['all_encodings_and_hq_resampling_ms_per_audio_s']:.2f} ms "
          f"= {cpu['all_vs_inference_pct']:.1f}% of inference CPU (target < 10%); wall "
          f"{wall['all_vs_inference_pct']:.1f}% of inference wall time")


# ---------------------------------------------------------------- voices


async def _ttfa(stub, voice: str, text: str) -> float:
    from speakstream.v1 import synthesizer_pb2 as pb

    start = time.perf_counter()
    async for _ in stub.SynthesizeStream(pb.SynthesizeRequest(text=text, voice=voice), timeout=120):
        return time.perf_counter() - start
    raise RuntimeError("no audio")


async def _voices_run(address: str, repeats: int) -> dict:
    import grpc

    from speakstream.v1 import synthesizer_pb2 as pb
    from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

    short = "Hello there, how can I help you today?"
    long = " ".join([TEXT] * 3)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        first_b = await _ttfa(stub, "voice-b", short)  # includes loading voice B's model
        idle_b = [await _ttfa(stub, "voice-b", short) for _ in range(repeats)]
        stop = asyncio.Event()

        async def voice_a_streams():
            while not stop.is_set():
                async for _ in stub.SynthesizeStream(pb.SynthesizeRequest(text=long), timeout=120):
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
    from clients.bench_server import ServerProcess
    from server.voices import bundled_voice

    model = bundled_voice().model_path
    with tempfile.TemporaryDirectory() as directory:
        shutil.copyfile(model, Path(directory) / "voice-b.onnx")
        shutil.copyfile(model.with_name(model.name + ".json"), Path(directory) / "voice-b.onnx.json")
        with ServerProcess(["--voice-dir", directory, *server_args]) as server:
            result = asyncio.run(_voices_run(server.address, repeats))
    result["server_args"] = server_args
    return result


def print_voices(r: dict) -> None:
    print(f"\nvoices (server {' '.join(r['server_args']) or 'defaults'}): voice B's first call "
          f"{r['first_call_voice_b_s'] * 1000:.0f} ms (loads its model), then TTFA p50 idle "
          f"{r['idle_voice_b_ttfa_p50_s'] * 1000:.0f} ms; while voice A streams: voice B "
          f"{r['busy_a_voice_b_ttfa_p50_s'] * 1000:.0f} ms, voice A {r['busy_a_voice_a_ttfa_p50_s'] * 1000:.0f} ms")
