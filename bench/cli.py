"""speakstream-bench (`make bench`): the server against the bare-ONNX-Runtime floor, in one run.

Sections:
- floor: the same phoneme ids through bare ONNX Runtime in this process,
  sequentially (default session options) and N runs in parallel (bench/floor.py);
- idle: time to first audio (TTFA) for short, medium and long texts;
- load: throughput and TTFA at concurrency 1, 2, 4, 8, 16;
- memory: server RSS idle, peak under concurrency 8, and over a soak;
- overhead: a short request's total time minus the floor for its segments
  (idle to overhead: the `server` section, bench/server_section.py);
- engine: decoder windows against whole segments (SNR), a greeting's TTFA against
  its first sentence's floor, TTFA right after a cancel, the cost of word timestamps,
  and the whole-graph engine side by side (bench/engine.py);
- metrics: throughput and server CPU with metrics on (watched and scraped) vs off
  (bench/metrics_cost.py);
- live: SynthesizeLive, a clause's last character to its first audio, idle and at
  concurrency 8, against the floor for the clause's first segment (bench/live.py);
- fastaudio: the playback client's audio path, extension vs numpy (bench/fastaudio.py);
- playback: first chunk to first frame handed to PortAudio, client CPU per audio second
  (bench/playback.py);
- encoding: CPU per audio second of each encoding and of resampling, next to inference
  (bench/encoding.py);
- voices: TTFA of a request for voice B while voice A streams (bench/voices.py);
- doors: time to first audio through the OpenAI speech API (HTTP) vs gRPC on the same server,
  Wyoming streaming's first sentence vs the floor, gRPC with the doors on and idle vs off
  (bench/doors.py);
- fleet: 1, 2 and 3 servers behind nginx vs the same servers called directly (round_robin), on
  loopback: throughput, TTFA, nginx's CPU per call and per audio second (bench/fleet.py).
Ratios are computed from figures measured in this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from bench import doors, encoding, fleet, live, playback, voices
from bench import engine as engine_bench
from bench import fastaudio as fastaudio_bench
from bench.floor import Floor, bench_floor
from bench.metrics_cost import bench_metrics
from bench.server_process import ServerProcess
from bench.server_section import print_table, run_server_sections, targets
from clients.channel import add_connection_flags, connection_from_args

SECTIONS = ["server", "engine", "metrics", "live", "fastaudio", "playback", "encoding", "voices", "doors", "fleet"]


def build_parser() -> argparse.ArgumentParser:
    """speakstream-bench's flags."""
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
    p.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS, help="what to run (default: all)")
    p.add_argument("--live-rounds", type=int, default=3,
                   help="live section: interleaved rounds of floor, idle and concurrency 8 (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    return p


def _server(args, connection) -> dict:
    """The floor, then the server section against --target or a server started here."""
    print("measuring the floor ...", file=sys.stderr)
    floor = Floor()
    results = {"floor": bench_floor(floor, args.seconds)}
    del floor  # frees its two ORT sessions before the server runs
    print("measuring the server ...", file=sys.stderr)
    if args.target:
        results["server"] = asyncio.run(run_server_sections(args, results["floor"], None, connection))
    else:
        with ServerProcess(args.server_args.split()) as server:
            results["server"] = asyncio.run(run_server_sections(args, results["floor"], server))
    results["targets"] = targets(results)
    print_table(results)
    return results


def main(argv=None) -> int:
    """Run the chosen sections, print their tables and write the JSON to --out."""
    parser = build_parser()
    args = parser.parse_args(argv)
    connection = connection_from_args(args, parser, server=args.target) if args.target else None
    results: dict = {"machine": {"cores": os.cpu_count()}, "args": vars(args) | {"out": str(args.out)}}
    if "server" in args.sections:
        results |= _server(args, connection)
    if "engine" in args.sections and not args.target:
        print("measuring the engine: windows, greeting, after a cancel, timestamps, whole graph ...",
              file=sys.stderr)
        results["engine"] = engine_bench.run(args.server_args.split(), rounds=args.live_rounds,
                                             seconds=args.seconds / 2)
        engine_bench.print_table(results["engine"])
    if "metrics" in args.sections and not args.target:
        print("measuring the cost of metrics ...", file=sys.stderr)
        results["metrics"] = asyncio.run(bench_metrics(args.seconds))
        m = results["metrics"]
        print(f"\nmetrics on vs off: throughput cost {m['throughput_cost_pct']:+.1f}%, "
              f"server CPU per audio second {m['cpu_cost_pct']:+.1f}%")
    if "live" in args.sections:
        print("measuring SynthesizeLive ...", file=sys.stderr)
        results["live"] = live.run(args.target, args.server_args.split(), rounds=args.live_rounds,
                                   connection=connection)
        live.print_table(results["live"])
    if "fastaudio" in args.sections:
        results["fastaudio"] = fastaudio_bench.run()
        print("\nfastaudio:", json.dumps(results["fastaudio"].get("summary", results["fastaudio"]), indent=1))
    if "playback" in args.sections:
        results["playback"] = playback.run()
        print("\nplayback:", json.dumps(results["playback"].get("summary", {}), indent=1))
    if "encoding" in args.sections:
        print("measuring encodings and resampling ...", file=sys.stderr)
        results["encoding"] = encoding.bench_encoding(args.repeats)
        encoding.print_encoding(results["encoding"])
    if "voices" in args.sections and not args.target:
        print("measuring voice B while voice A streams ...", file=sys.stderr)
        results["voices"] = voices.bench_voices(args.server_args.split(), args.repeats)
        voices.print_voices(results["voices"])
    if "doors" in args.sections and not args.target:
        print("measuring the HTTP and Wyoming doors ...", file=sys.stderr)
        results["doors"] = doors.run(args.server_args.split(), rounds=args.repeats)
        doors.print_table(results["doors"])
    if "fleet" in args.sections and not args.target:
        print("measuring fleets of servers behind nginx and called directly ...", file=sys.stderr)
        results["fleet"] = fleet.run(args.server_args.split(), args.seconds)
        fleet.print_table(results["fleet"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0

