"""What the non-gRPC doors share: request ids, plain values to validated options, live input.

A door turns its own request into a `SynthesisOptions` with the validation
the gRPC servicer uses (server/options.py), and then runs one of the two
calls of server/calls.py on the same engine, as the gRPC servicer does: a
whole text (`text_chunks`) or text arriving in pieces (`live_chunks`).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, overload

from server import live
from server import options as opts
from server.calls import CallContext
from server.encoding import Encoding
from server.errors import InvalidArgument, SpeakstreamError
from server.timings import Timestamps
from server.voices import Voice
from speakstream.v1 import synthesizer_pb2 as pb

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128
# Requests a live call may have read ahead of the engine: the door stops reading the
# client (its transport then pushes back) rather than queueing without bound.
_LIVE_BACKLOG = 64


class TextTooLong(InvalidArgument):
    """The text is over --max-chars: INVALID_ARGUMENT as in gRPC, 413 on the HTTP door."""


def request_id(given: Optional[str]) -> str:
    """The client's request id when it sent a usable one, else a new one (as gRPC calls get)."""
    if given and len(given) <= _MAX_REQUEST_ID and given.isprintable() and not given.isspace():
        return given
    return uuid.uuid4().hex[:16]


def check_length(field: str, text: str, max_chars: int) -> None:
    """TextTooLong naming `field` when `text` is over the limit (a door answers 413 for it)."""
    if len(text) > max_chars:
        raise TextTooLong(field, f"is {len(text)} characters; the limit is {max_chars} (--max-chars)")


def check_total(field: str, characters: int, max_chars: int) -> None:
    """TextTooLong when a live call's text would pass the limit with its next piece."""
    if characters > max_chars:
        raise TextTooLong(field, f"the call's text would be {characters} characters; the limit is {max_chars} "
                                 "(--max-chars)")


# -- plain values (JSON, Wyoming event data) to typed ones ---------------------------------


@overload
def string(data: dict, field: str, default: str, name: str = "") -> str: ...


@overload
def string(data: dict, field: str, default: Optional[str] = None, name: str = "") -> Optional[str]: ...


def string(data: dict, field: str, default: Optional[str] = None, name: str = "") -> Optional[str]:
    """data[field] as a str (`default` when absent or null); InvalidArgument names `name or field`."""
    value = data.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(name or field, f"must be a string, got {_json_type(value)}")
    return value


def number(data: dict, field: str, name: str = "") -> Optional[float]:
    """data[field] as a finite float, None when absent or null (booleans are no numbers)."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(name or field, f"must be a number, got {_json_type(value)}")
    return float(value)


def integer(data: dict, field: str, name: str = "") -> Optional[int]:
    """data[field] as an int, None when absent or null."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name or field, f"must be an integer, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Knobs:
    """What a door's request asks for, as plain values, before validation."""

    text: str = ""
    voice: Optional[Voice] = None
    """None: the default voice."""
    speaker: Optional[str] = None
    speaker_id: Optional[int] = None
    speed: Optional[float] = None
    noise_scale: Optional[float] = None
    noise_w: Optional[float] = None
    sentence_silence_s: Optional[float] = None
    encoding: Encoding = Encoding.LINEAR16
    chunk_ms: int = 0
    sample_rate: int = 0
    timestamps: Timestamps = Timestamps.NONE


def synthesis_options(ctx: CallContext, knobs: Knobs, live_text: bool = False) -> opts.SynthesisOptions:
    """Validated options, exactly as the gRPC servicer checks them; live calls have no text yet."""
    text = "" if live_text else opts.check_text(knobs.text, ctx.settings.max_chars)
    voice = knobs.voice or ctx.voices.default
    silence = (opts.DEFAULT_SENTENCE_SILENCE_S if knobs.sentence_silence_s is None
               else opts.check_range("sentence_silence_s", knobs.sentence_silence_s, opts.SILENCE_RANGE_S))
    return opts.SynthesisOptions(
        text=text,
        voice=voice,
        speaker_id=opts.check_speaker(voice, knobs.speaker_id, knobs.speaker or ""),
        scales=opts.scales_for(voice, knobs.speed, knobs.noise_scale, knobs.noise_w),
        sentence_silence_s=silence,
        encoding=knobs.encoding,
        chunk_ms=opts.check_chunk_ms(knobs.chunk_ms),
        output_rate=opts.check_sample_rate(voice, knobs.encoding, knobs.sample_rate),
        timestamps=knobs.timestamps,
    )


def live_segmenter(max_pending_ms: Optional[int],
                   max_pending_chars: Optional[int]) -> Callable[[], live.LiveSegmenter]:
    """What makes a live call's segmenters (one per context), with SynthesizeLive's ranges and defaults."""
    max_ms = max_pending_ms or live.DEFAULT_MAX_PENDING_MS
    opts.check_range("max_pending_ms", max_ms, live.MAX_PENDING_MS_RANGE)
    max_chars = max_pending_chars or live.DEFAULT_MAX_PENDING_CHARS
    opts.check_range("max_pending_chars", max_chars, live.MAX_PENDING_CHARS_RANGE)
    return lambda: live.LiveSegmenter(max_ms, max_chars)


class LiveInput:
    """A live call's requests as a door receives them: an async iterator for LiveCall.

    The door puts text, flush and clear as they arrive, then `end()` (the
    client's end of input) or `fail(error)` (a bad message). `put` waits while
    the engine is _LIVE_BACKLOG requests behind.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(_LIVE_BACKLOG)
        self.characters = 0
        """Characters of text put so far."""

    async def text(self, text: str) -> None:
        """More text, appended to what came before."""
        self.characters += len(text)
        await self._queue.put(pb.LiveRequest(text=text))

    async def flush(self) -> None:
        """Speak what is pending now (the end of a turn)."""
        await self._queue.put(pb.LiveRequest(flush=True))

    async def clear(self) -> None:
        """Drop the pending text and the audio not yet sent (barge-in)."""
        await self._queue.put(pb.LiveRequest(clear=True))

    async def end(self) -> None:
        """No more input: what is pending is spoken, then the call ends."""
        await self._queue.put(None)

    async def fail(self, error: SpeakstreamError) -> None:
        """End the call with `error` (raised from live_chunks)."""
        await self._queue.put(error)

    def __aiter__(self) -> LiveInput:
        return self

    async def __anext__(self) -> pb.LiveRequest:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item
