"""ONNX Runtime sessions for each voice: providers, session options, runs, healing.

One copy of a voice's model (its encoder and decoder sessions, or its whole
graph: server/inference.py) holds the weights once (~63 MB for a medium
voice); ORT's `run` is thread-safe and releases the GIL, so several runs
share a copy and the scheduler's workers, not the copies, set the
parallelism. A copy whose run fails (other than by cancellation) is replaced.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from server import graph as graph_split
from server.config import Settings
from server.errors import InferenceFailed, VoiceLoadError
from server.graph import SplitGraph, WholeGraph
from server.inference import NEUTRAL, Encoded, Scales, VoiceModel
from server.memory import release_free_heap
from server.voices import Voice

_LOGGER = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def providers_for(settings: Settings, available: Sequence[str]) -> list[tuple[str, dict]]:
    """The provider list (name, options) for `settings.device` given ORT's available providers.

    "auto" takes CUDA when ORT offers it; "cuda" demands it. CPU is always
    last, so nodes CUDA cannot run still have a home.
    """
    cpu: tuple[str, dict] = (_CPU, {})
    if settings.device == "cpu":
        return [cpu]
    if _CUDA not in available:
        if settings.device == "cuda":
            raise RuntimeError("--device cuda: this onnxruntime build has no CUDAExecutionProvider")
        return [cpu]
    if settings.device == "auto" and not has_cuda_driver():
        return [cpu]
    return [(_CUDA, cuda_options(settings)), cpu]


def has_cuda_driver() -> bool:
    """Whether the NVIDIA driver library loads, i.e. a GPU can be there at all.

    onnxruntime-gpu lists CUDAExecutionProvider even on machines without a
    GPU; asking it for one there only produces loader errors.
    """
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_options(settings: Settings) -> dict:
    """CUDA provider options: grow the arena by powers of two, search conv algorithms once."""
    options = {
        "device_id": str(settings.cuda_device_id),
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
    }
    if settings.gpu_mem_limit_mb:
        options["gpu_mem_limit"] = str(settings.gpu_mem_limit_mb * 1024 * 1024)
    return options


def session_options(settings: Settings) -> ort.SessionOptions:
    """Session options for inference on a shared machine (see docs/ARCHITECTURE.md)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.enable_cpu_mem_arena = settings.cpu_mem_arena
    if settings.cpu_mem_arena:
        _register_cpu_arena(settings)
        opts.add_session_config_entry("session.use_env_allocators", "1")
    # Spinning idle threads burn the core another run needs (see Settings).
    spin = "1" if settings.spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # Warnings include "nodes placed on CPU" under CUDA (Memcpy slowdowns).
    opts.log_severity_level = 2
    return opts


_ARENA_LOCK = threading.Lock()
_arena_registered = False


def _register_cpu_arena(settings: Settings) -> None:
    """Register, once per process, the CPU arena every session shares.

    Power-of-two growth doubles each extension, so after hours of segments of
    every length one late extension could add 64 MB or more at once
    (measured: RSS 265 -> 366 MB over 400 runs); capping an extension at
    `arena_max_extend_mb` keeps the steps small (268 -> 328 MB). Growth by
    exactly what is asked fragments worse (407 -> 552 MB). The first
    settings to register win: later ones in the same process share it.
    """
    global _arena_registered
    with _ARENA_LOCK:
        if _arena_registered:
            return
        if settings.arena_extend == "requested":
            cfg = {"arena_extend_strategy": 1}
        else:
            cfg = {"arena_extend_strategy": 0,
                   "max_power_of_two_extend_bytes": settings.arena_max_extend_mb * 1024 * 1024}
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(cfg))
        _arena_registered = True


@dataclass
class SessionSlot:
    """One loaded copy of a voice's model (encoder and decoder, or the whole graph), with its counters."""

    model: Union[VoiceModel, _FailOnce]
    """The copy's sessions; for one run after inject_failure, a stand-in that fails."""
    index: int
    provider: str
    runs: int = 0
    failures: int = 0
    busy_s: float = 0.0
    in_flight: int = 0
    retired: bool = False


class VoiceSessions:
    """The sessions of one voice; each run goes to the least busy copy.

    A run is one encoder job (a segment's ids to its latent frames) or one
    decoder job (a window of those frames to audio); any copy decodes what
    any other encoded, since they hold the same weights.
    """

    def __init__(self, voice: Voice, settings: Settings):
        self.voice = voice
        self._settings = settings
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._conv_2d = settings.conv_2d
        graph, first = self._first_copy()
        self.slots = [first] + [self._load(graph) for _ in range(settings.sessions - 1)]
        del graph  # the sessions hold the weights now
        self.split = self.slots[0].model.split
        self.hop, self.timestamps = self._probe()
        self.last_used = time.monotonic()
        """time.monotonic() of the latest run's start or end (for --voice-idle-s)."""

    @property
    def in_flight(self) -> int:
        """Runs on this voice's sessions now."""
        return sum(slot.in_flight for slot in self.slots)

    def _first_copy(self) -> tuple[SplitGraph | WholeGraph, SessionSlot]:
        """The voice's graph and its first loaded copy; a 2-D rewrite that ONNX Runtime
        refuses falls back to the graph's own convolutions, with one log line."""
        graph = self._graph()
        try:
            return graph, self._load(graph)
        except Exception as exc:  # any refusal of the rewrite: the original is tried next
            if not self._conv_2d:
                raise
            _LOGGER.warning("voice %s: its convolutions rewritten in 2-D did not load (%s); running the "
                            "graph's own", self.voice.name, str(exc).splitlines()[0] if str(exc) else exc)
        self._conv_2d = False
        graph = self._graph()
        return graph, self._load(graph)

    def _graph(self) -> SplitGraph | WholeGraph:
        """The voice's graph, split at its decoder unless that is turned off or impossible."""
        loaded = graph_split.load(str(self.voice.model_path), self._settings.decoder_windows,
                                  self._settings.graph_cache, self._conv_2d)
        if isinstance(loaded, WholeGraph) and self._settings.decoder_windows:
            _LOGGER.info("voice %s runs whole, not in decoder windows: %s", self.voice.name, loaded.reason)
        return loaded

    def _load(self, graph: SplitGraph | WholeGraph) -> SessionSlot:
        providers = providers_for(self._settings, ort.get_available_providers())
        wanted = providers[0][0]

        def make_session(model: str) -> ort.InferenceSession:
            return ort.InferenceSession(model, sess_options=session_options(self._settings),
                                        providers=[name for name, _ in providers],
                                        provider_options=[opts for _, opts in providers])

        model = VoiceModel(graph, make_session, self._settings.window_context_frames)
        if model.provider != wanted:
            _LOGGER.warning("voice %s: %s failed to start, running on %s", self.voice.name, wanted, model.provider)
        elif self._settings.device == "auto" and model.provider == _CPU:
            _LOGGER.info("voice %s: no CUDA device, running on the CPU", self.voice.name)
        return SessionSlot(model=model, index=next(self._counter), provider=model.provider)

    def _probe(self) -> tuple[int, bool]:
        """(hop, timestamps): audio samples per latent frame, and whether the durations are
        usable, i.e. they account for every sample of a segment's audio."""
        model = self.slots[0].model
        encoded = model.encode(_filler_ids(self.voice, 8), NEUTRAL, 0)
        if self.split:
            samples = model.decode_all(encoded).size
            hop = samples // encoded.frames
            exact = samples == hop * encoded.frames
        else:
            assert encoded.audio is not None  # a whole graph's run gives its audio
            samples = encoded.audio.size
            hop = samples // encoded.frames if encoded.frames else 0
            exact = bool(encoded.frames) and samples == hop * encoded.frames
        timestamps = encoded.durations is not None and exact and int(encoded.durations.sum()) == encoded.frames
        if encoded.durations is None:
            _LOGGER.info("voice %s: timestamps unavailable (no duration tensor in the graph)", self.voice.name)
        elif not timestamps:
            _LOGGER.warning("voice %s: timestamps unavailable (durations do not account for the audio: "
                            "%d samples, %d frames)", self.voice.name, samples, encoded.frames)
        return hop, timestamps

    def encode(self, ids: Sequence[int], scales: Scales, speaker_id: int,
               run_options: Optional[ort.RunOptions] = None) -> Encoded:
        """Encode one segment (a split voice) or synthesize it whole; blocking, call from a worker thread."""
        return self._on_slot(lambda model, options: model.encode(ids, scales, speaker_id, options), run_options)

    def decode(self, encoded: Encoded, start: int, stop: int,
               run_options: Optional[ort.RunOptions] = None) -> np.ndarray:
        """Audio (float32) of latent frames [start, stop) of `encoded`; blocking, from a worker thread."""
        return self._on_slot(lambda model, options: model.decode(encoded, start, stop, self.hop, options),
                             run_options)

    def run(self, ids: Sequence[int], scales: Scales, speaker_id: int) -> np.ndarray:
        """A whole segment's audio in one go (benchmarks, warm-up): encode, then decode every frame."""
        encoded = self.encode(ids, scales, speaker_id)
        return encoded.audio if encoded.audio is not None else self.decode(encoded, 0, encoded.frames)

    def _on_slot(self, work, run_options: Optional[ort.RunOptions]):
        """work(model, run_options) on the least busy copy, counted; a failure other than a
        cancellation retires that copy for a fresh one."""
        slot = self._pick()
        run_options = self._maybe_shrink(slot, run_options)
        start = time.monotonic()
        try:
            result = work(slot.model, run_options)
        except Exception as exc:
            terminated = _terminated(run_options)
            self._after_run(slot, time.monotonic() - start, failed=not terminated)
            if terminated:
                raise
            raise InferenceFailed(f"inference failed on voice {self.voice.name}: {exc}") from exc
        self._after_run(slot, time.monotonic() - start, failed=False)
        return result

    def _maybe_shrink(self, slot: SessionSlot, run_options: Optional[ort.RunOptions]) -> Optional[ort.RunOptions]:
        every = self._settings.arena_shrink_every
        if every and slot.runs % every == every - 1:
            run_options = run_options or ort.RunOptions()
            # Give the arena's free chunks back to the OS now and then, so
            # peak RSS follows the runs in flight, not every size ever seen.
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return run_options

    def warm_up(self) -> None:
        """One first-segment-sized run on each copy, so the first call does not pay ORT's first-run set-up."""
        ids = _filler_ids(self.voice, 40)
        for slot in list(self.slots):
            encoded = slot.model.encode(ids, NEUTRAL, 0)
            if self.split:
                slot.model.decode(encoded, 0, min(encoded.frames, self._settings.window_frames), self.hop)

    def trim(self) -> None:
        """Give the arenas' free memory back to the OS (blocking; call while no run is in flight).

        ORT shrinks an arena only at the end of a run that asks for it, so a
        tiny run asks; it takes a few milliseconds.
        """
        ids = _filler_ids(self.voice, 1)
        for slot in list(self.slots):
            options = ort.RunOptions()
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
            slot.model.encode(ids, NEUTRAL, 0, options)

    def inject_failure(self, index: int) -> None:
        """Test hook: the next run of copy `index` raises, as a failing ONNX Runtime run would.

        Only tests call this (tests/test_faults.py): the copy's model is wrapped
        for one run, so runs pay nothing for the hook; the call of that run
        gets INTERNAL and the copy is replaced, through the real failure path.
        """
        with self._lock:
            slot = next(s for s in self.slots if s.index == index)
            slot.model = _FailOnce(slot.model, slot)

    def _pick(self) -> SessionSlot:
        with self._lock:
            slot = min(self.slots, key=lambda s: s.in_flight)
            slot.in_flight += 1
            self.last_used = time.monotonic()
            return slot

    def _after_run(self, slot: SessionSlot, seconds: float, failed: bool) -> None:
        with self._lock:
            slot.in_flight -= 1
            self.last_used = time.monotonic()
            slot.runs += 1
            slot.busy_s += seconds
            if failed:
                slot.failures += 1
        if failed:
            self._replace(slot)

    def _replace(self, broken: SessionSlot) -> None:
        """Swap a failed copy for a fresh one; runs still on the old one finish there."""
        with self._lock:
            if broken.retired:
                return
            broken.retired = True
        try:
            fresh = self._load(self._graph())
        except Exception:  # keep serving with the old copy rather than none
            _LOGGER.exception("voice %s: could not reload session %d", self.voice.name, broken.index)
            broken.retired = False
            return
        with self._lock:
            self.slots[self.slots.index(broken)] = fresh
        _LOGGER.warning("voice %s: replaced failed session %d with %d",
                        self.voice.name, broken.index, fresh.index)


class _FailOnce:
    """A model whose next encode or decode raises (the inject_failure test hook), then steps aside."""

    def __init__(self, model: Union[VoiceModel, _FailOnce], slot: SessionSlot):
        self._model, self._slot = model, slot

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def _fail(self, *args, **kwargs):
        self._slot.model = self._model
        raise RuntimeError(f"injected failure of session {self._slot.index} (test hook)")

    encode = decode = _fail


def _filler_ids(voice: Voice, phonemes: int) -> list[int]:
    """Ids of `phonemes` arbitrary phonemes in the model's ^ _ p _ ... $ layout (content does not matter)."""
    id_map = voice.config.phoneme_id_map
    symbols = [p for p in id_map if p not in ("^", "_", "$", " ")][:8] or ["_"]
    ids = [*id_map["^"], *id_map["_"]]
    for i in range(phonemes):
        ids += [*id_map[symbols[i % len(symbols)]], *id_map["_"]]
    return ids + list(id_map["$"])


def _terminated(run_options: Optional[ort.RunOptions]) -> bool:
    return run_options is not None and run_options.terminate


class SessionPool:
    """Sessions per voice, loaded on first use (the default voice at start-up).

    Voices load independently: loading one holds only that voice's lock, so
    calls for voices already loaded never wait behind it. Sessions are per
    voice; the scheduler's workers are shared by all voices (docs/ARCHITECTURE.md).
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._voices: dict[str, VoiceSessions] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._has_durations: dict[str, bool] = {}

    def sessions(self, voice: Voice) -> VoiceSessions:
        """The sessions of `voice`, loading them if needed (blocking; call off the loop).

        :raises VoiceLoadError: the model does not load; the message names the file.
        """
        with self._lock:
            loaded = self._voices.get(voice.name)
            if loaded is not None:
                return loaded
            loading = self._loading.setdefault(voice.name, threading.Lock())
        with loading:  # one load per voice, however many calls wait for it
            with self._lock:
                loaded = self._voices.get(voice.name)
            if loaded is None:
                started = time.monotonic()
                try:
                    loaded = VoiceSessions(voice, self._settings)
                except Exception as exc:
                    raise VoiceLoadError(f"cannot load the model {voice.model_path}: {exc}") from exc
                with self._lock:
                    self._voices[voice.name] = loaded
                _LOGGER.info("voice %s loaded in %.1f s", voice.name, time.monotonic() - started)
            return loaded

    def unload_idle(self, idle_s: float, keep: str, now: Optional[float] = None) -> list[str]:
        """Drop the sessions of voices (other than `keep`) without a run for `idle_s` seconds.

        A voice with a run in flight is never dropped. A call that already
        holds a voice's sessions finishes on them; the memory goes when it ends.
        :returns: the names of the voices unloaded.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [name for name, sessions in self._voices.items()
                    if name != keep and sessions.in_flight == 0 and now - sessions.last_used >= idle_s]
            for name in idle:
                del self._voices[name]
        for name in idle:
            _LOGGER.info("voice %s unloaded after %.0f s idle", name, idle_s)
        return idle

    def timestamps(self, voice: Voice) -> bool:
        """Whether `voice` gives word timings: checked on its sessions when loaded, else on its
        graph's structure (blocking the first time for a voice: call off the loop)."""
        loaded = self.loaded(voice)
        if loaded is not None:
            return loaded.timestamps
        known = self._has_durations.get(voice.name)
        if known is None:
            try:
                known = graph_split.has_durations(str(voice.model_path), self._settings.graph_cache,
                                                 self._settings.conv_2d)
            except Exception:  # noqa: BLE001 - an unreadable model fails its calls, named, elsewhere
                known = False
            self._has_durations[voice.name] = known
        return known

    def loaded(self, voice: Voice) -> Optional[VoiceSessions]:
        """The sessions of `voice` if already loaded, else None (non-blocking)."""
        return self._voices.get(voice.name)

    def all(self) -> list[VoiceSessions]:
        """Every loaded voice's sessions."""
        return list(self._voices.values())

    def trim(self) -> None:
        """Return free inference memory to the OS: every arena, then the C heap (blocking)."""
        for sessions in self.all():
            sessions.trim()
        release_free_heap()
