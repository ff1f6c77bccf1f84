"""Server settings: one frozen dataclass, filled from CLI flags by __main__.

Every module receives the `Settings` (or the part it needs) instead of reading
flags or the environment itself, so tests build settings in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


ARENA_EXTEND = ("power-of-two", "requested")


def _cores() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told at start-up."""

    host: str = "127.0.0.1"
    """Address to bind. Loopback unless told otherwise."""

    port: int = 50051
    """TCP port; 0 picks a free one (printed in the ready line)."""

    voice: str = ""
    """Default voice name; empty means the bundled en_US-joe-medium."""

    voice_dir: Optional[Path] = None
    """Directory of extra Piper voices (*.onnx + *.onnx.json)."""

    preload: bool = False
    """Load every voice's sessions at start-up (a broken extra voice is skipped then);
    False: the default voice at start-up, the others on first use."""

    voice_idle_s: float = 0.0
    """Unload a voice other than the default after this many seconds without a run; 0 = never."""

    device: str = "auto"
    """Inference device: "auto" (CUDA when available, else CPU), "cpu", "cuda"."""

    cuda_device_id: int = 0
    """GPU index for the CUDA provider."""

    gpu_mem_limit_mb: int = 0
    """Cap of the CUDA arena in MiB; 0 = no cap."""

    pool_size: int = 1
    """Inference runs in flight at once, over all sessions.

    1 by default: a run's activations take ~150 MB for a 100-phoneme segment,
    so runs side by side cost memory, and one run on all cores (intra-op
    threads) is also the fastest way to a first chunk. See docs/BENCHMARKS.md.
    """

    sessions: int = 1
    """ONNX Runtime sessions per voice; runs share them (ORT run is thread-safe)."""

    intra_op_threads: int = field(default_factory=_cores)
    """Threads one run may use (default: cores; with pool_size > 1 use fewer)."""

    inter_op_threads: int = 1
    """Threads for parallel graph branches (sequential execution uses one)."""

    allow_spinning: Optional[bool] = None
    """Let idle ORT threads spin between ops. None: only when pool_size is 1.

    Spinning shortens a run (measured: 84 vs 95 ms for a first segment), but
    with runs side by side a spinning pool steals the core another run needs.
    """

    @property
    def spinning(self) -> bool:
        """Whether ORT threads spin, after applying the default."""
        return self.pool_size == 1 if self.allow_spinning is None else self.allow_spinning

    cpu_mem_arena: bool = True
    """Use ONNX Runtime's CPU memory arena (faster; holds peak activation memory)."""

    arena_extend: str = "power-of-two"
    """How the shared CPU arena grows: "power-of-two" (ORT's way) or "requested" (by exactly what a run asks).

    At concurrency 8 power-of-two peaked at ~370 MB RSS, "requested" at
    ~550-630 MB (its exact-size regions fragment); see docs/BENCHMARKS.md.
    """

    arena_max_extend_mb: int = 1024
    """Largest single growth of the power-of-two arena, in MiB (ORT's default, 1 GiB).

    Smaller steps grow RSS more smoothly over thousands of runs (in one
    process, 400 runs: 16 MiB steps 268 -> 328 MB, 1 GiB 265 -> 366 MB) but
    did not lower the peak at concurrency 8, so the default stays ORT's.
    """

    arena_shrink_every: int = 0
    """Return the arena's free chunks to the OS after every Nth run of a session; 0 = never.

    Every run (1) meets tight memory budgets at ~13% less throughput; every
    100 runs raised the peak at concurrency 8 (the arena regrows in steps).
    """

    idle_trim_s: float = 10.0
    """After this many seconds with no call, give the arenas' free memory back to the OS; 0 = never."""

    warm_up: bool = True
    """Run each session once at start-up (then trim), so the first call is as fast as the rest."""

    max_queue: int = 64
    """Calls admitted beyond pool_size; more get RESOURCE_EXHAUSTED at once."""

    max_chars: int = 10_000
    """Longest request text, in characters."""

    max_phonemes_per_chunk: int = 100
    """Cap on phonemes in one inference, so a huge sentence cannot blow up memory."""

    first_chunk_phonemes: int = 40
    """Target length of a request's first inference; short = fast first audio."""

    lookahead_chunks: int = 2
    """Inferences one stream may have queued or running at once."""

    cache_mb: int = 64
    """Audio cache bound in MiB (deterministic requests only); 0 turns it off."""

    max_response_mb: int = 64
    """Largest audio one unary Synthesize response may carry, MiB (10,000 characters of
    LINEAR16 at 22.05 kHz are ~30 MB); longer audio gets RESOURCE_EXHAUSTED: stream it."""

    max_concurrent_rpcs: int = 0
    """gRPC's cap on calls in progress; 0 = 2 x (pool_size + max_queue) + 64 (server/transport.py)."""

    max_streams_per_connection: int = 100
    """HTTP/2 streams (calls) one client connection may have open; more wait in the client."""

    keepalive_time_s: float = 60.0
    """Ping a connection idle this long to find dead peers."""

    keepalive_timeout_s: float = 20.0
    """Close a connection whose keepalive ping is not answered in this time."""

    min_client_ping_interval_s: float = 10.0
    """Clients may ping no more often than this; faster pingers are disconnected (too_many_pings)."""

    max_connection_age_s: float = 0.0
    """Close connections after this long (clients reconnect, balancers rebalance); 0 = never."""

    grace_s: float = 10.0
    """On SIGTERM, how long in-flight calls may run before the server stops."""

    log_level: str = "INFO"
    """Python logging level name."""

    log_format: str = "text"
    """Log lines as "text" (for people) or "json" (one object per line, for machines)."""

    metrics: bool = True
    """Record request counters and histograms (Stats, Prometheus); off only to measure their cost."""

    metrics_port: Optional[int] = None
    """Port of the Prometheus /metrics endpoint on `host`; None = off, 0 = a free port."""

    enable_profiling: bool = False
    """Trace allocations (tracemalloc) so Stats.ProfileMemory works; slows every allocation."""

    tls_cert: Optional[Path] = None
    """Server certificate chain (PEM); with `tls_key`, the port serves TLS instead of plaintext."""

    tls_key: Optional[Path] = None
    """Private key (PEM) of `tls_cert`."""

    tls_client_ca: Optional[Path] = None
    """CA certificates (PEM) for mutual TLS: clients must present a certificate they signed."""

    auth_token_file: Optional[Path] = None
    """Bearer tokens, one per line; when set, Synthesizer and Stats calls need one (health, reflection stay open)."""

    admin_token_file: Optional[Path] = None
    """Bearer tokens for admin-only methods (Stats.ProfileMemory), one per line; they work everywhere."""

    def __post_init__(self):
        _check_range("port", self.port, 0, 65535)
        _check_range("pool_size", self.pool_size, 1, 256)
        _check_range("sessions", self.sessions, 1, 64)
        _check_range("intra_op_threads", self.intra_op_threads, 0, 256)
        _check_range("inter_op_threads", self.inter_op_threads, 0, 256)
        _check_range("max_queue", self.max_queue, 0, 100_000)
        _check_range("max_chars", self.max_chars, 1, 10_000_000)
        _check_range("max_phonemes_per_chunk", self.max_phonemes_per_chunk, 16, 100_000)
        _check_range("first_chunk_phonemes", self.first_chunk_phonemes, 8, 100_000)
        _check_range("lookahead_chunks", self.lookahead_chunks, 1, 64)
        _check_range("cache_mb", self.cache_mb, 0, 1_000_000)
        _check_range("arena_max_extend_mb", self.arena_max_extend_mb, 1, 1 << 20)
        _check_range("arena_shrink_every", self.arena_shrink_every, 0, 1_000_000)
        _check_range("max_response_mb", self.max_response_mb, 1, 2047)  # gRPC messages stop at 2 GiB
        _check_range("max_concurrent_rpcs", self.max_concurrent_rpcs, 0, 1_000_000)
        _check_range("max_streams_per_connection", self.max_streams_per_connection, 1, 1_000_000)
        _check_range("keepalive_time_s", self.keepalive_time_s, 1, 86_400)
        _check_range("keepalive_timeout_s", self.keepalive_timeout_s, 1, 3_600)
        _check_range("min_client_ping_interval_s", self.min_client_ping_interval_s, 0, 86_400)
        _check_range("max_connection_age_s", self.max_connection_age_s, 0, 10_000_000)
        if self.max_concurrent_rpcs and self.max_concurrent_rpcs <= self.pool_size + self.max_queue:
            raise ValueError(f"max_concurrent_rpcs: must exceed pool_size + max_queue "
                             f"({self.pool_size + self.max_queue}) so health and Stats answer under load")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: must be auto, cpu or cuda, got {self.device!r}")
        if self.voice_idle_s < 0:
            raise ValueError(f"voice_idle_s: must be >= 0, got {self.voice_idle_s}")
        if self.idle_trim_s < 0:
            raise ValueError(f"idle_trim_s: must be >= 0, got {self.idle_trim_s}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s: must be >= 0, got {self.grace_s}")
        if self.arena_extend not in ARENA_EXTEND:
            raise ValueError(f"arena_extend: must be one of {', '.join(ARENA_EXTEND)}, got {self.arena_extend!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format: must be text or json, got {self.log_format!r}")
        if self.metrics_port is not None:
            _check_range("metrics_port", self.metrics_port, 0, 65535)
        self._check_security_files()

    def _check_security_files(self) -> None:
        """Pairs that go together, and files that exist; their contents are checked by server.security."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca: mutual TLS needs --tls-cert and --tls-key too")
        if self.admin_token_file is not None and self.auth_token_file is None:
            raise ValueError("admin_token_file: admin tokens need --auth-token-file too")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "admin_token_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}: must be between {low} and {high}, got {value}")
