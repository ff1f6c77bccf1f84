"""The `fleet` section of `make bench`: 1, 2 and 3 servers behind nginx against the same servers called
directly (the clients' own round_robin), on loopback (deploy/fleet.py).

On one machine the servers share its cores, so adding servers does not add throughput here; what the
section measures is the balancer's cost: throughput and time to first audio with and without nginx in
the path, nginx's CPU per call and per audio second next to the servers', and the latency nginx adds to
a call that does no synthesis (ListVoices). Each fleet size runs the two paths in alternating rounds
(direct, nginx, nginx, direct) so drift of a shared machine falls on both.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Sequence

import numpy as np

from bench.server_section import bench_load, one_call
from bench.texts import TEXTS
from clients.channel import Connection, open_aio_channel
from deploy.fleet import SMALL_SERVER_ARGS, Fleet, Nginx, find_nginx
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

SIZES = (1, 2, 3)
CONCURRENCY = 8
LIGHT_CALLS = 400
_ORDER = ("direct", "nginx", "nginx", "direct")


def run(server_args: Sequence[str], seconds: float, sizes: Sequence[int] = SIZES,
        light_calls: int = LIGHT_CALLS) -> dict:
    """Every fleet size, both paths; {"skipped": why} when nginx is not installed."""
    if find_nginx() is None:
        return {"skipped": "nginx is not installed (Debian: apt-get install nginx; .ci/system-deps does)"}
    args = [*SMALL_SERVER_ARGS, *server_args]
    fleets: list[dict] = []
    out = {"concurrency": CONCURRENCY, "seconds_per_round": seconds, "server_args": args,
           "load_average_at_start": os.getloadavg()[0], "fleets": fleets}
    for size in sizes:
        print(f"  fleet of {size} ...", file=sys.stderr)
        with Fleet(size, args) as fleet:
            fleets.append(asyncio.run(_measure_fleet(fleet, seconds, light_calls)))
    return out


async def _measure_fleet(fleet: Fleet, seconds: float, light_calls: int) -> dict:
    nginx = fleet.nginx
    assert nginx is not None  # run() starts every fleet with its balancer
    targets = {"direct": ",".join(fleet.addresses), "nginx": nginx.address}
    rounds: dict[str, list[dict]] = {"direct": [], "nginx": []}
    for path in _ORDER:
        async with open_aio_channel(Connection(targets[path])) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            for _ in range(2 * fleet.size):  # every server connected and warm on this path
                await one_call(stub, TEXTS["short"])
            rounds[path].append(await _round(fleet, nginx, stub, seconds))
    light = {}
    for path in ("direct", "nginx"):
        async with open_aio_channel(Connection(targets[path])) as channel:
            light[path] = await _light(nginx, pb_grpc.SynthesizerStub(channel), light_calls)
    paths = {path: _combine(r) | {"light": light[path]} for path, r in rounds.items()}
    return {"servers": fleet.size, **paths, "overhead": _overhead(paths),
            "server_rss_mb": [round(s.rss_mb()) for s in fleet.servers]}


async def _round(fleet: Fleet, nginx: Nginx, stub, seconds: float) -> dict:
    """One load round at CONCURRENCY: its bench_load figures and the CPU each process used meanwhile."""
    servers_cpu, nginx_cpu, client_cpu = _servers_cpu(fleet), nginx.cpu_s(), time.process_time()
    logged = _nginx_calls(nginx)
    start = time.perf_counter()
    result = await bench_load(stub, CONCURRENCY, seconds, min_calls=2)
    audio_s = result["audio_s_per_s"] * (time.perf_counter() - start)  # the wall bench_load divided by
    return result | {"audio_s": audio_s, "servers_cpu_s": _servers_cpu(fleet) - servers_cpu,
                     "nginx_cpu_s": nginx.cpu_s() - nginx_cpu, "client_cpu_s": time.process_time() - client_cpu,
                     "nginx_calls": _nginx_calls(nginx) - logged}


def _nginx_calls(nginx: Nginx) -> int:
    """Calls nginx has passed on so far: the lines of its access log (one per call, written as it ends)."""
    with open(nginx.access_log, "rb") as log:
        return sum(1 for _ in log)


def _servers_cpu(fleet: Fleet) -> float:
    return sum(server.cpu_s() for server in fleet.servers)


async def _light(nginx: Nginx, stub, calls: int) -> dict:
    """`calls` ListVoices calls at CONCURRENCY: per-call latency with no synthesis in it, and nginx's CPU."""
    latencies: list[float] = []
    nginx_cpu = nginx.cpu_s()

    async def client(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await stub.ListVoices(pb.ListVoicesRequest(), timeout=30)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(client(calls // CONCURRENCY) for _ in range(CONCURRENCY)))
    return {"calls": len(latencies), "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "nginx_cpu_us_per_call": 1e6 * (nginx.cpu_s() - nginx_cpu) / len(latencies)}


def _combine(rounds: list[dict]) -> dict:
    """The rounds of one path added up: calls, audio, CPU; throughput and TTFA medians over rounds."""
    calls = sum(r["calls"] for r in rounds)
    audio_s = sum(r["audio_s"] for r in rounds)
    return {
        "rounds": rounds, "calls": calls, "errors": sum(len(r["errors"]) for r in rounds),
        "audio_s_per_s": float(np.median([r["audio_s_per_s"] for r in rounds])),
        "ttfa_p50_ms": 1000 * float(np.median([r["ttfa"]["p50"] for r in rounds])),
        "ttfa_p95_ms": 1000 * float(np.median([r["ttfa"]["p95"] for r in rounds])),
        "servers_cpu_s_per_audio_s": sum(r["servers_cpu_s"] for r in rounds) / audio_s,
        "nginx_cpu_ms_per_call": 1000 * sum(r["nginx_cpu_s"] for r in rounds) / calls,
        "nginx_cpu_ms_per_audio_s": 1000 * sum(r["nginx_cpu_s"] for r in rounds) / audio_s,
    }


def _overhead(paths: dict) -> dict:
    """What putting nginx in the path cost, from this fleet's own two paths."""
    direct, nginx = paths["direct"], paths["nginx"]
    return {
        "throughput_pct": 100 * (nginx["audio_s_per_s"] / direct["audio_s_per_s"] - 1),
        "ttfa_p50_ms": nginx["ttfa_p50_ms"] - direct["ttfa_p50_ms"],
        "light_call_p50_ms": nginx["light"]["p50_ms"] - direct["light"]["p50_ms"],
        "nginx_cpu_ms_per_call": nginx["nginx_cpu_ms_per_call"],
        "nginx_cpu_ms_per_audio_s": nginx["nginx_cpu_ms_per_audio_s"],
        "nginx_cpu_vs_servers_pct": 100 * nginx["nginx_cpu_ms_per_audio_s"] / 1000
                                    / nginx["servers_cpu_s_per_audio_s"],
    }


def print_table(r: dict) -> None:
    """A human summary of the section."""
    if "skipped" in r:
        print(f"\nfleet: skipped: {r['skipped']}")
        return
    print(f"\nfleet on loopback (concurrency {r['concurrency']}, {r['seconds_per_round']:.0f} s rounds; "
          f"servers {' '.join(r['server_args'])}):")
    print(f"{'servers':>7} {'path':6} {'calls':>6} {'audio-s/s':>9} {'TTFA p50':>9} {'TTFA p95':>9} "
          f"{'srv CPU/audio-s':>15} {'nginx CPU/call':>14} {'ListVoices p50':>14}")
    for f in r["fleets"]:
        for path in ("direct", "nginx"):
            p = f[path]
            nginx_cpu = f"{p['nginx_cpu_ms_per_call']:.2f} ms" if path == "nginx" else "-"
            print(f"{f['servers']:7} {path:6} {p['calls']:6} {p['audio_s_per_s']:9.1f} {p['ttfa_p50_ms']:7.0f}ms "
                  f"{p['ttfa_p95_ms']:7.0f}ms {p['servers_cpu_s_per_audio_s']:13.3f} s {nginx_cpu:>14} "
                  f"{p['light']['p50_ms']:11.2f} ms")
        o = f["overhead"]
        print(f"{'':7} nginx's cost: throughput {o['throughput_pct']:+.1f}%, TTFA p50 {o['ttfa_p50_ms']:+.0f} ms, "
              f"a ListVoices call {o['light_call_p50_ms']:+.2f} ms; {o['nginx_cpu_ms_per_audio_s']:.2f} ms "
              f"nginx CPU per audio second = {o['nginx_cpu_vs_servers_pct']:.2f}% of the servers'")
