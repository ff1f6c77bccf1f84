"""Request to audio: the streaming pipeline.

For one call: the frontend yields segments one sentence at a time (on its
own thread, espeak-ng is not thread-safe); up to `lookahead_chunks` segments
are queued on the scheduler at once, so the next one synthesizes while the
previous one streams; audio leaves in order as float32 pieces. Leaving the
generator early (cancel, deadline, error) cancels every queued or running
inference of the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Iterator, Optional

import numpy as np

from server.cache import AudioCache
from server.config import Settings
from server.errors import InvalidArgument, VoiceLoadError, VoiceUnavailable
from server.frontend import Frontend, Segment
from server.options import SynthesisOptions
from server.pool import SessionPool, VoiceSessions
from server.scheduler import Job, Scheduler

_LOGGER = logging.getLogger(__name__)

# A first guess of audio per phoneme at speed 1, to know when a stream's
# later segments fall due before their audio exists; refined by measurement.
_SECONDS_PER_PHONEME = 0.065


@dataclass(frozen=True)
class AudioPiece:
    """Audio of one segment (float32, mono), with the text it speaks."""

    audio: np.ndarray
    span: tuple[int, int]
    sentence_index: int
    final: bool


@dataclass
class _Pending:
    segment: Segment
    audio: asyncio.Future
    job: Optional[Job] = None  # None when the audio came from the cache
    cache_key: Optional[tuple] = None  # set when the result should be cached


class Synthesizer:
    """Owns the frontend thread and turns validated requests into audio streams."""

    def __init__(self, settings: Settings, pool: SessionPool, scheduler: Scheduler):
        self._settings = settings
        self._pool = pool
        self._scheduler = scheduler
        self._metrics = scheduler.metrics  # one registry per server, held by the scheduler
        self.cache = AudioCache(settings.cache_mb * 1024 * 1024)
        self._frontend = Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes)
        self._frontend_thread = ThreadPoolExecutor(1, thread_name_prefix="frontend")

    def close(self) -> None:
        """Stop the frontend thread."""
        self._frontend_thread.shutdown(wait=False, cancel_futures=True)

    async def stream(self, options: SynthesisOptions, deadline: Optional[float] = None,
                     owner: str = "") -> AsyncIterator[AudioPiece]:
        """Audio pieces of `options.text` in order; the last has `final` set.

        :param deadline: time.monotonic() after which queued work is dropped.
        :param owner: the request id, shown with the call's inferences.
        """
        sessions = await self._sessions(options)
        segments = self._frontend.segments(options.text, options.voice.config,
                                           options.scales.length_scale)
        call = _Call(self, sessions, options, segments, deadline, owner)
        try:
            async for piece in call.run():
                yield piece
        finally:
            call.cancel_all()

    async def _sessions(self, options: SynthesisOptions) -> VoiceSessions:
        loaded = self._pool.loaded(options.voice)
        if loaded is not None:
            return loaded
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._pool.sessions, options.voice)
        except VoiceLoadError as exc:
            _LOGGER.error("voice %s: %s", options.voice.name, exc)
            raise VoiceUnavailable(f"{options.voice.name}: {exc}") from None

    def start_segment(self, segment: Segment, options: SynthesisOptions, sessions: VoiceSessions,
                      due: float, deadline: Optional[float], owner: str
                      ) -> tuple[asyncio.Future, Optional[Job], Optional[tuple]]:
        """Audio for `segment`: from the cache when it can be, else a scheduled inference.

        :returns: the future of its float32 audio, the job (None when cached),
            and the key to cache the result under (None: not cacheable or cached).
        """
        key = None
        if options.deterministic and self.cache.max_bytes:
            key = (options.voice.name, segment.ids, options.speaker_id, options.scales.length_scale)
            cached = self.cache.get(key)
            if cached is not None:
                future = asyncio.get_running_loop().create_future()
                future.set_result(cached)
                return future, None, None
        job = self._scheduler.submit(
            lambda run_options: sessions.run(segment.ids, options.scales, options.speaker_id, run_options),
            due=due, deadline=deadline, owner=owner)
        return job.future, job, key

    async def next_segment(self, segments: Iterator[Segment]) -> Optional[Segment]:
        """The next segment, phonemized on the frontend thread; None at the end."""
        loop = asyncio.get_running_loop()
        segment, seconds = await loop.run_in_executor(self._frontend_thread, _timed_next, segments)
        if segment is not None:
            self._metrics.record_phonemization(seconds)
        return segment


def _timed_next(segments: Iterator[Segment]) -> tuple[Optional[Segment], float]:
    """The next segment (None at the end) and the seconds it took, on the frontend thread."""
    start = time.monotonic()
    segment = next(segments, None)
    return segment, time.monotonic() - start


class _Call:
    """State of one streaming call: segments in flight and audio produced."""

    def __init__(self, synth: Synthesizer, sessions: VoiceSessions,
                 options: SynthesisOptions, segments: Iterator[Segment], deadline, owner: str):
        self._synth = synth
        self._sessions = sessions
        self._options = options
        self._segments = segments
        self._deadline = deadline
        self._owner = owner
        self._pending: deque[_Pending] = deque()
        self._exhausted = False
        self._arrival = time.monotonic()
        self._audio_s_ahead = 0.0  # produced + estimated for what is queued
        self._seconds_per_phoneme = _SECONDS_PER_PHONEME * options.scales.length_scale
        self._silence = np.zeros(round(options.sentence_silence_s * options.sample_rate), np.float32)

    async def run(self) -> AsyncIterator[AudioPiece]:
        await self._fill()
        if not self._pending:
            # Letters espeak-ng has no phonemes for (check_text lets them through).
            raise InvalidArgument("text", "contains nothing speakable (no phonemes)")
        while self._pending:
            pending = self._pending.popleft()
            audio = await pending.audio
            if pending.job is not None:
                self._synth._metrics.record_synthesized(audio.size, self._options.sample_rate)
            if pending.cache_key is not None:
                self._synth.cache.put(pending.cache_key, audio)
            await self._fill()
            yield self._piece(pending.segment, audio)

    def _piece(self, segment: Segment, audio: np.ndarray) -> AudioPiece:
        final = not self._pending and self._exhausted
        if segment.ends_sentence and not final and self._silence.size:
            audio = np.concatenate((audio, self._silence))
        return AudioPiece(audio=audio, span=segment.span,
                          sentence_index=segment.sentence_index, final=final)

    async def _fill(self) -> None:
        """Queue segments until `lookahead_chunks` are in flight or the text is done."""
        while not self._exhausted and len(self._pending) < self._synth._settings.lookahead_chunks:
            segment = await self._synth.next_segment(self._segments)
            if segment is None:
                self._exhausted = True
                return
            self._pending.append(self._start(segment))

    def _start(self, segment: Segment) -> _Pending:
        # Due when the audio queued before it would have played out, counted
        # from arrival: the first segment is due at once.
        due = self._arrival + self._audio_s_ahead
        self._audio_s_ahead += len(segment.phonemes) * self._seconds_per_phoneme
        future, job, key = self._synth.start_segment(
            segment, self._options, self._sessions, due, self._deadline, self._owner)
        return _Pending(segment, future, job, key)

    def cancel_all(self) -> None:
        """Cancel every queued or running inference of this call."""
        while self._pending:
            job = self._pending.popleft().job
            if job is not None:
                job.cancel()
