"""speakstream-stats: show what a speakstream server is doing, once or refreshed in the terminal."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import grpc
from google.protobuf import json_format

from clients.channel import add_connection_flags, connection_from_args, open_channel
from speakstream.v1 import stats_pb2 as pb
from speakstream.v1 import stats_pb2_grpc as pb_grpc

_EXIT_USAGE = 2
_EXIT_SERVER = 3
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
_HISTOGRAMS = (
    ("time_to_first_audio", "time to first audio"),
    ("generation", "generation (call)"),
    ("inference", "inference (segment)"),
    ("phonemization", "phonemization"),
    ("queue_wait", "queue wait"),
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of speakstream-stats."""
    p = argparse.ArgumentParser(prog="speakstream-stats",
                                description="Show a speakstream server's statistics (Stats service).")
    add_connection_flags(p)
    p.add_argument("--watch", action="store_true", help="refresh until interrupted (Ctrl-C)")
    p.add_argument("--interval-ms", type=int, default=1000,
                   help="time between refreshes with --watch, 100 to 60000 (default %(default)s)")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after this many snapshots (0: never)")
    p.add_argument("--json", action="store_true",
                   help="print the snapshot as JSON (one object per line with --watch), buckets included")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of GetStats in seconds (default %(default)s)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of speakstream-stats."""
    parser = build_parser()
    args = parser.parse_args(argv)
    connection = connection_from_args(args, parser)
    try:
        with open_channel(connection) as channel:
            stub = pb_grpc.StatsStub(channel)
            if args.watch:
                _watch(stub, args)
            else:
                response = stub.GetStats(pb.GetStatsRequest(include_buckets=args.json), timeout=args.timeout)
                _show(response.snapshot, args, clear=False)
    except grpc.RpcError as exc:
        return _report(exc, args.server)
    except KeyboardInterrupt:
        pass  # the way to end --watch
    return 0


def _watch(stub, args: argparse.Namespace) -> None:
    request = pb.WatchStatsRequest(interval_ms=args.interval_ms, include_buckets=args.json)
    clear = sys.stdout.isatty() and not args.json
    for shown, response in enumerate(stub.WatchStats(request), start=1):
        _show(response.snapshot, args, clear)
        if shown == args.count:
            break


def _show(snapshot: pb.StatsSnapshot, args: argparse.Namespace, clear: bool) -> None:
    if args.json:
        text = json_format.MessageToJson(snapshot, indent=None if args.watch else 2)
    else:
        text = format_table(snapshot, args.server)
        if args.watch and not clear:
            text += "\n"
    print((_CLEAR if clear else "") + text, flush=True)


def format_table(s: pb.StatsSnapshot, server: str = "") -> str:
    """The snapshot as a table for people."""
    when = s.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"speakstream {server}  {when}  up {_duration(s.uptime_s)}"
             + ("" if s.recording else "  (request metrics off: --no-metrics)")]
    lines += _requests(s.requests)
    lines += _latency(s.latency)
    a = s.audio
    lines.append(f"audio      sent {a.sent_s:.1f} s  synthesized {a.synthesized_s:.1f} s  "
                 f"inference {a.inference_s:.1f} s  real-time factor {a.real_time_factor:.3f}  "
                 f"characters {a.characters}")
    lines += _pool(s.pool)
    q = s.queue
    lines.append(f"queue      depth {q.depth}  calls {q.calls} / {q.capacity}  admitted {q.admitted}")
    c = s.cache
    lines.append(f"cache      entries {c.entries}  {_bytes(c.bytes)} / {_bytes(c.max_bytes)}  "
                 f"hits {c.hits}  misses {c.misses}")
    m = s.memory
    lines.append(f"memory     RSS {_bytes(m.rss_bytes)}  peak {_bytes(m.peak_rss_bytes)}  "
                 f"cache {_bytes(m.cache_bytes)}  queued jobs {m.queued_jobs}  "
                 f"profiling {'on' if m.profiling else 'off'}")
    lines += _threads(s.threads)
    lines += _gpu(s.gpu)
    return "\n".join(lines)


def _requests(r: pb.RequestStats) -> list[str]:
    lines = [f"requests   total {r.total}  in flight {r.in_flight}  rejected {r.rejected}  cancelled {r.cancelled}"]
    doors = dict.fromkeys(rpc.door or "grpc" for rpc in r.rpcs)  # in the server's order: grpc first
    for door in doors:
        if len(doors) > 1:
            lines.append(f"  door {door:<13} total {r.by_door.get(door, 0)}")
        for rpc in (rpc for rpc in r.rpcs if (rpc.door or "grpc") == door):
            statuses = "  ".join(f"{code} {n}" for code, n in sorted(rpc.by_status.items()))
            lines.append(f"  {rpc.method:<22} total {rpc.total:<6} in flight {rpc.in_flight:<4} {statuses}".rstrip())
    return lines


def _latency(latency: pb.LatencyStats) -> list[str]:
    lines = [f"latency ms {'':<18} {'count':>8} {'mean':>9} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}"]
    for field, label in _HISTOGRAMS:
        h = getattr(latency, field)
        values = (h.mean_s, h.p50_s, h.p95_s, h.p99_s, h.max_s)
        lines.append(f"  {label:<27} {h.count:>8} " + " ".join(f"{1000 * v:>9.1f}" for v in values))
    return lines


def _pool(p: pb.PoolStats) -> list[str]:
    lines = [f"pool       workers {p.size}  busy {p.busy}  idle {p.idle}  runs {p.runs_started} started, "
             f"{p.runs_completed} ended, {p.runs_failed} failed, dropped {p.runs_dropped_cancelled} cancelled "
             f"+ {p.runs_dropped_deadline} past deadline"]
    for session in p.sessions:
        lines.append(f"  session {session.index:<3} {session.voice} {session.provider}  runs {session.runs}  "
                     f"busy {session.busy_s:.1f} s  failures {session.failures}  in flight {session.in_flight}")
    return lines


def _threads(t: pb.ThreadStats) -> list[str]:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(t.by_kind.items()))
    lines = [f"threads    python {t.count} ({kinds})  os {t.os_count}"]
    for w in t.workers:
        if w.state == pb.WORKER_STATE_RUNNING:
            lines.append(f"  worker {w.index:<3} running  request {w.request_id or '-'}  for {w.running_s:.2f} s")
        else:
            lines.append(f"  worker {w.index:<3} idle")
    return lines


def _gpu(g: pb.GpuStats) -> list[str]:
    if not g.available:
        return [f"gpu        {g.reason or 'no GPU'}"]
    return [f"gpu {d.index}      {d.name}  busy {d.utilization_percent}%  memory "
            f"{_bytes(d.memory_used_bytes)} / {_bytes(d.memory_total_bytes)}" for d in g.devices]


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def _report(exc: grpc.RpcError, server: str) -> int:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        print(f"speakstream-stats: cannot reach the server at {server}: {exc.details()}", file=sys.stderr)
        return _EXIT_SERVER
    print(f"speakstream-stats: {code.name}: {exc.details()}", file=sys.stderr)
    return _EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else _EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
