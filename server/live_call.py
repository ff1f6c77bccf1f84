"""A SynthesizeLive call: requests (text, flush, clear) in, spans out to the call engine.

A reader task feeds the text to the LiveSegmenter (server/live.py) and runs
its max_pending_ms timer; every span the segmenter gives out goes to the
call's engine (server/engine.py), which phonemizes, schedules and orders
the audio exactly as it does for SynthesizeStream. flush ends a turn (the
next span's first segment is cut short again, for sooner audio); clear
cancels the turn's pending text and its queued and running inferences.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Optional

from server.engine import AudioPiece, CallEngine, SpanRequest, Turn
from server.errors import InvalidArgument
from server.live import LiveSegmenter, Span

_END = object()


class LiveCall:
    """One SynthesizeLive call on its engine: start(requests), then iterate pieces()."""

    def __init__(self, engine: CallEngine, segmenter: LiveSegmenter, max_chars: int):
        """:param max_chars: most characters the whole call may send (--max-chars)."""
        self._engine, self._seg, self._max_chars = engine, segmenter, max_chars
        self._turn = Turn()
        engine.open_turn(self._turn)
        self._new_turn = True
        self._reader: Optional[asyncio.Task] = None

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

    async def _read(self, requests: AsyncIterator) -> None:
        inbox: asyncio.Queue = asyncio.Queue()
        pumper = asyncio.create_task(_pump(requests, inbox))
        try:
            while True:
                request = await self._next(inbox)
                if request is None:  # the timer: cut what is pending, if it is due
                    self._emit(self._seg.force_split(playing_until=self._engine.playing_until()))
                elif request is _END:
                    self._emit(self._seg.flush())
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
        """The next request, or None when the segmenter's timer is due first."""
        due = self._seg.due_at(self._engine.playing_until())
        timeout = None if due is None else max(0.0, due - time.monotonic())
        try:
            return await asyncio.wait_for(inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None

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
            self._engine.cancel_turn(self._turn)
            self._turn = Turn()
            self._engine.open_turn(self._turn)
            self._new_turn = True

    def _emit(self, span: Optional[Span]) -> None:
        if span is None:
            return
        self._engine.speak(SpanRequest(self._seg.text, span, self._turn, first_of_turn=self._new_turn,
                                       ends_sentence=not self._seg.is_forced(span)))
        self._new_turn = False


async def _pump(requests: AsyncIterator, inbox: asyncio.Queue) -> None:
    """Move the client's messages into `inbox`, then _END (or the error reading them)."""
    try:
        async for request in requests:
            await inbox.put(request)
        await inbox.put(_END)
    except Exception as exc:  # noqa: BLE001 - raised by the reader
        await inbox.put(exc)
