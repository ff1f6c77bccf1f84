"""The `metrics` section of `make bench`: throughput and server CPU with metrics on (watched, scraped) vs off."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
import urllib.request

import grpc

from bench.server_process import ServerProcess
from bench.server_section import bench_load
from speakstream.v1 import stats_pb2, stats_pb2_grpc
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc


async def _observe(channel, metrics_port: int, stop: asyncio.Event) -> None:
    """What an operator adds: a WatchStats watcher at 1 s and a /metrics scrape every 5 s."""
    call = stats_pb2_grpc.StatsStub(channel).WatchStats(stats_pb2.WatchStatsRequest(interval_ms=1000))
    loop, last_scrape = asyncio.get_running_loop(), 0.0
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    while not stop.is_set():
        await asyncio.wait_for(call.read(), 30)
        if time.monotonic() - last_scrape > 5:
            last_scrape = time.monotonic()
            await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=10).read())
    call.cancel()


async def _metrics_arm(mode: str, seconds: float) -> dict:
    port = _free_port()
    args = ["--metrics-port", str(port)] if mode == "on" else ["--no-metrics"]
    with ServerProcess(args) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            await bench_load(stub, os.cpu_count() or 1, 3, 1)  # warm
            stop = asyncio.Event()
            observer = asyncio.ensure_future(_observe(channel, port, stop)) if mode == "on" else None
            cpu = server.cpu_s()
            load = await bench_load(stub, os.cpu_count() or 1, seconds, 1)
            cpu = server.cpu_s() - cpu
            stop.set()
            if observer:
                await observer
    audio_s = load["audio_s_per_s"] * seconds
    return {"mode": mode, "audio_s_per_s": load["audio_s_per_s"], "cpu_s_per_audio_s": cpu / audio_s}


async def bench_metrics(seconds: float, rounds: int = 3) -> dict:
    """Throughput and server CPU per audio second with metrics on (and watched) vs off.

    Arms alternate order each round, so drift on a shared machine hits both.
    """
    arms, rounds_out = [], []
    for n in range(rounds):
        pair = {}
        for mode in (("on", "off") if n % 2 == 0 else ("off", "on")):
            pair[mode] = await _metrics_arm(mode, seconds)
            arms.append(pair[mode])
        rounds_out.append({
            "throughput_cost_pct": 100 * (1 - pair["on"]["audio_s_per_s"] / pair["off"]["audio_s_per_s"]),
            "cpu_cost_pct": 100 * (pair["on"]["cpu_s_per_audio_s"] / pair["off"]["cpu_s_per_audio_s"] - 1),
        })
    # Each round's two arms ran back to back: their ratio cancels the machine's
    # drift, and the median of the ratios drops a round that a neighbour disturbed.
    return {
        "arms": arms,
        "rounds": rounds_out,
        "throughput_cost_pct": statistics.median(r["throughput_cost_pct"] for r in rounds_out),
        "cpu_cost_pct": statistics.median(r["cpu_cost_pct"] for r in rounds_out),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
