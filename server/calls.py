"""The two kinds of call every door runs on the engine: a whole text, and text arriving in pieces.

The gRPC servicer (server/service.py) and the other doors (server/doors/)
turn their own requests into validated `SynthesisOptions`, then run one of
these: `text_chunks` (what SynthesizeStream does) or `live_chunks` (what
SynthesizeLive does). Both hold an admission place for the whole call, give
out encoded OutputChunks (server/output.py), and stop every queued and
running inference of the call when closed (the client went away). A door
only maps chunks to its own frames: nothing is synthesized a second way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import AsyncGenerator, AsyncIterator, Callable, Optional

from server import live
from server import options as opts
from server.config import Settings
from server.live_call import LiveCall
from server.metrics import CallRecord, Metrics
from server.output import ChunkWriter, OutputChunk
from server.scheduler import Scheduler
from server.security import AuthTokens, bearer_token, token_in
from server.synthesis import Synthesizer
from server.voices import VoiceRegistry

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallContext:
    """The server's parts a call needs: the same objects for every door."""

    settings: Settings
    voices: VoiceRegistry
    synthesizer: Synthesizer
    scheduler: Scheduler
    metrics: Metrics
    auth: Optional[AuthTokens] = None
    """Bearer tokens the HTTP door requires (--auth-token-file); None = open."""

    def authorized(self, authorization: Optional[str]) -> bool:
        """Whether an `Authorization: Bearer <token>` value passes --auth-token-file (constant time)."""
        if self.auth is None:
            return True
        if not authorization:
            return False
        token = bearer_token([("authorization", authorization)])
        return token is not None and token_in(token, self.auth.user + self.auth.admin)


async def text_chunks(ctx: CallContext, options: opts.SynthesisOptions, owner: str, call: CallRecord,
                      deadline: Optional[float] = None) -> AsyncGenerator[OutputChunk, None]:
    """A whole text's chunks as they are synthesized (SynthesizeStream's call); the first
    carries the markup's ignored tags (SSML not acted on), which are also logged.

    Admission is held until the generator ends; closing it (aclose) stops the
    call's queued and running inferences.
    :param deadline: time.monotonic() after which queued work is dropped.
    """
    call.characters, call.voice = len(options.text), options.voice.name
    ignored = logged_ignored(options.document.ignored if options.document is not None else [], owner)
    with ctx.scheduler.admit():
        chunker = ChunkWriter(options)
        stream = ctx.synthesizer.stream(options, deadline, owner)
        async with contextlib.aclosing(stream):
            async for piece in stream:
                async for chunk in chunker.chunks(piece):
                    call.audio(chunk.num_samples, options.client_rate)
                    yield dataclasses.replace(chunk, ignored_tags=tuple(ignored)) if ignored else chunk
                    ignored = []


async def live_chunks(ctx: CallContext, options: opts.SynthesisOptions,
                      segmenter: Callable[[], live.LiveSegmenter], requests: AsyncIterator,
                      owner: str, call: CallRecord, deadline: Optional[float] = None,
                      markup: Optional[Callable] = None) -> AsyncGenerator[OutputChunk, None]:
    """Text in pieces in (`requests`), chunks out as sentences complete (SynthesizeLive's call);
    a chunk carries the SSML tags read since the last one that are not acted on.

    Admission is held until the generator ends; closing it stops reading and
    every queued and running inference of the call.
    :param markup: what reads each context's text as markup (options.live_markup), None: plain.
    """
    call.voice = options.voice.name
    with ctx.scheduler.admit():
        chunker = ChunkWriter(options)
        sessions = await ctx.synthesizer.sessions(options)
        engine = ctx.synthesizer.engine(sessions, options, deadline, owner, hold_last=False)
        session = LiveCall(engine, segmenter, ctx.settings.max_chars, markup)
        session.start(requests)
        stream = session.pieces()
        try:
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    async for chunk in chunker.chunks(piece):
                        call.audio(chunk.num_samples, options.client_rate)
                        ignored = logged_ignored(session.take_ignored(), owner)
                        yield dataclasses.replace(chunk, ignored_tags=tuple(ignored)) if ignored else chunk
        finally:
            session.cancel_all()
            call.characters = session.characters


def logged_ignored(ignored: list[str], request_id: str) -> list[str]:
    """`ignored` (SSML tags and attributes not acted on: their text is spoken), logged once."""
    if ignored:
        _LOGGER.info("request %s: SSML not acted on (its text is spoken): %s", request_id, ", ".join(ignored))
    return ignored
