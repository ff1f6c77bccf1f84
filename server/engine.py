"""The call engine: text spans in, ordered audio pieces out. Every door's calls run here.

A call (one SynthesizeStream, Synthesize or SynthesizeLive, or any other
door's) is a `CallEngine`. Its owner hands it spans of text to speak
(`speak`), grouped in turns (`Turn`: a request's whole text, or one live
context), spoken one turn after another. The engine

1. phonemizes each span on the frontend thread into segments (a turn's
   first segment cut short: sooner first audio), with the words each
   phoneme speaks when the call asked for timestamps;
2. runs each segment's encoder as one scheduler job (ids -> latent frames
   and durations), which also decodes the segment's first window, then
   decodes the other windows, each a job of its own: the first window of a
   turn small (first audio), later ones doubling up to `window_frames`
   (throughput). Voices that run whole have one job per segment;
3. gives out the windows' audio in order (`pieces`), the segment's word
   timings with its first piece, the silence between sentences as a piece
   of its own, and for a named turn an empty piece marking its end.

Every job has a due time: when the audio before it will have played out,
counted from the start of the speaking (estimated from a rate of seconds per
phoneme, refined by each encoded segment's real length), so the scheduler
runs whatever a listener will need soonest, across all calls. At most
`lookahead_chunks` jobs of a call are queued, running or waiting to be
given out. Leaving (`cancel_all`), cancelling a turn (`cancel_turn`) or a
deadline stops every queued and running job of what was cancelled: the
engine keeps each job until it settles, so a running inference is
terminated, not left to finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncGenerator, Optional, Union

import numpy as np

from server.changes import Changes
from server.errors import InvalidArgument
from server.frontend import Segment
from server.inference import Encoded, Scales
from server.options import SynthesisOptions
from server.pool import VoiceSessions
from server.rate import encode_at_rate
from server.scheduler import Job
from server.timings import Timestamps, WordTiming, word_timings

if TYPE_CHECKING:
    from server.document import Document
    from server.synthesis import Synthesizer

Span = tuple[int, int]

# Audio per phoneme at speed 1 before a call has encoded anything: the due
# time of segments not yet encoded; each encoded segment corrects it.
_SECONDS_PER_PHONEME = 0.065
_NO_AUDIO = np.zeros(0, np.float32)


@dataclass(frozen=True)
class AudioPiece:
    """Audio (float32, mono, the voice's rate) with the text it speaks."""

    audio: np.ndarray
    span: Span
    sentence_index: int
    final: bool = False
    """The call's last piece."""
    words: tuple[WordTiming, ...] = ()
    """Timings of the words of its segment, in samples from this piece's first sample."""
    context_id: str = ""
    context_end: bool = False
    """The last piece of a named turn (flushed and spoken, or cancelled)."""


class Turn:
    """Spans spoken one after another and cancelled together: a request, or a live context."""

    def __init__(self, context_id: str = "", announce_end: bool = False):
        """:param announce_end: give out an empty piece with `context_end` after its last one."""
        self.context_id = context_id
        self.announce_end = announce_end
        self.spans: deque[SpanRequest] = deque()
        self.closed = False
        """No more spans will come."""
        self.cancelled = False
        self.order = 0
        """Its place among the call's turns (set when opened)."""
        self.spoken = False
        """A span of it has been queued."""


@dataclass(frozen=True)
class SpanRequest:
    """One span of `text` for the engine to speak."""

    text: str
    """Normalized text the span indexes (a live call's text so far)."""
    span: Span
    turn: Turn
    first_of_turn: bool = False
    """Cut its first segment short and, if nothing is queued before it, count due times from now."""
    ends_sentence: bool = True
    """False for a live call's forced cut: no silence after it, the sentence goes on."""
    document: Optional[Document] = None
    """The markup `text` is the spoken text of (SSML, inline phonemes; server/document.py)."""


@dataclass
class _Window:
    start: int
    stop: int
    job: Optional[Job] = None
    audio: Optional[np.ndarray] = None  # set when ready without a job of its own


@dataclass
class _Work:
    """One segment on its way: encoder job, then window jobs, then given out."""

    segment: Segment
    turn: Turn
    first_of_turn: bool
    due: float
    estimate_s: float
    epoch: int
    """Which due-time clock its estimate was counted on (a new turn may restart the clock)."""
    cache_key: Optional[tuple] = None
    encode_job: Optional[Job] = None
    encoded: Optional[Encoded] = None
    planned: bool = False
    """Its windows are known (from the cache, or once encoded); `windows` holds those not yet given out."""
    windows: list[_Window] = field(default_factory=list)
    timings: tuple[WordTiming, ...] = ()
    done: list[np.ndarray] = field(default_factory=list)  # audio given out, kept only to cache it


@dataclass(frozen=True)
class _End:
    """Marks where a named turn's pieces end."""

    turn: Turn


class CallEngine:
    """One call's synthesis: spans in (`speak`), audio pieces out (`pieces`)."""

    def __init__(self, synth: Synthesizer, sessions: VoiceSessions, options: SynthesisOptions,
                 deadline: Optional[float] = None, owner: str = "", hold_last: bool = True):
        """:param deadline: time.monotonic() after which queued work is dropped.
        :param owner: the request id, shown with the call's inferences.
        :param hold_last: wait before giving out the last known piece until it is known
            whether more follow, so the last audio piece carries `final` (a request's
            whole text); False: give it out at once and end with an empty final piece
            (a live call, whose next text may be seconds away).
        """
        self._synth, self._sessions, self._options = synth, sessions, options
        self._deadline, self._owner, self._hold_last = deadline, owner, hold_last
        settings = synth.settings
        self._lookahead = settings.lookahead_chunks
        self._windows = (settings.first_window_frames, settings.window_frames)
        self._words = options.timestamps is not Timestamps.NONE and sessions.timestamps
        self._turns: deque[Turn] = deque()  # turns with spans still to phonemize, in speaking order
        self._opened = 0
        self._works: deque[Union[_Work, _End]] = deque()
        self._closed = False
        self._error: Optional[BaseException] = None
        self._changes = Changes()
        self._producer: Optional[asyncio.Task] = None
        self._busy = False  # the producer is phonemizing a span
        self._clock = time.monotonic()
        self._epoch = 0
        self._audio_ahead_s = 0.0
        self._phonemes_encoded = 0
        self._seconds_encoded = 0.0
        self._next_index = 0
        self._open_sentence = False
        self._silence = np.zeros(round(options.sentence_silence_s * options.sample_rate), np.float32)
        self._pieces_out = 0

    # -- the owner's side ---------------------------------------------------

    def open_turn(self, turn: Turn) -> None:
        """Queue `turn`: its spans are spoken after those of every turn opened before it."""
        if self._producer is None:
            self._producer = asyncio.create_task(self._produce(), name=f"engine-{self._owner}")
        self._opened += 1
        turn.order = self._opened
        self._turns.append(turn)
        self._changes.changed()

    def speak(self, request: SpanRequest) -> None:
        """Queue a span of its (open) turn."""
        request.turn.spans.append(request)
        request.turn.spoken = True
        self._changes.changed()

    def close_turn(self, turn: Turn) -> None:
        """No more spans for `turn`: it ends once they are spoken."""
        turn.closed = True
        self._changes.changed()

    def close(self) -> None:
        """No more turns: the call ends once the open ones are spoken (and closed)."""
        self._closed = True
        for turn in self._turns:
            turn.closed = True
        self._changes.changed()

    def cancel_turn(self, turn: Turn) -> None:
        """Drop `turn`'s pending spans and stop its queued and running jobs; the turns
        after it go on. Its audio will not play, so due times count afresh."""
        turn.cancelled = turn.closed = True
        turn.spans.clear()
        if turn in self._turns:
            self._turns.remove(turn)
        position = self._position_after(turn)
        for work in [w for w in self._works if isinstance(w, _Work) and w.turn is turn]:
            self._works.remove(work)
            _cancel(work)
        if turn.announce_end and not any(isinstance(w, _End) and w.turn is turn for w in self._works):
            self._works.insert(min(position, len(self._works)), _End(turn))
        self._clock, self._audio_ahead_s, self._epoch = time.monotonic(), 0.0, self._epoch + 1
        self._changes.changed()

    def unfinished_turns(self, context_id: str) -> list[Turn]:
        """The turns of `context_id` with spans or audio still to give out."""
        turns = {id(t): t for t in self._turns if t.context_id == context_id}
        for item in self._works:
            if isinstance(item, _Work) and item.turn.context_id == context_id:
                turns.setdefault(id(item.turn), item.turn)
        return list(turns.values())

    def fail(self, error: BaseException) -> None:
        """End the call with `error` (raised by pieces()), e.g. a bad message from the client."""
        self._error = error
        self._changes.changed()

    def cancel_all(self) -> None:
        """Stop everything: the producer and every queued or running job of the call."""
        if self._producer is not None:
            # Dropped too: the cancelled task's traceback holds its frame, which holds
            # this engine, and that cycle would keep a call's latents until a full GC.
            self._producer.cancel()
            self._producer = None
        self._turns.clear()
        while self._works:
            item = self._works.popleft()
            if isinstance(item, _Work):
                _cancel(item)

    def playing_until(self) -> Optional[float]:
        """When the audio queued so far would have played out (estimated as for due
        times); None before any."""
        return self._clock + self._audio_ahead_s if self._audio_ahead_s else None

    async def pieces(self) -> AsyncGenerator[AudioPiece, None]:
        """Audio pieces in order; the last has `final` (after close())."""
        last = AudioPiece(_NO_AUDIO, (0, 0), 0)
        silence_due = False
        while True:
            await self._changes.wait_until(self._has_news)
            if self._error is not None:
                raise self._error
            if not self._works:
                yield self._final_piece(last)
                return
            item = self._works[0]
            if isinstance(item, _End):
                self._works.popleft()
                last = AudioPiece(_NO_AUDIO, (last.span[1],) * 2, last.sentence_index,
                                  context_id=item.turn.context_id, context_end=True, final=self._is_final())
                yield last
                if last.final:
                    return
                continue
            async for piece in self._work_pieces(item, silence_due, last):
                last = piece
                yield piece
                if piece.final:
                    return
            silence_due = item.segment.ends_sentence and not item.turn.cancelled

    # -- giving out -----------------------------------------------------------

    def _has_news(self) -> bool:
        return self._error is not None or bool(self._works) or self._ended()

    def _ended(self) -> bool:
        return self._closed and not self._turns and not self._busy

    def _is_final(self) -> bool:
        return not self._works and self._ended()

    def _final_piece(self, last: AudioPiece) -> AudioPiece:
        """The empty piece that ends a call whose last piece could not say `final`."""
        if self._hold_last and not self._pieces_out:
            # Letters espeak-ng has no phonemes for (check_text lets them through).
            raise InvalidArgument("text", "contains nothing speakable (no phonemes)")
        return AudioPiece(_NO_AUDIO, (last.span[1],) * 2, last.sentence_index, final=True,
                          context_id=last.context_id)

    async def _work_pieces(self, work: _Work, silence_due: bool,
                           last: AudioPiece) -> AsyncGenerator[AudioPiece, None]:
        """The pieces of one segment: the silence before it if due, then its windows."""
        segment, context = work.segment, work.turn.context_id
        first = True
        async for audio, is_last in self._work_audio(work):
            if silence_due and self._silence.size and segment.silence_s is None:  # a break is the pause there
                self._pieces_out += 1
                yield AudioPiece(self._silence, (last.span[1],) * 2, segment.sentence_index, context_id=context)
                silence_due = False
            final = False
            if is_last:
                self._finished(work)
                if self._hold_last:
                    await self._changes.wait_until(self._has_news)
                    final = self._is_final()
            self._pieces_out += 1
            if segment.gain != 1.0:
                audio = np.clip(audio * segment.gain, -1.0, 1.0).astype(np.float32)
            yield AudioPiece(audio, segment.span, segment.sentence_index, final,
                             words=work.timings if first else (), context_id=context)
            first = False

    async def _work_audio(self, work: _Work) -> AsyncGenerator[tuple[np.ndarray, bool], None]:
        """(audio, last) of each window of `work`, in order, as they are ready; nothing
        more once its turn is cancelled (cancel_turn has dropped it then)."""
        if work.encode_job is not None:
            await asyncio.wait({work.encode_job.future})
            if work.turn.cancelled:
                return
            work.encode_job.future.result()  # the inference's error: deadline, failure
        while work.windows:
            window = work.windows[0]
            if window.audio is None:
                self._top_up()
                # Later segments' encoders may hold the budget: this window is wanted now.
                job = window.job if window.job is not None else self._submit_window(work, window)
                await asyncio.wait({job.future})
                if work.turn.cancelled:
                    return
                window.audio = job.future.result()
                self._synth.metrics.record_synthesized(window.audio.size, self._options.sample_rate)
            work.windows.pop(0)
            self._keep_for_cache(work, window.audio)
            self._top_up()
            yield window.audio, not work.windows

    def _keep_for_cache(self, work: _Work, audio: np.ndarray) -> None:
        if work.cache_key is None:
            return
        work.done.append(audio)
        if not work.windows:
            durations = work.encoded.durations if work.encoded is not None else None
            self._synth.cache.put(work.cache_key, np.concatenate(work.done), durations)

    def _finished(self, work: _Work) -> None:
        """`work` is given out entirely: make room for the next jobs."""
        if self._works and self._works[0] is work:
            self._works.popleft()
        self._top_up()
        self._changes.changed()  # the producer may phonemize the next span now

    def _position_after(self, turn: Turn) -> int:
        """Where `turn`'s pieces end in the queue: before the first piece of a later turn."""
        return next((n for n, item in enumerate(self._works) if item.turn.order > turn.order), len(self._works))

    # -- producing --------------------------------------------------------------

    async def _produce(self) -> None:
        """Phonemize the front turn's spans into works, a couple of segments ahead of the encoders."""
        try:
            while True:
                await self._changes.wait_until(self._producible)
                turn = self._turns[0]
                if not turn.spans:  # closed, and every span phonemized
                    self._turns.popleft()
                    if turn.announce_end and not turn.cancelled:
                        self._works.append(_End(turn))
                    self._changes.changed()
                    continue
                await self._phonemize(turn.spans.popleft())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - given to the consumer, which raises it
            self.fail(exc)

    def _producible(self) -> bool:
        if not self._turns:
            return False
        front = self._turns[0]
        return (bool(front.spans) and self._queued_segments() < 2) or (front.closed and not front.spans)

    def _queued_segments(self) -> int:
        return sum(1 for item in self._works if isinstance(item, _Work))

    async def _phonemize(self, request: SpanRequest) -> None:
        self._busy = True
        try:
            segments = await self._synth.phonemize(request, self._index_for(request), self._options, self._words)
        finally:
            self._busy = False
        if not request.turn.cancelled:
            self._add_works(request, segments)
        self._changes.changed()

    def _index_for(self, request: SpanRequest) -> int:
        """Sentence index of the span's segments: a new turn never continues a sentence
        cut off mid-way; a forced cut's rest keeps its sentence's index."""
        return self._next_index + (1 if request.first_of_turn and self._open_sentence else 0)

    def _add_works(self, request: SpanRequest, segments: list[Segment]) -> None:
        if not segments:
            return
        index = segments[0].sentence_index
        if not request.ends_sentence:
            segments[-1] = dataclasses.replace(segments[-1], ends_sentence=False)
        self._next_index = index + 1 if request.ends_sentence else index
        self._open_sentence = not request.ends_sentence
        if request.first_of_turn and not self._queued_segments():
            # Nothing queued before this turn: its audio is wanted now.
            self._clock, self._audio_ahead_s, self._epoch = time.monotonic(), 0.0, self._epoch + 1
        for n, segment in enumerate(segments):
            self._works.append(self._work(segment, request.turn, first_of_turn=request.first_of_turn and n == 0))
        self._top_up()

    def _work(self, segment: Segment, turn: Turn, first_of_turn: bool) -> _Work:
        silence = segment.silence_s
        estimate = silence if silence is not None else len(segment.phonemes) * self._seconds_per_phoneme()
        work = _Work(segment, turn, first_of_turn, due=self._clock + self._audio_ahead_s,
                     estimate_s=estimate, epoch=self._epoch)
        self._audio_ahead_s += estimate
        if silence is not None:  # a break: its audio is known, no job
            audio = np.zeros(round(silence * self._options.sample_rate), np.float32)
            work.windows, work.planned = [_Window(0, 0, audio=audio)], True
            return work
        options, cache = self._options, self._synth.cache
        if options.deterministic and cache.max_bytes:
            own = segment.length_scale  # SSML prosody rate
            key = (options.voice.name, segment.ids, options.speaker_id,
                   options.scales.length_scale if own is None else own)
            cached = cache.get(key)
            if cached is not None:
                audio, durations = cached
                work.windows, work.planned = [_Window(0, 0, audio=audio)], True
                work.timings = self._timings(segment, durations)
            else:
                work.cache_key = key
        return work

    def _timings(self, segment: Segment, durations: Optional[np.ndarray]) -> tuple[WordTiming, ...]:
        if not segment.words or durations is None:
            return ()
        return word_timings(segment.phonemes, segment.words, durations, self._sessions.hop,
                            self._options.voice.config.phoneme_id_map,
                            self._options.timestamps is Timestamps.WORDS_AND_PHONEMES)

    def _seconds_per_phoneme(self) -> float:
        if self._phonemes_encoded:
            return self._seconds_encoded / self._phonemes_encoded
        return _SECONDS_PER_PHONEME * self._options.scales.length_scale

    # -- scheduling ---------------------------------------------------------------

    def _top_up(self) -> None:
        """Submit jobs in speaking order while fewer than `lookahead` are in flight.

        A segment's encoder is submitted only once the segment before it is
        encoded and its windows are known, so those windows (due sooner) are
        queued before it: a worker never takes a later segment's encoder just
        because the earlier windows did not exist yet.
        """
        works = [w for w in self._works if isinstance(w, _Work)]
        budget = self._lookahead - sum(_in_flight(w) for w in works)
        for work in works:
            if budget <= 0:
                return
            if work.encode_job is None and not work.planned:
                self._submit_encode(work)
                budget -= 1
            if not work.planned:
                return
            for window in work.windows:
                if budget <= 0:
                    return
                if window.job is None and window.audio is None:
                    self._submit_window(work, window)
                    budget -= 1

    def _submit_encode(self, work: _Work) -> None:
        sessions, ids, speaker = self._sessions, work.segment.ids, self._options.speaker_id
        scales, length_scale = self._options.scales, work.segment.length_scale
        first = self._windows[0] if work.first_of_turn else self._windows[1]
        largest, with_first = self._windows[1], work.first_of_turn

        def run(run_options):
            return _encode(sessions, ids, scales, length_scale, speaker, (first, largest), with_first, run_options)

        work.encode_job = self._synth.scheduler.submit(run, due=work.due, deadline=self._deadline,
                                                       owner=self._job_owner(work))
        work.encode_job.future.add_done_callback(lambda future: self._encoded(work, future))

    def _encoded(self, work: _Work, future: asyncio.Future) -> None:
        """Plan the windows of a segment whose encoder finished; correct the rate estimate."""
        if future.cancelled() or future.exception() is not None:
            self._changes.changed()
            return
        encoded, plan, first_audio = future.result()
        work.encoded, work.planned = encoded, True
        work.windows = [_Window(a, b) for a, b in plan]
        work.timings = self._timings(work.segment, encoded.durations)
        if first_audio is not None:
            work.windows[0].audio = first_audio
            self._synth.metrics.record_synthesized(first_audio.size, self._options.sample_rate)
        audio_s = (encoded.frames * self._sessions.hop if encoded.audio is None
                   else encoded.audio.size) / self._options.sample_rate
        self._phonemes_encoded += len(work.segment.phonemes)
        self._seconds_encoded += audio_s
        if work.epoch == self._epoch:
            self._audio_ahead_s += audio_s - work.estimate_s
        self._top_up()
        self._changes.changed()

    def _submit_window(self, work: _Work, window: _Window) -> Job:
        # The job's function holds the frame bounds, not the window: a window that held
        # its job holding it would be a cycle keeping the segment's latent until a full GC.
        sessions, encoded, start, stop = self._sessions, work.encoded, window.start, window.stop
        assert encoded is not None  # windows without audio exist only once their segment is encoded
        offset_s = start * sessions.hop / self._options.sample_rate
        window.job = self._synth.scheduler.submit(
            lambda run_options: sessions.decode(encoded, start, stop, run_options),
            due=work.due + offset_s, deadline=self._deadline, owner=self._job_owner(work))
        return window.job

    def _job_owner(self, work: _Work) -> str:
        """The request id, and the context for a named one ("id/context"), as the run log shows it."""
        context = work.turn.context_id
        return f"{self._owner}/{context}" if context else self._owner


def _encode(sessions: VoiceSessions, ids, scales: Scales, length_scale: Optional[float], speaker_id: int,
            windows: tuple[int, int], with_first: bool,
            run_options) -> tuple[Encoded, list[tuple[int, int]], Optional[np.ndarray]]:
    """A segment's encoder job (in a worker thread): encode (at its own `length_scale`, if it has
    one, so that its audio's length scales: server/rate.py) and plan the windows (`windows`: the
    first's size and the largest). A turn's first segment (`with_first`) also decodes its first,
    small window at once: that is the turn's first audio. Later segments leave all their windows
    to jobs of their own, so no job grows long enough to keep a new call's first job waiting.
    A voice that runs whole has one window, its audio."""
    encoded = encode_at_rate(lambda at: sessions.encode(ids, at, speaker_id, run_options), scales, length_scale)
    if encoded.audio is not None:
        return encoded, [(0, encoded.frames)], encoded.audio
    plan = plan_windows(encoded.frames, *windows)
    return encoded, plan, sessions.decode(encoded, *plan[0], run_options) if with_first else None


def plan_windows(frames: int, first: int, largest: int) -> list[tuple[int, int]]:
    """Windows [start, stop) covering `frames`: the first `first` frames long, each next
    one twice the last up to `largest`; a remainder under half a window joins the last."""
    windows, start, size = [], 0, max(1, first)
    while start < frames:
        stop = min(frames, start + size)
        if frames - stop < size // 2:
            stop = frames
        windows.append((start, stop))
        start, size = stop, min(largest, size * 2)
    return windows


def _in_flight(work: _Work) -> int:
    """Jobs of `work` submitted and not yet given out (the encoder until it finishes)."""
    count = 1 if work.encode_job is not None and not work.encode_job.future.done() else 0
    return count + sum(1 for w in work.windows if w.job is not None)


def _cancel(work: _Work) -> None:
    """Stop the work's queued and running jobs."""
    if work.encode_job is not None:
        work.encode_job.cancel()
    for window in work.windows:
        if window.job is not None:
            window.job.cancel()
