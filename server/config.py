"""Server settings: one frozen dataclass; each field also defines its flag.

Every module receives the `Settings` (or the part it needs) instead of reading
flags or the environment itself, so tests build settings in one line. A field
is declared once with `setting(...)`: its default, its --help group and text,
its flag name (derived from the field's name unless given) and its range or
choices. __main__ builds the command line from these, and __post_init__
checks ranges and choices from the same declaration, so adding a setting is
adding one field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from server.requestlog import LOG_FORMATS

ARENA_EXTEND = ("power-of-two", "requested")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# --help groups, in the order they are listed: key -> title.
GROUPS = {
    "network": "network",
    "voices": "voices",
    "engine": "engine (inference)",
    "memory": "memory",
    "limits": "limits",
    "security": "security: TLS and authentication (docs/OPERATIONS.md)",
    "doors": "other doors: the OpenAI speech API, WebSocket and page over HTTP; Wyoming (docs/API.md)",
    "observability": "observability: logs, metrics, profiling",
}


def _graph_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "speakstream" / "graphs"


def _cores() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Option:
    """How a Settings field appears on the command line and which values it accepts."""

    group: str
    help: str
    flag: str = ""
    """The flag; empty: --field-name."""
    range: Optional[tuple[float, Optional[float]]] = None
    """Inclusive (low, high); high None = no upper bound."""
    choices: tuple[str, ...] = ()
    parse: Optional[Callable[[str], Any]] = None
    """Turns the flag's text into the value when the field's type cannot (e.g. str.upper)."""

    def check(self, name: str, value: Any) -> None:
        """Raise ValueError("name: must be ...") when `value` is outside the range or choices."""
        if value is None:  # an Optional setting left unset
            return
        if self.range is not None:
            low, high = self.range
            if high is None and not value >= low:  # written so that NaN fails too
                raise ValueError(f"{name}: must be >= {low}, got {value}")
            if high is not None and not low <= value <= high:
                raise ValueError(f"{name}: must be between {low} and {high}, got {value}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{name}: must be one of {', '.join(self.choices)}, got {value!r}")


def setting(default: Any, group: str, help: str, *, factory: Optional[Callable[[], Any]] = None,
            **details: Any) -> Any:
    """A Settings field: its default (or `factory`), --help group and text, and the other Option `details`."""
    assert group in GROUPS, group
    metadata = {"option": Option(group, help, **details)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option(field: dataclasses.Field) -> Option:
    """The command-line definition of one Settings field."""
    return field.metadata["option"]


def flag(field: dataclasses.Field) -> str:
    """The flag of a Settings field: its Option's, else --field-name."""
    return option(field).flag or "--" + field.name.replace("_", "-")


def flag_of(name: str) -> Optional[str]:
    """The flag of the Settings field called `name`, None when there is no such field."""
    return next((flag(f) for f in dataclasses.fields(Settings) if f.name == name), None)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server can be told at start-up (fields in --help order, by group)."""

    # --- network
    host: str = setting("127.0.0.1", "network", "address to bind")
    """Address to bind. Loopback unless told otherwise."""

    port: int = setting(50051, "network", "port; 0 picks a free one", range=(0, 65535))
    """TCP port; 0 picks a free one (printed in the ready line)."""

    keepalive_time_s: float = setting(60.0, "network", "ping connections idle this long", range=(1, 86_400))
    """Ping a connection idle this long to find dead peers."""

    keepalive_timeout_s: float = setting(20.0, "network", "drop a connection whose ping is unanswered this long",
                                         range=(1, 3_600))
    """Close a connection whose keepalive ping is not answered in this time."""

    min_client_ping_interval_s: float = setting(10.0, "network", "clients pinging more often are disconnected",
                                                range=(0, 86_400))
    """Clients may ping no more often than this; faster pingers are disconnected (too_many_pings)."""

    max_connection_age_s: float = setting(
        0.0, "network", "close connections this old so balancers can spread clients again; 0 = never",
        range=(0, 10_000_000))
    """Close connections after this long (clients reconnect, balancers rebalance); 0 = never."""

    # --- voices
    voice: str = setting("", "voices", "default voice name (default: the bundled en_US-joe-medium)")
    """Default voice name; empty means the bundled en_US-joe-medium."""

    voice_dir: Optional[Path] = setting(None, "voices", "directory of extra Piper voices (*.onnx + *.onnx.json), "
                                                        "named after their files")
    """Directory of extra Piper voices (*.onnx + *.onnx.json)."""

    preload: bool = setting(False, "voices", "load every voice's model at start-up, skipping broken ones "
                                             "(default: the default voice at start-up, the others on first use)")
    """Load every voice's sessions at start-up (a broken extra voice is skipped then);
    False: the default voice at start-up, the others on first use."""

    voice_idle_s: float = setting(0.0, "voices", "unload a voice other than the default after this many idle "
                                                 "seconds; 0 = never", range=(0, None))
    """Unload a voice other than the default after this many seconds without a run; 0 = never."""

    lexicon: Optional[Path] = setting(None, "voices", "pronunciation lexicon: one 'word or phrase<TAB>IPA' per "
                                                      "line, [voice] sections (docs/API.md, Lexicons; default: none)")
    """The server's lexicon file (server/lexicon.py): looked up before espeak-ng, for every voice or one.
    Read at start-up: a bad line or an IPA symbol a voice lacks stops the server."""

    graph_cache: Path = setting(None, "voices", "folder for the voices' split graphs, made once per model and "
                                                "named after its sha256 (default: $XDG_CACHE_HOME/speakstream/"
                                                "graphs, else ~/.cache/speakstream/graphs)", factory=_graph_cache)
    """Where server/graph.py keeps each voice's encoder and decoder graphs between runs.

    ONNX Runtime then loads them from files, so no copy of the model stays in
    memory (measured: 80 MB more RSS when sessions were made from bytes).
    An unwritable folder falls back to a temporary one for the process.
    """

    # --- engine
    pool_size: int = setting(None, "engine", "inferences run at the same time, over all voices; each uses "
                                             "--intra-op-threads threads (default: the number of cores, "
                                             "%(default)s here)", factory=_cores, range=(1, 256))
    """Inference runs (encoder jobs and decoder windows) in flight at once, over all voices.

    One single-threaded run per core by default: the jobs are small (a
    segment's encoder, a window of the decoder), so two runs side by side
    keep both cores busy (the parallel floor of docs/BENCHMARKS.md) while a
    new call's first job waits at most for one short job to end; a window's
    activations are a few tens of MB, so runs side by side cost little memory.
    """

    sessions: int = setting(1, "engine", "copies of each voice's model loaded, for isolation only: runs share "
                                         "the sessions, so more do not run more at once", range=(1, 64))
    """ONNX Runtime sessions per voice; runs share them (ORT run is thread-safe)."""

    intra_op_threads: int = setting(1, "engine", "threads ONE inference may use; more than 1 only with fewer "
                                                 "--pool-size workers than cores; 0 = ONNX Runtime's choice",
                                    range=(0, 256))
    """Threads one run may use (1: the cores are shared out by running one job per core)."""

    inter_op_threads: int = setting(1, "engine", "threads for parallel graph branches", range=(0, 256))
    """Threads for parallel graph branches (sequential execution uses one)."""

    allow_spinning: Optional[bool] = setting(None, "engine", "let idle ORT threads spin "
                                                             "(default: only when --pool-size is 1)")
    """Let idle ORT threads spin between ops. None: only when pool_size is 1.

    Spinning shortens a run (measured: 84 vs 95 ms for a first segment), but
    with runs side by side a spinning pool steals the core another run needs.
    """

    device: str = setting("auto", "engine", "inference device; auto = CUDA when available",
                          choices=("auto", "cpu", "cuda"))
    """Inference device: "auto" (CUDA when available, else CPU), "cpu", "cuda"."""

    cuda_device_id: int = setting(0, "engine", "GPU index", range=(0, 1023))
    """GPU index for the CUDA provider."""

    warm_up: bool = setting(True, "engine", "run each session once at start-up so the first call is fast "
                                            "(default: on)")
    """Run each session once at start-up (then trim), so the first call is as fast as the rest."""

    max_phonemes_per_chunk: int = setting(100, "engine", "phonemes in one inference at most; bounds memory",
                                          range=(16, 100_000))
    """Cap on phonemes in one inference, so a huge sentence cannot blow up memory."""

    first_chunk_phonemes: int = setting(30, "engine", "target size of a request's first inference; "
                                                      "smaller = sooner audio", range=(8, 100_000))
    """Target length of a request's first inference; short = fast first audio."""

    first_clause_cut: bool = setting(True, "engine", "end a turn's first inference at its first comma, "
                                                     "semicolon or colon (\"Sure, | I can help.\"): sooner first "
                                                     "audio, cut where the speaker pauses (default: on)")
    """Cut a turn's first segment after its first clause mark even when the sentence fits first_chunk_phonemes."""

    lookahead_chunks: int = setting(3, "engine", "inferences (encoder segments or decoder windows) one call "
                                                 "may have queued, running or waiting to be sent", range=(1, 64))
    """Jobs one call may have in flight: each is a segment's encoder or one decoder window."""

    decoder_windows: bool = setting(True, "engine", "run each segment's encoder once and its audio decoder in "
                                                    "windows as they are needed (default: on; off: each "
                                                    "segment's whole graph in one run)")
    """Split each voice at its decoder (server/graph.py) and decode audio window by window.

    Off runs each segment's whole graph as one inference (the first
    generation's engine); voices whose graph cannot be split run whole anyway.
    """

    conv_2d: bool = setting(True, "engine", "run the voices' 1-D convolutions as 2-D ones, which ONNX Runtime "
                                            "computes faster (same audio to float rounding; default: on; off: "
                                            "the graph's own convolutions)")
    """Rewrite each voice's graphs with server/conv2d.py when they are made (kept in graph_cache)."""

    first_window_frames: int = setting(8, "engine", "latent frames in a turn's first decoder window (x 256 "
                                                     "samples for Piper voices: 8 = 0.09 s at 22.05 kHz); "
                                                     "smaller = sooner first audio", range=(1, 4096))
    """Frames of a turn's first decoder window; each next window doubles, up to window_frames."""

    window_frames: int = setting(128, "engine", "largest decoder window in latent frames; larger = less "
                                                "overlap work, longer jobs (a new call may wait for one)",
                                 range=(1, 65_536))
    """Largest decoder window: each costs its own 2 x context frames of overlap."""

    window_context_frames: int = setting(8, "engine", "latent frames decoded on each side of a window and "
                                                      "dropped, so windows join seamlessly (8: 55-65 dB SNR "
                                                      "against a whole-segment decode; 12: identical)",
                                         range=(0, 256))
    """Overlap on each side of a decoder window (measured: docs/ARCHITECTURE.md, Decoder windows)."""

    # --- memory
    cache_mb: int = setting(64, "memory", "audio cache for deterministic requests, MiB; 0 = off",
                            range=(0, 1_000_000))
    """Audio cache bound in MiB (deterministic requests only); 0 turns it off."""

    cpu_mem_arena: bool = setting(True, "memory", "ONNX Runtime CPU memory arena (default: on)", flag="--cpu-arena")
    """Use ONNX Runtime's CPU memory arena (faster; holds peak activation memory)."""

    arena_extend: str = setting("power-of-two", "memory", "how the CPU arena grows: by powers of two or by "
                                                          "exactly what a run asks", choices=ARENA_EXTEND)
    """How the shared CPU arena grows: "power-of-two" (ORT's way) or "requested" (by exactly what a run asks).

    At concurrency 8 power-of-two peaked at ~370 MB RSS, "requested" at
    ~550-630 MB (its exact-size regions fragment); see docs/BENCHMARKS.md.
    """

    arena_max_extend_mb: int = setting(1024, "memory", "largest single growth of the power-of-two CPU arena, MiB",
                                       range=(1, 1 << 20))
    """Largest single growth of the power-of-two arena, in MiB (ORT's default, 1 GiB).

    Smaller steps grow RSS more smoothly over thousands of runs (in one
    process, 400 runs: 16 MiB steps 268 -> 328 MB, 1 GiB 265 -> 366 MB) but
    did not lower the peak at concurrency 8, so the default stays ORT's.
    """

    arena_shrink_every: int = setting(0, "memory", "return the arena's free memory to the OS every N runs, "
                                                   "0 = never", range=(0, 1_000_000))
    """Return the arena's free chunks to the OS after every Nth run of a session; 0 = never.

    Every run (1) meets tight memory budgets at ~13% less throughput; every
    100 runs raised the peak at concurrency 8 (the arena regrows in steps).
    """

    idle_trim_s: float = setting(10.0, "memory", "give free inference memory back after this many idle seconds, "
                                                 "0 = never", range=(0, None))
    """After this many seconds with no call, give the arenas' free memory back to the OS; 0 = never."""

    gpu_mem_limit_mb: int = setting(0, "memory", "CUDA arena cap in MiB, 0 = none", range=(0, 1 << 20))
    """Cap of the CUDA arena in MiB; 0 = no cap."""

    # --- limits
    max_queue: int = setting(64, "limits", "calls admitted beyond --pool-size before RESOURCE_EXHAUSTED",
                             range=(0, 100_000))
    """Calls admitted beyond pool_size; more get RESOURCE_EXHAUSTED at once."""

    max_chars: int = setting(10_000, "limits", "longest request text in characters", range=(1, 10_000_000))
    """Longest request text, in characters."""

    max_response_mb: int = setting(64, "limits", "largest unary Synthesize audio in MiB; longer: "
                                                 "RESOURCE_EXHAUSTED, stream it",
                                   range=(1, 2047))  # gRPC messages stop at 2 GiB
    """Largest audio one unary Synthesize response may carry, MiB (10,000 characters of
    LINEAR16 at 22.05 kHz are ~30 MB); longer audio gets RESOURCE_EXHAUSTED: stream it."""

    max_concurrent_rpcs: int = setting(0, "limits", "calls in progress gRPC accepts at all; "
                                                    "0 = 2 x (pool-size + max-queue) + 64", range=(0, 1_000_000))
    """gRPC's cap on calls in progress; 0 = 2 x (pool_size + max_queue) + 64 (server/transport.py)."""

    max_streams_per_connection: int = setting(100, "limits", "calls one client connection may have open; "
                                                             "more wait", range=(1, 1_000_000))
    """HTTP/2 streams (calls) one client connection may have open; more wait in the client."""

    grace_s: float = setting(10.0, "limits", "seconds in-flight calls get to finish on SIGTERM", range=(0, None))
    """On SIGTERM, how long in-flight calls may run before the server stops."""

    # --- security
    tls_cert: Optional[Path] = setting(None, "security", "server certificate chain, PEM; with --tls-key serves TLS")
    """Server certificate chain (PEM); with `tls_key`, the port serves TLS instead of plaintext."""

    tls_key: Optional[Path] = setting(None, "security", "private key of --tls-cert, PEM")
    """Private key (PEM) of `tls_cert`."""

    tls_client_ca: Optional[Path] = setting(None, "security", "CA certificates, PEM: require client certificates "
                                                              "signed by them (mutual TLS)")
    """CA certificates (PEM) for mutual TLS: clients must present a certificate they signed."""

    auth_token_file: Optional[Path] = setting(None, "security", "bearer tokens, one per line: Synthesizer and "
                                                                "Stats calls need one (default: open)")
    """Bearer tokens, one per line; when set, Synthesizer and Stats calls need one (health, reflection stay open)."""

    admin_token_file: Optional[Path] = setting(None, "security", "admin bearer tokens, one per line: only they "
                                                                 "may call Stats.ProfileMemory")
    """Bearer tokens for admin-only methods (Stats.ProfileMemory), one per line; they work everywhere."""

    # --- doors
    http_port: Optional[int] = setting(None, "doors", "serve the OpenAI speech API (/v1/audio/speech), the "
                                                      "WebSocket live endpoint (/v1/audio/live) and a page to try "
                                                      "them (/) on http://HOST:PORT, https with --tls-cert; 0 picks "
                                                      "a free port (default: off)", range=(0, 65535))
    """Port of the HTTP door (server/doors/http.py) on `host`; None = off, 0 = a free port."""

    wyoming_port: Optional[int] = setting(None, "doors", "serve the Wyoming protocol (Home Assistant) on "
                                                         "tcp://HOST:PORT; it has no tokens and no TLS "
                                                         "(0 picks a free port; default: off)", range=(0, 65535))
    """Port of the Wyoming door (server/doors/wyoming.py) on `host`; None = off, 0 = a free port."""

    openai_voices: str = setting("", "doors", "OpenAI voice names to voices, NAME=VOICE[:SPEAKER] separated by "
                                              "commas, e.g. 'alloy=en_US-joe-medium,echo=en_US-lessac' (default: "
                                              "every OpenAI voice name is the default voice)")
    """The OpenAI door's table of voice names (server/doors/openai_api.py); names not listed are the default voice."""

    http_read_timeout_s: float = setting(10.0, "doors", "seconds an HTTP client has to send a request's headers "
                                                        "and its body; slower uploads get 408",
                                         range=(0.1, 3_600))
    """Time for a request's headers and body on the HTTP door (slow-loris uploads end with 408)."""

    # --- observability
    log_level: str = setting("INFO", "observability", "logging level, upper or lower case",
                             choices=LOG_LEVELS, parse=str.upper)
    """Python logging level name."""

    log_format: str = setting("text", "observability", "text for people, json for one object per line",
                              choices=LOG_FORMATS)
    """Log lines as "text" (for people) or "json" (one object per line, for machines)."""

    metrics_port: Optional[int] = setting(None, "observability", "serve Prometheus metrics on "
                                                                 "http://HOST:PORT/metrics; 0 picks a free port "
                                                                 "(default: off)", range=(0, 65535))
    """Port of the Prometheus /metrics endpoint on `host`; None = off, 0 = a free port."""

    metrics: bool = setting(True, "observability", "record request counters and histograms "
                                                   "(default: on; --no-metrics only to measure their cost)")
    """Record request counters and histograms (Stats, Prometheus); off only to measure their cost."""

    enable_profiling: bool = setting(False, "observability", "trace allocations so Stats.ProfileMemory works "
                                                             "(default: off; slows the server)")
    """Trace allocations (tracemalloc) so Stats.ProfileMemory works; slows every allocation."""

    @property
    def spinning(self) -> bool:
        """Whether ORT threads spin, after applying the default."""
        return self.pool_size == 1 if self.allow_spinning is None else self.allow_spinning

    def __post_init__(self):
        for f in dataclasses.fields(self):
            option(f).check(f.name, getattr(self, f.name))
        if self.max_concurrent_rpcs and self.max_concurrent_rpcs <= self.pool_size + self.max_queue:
            raise ValueError(f"max_concurrent_rpcs: must exceed pool_size + max_queue "
                             f"({self.pool_size + self.max_queue}) so health and Stats answer under load")
        self._check_security_files()
        if self.lexicon is not None and not Path(self.lexicon).is_file():
            raise ValueError(f"lexicon: no such file: {self.lexicon}")

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
