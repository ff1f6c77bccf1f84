"""Incremental sentence segmentation for SynthesizeLive: text arrives in pieces.

`LiveSegmenter` is pure and synchronous. It holds the concatenated input
(normalized with server.frontend.normalize, which keeps every offset) and
reports sentence spans of it once they are certainly complete: the boundary
is server.frontend.split_sentences's own rule (the same regular expression,
the same decision, abbreviations included), accepted only once the first
character after the boundary's whitespace is known. So "Dr. " + "Smith" is
decided on the "S" exactly as "Dr. Smith" would be (a title before a name:
not an end), and "3." + "50" never splits (no whitespace). A forced cut
never falls right after such an abbreviation either ("Dr. " alone is not
spoken while the name is still coming). Fed one character at a time, it
yields the same spans as split_sentences on the whole text, which is what
makes live input speak the same phoneme ids as SynthesizeStream.

Splits on sentences only; a clause or word-level cut happens only when it is
forced: by flush(), by the max_pending_chars limit (in feed) or by the
max_pending_ms timer (force_split). A forced cut starts a new region: the
text after it is segmented as if it began there. A timer or length cut is not
a sentence end (is_forced): the call speaks on without sentence silence, in
the same sentence. Except a timer cut where split_sentences would end a
sentence but for the unknown next character ("Hello there. " and a pause;
not an ellipsis, not "Dr. ", which waits as before): that is a sentence end,
so silence follows and the next text starts a new sentence. The timer waits
while audio sent earlier is still playing (force_split's playing_until): a
cut is forced only when the listener would otherwise soon hear nothing.

normalize() decides some characters by their neighbours (a format character
inside a word is dropped, elsewhere it is a space), so the last characters
received are normalized again, with what came before them, each time a
piece arrives (a bounded tail: a run of over _NORMALIZE_CONTEXT invisible
characters may be decided differently than in the whole text).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AsyncIterator, Optional

import numpy as np

from server.errors import InvalidArgument
from server.frontend import _SENTENCE_END, Segment, ends_with_abbreviation, is_sentence_end, normalize
from server.synthesis import _SECONDS_PER_PHONEME, AudioPiece, Synthesizer

Span = tuple[int, int]

DEFAULT_MAX_PENDING_MS = 500
DEFAULT_MAX_PENDING_CHARS = 200
_NORMALIZE_CONTEXT = 64


class LiveSegmenter:
    """Cuts a growing text into sentence spans (code-point offsets of the whole input).

    Fed one character at a time, with no timer or length cut, it yields
    split_sentences's spans of the whole text; a timer cut after ". " + a
    pause is a sentence end too (see the module's docstring).
    """

    def __init__(self, max_pending_ms: int = DEFAULT_MAX_PENDING_MS,
                 max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS):
        self.max_pending_s = max_pending_ms / 1000.0
        self.max_pending_chars = max_pending_chars
        self._raw = ""  # as received
        self._text = ""  # normalized; what was given out in spans never changes
        self._forced: set[int] = set()  # ends of spans cut by the timer or the length
        self._start = 0  # offset of the first pending character
        self._scan = 0  # where the sentence-end search resumes (as finditer would)
        self._uncuttable = False  # the timer was due but no boundary: wait for more text
        self.pending_since: Optional[float] = None
        """time.monotonic() of the first pending non-blank text, None when nothing is pending."""

    @property
    def text(self) -> str:
        """The concatenated input so far, normalized (same length as what was sent)."""
        return self._text

    @property
    def offset(self) -> int:
        """Code points received so far: the offset the next piece starts at."""
        return len(self._text)

    @property
    def pending(self) -> str:
        """Text received but not yet given out in a span."""
        return self._text[self._start:]

    def feed(self, text: str, now: Optional[float] = None) -> list[Span]:
        """Append `text`; return the spans that are now certainly complete, in order."""
        now = time.monotonic() if now is None else now
        self._normalize_with(text)
        self._uncuttable = False
        spans = self._complete_sentences()
        if len(self._text) - self._start > self.max_pending_chars > 0:
            spans.extend(self._cut_long())
        if spans:
            self.pending_since = now if self.pending.strip() else None
        elif self.pending_since is None and self.pending.strip():
            self.pending_since = now
        return spans

    def is_forced(self, span: Span) -> bool:
        """Whether `span` was cut by the timer or the length limit (mid-sentence)."""
        return span[1] in self._forced

    def _normalize_with(self, text: str) -> None:
        """Append `text`, normalizing it and the tail before it again (never what
        was given out), with enough context before them to decide their first
        characters (the word before a format character, a run of combining marks)."""
        redo = max(self._start, len(self._raw) - _NORMALIZE_CONTEXT)
        self._raw += text
        context = max(0, redo - _NORMALIZE_CONTEXT)
        self._text = self._text[:redo] + normalize(self._raw[context:])[redo - context:]

    def flush(self) -> Optional[Span]:
        """Everything pending as one span (None if it is blank); a new region starts."""
        span = self._cut(len(self._text))
        return span

    def clear(self) -> None:
        """Drop the pending text; its offsets stay counted, a new region starts."""
        self._cut(len(self._text))

    def force_split(self, now: Optional[float] = None,
                    playing_until: Optional[float] = None) -> Optional[Span]:
        """For the timer: once due (see due_at), cut pending text at its last word
        boundary. None when nothing is due or no word is complete yet; in the
        latter case due_at is None until more text comes (nothing to wait for)."""
        now = time.monotonic() if now is None else now
        due = self.due_at(playing_until)
        if due is None or now < due:
            return None
        cut = self._last_word_boundary()
        if cut is None:
            self._uncuttable = True
            return None
        ends_sentence = self._sentence_end_but_next(cut)
        span = self._cut(cut)
        if not ends_sentence:
            self._forced.add(cut)
        if self.pending.strip():
            self.pending_since = now
        return span

    def _sentence_end_but_next(self, cut: int) -> bool:
        """Whether pending text ends at `cut` with a sentence end that only waits for
        the next character ("Hello there. " + a pause): marks and whitespace
        running to the end of the text, not an ellipsis (nor an abbreviation,
        which _last_word_boundary never cuts after), or a blank line."""
        match = _SENTENCE_END.search(self._text, self._scan)
        if match is None or match.end() != cut or cut != len(self._text):
            return False
        return match.group("ws") is None or is_sentence_end(match, self._start)

    def due_at(self, playing_until: Optional[float] = None) -> Optional[float]:
        """time.monotonic() at which force_split may cut, None when nothing is pending:
        max_pending_ms after the first pending character, and no sooner than
        max_pending_ms before `playing_until` (when audio sent so far runs out);
        None too after force_split found nothing to cut, until the next feed."""
        if self.pending_since is None or self._uncuttable:
            return None
        due = self.pending_since + self.max_pending_s
        return due if playing_until is None else max(due, playing_until - self.max_pending_s)

    def _complete_sentences(self) -> list[Span]:
        """split_sentences's loop, resumable, taking only matches that can no longer change."""
        spans, text = [], self._text
        while True:
            match = _SENTENCE_END.search(text, self._scan)
            # Final once the character after the whitespace is known; until then
            # more whitespace or the deciding next character may still come.
            if match is None or (match.group("next") is None and match.end() >= len(text)):
                return spans
            self._scan = match.end()
            if match.group("ws") is not None and not is_sentence_end(match, self._start):
                continue
            end = match.end("ws") if match.group("ws") is not None else match.end()
            if text[self._start:end].strip():
                spans.append((self._start, end))
            self._start = end

    def _cut_long(self) -> list[Span]:
        """Pending text over max_pending_chars: cut at the last word boundary within
        the limit (at the limit when there is none)."""
        spans = []
        while len(self._text) - self._start > self.max_pending_chars:
            limit = self._start + self.max_pending_chars
            cut = self._last_word_boundary(limit) or limit
            span = self._cut(cut)
            self._forced.add(cut)
            if span is not None:
                spans.append(span)
        return spans

    def _last_word_boundary(self, limit: Optional[int] = None) -> Optional[int]:
        """Offset just after the last whitespace of pending text before `limit` that
        follows a word other than an abbreviation ("Dr. " waits for its name);
        None when there is none."""
        limit = len(self._text) if limit is None else limit
        for i in range(limit, self._start, -1):
            if (self._text[i - 1].isspace() and self._text[self._start:i].strip()
                    and not ends_with_abbreviation(self._text, i, self._start)):
                return i
        return None

    def _cut(self, cut: int) -> Optional[Span]:
        """Give out pending text up to `cut` (None if blank); segmentation restarts there."""
        start, self._start, self._scan = self._start, cut, cut
        if not self.pending.strip():
            self.pending_since = None
        return (start, cut) if self._text[start:cut].strip() else None


# --------------------------------------------------------------------------
# The SynthesizeLive pipeline: spans from the segmenter -> segments -> audio.

_END = object()


@dataclasses.dataclass
class _Item:
    generation: int
    segment: Segment
    audio: asyncio.Future
    job: object = None
    cache_key: Optional[tuple] = None


def span_segments(synth: Synthesizer, text: str, span: Span, index: int,
                  first_of_turn: bool, options) -> list[Segment]:
    """Segments of one span of `text`, cut as Frontend.segments cuts them: the
    first of a turn short (first_chunk_phonemes); all of them sentence `index`."""
    return synth._frontend.span_segments(text, span, index, first_of_turn, options.voice.config,
                                         options.scales.length_scale)


class LiveCall:
    """One SynthesizeLive call: requests in (text, flush, clear), audio pieces out.

    A reader task feeds the segmenter and runs the max_pending_ms timer; a
    producer task phonemizes complete spans on the frontend thread and keeps
    up to `lookahead_chunks` inferences in flight; `pieces()` yields their
    audio in order. Silence between sentences is put before the next
    sentence's audio (the end of the text is not known in advance), so the
    concatenated audio is the same as SynthesizeStream's.
    """

    def __init__(self, synth: Synthesizer, sessions, options, segmenter: LiveSegmenter,
                 max_chars: int, deadline: Optional[float] = None, owner: str = ""):
        self._synth, self._sessions, self._options = synth, sessions, options
        self._seg, self._max_chars = segmenter, max_chars
        self._deadline, self._owner = deadline, owner
        self._spans: asyncio.Queue = asyncio.Queue()  # (generation, span, first_of_turn, ends_sentence) | _END
        self._out: asyncio.Queue = asyncio.Queue()  # _Item | _END | exception
        self._slots = asyncio.Semaphore(synth._settings.lookahead_chunks)
        self._generation = 0
        self._new_turn = True
        self._next_index = 0
        self._open_sentence = False  # the last span spoken was cut mid-sentence
        self._turn_start = time.monotonic()
        self._audio_s_ahead = 0.0
        self._seconds_per_phoneme = _SECONDS_PER_PHONEME * options.scales.length_scale
        self._silence = np.zeros(round(options.sentence_silence_s * options.sample_rate), np.float32)
        self._tasks: list[asyncio.Task] = []
        self._jobs: dict = {}  # id(job) -> job, in flight and not yet consumed

    def start(self, requests: AsyncIterator) -> None:
        self._tasks = [asyncio.create_task(self._read(requests)), asyncio.create_task(self._produce())]

    async def pieces(self) -> AsyncIterator[AudioPiece]:
        """Audio pieces in order; after the client's end of input, a last empty one with `final`."""
        silence_due, last_index, end = False, 0, 0
        while True:
            item = await self._out.get()
            if item is _END:
                yield AudioPiece(audio=np.zeros(0, np.float32), span=(end, end),
                                 sentence_index=last_index, final=True)
                return
            if isinstance(item, BaseException):
                raise item
            self._slots.release()
            if item.generation != self._generation:
                continue
            await asyncio.wait({item.audio})  # returns, not raises, when a clear cancels it
            if item.generation != self._generation:
                continue
            audio = item.audio.result()  # raises the inference's error (deadline, failure)
            self._jobs.pop(id(item.job), None)
            if item.job is not None:
                self._synth._metrics.record_synthesized(audio.size, self._options.sample_rate)
            if item.cache_key is not None:
                self._synth.cache.put(item.cache_key, audio)
            if silence_due and self._silence.size:
                audio = np.concatenate((self._silence, audio))
            silence_due = item.segment.ends_sentence
            last_index, end = item.segment.sentence_index, item.segment.span[1]
            yield AudioPiece(audio=audio, span=item.segment.span,
                             sentence_index=item.segment.sentence_index, final=False)

    def cancel_all(self) -> None:
        """Stop reading, producing and every queued or running inference of this call."""
        for task in self._tasks:
            task.cancel()
        self._cancel_jobs()

    def _cancel_jobs(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel()
        self._jobs.clear()

    # -- reader ---------------------------------------------------------------

    async def _read(self, requests: AsyncIterator) -> None:
        inbox: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                async for request in requests:
                    await inbox.put(request)
                await inbox.put(_END)
            except Exception as exc:  # noqa: BLE001 - raised by the reader
                await inbox.put(exc)

        pumper = asyncio.create_task(pump())
        try:
            while True:
                due = self._seg.due_at(self._playing_until())
                try:
                    timeout = None if due is None else max(0.0, due - time.monotonic())
                    request = await asyncio.wait_for(inbox.get(), timeout)
                except asyncio.TimeoutError:
                    # None when more audio was queued meanwhile (not due yet) or
                    # no word is complete (then due_at waits for the next piece).
                    self._emit(self._seg.force_split(playing_until=self._playing_until()))
                    continue
                if request is _END:
                    self._emit(self._seg.flush())
                    self._spans.put_nowait(_END)
                    return
                if isinstance(request, BaseException):
                    raise request
                self._handle(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the consumer raises it
            self._out.put_nowait(exc)
        finally:
            pumper.cancel()

    def _handle(self, request) -> None:
        kind = request.WhichOneof("kind")
        if kind == "config":
            raise InvalidArgument("config", "is sent once, in the first message")
        if kind == "text":
            if self._seg.offset + len(request.text) > self._max_chars:
                raise InvalidArgument("text", f"the call's text would be over {self._max_chars} "
                                      "characters, the limit")
            for span in self._seg.feed(request.text):
                self._emit(span)
        elif kind == "flush":
            self._emit(self._seg.flush())
            self._new_turn = True
        elif kind == "clear":
            self._seg.clear()
            self._generation += 1
            self._new_turn = True
            while not self._spans.empty():
                self._spans.get_nowait()
            self._cancel_jobs()
            self._audio_s_ahead = 0.0  # the cleared audio will not play

    def _emit(self, span: Optional[Span]) -> None:
        if span is None:
            return
        ends_sentence = not self._seg.is_forced(span)
        self._spans.put_nowait((self._generation, span, self._new_turn, ends_sentence))
        self._new_turn = False

    def _playing_until(self) -> Optional[float]:
        """When the audio queued in this turn would have played out (estimated as
        for due times), None before the turn has any."""
        return self._turn_start + self._audio_s_ahead if self._audio_s_ahead else None

    # -- producer -------------------------------------------------------------

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                entry = await self._spans.get()
                if entry is _END:
                    self._out.put_nowait(_END)
                    return
                generation, span, first_of_turn, ends_sentence = entry
                text, index = self._seg.text, self._next_index
                if first_of_turn and self._open_sentence:
                    index += 1  # a new turn never continues a sentence cut off by clear
                started = time.monotonic()
                segments = await loop.run_in_executor(
                    self._synth._frontend_thread, span_segments, self._synth, text, span, index,
                    first_of_turn, self._options)
                self._synth._metrics.record_phonemization(time.monotonic() - started)
                if segments:
                    # A timer or length cut is no sentence end: no silence after
                    # it, and the rest of the sentence keeps its index.
                    if not ends_sentence:
                        segments[-1] = dataclasses.replace(segments[-1], ends_sentence=False)
                    self._next_index = index + 1 if ends_sentence else index
                    self._open_sentence = not ends_sentence
                if first_of_turn:
                    self._turn_start, self._audio_s_ahead = time.monotonic(), 0.0
                for segment in segments:
                    await self._slots.acquire()
                    if generation != self._generation:
                        self._slots.release()
                        break
                    self._out.put_nowait(self._start(generation, segment))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the consumer raises it
            self._out.put_nowait(exc)

    def _start(self, generation: int, segment: Segment) -> _Item:
        due = self._turn_start + self._audio_s_ahead
        self._audio_s_ahead += len(segment.phonemes) * self._seconds_per_phoneme
        future, job, key = self._synth.start_segment(
            segment, self._options, self._sessions, due, self._deadline, self._owner)
        if job is not None:
            self._jobs[id(job)] = job
        return _Item(generation, segment, future, job, key)
