"""What every call shares: the voices' sessions, the scheduler, the cache, the frontend thread.

`Synthesizer` owns the frontend thread (espeak-ng is one global C state, so
every phonemization runs there) and hands calls what they need to run on
the call engine (server/engine.py). `stream()` is a whole request's text
as one turn: its sentences are split at once, phonemized lazily, spoken in
order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncGenerator, Optional

from server.cache import AudioCache
from server.config import Settings
from server.document import document_spans
from server.engine import AudioPiece, CallEngine, SpanRequest, Turn
from server.errors import VoiceLoadError, VoiceUnavailable
from server.frontend import Frontend, Segment, normalize, split_sentences
from server.lexicon import LexiconFile
from server.metrics import Metrics
from server.options import SynthesisOptions
from server.pool import SessionPool, VoiceSessions
from server.scheduler import Scheduler

_LOGGER = logging.getLogger(__name__)

__all__ = ["AudioPiece", "Synthesizer"]


class Synthesizer:
    """The resources calls share, and the way to start one."""

    def __init__(self, settings: Settings, pool: SessionPool, scheduler: Scheduler, metrics: Metrics):
        self.settings = settings
        self.pool = pool
        self.scheduler = scheduler
        self.metrics = metrics
        self.cache = AudioCache(settings.cache_mb * 1024 * 1024)
        lexicon = LexiconFile.load(settings.lexicon) if settings.lexicon is not None else None
        self.frontend = Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes, lexicon,
                                 settings.first_clause_cut)
        self._frontend_thread = ThreadPoolExecutor(1, thread_name_prefix="frontend")

    def close(self) -> None:
        """Stop the frontend thread."""
        self._frontend_thread.shutdown(wait=False, cancel_futures=True)

    def engine(self, sessions: VoiceSessions, options: SynthesisOptions, deadline: Optional[float] = None,
               owner: str = "", hold_last: bool = True) -> CallEngine:
        """A call engine for one call (see CallEngine for the parameters)."""
        return CallEngine(self, sessions, options, deadline, owner, hold_last)

    async def stream(self, options: SynthesisOptions, deadline: Optional[float] = None,
                     owner: str = "") -> AsyncGenerator[AudioPiece, None]:
        """Audio pieces of `options.text` in order; the last has `final` set.

        :param deadline: time.monotonic() after which queued work is dropped.
        :param owner: the request id, shown with the call's inferences.
        """
        sessions = await self.sessions(options)
        engine = self.engine(sessions, options, deadline, owner)
        document = options.document
        if document is None:
            text, spans = await self.run_on_frontend(_sentences, options.text)
            items = [(span, True) for span in spans]
        else:
            text, items = await self.run_on_frontend(document_spans, document)
        turn = Turn()
        engine.open_turn(turn)
        for n, (span, ends_sentence) in enumerate(items):
            engine.speak(SpanRequest(text, span, turn, first_of_turn=n == 0, ends_sentence=ends_sentence,
                                     document=document))
        engine.close()
        try:
            async for piece in engine.pieces():
                yield piece
        finally:
            engine.cancel_all()

    async def sessions(self, options: SynthesisOptions) -> VoiceSessions:
        """The sessions of the request's voice, loaded off the loop on its first use."""
        loaded = self.pool.loaded(options.voice)
        if loaded is not None:
            return loaded
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.pool.sessions, options.voice)
        except VoiceLoadError as exc:
            _LOGGER.error("voice %s: %s", options.voice.name, exc)
            raise VoiceUnavailable(f"{options.voice.name}: {exc}") from None

    async def phonemize(self, request: SpanRequest, index: int, options: SynthesisOptions,
                        words: bool = False) -> list[Segment]:
        """The segments of one span (sentence `index`), phonemized on the frontend thread.

        :param words: with the words each phoneme speaks (for timestamps).
        """
        segments, seconds = await self.run_on_frontend(
            _timed_segments, self.frontend, request, index, options, words)
        self.metrics.record_phonemization(seconds)
        return segments

    async def run_on_frontend(self, fn, *args):
        """fn(*args) on the frontend thread (espeak-ng and text work, never on the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._frontend_thread, fn, *args)


def _sentences(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The normalized text and its sentence spans."""
    text = normalize(text)
    return text, split_sentences(text)


def _timed_segments(frontend: Frontend, request: SpanRequest, index: int,
                    options: SynthesisOptions, words: bool) -> tuple[list[Segment], float]:
    start = time.monotonic()
    segments = frontend.span_segments(request.text, request.span, index, request.first_of_turn,
                                      options.voice.config, options.scales.length_scale, words,
                                      document=request.document,
                                      lexicons=frontend.lexicons(options.voice, options.lexicon))
    return segments, time.monotonic() - start
