"""Benchmark of speakstream-say's playback: time to first sound, CPU, and the prebuffer.

Everything runs for real: a server started in this process (server.app.start),
speakstream-say as a subprocess, its audio through PyAudio -> PortAudio ->
ALSA into a paced `file` device (bench.paced_device), so the callback runs
at the pace of a sound card. Figures are medians over the repeats.

- first sound: from the first chunk received to the first frame handed to
  PortAudio (the callback's first call with audio), from the client's
  --stats-json; the issue's target is <= prebuffer + 5 ms. Measured with the
  server's default chunks and with 20 ms chunks (where the prebuffer, not one
  big chunk, decides the start).
- CPU: the client process's CPU time (every thread: receiver, feeder,
  PortAudio's callback) per second of audio, over a ~10 s text; both for the
  call and playback alone and for the whole process with Python's start-up.
- prebuffer: chunk arrival times recorded at 1, 4 and 8 streams at once,
  with the server's chunks and with 20 ms chunks, replayed through the
  player's jitter-buffer policy for each prebuffer: underruns and the delay
  the prebuffer adds to the start.

    python -m bench.playback [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import grpc

from bench.paced_device import PacedFileDevice
from bench.texts import TEXTS
from clients.player import DEFAULT_MAX_PREBUFFER_MS, DEFAULT_PREBUFFER_MS
from server.app import start
from server.config import Settings
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

SHORT_TEXT = TEXTS["short"]
# About 12 s of speech: several sentences, the first with a clause boundary.
TEN_SECOND_TEXT = (
    "Well, the results are in. The old lighthouse stood at the edge of the cliff, and every night "
    "its keeper climbed the spiral stairs to light the lamp. Ships far out at sea saw the beam and "
    "knew where the rocks were.")
TRACE_TEXTS = (
    SHORT_TEXT,
    TEXTS["medium"],
    TEN_SECOND_TEXT,
    "Yes, of course. Press one for sales, two for support, or stay on the line to speak with someone.",
)
PREBUFFERS_MS = (0, 50, 100, 200, 400, 800, 1600, 3200)
# (streams at once, chunk_ms) of the arrival traces: idle, loaded, overloaded
# (8 streams on 2 cores), and with 20 ms chunks, where a prebuffer spans chunks.
TRACE_LOADS = ((1, 0), (4, 0), (8, 0), (1, 20), (4, 20))
TARGET_MARGIN_MS = 5.0  # the issue: first frame within prebuffer + 5 ms of the first chunk
_CALL_TIMEOUT_S = 120


def run(repeats: int = 5, trace_repeats: int = 3) -> dict:
    """All sections against a server started here; a dict of figures (see module doc)."""
    return asyncio.run(run_async(repeats, trace_repeats))


async def run_async(repeats: int = 5, trace_repeats: int = 3) -> dict:
    """run() for callers that already have an event loop."""
    # No audio cache: every run synthesizes, as a first request would.
    app = await start(Settings(port=0, cache_mb=0))
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            await _one_stream(stub, SHORT_TEXT)  # warm up the sessions
            first_sound = {
                "default_chunks": await _first_sound(app.address, repeats, []),
                "chunks_20ms": await _first_sound(app.address, repeats, ["--chunk-ms", "20"]),
            }
            cpu = await _cpu(app.address, max(3, repeats // 2))
            traces = {f"concurrency_{n}_chunk_ms_{chunk_ms}": await _traces(stub, n, chunk_ms, trace_repeats)
                      for n, chunk_ms in TRACE_LOADS}
    finally:
        await app.stop(grace=0)
    sweep = {name: prebuffer_sweep(t) for name, t in traces.items()}
    return {
        "machine": {"cores": os.cpu_count()},
        "first_sound": first_sound,
        "cpu": cpu,
        "prebuffer_sweep": sweep,
        "summary": _summary(first_sound, cpu, sweep),
    }


# ---- speakstream-say runs ----------------------------------------------------------------


async def _say(address: str, text: str, extra: list[str]) -> dict:
    """One speakstream-say playback into a fresh paced device; its stats (+ process CPU)."""
    with tempfile.TemporaryDirectory() as tmp, PacedFileDevice(Path(tmp)) as device:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.say", "--server", address, "--noise-scale", "0",
            "--noise-w", "0", "--stats-json", *extra, text, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=device.env())
        _, err = await asyncio.wait_for(process.communicate(), _CALL_TIMEOUT_S)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if process.returncode != 0:
            raise RuntimeError(f"speakstream-say failed ({process.returncode}): {err.decode()}")
        stats = json.loads(err.decode().strip().splitlines()[-1])
        stats["process_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return stats


async def _first_sound(address: str, repeats: int, extra: list[str]) -> dict:
    runs = [await _say(address, SHORT_TEXT, extra) for _ in range(repeats)]
    gaps = [r["first_chunk_to_first_sound_ms"] for r in runs]
    return {
        "prebuffer_ms": DEFAULT_PREBUFFER_MS,
        "first_chunk_to_first_frame_ms": _stats(gaps),
        "time_to_first_chunk_ms": _stats([r["time_to_first_chunk_ms"] for r in runs]),
        "time_to_first_frame_ms": _stats([r["time_to_first_sound_ms"] for r in runs]),
        "underruns": sum(r["underruns"] for r in runs),
        "runs": len(runs),
    }


async def _cpu(address: str, repeats: int) -> dict:
    runs = [await _say(address, TEN_SECOND_TEXT, []) for _ in range(repeats)]
    return {
        "audio_s": statistics.median(r["audio_s"] for r in runs),
        "call_and_playback_cpu_per_audio_s": _stats([r["cpu_per_audio_s"] for r in runs]),
        "process_cpu_per_audio_s": _stats([r["process_cpu_s"] / r["audio_s"] for r in runs]),
        "process_cpu_s": _stats([r["process_cpu_s"] for r in runs]),
        "underruns": sum(r["underruns"] for r in runs),
        "runs": len(runs),
    }


# ---- arrival traces and the prebuffer ----------------------------------------------------


async def _one_stream(stub, text: str, chunk_ms: int = 0) -> list[tuple[float, float]]:
    """[(arrival s after the call started, audio s)] per chunk of one stream."""
    started, trace = time.monotonic(), []
    request = pb.SynthesizeRequest(text=text, chunk_ms=chunk_ms)
    async for chunk in stub.SynthesizeStream(request, timeout=_CALL_TIMEOUT_S):
        trace.append((time.monotonic() - started, chunk.num_samples / chunk.sample_rate_hz))
    return trace


async def _traces(stub, concurrency: int, chunk_ms: int, repeats: int) -> list[list[tuple[float, float]]]:
    traces = []
    for _ in range(repeats):
        for text in TRACE_TEXTS:
            batch = await asyncio.gather(*(_one_stream(stub, text, chunk_ms) for _ in range(concurrency)))
            traces.extend(batch)
    return traces


def simulate(trace: list[tuple[float, float]], prebuffer_ms: float,
             max_prebuffer_ms: float = DEFAULT_MAX_PREBUFFER_MS) -> dict:
    """Replay one stream's arrivals through the player's policy (chunk granularity).

    Start once the buffer holds the prebuffer or the stream has ended; on an
    underrun with more to come, wait for a doubled prebuffer (capped).
    :returns: underruns and the start delay after the first chunk, in ms.
    """
    target, level, playing = prebuffer_ms / 1000, 0.0, False
    now, underruns = trace[0][0], 0
    started_at: Optional[float] = None
    for k, (arrival, audio_s) in enumerate(trace):
        if playing:
            level -= arrival - now
            if level < 0:
                underruns += 1
                level, playing = 0.0, False
                target = min(2 * max(target, 0.001), max_prebuffer_ms / 1000)
        now = arrival
        level += audio_s
        if not playing and (level >= target or k == len(trace) - 1):
            playing = True
            started_at = arrival if started_at is None else started_at
    assert started_at is not None  # the last chunk always starts playback
    return {"underruns": underruns, "start_delay_ms": 1000 * (started_at - trace[0][0])}


def prebuffer_sweep(traces: list[list[tuple[float, float]]], prebuffers=PREBUFFERS_MS) -> dict:
    """For each prebuffer: streams with an underrun, all underruns, median start delay."""
    first_ms = [1000 * t[0][1] for t in traces]
    out = {"first_chunk_audio_ms": {"median": round(statistics.median(first_ms), 1),
                                    "min": round(min(first_ms), 1)}}
    for prebuffer in prebuffers:
        results = [simulate(t, prebuffer) for t in traces]
        out[str(prebuffer)] = {
            "streams_with_underrun": sum(1 for r in results if r["underruns"]),
            "underruns": sum(r["underruns"] for r in results),
            "start_delay_ms_p50": statistics.median(r["start_delay_ms"] for r in results),
            "start_delay_ms_max": max(r["start_delay_ms"] for r in results),
            "streams": len(results),
        }
    return out


# ---- report ----------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def _summary(first_sound: dict, cpu: dict, sweep: dict) -> dict:
    gap = first_sound["default_chunks"]["first_chunk_to_first_frame_ms"]["median"]
    gap_small = first_sound["chunks_20ms"]["first_chunk_to_first_frame_ms"]["median"]
    target = DEFAULT_PREBUFFER_MS + TARGET_MARGIN_MS
    return {
        "first_chunk_to_first_frame_ms": gap,
        "first_chunk_to_first_frame_ms_20ms_chunks": gap_small,
        "target_ms": target,
        "meets_target": gap <= target and gap_small <= target,
        "cpu_per_audio_s": cpu["call_and_playback_cpu_per_audio_s"]["median"],
        "process_cpu_per_audio_s": cpu["process_cpu_per_audio_s"]["median"],
        "underruns": first_sound["default_chunks"]["underruns"] + first_sound["chunks_20ms"]["underruns"]
        + cpu["underruns"],
    }


def print_report(results: dict, out=sys.stdout) -> None:
    """Human-readable figures."""
    s = results["summary"]
    print(f"first chunk -> first frame to PortAudio: {s['first_chunk_to_first_frame_ms']} ms "
          f"(20 ms chunks: {s['first_chunk_to_first_frame_ms_20ms_chunks']} ms; "
          f"target <= {s['target_ms']} ms: {'met' if s['meets_target'] else 'MISSED'})", file=out)
    print(f"client CPU per audio second: {s['cpu_per_audio_s']} s (call and playback), "
          f"{s['process_cpu_per_audio_s']} s (whole process); underruns {s['underruns']}", file=out)
    for load, sweep in results["prebuffer_sweep"].items():
        print(f"prebuffer sweep, {load}:", file=out)
        first = sweep["first_chunk_audio_ms"]
        print(f"  first chunk holds {first['median']} ms of audio (min {first['min']} ms)", file=out)
        for prebuffer, row in sweep.items():
            if prebuffer == "first_chunk_audio_ms":
                continue
            print(f"  {prebuffer:>4} ms: {row['streams_with_underrun']}/{row['streams']} streams "
                  f"underrun ({row['underruns']} in all), start delay p50 "
                  f"{row['start_delay_ms_p50']:.1f} ms, max {row['start_delay_ms_max']:.1f} ms", file=out)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: python -m bench.playback."""
    p = argparse.ArgumentParser(prog="bench_playback", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="speakstream-say runs per figure (default %(default)s)")
    p.add_argument("--trace-repeats", type=int, default=3,
                   help="rounds of arrival traces per load (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    args = p.parse_args(argv)
    results = run(args.repeats, args.trace_repeats)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
