"""Wiring: voices, pool, scheduler, services, health, reflection; start and drain."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server import transport
from server.calls import CallContext
from server.config import Settings
from server.doors.serve import Doors, check_ports, start_doors
from server.errors import BindError, VoiceLoadError
from server.gpu import GpuMonitor
from server.memory import tune_malloc
from server.metrics import Metrics
from server.pool import SessionPool
from server.prometheus import PrometheusExporter
from server.reflection import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME, enable_reflection
from server.scheduler import Scheduler
from server.security import Security, load_security
from server.service import SynthesizerServicer
from server.stats import SnapshotBuilder, StatsServicer
from server.synthesis import Synthesizer
from server.trim import IdleTrimmer
from server.voices import VoiceRegistry
from speakstream.v1 import stats_pb2, stats_pb2_grpc, synthesizer_pb2, synthesizer_pb2_grpc

_LOGGER = logging.getLogger(__name__)

SYNTHESIZER_SERVICE = synthesizer_pb2.DESCRIPTOR.services_by_name["Synthesizer"].full_name
STATS_SERVICE = stats_pb2.DESCRIPTOR.services_by_name["Stats"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# With --auth-token-file these stay open (probes, grpcurl list/describe); everything else needs a token.
OPEN_SERVICES = (HEALTH_SERVICE, V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME)
ADMIN_METHODS = (f"/{STATS_SERVICE}/ProfileMemory",)


@dataclass
class App:
    """A running server and the parts tests and signal handlers need to reach."""

    server: grpc.aio.Server
    port: int
    settings: Settings
    voices: VoiceRegistry
    pool: SessionPool
    scheduler: Scheduler
    synthesizer: Synthesizer
    health: health.aio.HealthServicer
    metrics: Metrics = None  # type: ignore[assignment]  # set by start()
    stats: Optional[StatsServicer] = None
    exporter: Optional[PrometheusExporter] = None
    gpu: Optional[GpuMonitor] = None
    voice_reaper: Optional[asyncio.Future] = None
    trimmer: Optional[IdleTrimmer] = None
    doors: Doors = field(default_factory=Doors)
    """The HTTP and Wyoming doors that are on (server/doors/)."""
    parts: AsyncExitStack = field(default_factory=AsyncExitStack)
    """What stops after the server, last started first: doors, tracing, exporter, NVML, frontend thread,
    trimmer, workers."""

    @property
    def metrics_port(self) -> Optional[int]:
        """Port of the Prometheus endpoint, None when it is off."""
        return self.exporter.port if self.exporter else None

    @property
    def address(self) -> str:
        """host:port clients can dial."""
        return f"{self.settings.host}:{self.port}"

    async def stop(self, grace: Optional[float] = None) -> None:
        """Drain: NOT_SERVING first, then no new calls; calls in flight get `grace` s to finish.

        Health turns NOT_SERVING before anything is refused, so balancers and
        clients that watch it (round_robin with health checks) stop picking
        this server first. gRPC then stops taking calls at the transport
        (GOAWAY, listening port closed): a call refused there never reached a
        handler, so gRPC clients and nginx send it to another server. Only
        then does admission close (UNAVAILABLE), for the other doors' calls
        still arriving on connections they keep open.
        """
        if self.voice_reaper is not None:
            self.voice_reaper.cancel()
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_s if grace is None else grace
        # The other doors' calls get the same grace, side by side with the gRPC calls.
        stopping = asyncio.gather(self.server.stop(grace), self.doors.stop(grace))
        # One turn of the loop: gRPC's stop refuses new calls in its first step, before it waits
        # for the calls in flight; admission must not close before that, or a gRPC call arriving
        # meanwhile would be answered UNAVAILABLE after its headers, which no balancer retries.
        await asyncio.sleep(0)
        self.scheduler.drain()
        if self.stats is not None:
            await self.stats.sampler.close()  # WatchStats streams end; they would hold the grace period
        await stopping
        await self.parts.aclose()


def load_voices(settings: Settings) -> VoiceRegistry:
    """The voice registry, failing with VoiceLoadError before anything listens."""
    return VoiceRegistry.load(settings.voice_dir, settings.voice)


async def start(settings: Settings, voices: Optional[VoiceRegistry] = None) -> App:
    """Bind, load the default voice, start serving, and return the running App.

    The port is taken first, so a busy one fails at once (BindError), before
    any model loads. Every part started after it is registered on the App's
    exit stack; when a later step fails, the parts started so far are stopped
    (workers, trimmer, frontend thread, exporter) and the port is freed before
    the error goes up, so nothing is left running.
    """
    started = time.monotonic()
    security = load_security(settings)  # a bad certificate or token file fails before any model loads
    server = grpc.aio.server(options=transport.server_options(settings),
                             maximum_concurrent_rpcs=transport.max_concurrent_rpcs(settings),
                             interceptors=security.interceptors(OPEN_SERVICES, ADMIN_METHODS) or None)
    port = _bind(server, settings, security)
    parts = AsyncExitStack()
    try:
        check_ports(settings)
        app = await _assemble(settings, voices, server, port, parts)
        app.doors = await start_doors(app, security, parts)
        await server.start()
    except BaseException:
        await parts.aclose()
        await _close_unstarted(server)
        raise
    if settings.voice_idle_s:
        app.voice_reaper = asyncio.ensure_future(_unload_idle_voices(app.pool, settings.voice_idle_s,
                                                                     app.voices.default.name))
    _LOGGER.info("ready on %s (voice %s, pool %d, %.1f s to start)", app.address,
                 app.voices.default.name, settings.pool_size, time.monotonic() - started)
    return app


async def _assemble(settings: Settings, voices: Optional[VoiceRegistry], server: grpc.aio.Server, port: int,
                    parts: AsyncExitStack) -> App:
    """Load the voices, start the engine and the observability parts (each stopped by `parts`), add the services."""
    tune_malloc()
    voices = voices or load_voices(settings)
    pool = SessionPool(settings)
    await _load_voices(settings, voices, pool)
    metrics = Metrics(enabled=settings.metrics)
    scheduler, trimmer, synthesizer = await _start_engine(settings, pool, metrics, parts)
    gpu = GpuMonitor()
    parts.callback(gpu.close)
    builder = SnapshotBuilder(metrics, scheduler, pool, synthesizer.cache, gpu, settings.enable_profiling)
    exporter = await _start_exporter(settings, builder, parts)
    _start_profiling(settings, parts)
    stats = StatsServicer(builder, profiling=settings.enable_profiling)
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(
        SynthesizerServicer(CallContext(settings, voices, synthesizer, scheduler, metrics)), server)
    stats_pb2_grpc.add_StatsServicer_to_server(stats, server)
    health_servicer = await _add_health(server)
    enable_reflection(server, (SYNTHESIZER_SERVICE, STATS_SERVICE, HEALTH_SERVICE))
    return App(server, port, settings, voices, pool, scheduler, synthesizer, health_servicer,
               metrics=metrics, stats=stats, exporter=exporter, gpu=gpu, trimmer=trimmer, parts=parts)


async def _start_engine(settings: Settings, pool: SessionPool, metrics: Metrics,
                        parts: AsyncExitStack) -> tuple[Scheduler, IdleTrimmer, Synthesizer]:
    """The scheduler's workers, the idle trimmer and the synthesizer (frontend thread), each stopped by `parts`."""
    scheduler = Scheduler(settings.pool_size, settings.max_queue, metrics)
    await scheduler.start()
    parts.push_async_callback(scheduler.close)
    trimmer = IdleTrimmer(scheduler, pool, settings.idle_trim_s)
    trimmer.start()
    parts.push_async_callback(trimmer.stop)
    synthesizer = Synthesizer(settings, pool, scheduler, metrics)
    parts.callback(synthesizer.close)
    return scheduler, trimmer, synthesizer


async def _close_unstarted(server: grpc.aio.Server) -> None:
    """Free the port of a server that never served.

    gRPC holds a bound port until the server has run: stop() before start()
    does nothing, so the server is started (with nothing yet able to answer
    but UNIMPLEMENTED or a service being stopped) and stopped at once.
    """
    try:
        await server.start()
    finally:
        await server.stop(None)


async def _load_voices(settings: Settings, voices: VoiceRegistry, pool: SessionPool) -> None:
    """The default voice's sessions (VoiceLoadError stops start-up), and with --preload every voice's.

    Model load is seconds of blocking work: it runs off the event loop. An
    extra voice that fails to load is logged by name and dropped from the list.
    """
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _load_default, pool, voices.default, settings)
    if not settings.preload:
        return
    for voice in list(voices):
        if voice is voices.default:
            continue
        try:
            await loop.run_in_executor(None, pool.sessions, voice)
        except VoiceLoadError as exc:
            voices.skip(voice.name, str(exc))


async def _unload_idle_voices(pool: SessionPool, idle_s: float, default: str) -> None:
    """Every quarter of --voice-idle-s (at most 5 s), unload the voices idle that long."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(idle_s / 4, 5.0))
        # Dropping sessions frees ORT memory, which can take a moment: off the loop.
        await loop.run_in_executor(None, pool.unload_idle, idle_s, default)


def _load_default(pool: SessionPool, voice, settings: Settings) -> None:
    """Load the default voice's sessions; warm them up and give the warm-up's memory back."""
    sessions = pool.sessions(voice)
    if settings.warm_up:
        sessions.warm_up()
        pool.trim()


async def _add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set(SYNTHESIZER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await servicer.set(STATS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def _bind(server: grpc.aio.Server, settings: Settings, security: Security) -> int:
    """Add the listening port: TLS (mutual with a client CA) when configured, else plaintext; BindError if taken."""
    transport.check_port(settings.host, settings.port, "--port")
    address = f"{_bracket(settings.host)}:{settings.port}"
    credentials = security.credentials()
    try:
        if credentials is None:
            if security.auth is not None and settings.host not in ("127.0.0.1", "::1", "localhost"):
                _LOGGER.warning("bearer tokens travel in plaintext on %s: add --tls-cert and --tls-key", address)
            return server.add_insecure_port(address)
        mutual = security.tls is not None and security.tls.client_ca
        _LOGGER.info("TLS on %s%s%s", address, " (client certificates required)" if mutual else "",
                     ", bearer tokens required" if security.auth else "")
        return server.add_secure_port(address, credentials)
    except RuntimeError:  # "Failed to bind": taken between the check and now
        raise BindError("--port", settings.host, settings.port) from None


async def _start_exporter(settings: Settings, builder: SnapshotBuilder,
                          parts: AsyncExitStack) -> Optional[PrometheusExporter]:
    """The Prometheus endpoint on host:--metrics-port (stopped by `parts`), or None when the flag is not given."""
    if settings.metrics_port is None:
        return None
    exporter = PrometheusExporter(builder.build, asyncio.get_running_loop())
    try:
        port = exporter.start(settings.host, settings.metrics_port)
    except OSError as exc:
        raise BindError("--metrics-port", settings.host, settings.metrics_port, exc) from None
    parts.push_async_callback(exporter.stop)
    _LOGGER.info("Prometheus metrics on http://%s:%d/metrics", _bracket(settings.host), port)
    return exporter


def _start_profiling(settings: Settings, parts: AsyncExitStack) -> None:
    if settings.enable_profiling and not tracemalloc.is_tracing():
        # Every allocation records its line from now on: slower, more memory.
        tracemalloc.start()
        parts.callback(tracemalloc.stop)
        _LOGGER.warning("allocation tracing is on (--enable-profiling): expect slower requests")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
