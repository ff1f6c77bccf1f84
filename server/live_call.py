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
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Optional

from server.engine import AudioPiece, CallEngine, SpanRequest, Turn
from server.errors import InvalidArgument
from server.live import LiveSegmenter, Span

_END = object()


@dataclass
class _Context:
    """One context's text and turn."""

    segmenter: LiveSegmenter
    turn: Optional[Turn]
    """The turn its spans go to; the default context opens one at its next text."""
    ended: bool = False


class LiveCall:
    """One SynthesizeLive call on its engine: start(requests), then iterate pieces()."""

    def __init__(self, engine: CallEngine, segmenter: Callable[[], LiveSegmenter], max_chars: int):
        """:param segmenter: makes each context's segmenter (the call's max_pending_ms and _chars).
        :param max_chars: most characters the whole call may send, all contexts together (--max-chars).
        """
        self._engine, self._new_segmenter, self._max_chars = engine, segmenter, max_chars
        self._contexts: dict[str, _Context] = {}
        self._default = _Context(segmenter(), None)
        self._contexts[""] = self._default
        self._reader: Optional[asyncio.Task] = None

    @property
    def characters(self) -> int:
        """Characters received so far, all contexts together."""
        return sum(c.segmenter.offset for c in self._contexts.values())

    def start(self, requests: AsyncIterator) -> None:
        """Start reading `requests` (the messages after the config)."""
        self._reader = asyncio.create_task(self._read(requests), name="live-reader")

    def pieces(self) -> AsyncIterator[AudioPiece]:
        """Audio pieces in order; after the client's end of input, a last empty one with `final`."""
        return self._engine.pieces()

    def cancel_all(self) -> None:
        """Stop reading and every queued or running inference of the call."""
        if self._reader is not None:
            self._reader.cancel()
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
                        self._emit(context, context.segmenter.force_split(
                            playing_until=self._engine.playing_until()))
                elif request is _END:
                    for context in self._open_contexts():
                        self._emit(context, context.segmenter.flush())
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
            for span in context.segmenter.feed(request.text):
                self._emit(context, span)
        elif kind == "flush":
            self._emit(context, context.segmenter.flush())
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
        context = _Context(self._new_segmenter(), turn)
        self._contexts[context_id] = context
        return context

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

    def _emit(self, context: _Context, span: Optional[Span]) -> None:
        if span is None:
            return
        first = context.turn is None or not context.turn.spoken
        if context.turn is None:  # the default context's next turn
            context.turn = Turn("")
            self._engine.open_turn(context.turn)
        segmenter = context.segmenter
        self._engine.speak(SpanRequest(segmenter.text, span, context.turn, first_of_turn=first,
                                       ends_sentence=not segmenter.is_forced(span)))


async def _pump(requests: AsyncIterator, inbox: asyncio.Queue) -> None:
    """Move the client's messages into `inbox`, then _END (or the error reading them)."""
    try:
        async for request in requests:
            await inbox.put(request)
        await inbox.put(_END)
    except Exception as exc:  # noqa: BLE001 - raised by the reader
        await inbox.put(exc)
