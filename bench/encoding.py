"""The `encoding` section of `make bench`: CPU per audio second of each encoding and of resampling.

The cost of each output encoding and of resampling (to 8, 16, 44.1 and
48 kHz), per audio second, next to inference time per audio second measured
in the same process on the same text: the server's own frontend, sessions
(VoiceSessions.run), encoders and resamplers, fed segment by segment as a
stream is. Arms are interleaved in a shuffled order every
repeat and medians are reported, so a noisy neighbour hits every arm alike.
"""

from __future__ import annotations

import functools
import random
import statistics
import time
from typing import Any, Callable

import numpy as np

from bench.texts import TEXTS
from server.config import Settings
from server.encoding import Encoding, output_rate, stream_encoder
from server.frontend import Frontend
from server.pool import Scales, VoiceSessions
from server.resample import QUALITY, StreamResampler, resample
from server.voices import bundled_voice

TEXT = TEXTS["medium"]
RATES = (8000, 16000, 44100, 48000)


def _pieces() -> tuple[Callable[[], list], list[np.ndarray], int]:
    """Inference of the text's segments (to time), their audio (deterministic) and the voice's rate."""
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
    encoder = stream_encoder(encoding, rate)
    for piece in pieces:
        encoder.encode(piece)
    encoder.finish()


def _resample_stream(in_rate: int, out_rate: int, quality: str, pieces: list[np.ndarray]) -> None:
    resampler = StreamResampler(in_rate, out_rate, quality)
    for i, piece in enumerate(pieces):
        resampler.process(piece, last=i == len(pieces) - 1)


def bench_encoding(repeats: int = 15) -> dict:
    """Milliseconds per audio second, wall and CPU: inference, each encoding, resampling (HQ and VHQ).

    Inference runs on all cores (intra-op threads), encoders and resamplers on
    one: CPU time is the cost that competes with inference for the machine,
    wall time what one call waits. Both are reported; the target is on CPU.
    """
    infer, pieces, native = _pieces()
    audio_s = sum(p.size for p in pieces) / native
    arms: dict[str, Callable[[], object]] = {"inference": infer}
    opus_rate = output_rate(Encoding.OGG_OPUS, native)
    opus_pieces = [resample(p, native, opus_rate) for p in pieces]  # Opus gets audio at its own rate
    for encoding in Encoding:
        source = opus_pieces if encoding is Encoding.OGG_OPUS else pieces
        rate = opus_rate if encoding is Encoding.OGG_OPUS else native
        arms[f"encode {encoding.name}"] = functools.partial(_encode_stream, encoding, rate, source)
    for rate in RATES:
        for quality in (QUALITY, "VHQ"):
            arms[f"resample {rate} {quality}"] = functools.partial(_resample_stream, native, rate, quality, pieces)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    order = list(arms)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            times[name].append(_timed(arms[name]))
    out: dict[str, Any] = {"audio_s": audio_s, "repeats": repeats}
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
    """A human summary of the encoding figures."""
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

