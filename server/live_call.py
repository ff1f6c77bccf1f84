"""A SynthesizeLive call: requests (text, flush, clear) in, spans out to the call engine.

A reader task feeds each context's text to its own LiveSegmenter
(server/live.py) and runs their max_pending_ms timers; every span a
segmenter gives out goes to the call's engine (server/engine.py), which
phonemizes, schedules and orders the audio exactly as it does for
SynthesizeStream. Contexts are the engine's turns, spoken in the order they
were opened:

- the default context ("") is open-ended: flush speaks what is pending and
  ends the turn (the next text starts a new one, queued after every context
  opened before it, its first segment cut short again for sooner audio);
  clear cancels what is pending and queued; the call goes on;
- a named context (a voice agent's turn) is opened by its first text; its
  flush speaks what is pending and ends it, its clear cancels it (pending
  text, queued and running inference) and ends it; either way its last
  chunk says context_end, and the contexts after it are untouched.

With markup (SSML, or plain text's [[ phonemes ]]; `markup`), each
context's pieces go through a reader into the context's document
(server/document.py) first, which may hold a piece back until it is
complete (a tag, a `<sub>`'s text, a "[[ ]]" block); the document's spoken
text feeds the segmenter, cut at its marks. A flush (and the end of the
input) ends the context's markup: its SSML must be complete there, and
the default context's next text begins a new `<speak>` document.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncGenerator, AsyncIterator, Callable, Optional

from server.document import DocumentReader
from server.engine import AudioPiece, CallEngine, SpanRequest, Turn
from server.errors import InvalidArgument
from server.live import LiveSegmenter, Span
from server.options import MarkupReader

_END = object()


Item = tuple[Span, bool]  # a span of the context's (spoken) text, and whether it ends a sentence


class _Markup:
    """A context's markup: pieces through a reader into a document, read into spans."""

    def __init__(self, reader: Callable[[], MarkupReader], segmenter: LiveSegmenter):
        self.reader = reader()
        self.document = self.reader.document
        self.spans = DocumentReader(self.document, segmenter)
        self.ignored_sent = 0

    def feed(self, text: str) -> list[Item]:
        """Read a piece; the spans it completes."""
        self.reader.feed(text)
        return self.spans.read()

    def finish(self) -> list[Item]:
        """Everything pending, the markup complete (InvalidArgument if a tag is still open)."""
        self.reader.feed("", final=True)
        return self.spans.flush()


@dataclass
class _Context:
    """One context's text and turn."""

    segmenter: LiveSegmenter
    turn: Optional[Turn]
    """The turn its spans go to; the default context opens one at its next text."""
    ended: bool = False
    markup: Optional[_Markup] = None

    @property
    def received(self) -> int:
        """Characters received."""
        return self.markup.reader.offset if self.markup else self.segmenter.offset

    def feed(self, text: str) -> list[Item]:
        """A piece of the context's text in; the spans now complete out."""
        if self.markup:
            return self.markup.feed(text)
        return [(span, not self.segmenter.is_forced(span)) for span in self.segmenter.feed(text)]

    def flush(self) -> list[Item]:
        """Everything pending as spans (the markup ended)."""
        if self.markup:
            return self.markup.finish()
        span = self.segmenter.flush()
        return [(span, True)] if span is not None else []


class LiveCall:
    """One SynthesizeLive call on its engine: start(requests), then iterate pieces()."""

    def __init__(self, engine: CallEngine, segmenter: Callable[[], LiveSegmenter], max_chars: int,
                 markup: Optional[Callable[[], MarkupReader]] = None):
        """:param segmenter: makes each context's segmenter (the call's max_pending_ms and _chars).
        :param max_chars: most characters the whole call may send, all contexts together (--max-chars).
        :param markup: makes each context's markup reader (server/options.py, live_markup); None:
            plain text only.
        """
        self._engine, self._new_segmenter, self._max_chars = engine, segmenter, max_chars
        self._markup = markup
        self._contexts: dict[str, _Context] = {}
        self._default = self._new_context(None)
        self._contexts[""] = self._default
        self._reader: Optional[asyncio.Task] = None

    @property
    def characters(self) -> int:
        """Characters received so far, all contexts together."""
        return sum(c.received for c in self._contexts.values())

    def take_ignored(self) -> list[str]:
        """SSML tags and attributes read since the last call that are not acted on."""
        found = []
        for context in self._contexts.values():
            if context.markup is not None:
                ignored = context.markup.document.ignored
                found += ignored[context.markup.ignored_sent:]
                context.markup.ignored_sent = len(ignored)
        return found

    def start(self, requests: AsyncIterator) -> None:
        """Start reading `requests` (the messages after the config)."""
        self._reader = asyncio.create_task(self._read(requests), name="live-reader")

    def pieces(self) -> AsyncGenerator[AudioPiece, None]:
        """Audio pieces in order; after the client's end of input, a last empty one with `final`."""
        return self._engine.pieces()

    def cancel_all(self) -> None:
        """Stop reading and every queued or running inference of the call."""
        if self._reader is not None:
            self._reader.cancel()  # and dropped: see CallEngine.cancel_all
            self._reader = None
        self._engine.cancel_all()

    # -- reading ----------------------------------------------------------------

    async def _read(self, requests: AsyncIterator) -> None:
        inbox: asyncio.Queue = asyncio.Queue()
        pumper = asyncio.create_task(_pump(requests, inbox))
        try:
            while True:
                request = await self._next(inbox)
                if request is None:  # a timer: cut what is pending where it is due
                    for context in self._open_contexts():
                        span = context.segmenter.force_split(playing_until=self._engine.playing_until())
                        if span is not None:
                            self._emit(context, span, not context.segmenter.is_forced(span))
                elif request is _END:
                    for context in self._open_contexts():
                        self._emit_all(context, context.flush())
                    self._engine.close()
                    return
                elif isinstance(request, BaseException):
                    raise request
                else:
                    self._handle(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine gives it to the consumer
            self._engine.fail(exc)
        finally:
            pumper.cancel()

    async def _next(self, inbox: asyncio.Queue):
        """The next request, or None when a segmenter's timer is due first."""
        playing_until = self._engine.playing_until()
        dues = [d for c in self._open_contexts() if (d := c.segmenter.due_at(playing_until)) is not None]
        timeout = None if not dues else max(0.0, min(dues) - time.monotonic())
        try:
            return await asyncio.wait_for(inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def _handle(self, request) -> None:
        kind = request.WhichOneof("kind")
        if kind == "config":
            raise InvalidArgument("config", "is sent once, in the first message")
        context = self._context(request.context_id)
        if kind == "text":
            if self.characters + len(request.text) > self._max_chars:
                raise InvalidArgument("text", f"the call's text would be over {self._max_chars} "
                                      "characters, the limit")
            self._emit_all(context, context.feed(request.text))
        elif kind == "flush":
            self._emit_all(context, context.flush())
            self._end(context, cancel=False)
        elif kind == "clear":
            context.segmenter.clear()
            if context is self._default:  # barge-in: every turn of it not yet sent, flushed ones too
                for turn in self._engine.unfinished_turns(""):
                    self._engine.cancel_turn(turn)
                context.turn = None
            else:
                self._end(context, cancel=True)

    def _context(self, context_id: str) -> _Context:
        """The context named `context_id`, opened on first use; an ended one is refused."""
        context = self._contexts.get(context_id)
        if context is None:
            context = self._open(context_id)
        if context.ended:
            raise InvalidArgument("context_id", f"context {context_id!r} has ended (flushed or cleared); "
                                  "name a new one for the next turn")
        return context

    def _open(self, context_id: str) -> _Context:
        turn = Turn(context_id, announce_end=True)
        self._engine.open_turn(turn)
        context = self._new_context(turn)
        self._contexts[context_id] = context
        return context

    def _new_context(self, turn: Optional[Turn]) -> _Context:
        segmenter = self._new_segmenter()
        markup = _Markup(self._markup, segmenter) if self._markup is not None else None
        return _Context(segmenter, turn, markup=markup)

    def _end(self, context: _Context, cancel: bool) -> None:
        """End the context's turn: spoken to its end (flush) or cancelled (clear). A named
        context ends with it; the default one opens a new turn at its next text."""
        if context is not self._default:
            context.ended = True
        turn, context.turn = context.turn, None
        if turn is None:
            return
        if cancel:
            self._engine.cancel_turn(turn)
        else:
            self._engine.close_turn(turn)

    def _open_contexts(self) -> list[_Context]:
        return [c for c in self._contexts.values() if not c.ended]

    def _emit_all(self, context: _Context, items: list[Item]) -> None:
        for span, ends_sentence in items:
            self._emit(context, span, ends_sentence)

    def _emit(self, context: _Context, span: Span, ends_sentence: bool) -> None:
        first = context.turn is None or not context.turn.spoken
        if context.turn is None:  # the default context's next turn
            context.turn = Turn("")
            self._engine.open_turn(context.turn)
        document = context.markup.document if context.markup is not None else None
        self._engine.speak(SpanRequest(context.segmenter.text, span, context.turn, first_of_turn=first,
                                       ends_sentence=ends_sentence,
                                       document=None if document is None or document.plain else document))


async def _pump(requests: AsyncIterator, inbox: asyncio.Queue) -> None:
    """Move the client's messages into `inbox`, then _END (or the error reading them)."""
    try:
        async for request in requests:
            await inbox.put(request)
        await inbox.put(_END)
    except Exception as exc:  # noqa: BLE001 - raised by the reader
        await inbox.put(exc)
