"""The `server` section of `make bench`: TTFA by text length, the load sweep, memory, soak, overhead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from typing import Any, Optional

import grpc
import numpy as np

from bench.server_process import PeakSampler, ServerProcess
from bench.texts import SOAK_TEXTS, TEXTS
from clients.channel import Connection, open_aio_channel
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_CALL_TIMEOUT_S = 120


def _percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _summary(values) -> dict:
    return {"p50": _percentile(values, 50), "p95": _percentile(values, 95), "n": len(values)}


async def one_call(stub, text: str) -> dict:
    """Stream `text`; TTFA, total time, audio seconds."""
    start = time.perf_counter()
    ttfa, samples, rate = None, 0, 22050
    async for chunk in stub.SynthesizeStream(pb.SynthesizeRequest(text=text), timeout=_CALL_TIMEOUT_S):
        if ttfa is None:
            ttfa = time.perf_counter() - start
        samples += chunk.num_samples
        rate = chunk.sample_rate_hz
    return {"ttfa": ttfa, "total": time.perf_counter() - start, "audio_s": samples / rate}


async def bench_idle(stub, repeats: int) -> dict:
    """TTFA and total time per text, one call at a time."""
    out = {}
    for name, text in TEXTS.items():
        await one_call(stub, text)  # warm
        calls = [await one_call(stub, text) for _ in range(repeats)]
        out[name] = {"ttfa": _summary([c["ttfa"] for c in calls]),
                     "total": _summary([c["total"] for c in calls])}
    return out


async def bench_load(stub, concurrency: int, seconds: float, min_calls: int) -> dict:
    """`concurrency` clients looping over the texts for about `seconds`.

    All clients start at once, so their first calls arrive as one burst and
    the last of them waits for every other first segment: TTFA is reported
    for the steady state (each client's later calls) and, apart, for all calls.
    """
    calls, errors = [], []
    stop = time.perf_counter() + seconds
    texts = list(TEXTS.values())

    async def client(i):
        n = i
        while time.perf_counter() < stop or n - i < min_calls * concurrency:
            try:
                call = await one_call(stub, texts[n % len(texts)])
                calls.append(call | {"burst": n == i})
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code().name)
            n += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "calls": len(calls), "errors": errors,
            "audio_s_per_s": sum(c["audio_s"] for c in calls) / wall,
            "ttfa": _summary([c["ttfa"] for c in calls if not c["burst"]]),
            "ttfa_with_burst": _summary([c["ttfa"] for c in calls])}


async def bench_soak(stub, server: ServerProcess, requests: int, concurrency: int) -> dict:
    """RSS after warm-up vs after `requests` mixed calls at `concurrency`."""
    texts = SOAK_TEXTS
    done, errors, samples = 0, 0, []
    lock = asyncio.Lock()
    warm = min(200, requests // 5)

    async def client():
        nonlocal done, errors
        while True:
            async with lock:
                if done >= requests:
                    return
                done += 1
                n = done
            try:
                await one_call(stub, texts[n % len(texts)])
            except grpc.aio.AioRpcError:
                errors += 1
            if n % 100 == 0:
                samples.append((n, server.rss_mb()))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    after_warm = [rss for n, rss in samples if n >= warm]
    base = after_warm[0] if after_warm else server.rss_mb()
    end = server.rss_mb()
    return {"requests": requests, "errors": errors, "rss_after_warmup_mb": base, "rss_end_mb": end,
            "rss_max_after_warmup_mb": max(after_warm or [end]),
            "growth_pct": 100 * (end - base) / base, "samples": samples}


async def bench_overhead(stub, floor_s: float, repeats: int) -> dict:
    """Median total time of the short text minus the floor for its segments."""
    calls = [await one_call(stub, TEXTS["short"]) for _ in range(repeats)]
    total = statistics.median(c["total"] for c in calls)
    return {"total_s": total, "floor_s": floor_s, "overhead_s": total - floor_s}


async def run_server_sections(args, floor_results: dict, server: Optional[ServerProcess],
                              connection: Optional[Connection] = None) -> dict:
    """:param connection: how to reach --target (None: the started server, plaintext)."""
    if connection is None:
        assert server is not None  # bench.cli passes the server it started when there is no --target
        connection = Connection(server.address)
    out: dict[str, Any] = {}
    async with open_aio_channel(connection) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        if server:
            out["rss_start_mb"] = server.rss_mb()  # ready, warmed up, no call yet
        await one_call(stub, TEXTS["short"])
        if server:
            out["rss_idle_mb"] = server.rss_mb()
        out["idle"] = await bench_idle(stub, args.repeats)
        out["overhead"] = await bench_overhead(stub, floor_results["short"]["all_segments_s"], args.repeats)
        out["load"] = []
        for c in args.concurrency:
            sampler = PeakSampler(server.rss_mb) if server else None
            with sampler or contextlib.nullcontext():
                result = await bench_load(stub, c, args.seconds, min_calls=2)
            if sampler:
                result["rss_peak_mb"] = sampler.peak
            out["load"].append(result)
            print(f"  concurrency {c}: {result['audio_s_per_s']:.1f} audio-s/s", file=sys.stderr)
        if server and args.soak:
            out["soak"] = await bench_soak(stub, server, args.soak, 8)
        if server and args.quiet_s:
            await asyncio.sleep(args.quiet_s)  # past the server's --idle-trim-s
            out["rss_quiet_mb"] = server.rss_mb()
    return out


def targets(r: dict) -> dict:
    """The issue's acceptance ratios, from this run's figures."""
    floor, idle = r["floor"], r["server"]["idle"]
    load8 = next((x for x in r["server"]["load"] if x["concurrency"] == 8), None)
    out = {
        "ttfa_long_vs_first_segment_floor": idle["long"]["ttfa"]["p50"] / floor["long"]["first_segment_s"],
        "ttfa_long_vs_first_sentence_floor": idle["long"]["ttfa"]["p50"] / floor["long"]["first_sentence_s"],
    }
    if load8:
        out["throughput_c8_vs_parallel_floor"] = load8["audio_s_per_s"] / floor["parallel"]["audio_s_per_s"]
        out["ttfa_p95_c8_vs_idle_p50"] = load8["ttfa"]["p95"] / idle["medium"]["ttfa"]["p50"]
        out["rss_peak_c8_mb"] = load8.get("rss_peak_mb")
    for key in ("rss_start_mb", "rss_quiet_mb"):
        if key in r["server"]:
            out[f"{key[:-3]}_idle_mb"] = r["server"][key]
    return out


def print_table(r: dict) -> None:
    """A human summary of the JSON."""
    f, s = r["floor"], r["server"]
    print(f"\nfloor (bare ONNX Runtime): parallel {f['parallel']['audio_s_per_s']:.1f} audio-s/s "
          f"with {f['parallel']['threads']} threads")
    print(f"{'text':8} {'floor 1st seg':>13} {'floor 1st sent':>14} {'TTFA p50':>9} {'TTFA p95':>9}")
    for name in TEXTS:
        print(f"{name:8} {f[name]['first_segment_s']*1000:11.0f}ms {f[name]['first_sentence_s']*1000:12.0f}ms "
              f"{s['idle'][name]['ttfa']['p50']*1000:7.0f}ms {s['idle'][name]['ttfa']['p95']*1000:7.0f}ms")
    print(f"\n{'conc':>4} {'calls':>6} {'audio-s/s':>9} {'TTFA p50':>9} {'TTFA p95':>9} {'p95+burst':>9} "
          f"{'RSS peak':>9} errors")
    for x in s["load"]:
        print(f"{x['concurrency']:4} {x['calls']:6} {x['audio_s_per_s']:9.1f} {x['ttfa']['p50']*1000:7.0f}ms "
              f"{x['ttfa']['p95']*1000:7.0f}ms {x['ttfa_with_burst']['p95']*1000:7.0f}ms "
              f"{x.get('rss_peak_mb', float('nan')):7.0f}MB {len(x['errors'])}")
    o = s["overhead"]
    print(f"\nshort request overhead: {o['overhead_s']*1000:.0f} ms "
          f"(total {o['total_s']*1000:.0f} ms - floor {o['floor_s']*1000:.0f} ms)")
    if "rss_idle_mb" in s:
        print(f"server RSS: {s['rss_start_mb']:.0f} MB after start-up, {s['rss_idle_mb']:.0f} MB after one call"
              + (f", {s['rss_quiet_mb']:.0f} MB after the load and a quiet spell" if "rss_quiet_mb" in s else ""))
    if "soak" in s:
        k = s["soak"]
        print(f"soak {k['requests']} requests: RSS {k['rss_after_warmup_mb']:.0f} -> {k['rss_end_mb']:.0f} MB "
              f"({k['growth_pct']:+.1f}%), max {k['rss_max_after_warmup_mb']:.0f} MB, errors {k['errors']}")
    print("\ntargets:", json.dumps(r["targets"], indent=1))
