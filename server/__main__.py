"""speakstream-server: argument parsing, logging, signals, serve until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from server.config import ARENA_EXTEND, Settings
from server.errors import VoiceLoadError
from server.requestlog import LOG_FORMATS, configure_logging

_LOGGER = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag maps to one Settings field."""
    d = Settings()
    p = argparse.ArgumentParser(prog="speakstream-server",
                                description="Streaming text-to-speech gRPC server.")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    p.add_argument("--voice", default=d.voice, help="default voice name (default: the bundled en_US-joe-medium)")
    p.add_argument("--voice-dir", type=Path,
                   help="directory of extra Piper voices (*.onnx + *.onnx.json), named after their files")
    p.add_argument("--preload", action="store_true", default=d.preload,
                   help="load every voice's model at start-up, skipping broken ones (default: the default "
                        "voice at start-up, the others on first use)")
    p.add_argument("--voice-idle-s", type=float, default=d.voice_idle_s,
                   help="unload a voice other than the default after this many idle seconds; 0 = never "
                        "(default %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="inference device; auto = CUDA when available (default %(default)s)")
    p.add_argument("--cuda-device-id", type=int, default=d.cuda_device_id, help="GPU index (default %(default)s)")
    p.add_argument("--gpu-mem-limit-mb", type=int, default=d.gpu_mem_limit_mb,
                   help="CUDA arena cap in MiB, 0 = none (default %(default)s)")
    p.add_argument("--pool-size", type=int, default=d.pool_size,
                   help="inferences in flight at once (default %(default)s)")
    p.add_argument("--sessions", type=int, default=d.sessions,
                   help="ONNX Runtime sessions per voice (default %(default)s)")
    p.add_argument("--intra-op-threads", type=int, default=d.intra_op_threads,
                   help="threads one inference may use (default: cores, %(default)s)")
    p.add_argument("--inter-op-threads", type=int, default=d.inter_op_threads,
                   help="threads for parallel graph branches (default %(default)s)")
    p.add_argument("--allow-spinning", action=argparse.BooleanOptionalAction, default=d.allow_spinning,
                   help="let idle ORT threads spin (default: only when --pool-size is 1)")
    p.add_argument("--cpu-arena", action=argparse.BooleanOptionalAction, default=d.cpu_mem_arena,
                   help="ONNX Runtime CPU memory arena (default: on)")
    p.add_argument("--arena-extend", choices=ARENA_EXTEND, default=d.arena_extend,
                   help="how the CPU arena grows: by powers of two or by exactly what a run asks "
                        "(default %(default)s)")
    p.add_argument("--arena-max-extend-mb", type=int, default=d.arena_max_extend_mb,
                   help="largest single growth of the power-of-two CPU arena, MiB (default %(default)s)")
    p.add_argument("--arena-shrink-every", type=int, default=d.arena_shrink_every,
                   help="return the arena's free memory to the OS every N runs, 0 = never (default %(default)s)")
    p.add_argument("--idle-trim-s", type=float, default=d.idle_trim_s,
                   help="give free inference memory back after this many idle seconds, 0 = never "
                        "(default %(default)s)")
    p.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=d.warm_up,
                   help="run each session once at start-up so the first call is fast (default: on)")
    p.add_argument("--max-phonemes-per-chunk", type=int, default=d.max_phonemes_per_chunk,
                   help="phonemes in one inference at most; bounds memory (default %(default)s)")
    p.add_argument("--first-chunk-phonemes", type=int, default=d.first_chunk_phonemes,
                   help="target size of a request's first inference; smaller = sooner audio (default %(default)s)")
    p.add_argument("--lookahead-chunks", type=int, default=d.lookahead_chunks,
                   help="inferences one stream may have queued or running (default %(default)s)")
    p.add_argument("--cache-mb", type=int, default=d.cache_mb,
                   help="audio cache for deterministic requests, MiB; 0 = off (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="calls admitted beyond --pool-size before RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-chars", type=int, default=d.max_chars,
                   help="longest request text in characters (default %(default)s)")
    _add_transport_flags(p, d)
    p.add_argument("--grace-s", type=float, default=d.grace_s,
                   help="seconds in-flight calls get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING, ... (default %(default)s)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=d.log_format,
                   help="text for people, json for one object per line (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 picks a free port (default: off)")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=d.metrics,
                   help="record request counters and histograms (default: on; --no-metrics only to measure their cost)")
    p.add_argument("--enable-profiling", action="store_true", default=d.enable_profiling,
                   help="trace allocations so Stats.ProfileMemory works (slows the server; default off)")
    _add_security_flags(p)
    return p


def _add_transport_flags(p: argparse.ArgumentParser, d: Settings) -> None:
    g = p.add_argument_group("gRPC transport limits (docs/OPERATIONS.md, Limits)")
    g.add_argument("--max-response-mb", type=int, default=d.max_response_mb,
                   help="largest unary Synthesize audio in MiB; longer: RESOURCE_EXHAUSTED, stream it "
                        "(default %(default)s)")
    g.add_argument("--max-concurrent-rpcs", type=int, default=d.max_concurrent_rpcs,
                   help="calls in progress gRPC accepts at all; 0 = 2 x (pool-size + max-queue) + 64 "
                        "(default %(default)s)")
    g.add_argument("--max-streams-per-connection", type=int, default=d.max_streams_per_connection,
                   help="calls one client connection may have open; more wait (default %(default)s)")
    g.add_argument("--keepalive-time-s", type=float, default=d.keepalive_time_s,
                   help="ping connections idle this long (default %(default)s)")
    g.add_argument("--keepalive-timeout-s", type=float, default=d.keepalive_timeout_s,
                   help="drop a connection whose ping is unanswered this long (default %(default)s)")
    g.add_argument("--min-client-ping-interval-s", type=float, default=d.min_client_ping_interval_s,
                   help="clients pinging more often are disconnected (default %(default)s)")
    g.add_argument("--max-connection-age-s", type=float, default=d.max_connection_age_s,
                   help="close connections this old so balancers can spread clients again; 0 = never "
                        "(default %(default)s)")


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS and authentication (docs/OPERATIONS.md)")
    g.add_argument("--tls-cert", type=Path, help="server certificate chain, PEM; with --tls-key serves TLS")
    g.add_argument("--tls-key", type=Path, help="private key of --tls-cert, PEM")
    g.add_argument("--tls-client-ca", type=Path,
                   help="CA certificates, PEM: require client certificates signed by them (mutual TLS)")
    g.add_argument("--auth-token-file", type=Path,
                   help="bearer tokens, one per line: Synthesizer and Stats calls need one (default: open)")
    g.add_argument("--admin-token-file", type=Path,
                   help="admin bearer tokens, one per line: only they may call Stats.ProfileMemory")


def settings_from_args(argv: Optional[Sequence[str]] = None) -> Settings:
    """Parse flags into Settings; bad values end the program with a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            host=args.host, port=args.port, voice=args.voice, voice_dir=args.voice_dir,
            preload=args.preload, voice_idle_s=args.voice_idle_s,
            device=args.device, cuda_device_id=args.cuda_device_id,
            gpu_mem_limit_mb=args.gpu_mem_limit_mb, pool_size=args.pool_size,
            sessions=args.sessions, intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads, allow_spinning=args.allow_spinning,
            cpu_mem_arena=args.cpu_arena, arena_extend=args.arena_extend,
            arena_max_extend_mb=args.arena_max_extend_mb,
            arena_shrink_every=args.arena_shrink_every, idle_trim_s=args.idle_trim_s, warm_up=args.warm_up,
            max_phonemes_per_chunk=args.max_phonemes_per_chunk,
            first_chunk_phonemes=args.first_chunk_phonemes, lookahead_chunks=args.lookahead_chunks,
            cache_mb=args.cache_mb,
            max_queue=args.max_queue, max_chars=args.max_chars, grace_s=args.grace_s,
            max_response_mb=args.max_response_mb, max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_streams_per_connection=args.max_streams_per_connection,
            keepalive_time_s=args.keepalive_time_s, keepalive_timeout_s=args.keepalive_timeout_s,
            min_client_ping_interval_s=args.min_client_ping_interval_s,
            max_connection_age_s=args.max_connection_age_s,
            log_level=args.log_level.upper(), log_format=args.log_format,
            metrics=args.metrics, metrics_port=args.metrics_port, enable_profiling=args.enable_profiling,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
            auth_token_file=args.auth_token_file, admin_token_file=args.admin_token_file,
        )
    except ValueError as exc:
        parser.error(_flag_message(exc))
    from server.security import SecurityConfigError, load_security

    try:
        load_security(settings)  # unreadable or malformed files are usage errors too, before any model loads
    except SecurityConfigError as exc:
        parser.error(_flag_message(exc))
    return settings


def _flag_message(exc: ValueError) -> str:
    """A Settings error as the flag's name: "max_phonemes_per_chunk: ..." → "max-phonemes-per-chunk: ..."."""
    name, sep, rest = str(exc).partition(":")
    return name.replace("_", "-") + sep + rest if sep and name.isidentifier() else str(exc)


async def serve(settings: Settings) -> None:
    """Start, wait for SIGTERM/SIGINT, drain; a second signal stops at once."""
    from server.app import start  # heavy imports after argument errors are reported

    app = await start(settings)
    print(f"speakstream listening on {app.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop)
    try:
        await stop.wait()
        _LOGGER.info("draining: in-flight calls get %.1f s", settings.grace_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _exit_now)
    finally:
        await app.stop()
    _LOGGER.info("stopped")


def _on_signal(stop: asyncio.Event) -> None:
    stop.set()


def _exit_now() -> None:
    _LOGGER.warning("second signal: exiting without waiting")
    logging.shutdown()
    os._exit(1)  # skip the drain that is still running


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `speakstream-server` and `python -m server`."""
    settings = settings_from_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except VoiceLoadError as exc:
        _LOGGER.error("cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
