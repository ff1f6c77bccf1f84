"""speakstream-bench (`make bench`): the server against the bare-ONNX-Runtime floor, in one run.

Sections:
- floor: the same phoneme ids through bare ONNX Runtime in this process,
  sequentially (default session options) and N runs in parallel;
- idle: time to first audio (TTFA) for short, medium and long texts;
- load: throughput and TTFA at concurrency 1, 2, 4, 8, 16;
- memory: server RSS idle, peak under concurrency 8, and over a soak;
- overhead: a short request's total time minus the floor for its segments;
- metrics: throughput and server CPU with metrics on (watched and scraped) vs off;
- live: SynthesizeLive, a clause's last character to its first audio, idle and at
  concurrency 8, against the floor for the clause's first segment (clients/bench_live.py);
- fastaudio: the playback client's audio path, extension vs numpy;
- playback: first chunk to first frame handed to PortAudio, client CPU per audio second;
- encoding: CPU per audio second of each encoding and of resampling, next to inference;
- voices: TTFA of a request for voice B while voice A streams.
Ratios are computed from figures measured in this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import grpc
import numpy as np

from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

from clients.bench_server import PeakSampler, ServerProcess
from clients.channel import Connection, add_connection_flags, connection_from_args, open_aio_channel

TEXTS = {
    "short": "Hello there, how can I help you today?",
    "medium": ("Your order has shipped and should arrive on Thursday. "
               "You can track the parcel from the link in your confirmation email. "
               "Is there anything else I can do for you?"),
    "long": ("Streaming speech synthesis lets a listener hear the first words while the rest of the "
             "paragraph is still being generated, which matters a great deal for voice assistants. "
             "A server that waits for the whole text before it speaks feels slow, however fast its "
             "model is. This benchmark measures how soon the first sound arrives, and what happens "
             "to that number when many people talk to the server at once."),
}
# Soak texts: varied lengths (about 1 to 4 s of audio), so allocations of
# many sizes come and go, as they do in service.
SOAK_TEXTS = [
    "Yes.",
    "Hello there, how can I help you today?",
    "Your order has shipped and should arrive on Thursday.",
    "Press one for sales, two for support, or stay on the line to speak with someone.",
]
_CALL_TIMEOUT_S = 120


def _percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _summary(values) -> dict:
    return {"p50": _percentile(values, 50), "p95": _percentile(values, 95), "n": len(values)}


# ---------------------------------------------------------------- floor


class Floor:
    """Bare ONNX Runtime on the server's own phoneme ids: the hardware's best."""

    def __init__(self):
        import onnxruntime as ort

        from server.config import Settings
        from server.frontend import Frontend
        from server.voices import bundled_voice

        self.voice = bundled_voice()
        settings = Settings()
        self.frontend = Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes)
        self.whole = Frontend(100_000, 100_000)
        cfg = self.voice.config
        self.scales = np.array([cfg.noise_scale, cfg.length_scale, cfg.noise_w], dtype=np.float32)
        path = str(self.voice.model_path)
        self.default = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        single = ort.SessionOptions()
        single.intra_op_num_threads = 1
        single.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.single_thread = ort.InferenceSession(path, single, providers=["CPUExecutionProvider"])

    def segments(self, text: str):
        """The server's segments of `text` (same cuts, same ids)."""
        return list(self.frontend.segments(text, self.voice.config))

    def first_sentence_ids(self, text: str):
        """Ids of the whole first sentence, uncut."""
        return next(iter(self.whole.segments(text, self.voice.config))).ids

    def run(self, ids, session=None) -> tuple[float, float]:
        """(seconds, audio seconds) of one inference."""
        session = session or self.default
        feeds = {"input": np.asarray(ids, dtype=np.int64)[None, :],
                 "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": self.scales}
        start = time.perf_counter()
        audio = session.run(None, feeds)[0]
        return time.perf_counter() - start, audio.size / self.voice.config.sample_rate

    def sequential(self, ids, repeats: int = 7) -> float:
        """Median seconds of one inference of `ids`."""
        self.run(ids)
        return statistics.median(self.run(ids)[0] for _ in range(repeats))

    def parallel(self, ids_list, threads: int, seconds: float) -> dict:
        """Audio-s per wall-s with `threads` callers on one single-threaded-op session."""
        stop = time.perf_counter() + seconds
        audio = [0.0] * threads

        def worker(i):
            n = i
            while time.perf_counter() < stop:
                audio[i] += self.run(ids_list[n % len(ids_list)], self.single_thread)[1]
                n += 1

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
        return {"threads": threads, "audio_s_per_s": sum(audio) / (time.perf_counter() - start)}


def bench_floor(floor: Floor, seconds: float) -> dict:
    """Sequential times for the pieces the other sections compare with, and parallel throughput."""
    out = {}
    for name, text in TEXTS.items():
        segments = floor.segments(text)
        out[name] = {
            "first_segment_s": floor.sequential(segments[0].ids),
            "first_sentence_s": floor.sequential(floor.first_sentence_ids(text)),
            "all_segments_s": sum(floor.sequential(s.ids, 3) for s in segments),
            "first_segment_phonemes": len(segments[0].phonemes),
        }
    medium_ids = [s.ids for s in floor.segments(TEXTS["medium"])]
    cores = os.cpu_count() or 1
    out["parallel"] = max((floor.parallel(medium_ids, n, seconds) for n in sorted({1, cores, 2 * cores})),
                          key=lambda r: r["audio_s_per_s"])
    return out


# ---------------------------------------------------------------- client side


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


# ---------------------------------------------------------------- metrics cost


async def _observe(channel, metrics_port: int, stop: asyncio.Event) -> None:
    """What an operator adds: a WatchStats watcher at 1 s and a /metrics scrape every 5 s."""
    import urllib.request

    from speakstream.v1 import stats_pb2, stats_pb2_grpc

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
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- driver


async def run_server_sections(args, floor_results: dict, server: Optional[ServerProcess],
                              connection: Optional[Connection] = None) -> dict:
    """:param connection: how to reach --target (None: the started server, plaintext)."""
    out = {}
    async with open_aio_channel(connection or Connection(server.address)) as channel:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speakstream-bench", description=__doc__.splitlines()[0])
    p.add_argument("--target", help="benchmark a running server at host:port instead of starting one")
    add_connection_flags(p, server_flag=False)  # how to reach --target
    p.add_argument("--server-args", default="", help="extra flags for the started server")
    p.add_argument("--repeats", type=int, default=15, help="calls per idle measurement (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="time per concurrency level (default %(default)s)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--soak", type=int, default=2000, help="soak requests; 0 skips (default %(default)s)")
    p.add_argument("--quiet-s", type=float, default=12.0,
                   help="after the load, wait this long (past the server's --idle-trim-s) and read RSS; "
                        "0 skips (default %(default)s)")
    sections = ["server", "metrics", "live", "fastaudio", "playback", "encoding", "voices"]
    p.add_argument("--sections", nargs="+", default=sections, choices=sections, help="what to run (default: all)")
    p.add_argument("--live-rounds", type=int, default=3,
                   help="live section: interleaved rounds of floor, idle and concurrency 8 (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    connection = connection_from_args(args, parser, server=args.target) if args.target else None
    results: dict = {"machine": {"cores": os.cpu_count()}, "args": vars(args) | {"out": str(args.out)}}
    if "server" in args.sections:
        print("measuring the floor ...", file=sys.stderr)
        floor = Floor()
        results["floor"] = bench_floor(floor, args.seconds)
        del floor
        print("measuring the server ...", file=sys.stderr)
        if args.target:
            results["server"] = asyncio.run(run_server_sections(args, results["floor"], None, connection))
        else:
            with ServerProcess(args.server_args.split()) as server:
                results["server"] = asyncio.run(run_server_sections(args, results["floor"], server))
        results["targets"] = targets(results)
        print_table(results)
    if "metrics" in args.sections and not args.target:
        print("measuring the cost of metrics ...", file=sys.stderr)
        results["metrics"] = asyncio.run(bench_metrics(args.seconds))
        m = results["metrics"]
        print(f"\nmetrics on vs off: throughput cost {m['throughput_cost_pct']:+.1f}%, "
              f"server CPU per audio second {m['cpu_cost_pct']:+.1f}%")
    if "live" in args.sections:
        from clients import bench_live

        print("measuring SynthesizeLive ...", file=sys.stderr)
        results["live"] = bench_live.run(args.target, args.server_args.split(), rounds=args.live_rounds,
                                         connection=connection)
        bench_live.print_table(results["live"])
    if "fastaudio" in args.sections:
        from clients import bench_fastaudio

        results["fastaudio"] = bench_fastaudio.run()
        print("\nfastaudio:", json.dumps(results["fastaudio"].get("summary", results["fastaudio"]), indent=1))
    if "playback" in args.sections:
        from clients import bench_playback

        results["playback"] = bench_playback.run()
        print("\nplayback:", json.dumps(results["playback"].get("summary", {}), indent=1))
    if "encoding" in args.sections:
        from clients import bench_encoding

        print("measuring encodings and resampling ...", file=sys.stderr)
        results["encoding"] = bench_encoding.bench_encoding(args.repeats)
        bench_encoding.print_encoding(results["encoding"])
    if "voices" in args.sections and not args.target:
        from clients import bench_encoding

        print("measuring voice B while voice A streams ...", file=sys.stderr)
        results["voices"] = bench_encoding.bench_voices(args.server_args.split(), args.repeats)
        bench_encoding.print_voices(results["voices"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
