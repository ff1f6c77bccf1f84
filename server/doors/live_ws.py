"""The WebSocket live endpoint (/v1/audio/live on --http-port): SynthesizeLive as JSON and binary frames.

The client sends JSON text frames: `start` (the settings, first and once),
then `text`, `flush`, `clear` in any order, and `close` (the end of its
input). The server answers `ready`, then for each chunk of audio a JSON
`audio` frame (offsets, text span, sentence) followed by one binary frame of
encoded audio, and `done` once everything is spoken, then closes the
socket. An error is one `error` frame, then a close code of 4000 + the HTTP
status (4400, 4401, 4404, 4413, 4429, 4503). The client closing the socket
early hangs up: every queued and running inference of the call stops.
docs/API.md has the frames field by field.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.calls import CallContext, live_chunks
from server.doors import calls
from server.doors.status import Unauthenticated, http_status
from server.encoding import Encoding
from server.errors import InvalidArgument, SpeakstreamError
from server.metrics import CallRecord
from server.output import OutputChunk
from server.security import UNAUTHENTICATED_DETAILS
from server.timings import Timestamps, WordTiming

_LOGGER = logging.getLogger(__name__)

DOOR = "ws"
CALL = "ws:/v1/audio/live"
# format -> encoding of the binary frames (the OpenAI API's names where it has one).
FORMATS = {
    "pcm": Encoding.LINEAR16, "f32": Encoding.FLOAT32, "wav": Encoding.WAV, "mulaw": Encoding.MULAW,
    "alaw": Encoding.ALAW, "opus": Encoding.OGG_OPUS, "flac": Encoding.FLAC, "mp3": Encoding.MP3,
    "aac": Encoding.AAC,
}
# timestamps -> what the audio frames' `words` carry (as SynthesizeRequest.timestamps).
TIMESTAMPS = {"none": Timestamps.NONE, "words": Timestamps.WORDS, "words_and_phonemes": Timestamps.WORDS_AND_PHONEMES}
NORMAL_CLOSE = 1000


class LiveEndpoint:
    """Serves /v1/audio/live: one live call per connection."""

    def __init__(self, ctx: CallContext):
        self._ctx = ctx

    async def serve(self, websocket: WebSocket) -> None:
        """One connection: start, then text/flush/clear/close in, audio out, until done or hung up."""
        request_id = calls.request_id(websocket.headers.get(calls.REQUEST_ID_HEADER))
        await websocket.accept()
        async with self._ctx.metrics.track(CALL, door=DOOR) as call:
            call.request_id = request_id
            try:
                start = await self._start(websocket, call)
            except WebSocketDisconnect:
                call.status = "CANCELLED"
                return
            except SpeakstreamError as exc:
                await _refuse(websocket, exc, call)
                return
            await self._run(websocket, start, call)

    async def _start(self, websocket: WebSocket, call: CallRecord) -> _Start:
        """The first frame, checked: the token (unless the upgrade request had one) and the settings."""
        settings = self._ctx.settings
        try:
            message = await asyncio.wait_for(websocket.receive(), settings.http_read_timeout_s)
        except asyncio.TimeoutError:
            raise InvalidArgument("start", f"no start frame within {settings.http_read_timeout_s:g} s "
                                           "(--http-read-timeout-s)") from None
        frame = _frame(message)
        if frame.get("type") != "start":
            raise InvalidArgument("type", "the first frame must be {\"type\": \"start\", ...}")
        token = calls.string(frame, "token")
        header = websocket.headers.get("authorization")
        if not (self._ctx.authorized(header) or (token and self._ctx.authorized(f"Bearer {token}"))):
            raise Unauthenticated(UNAUTHENTICATED_DETAILS)
        call.request_id = calls.request_id(calls.string(frame, "request_id") or call.request_id)
        return _Start.parse(frame, self._ctx)

    async def _run(self, websocket: WebSocket, start: _Start, call: CallRecord) -> None:
        requests = calls.LiveInput()
        work = asyncio.ensure_future(self._speak(websocket, start, requests, call))
        reader = asyncio.ensure_future(_read(websocket, requests, self._ctx.settings.max_chars))
        await asyncio.wait({work, reader}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            reader.cancel()
            work.result()
            return
        # The reader ended first: the client hung up, or sent a bad frame. Either way its
        # queued and running inferences stop now.
        work.cancel()
        await asyncio.wait({work})
        error = reader.result()
        if error is None:
            call.status = "CANCELLED"
        else:
            await _refuse(websocket, error, call)

    async def _speak(self, websocket: WebSocket, start: _Start, requests: calls.LiveInput,
                     call: CallRecord) -> None:
        options = start.options
        await websocket.send_text(json.dumps({
            "type": "ready", "request_id": call.request_id, "voice": options.voice.name,
            "speaker_id": options.speaker_id, "sample_rate": options.client_rate, "format": start.format,
            "max_chars": self._ctx.settings.max_chars}))
        samples = 0
        try:
            async for chunk in live_chunks(self._ctx, options, start.segmenter, requests,
                                                 call.request_id, call):
                samples += chunk.num_samples
                await _send_chunk(websocket, chunk, options.client_rate)
        except SpeakstreamError as exc:
            await _refuse(websocket, exc, call)
            return
        await websocket.send_text(json.dumps({
            "type": "done", "num_samples": samples, "audio_s": samples / options.client_rate,
            "characters": call.characters}))
        await websocket.close(NORMAL_CLOSE)


class _Start:
    """A checked start frame: the call's options and its segmenter."""

    def __init__(self, options, segmenter, format: str):
        self.options, self.segmenter, self.format = options, segmenter, format

    @classmethod
    def parse(cls, frame: dict, ctx: CallContext) -> _Start:
        """Every field of the start frame, checked as SynthesizeLive checks its config."""
        fmt = calls.string(frame, "format", "pcm")
        if fmt not in FORMATS:
            raise InvalidArgument("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        timestamps = calls.string(frame, "timestamps", "none")
        if timestamps not in TIMESTAMPS:
            raise InvalidArgument("timestamps", f"must be one of {', '.join(TIMESTAMPS)}, got {timestamps!r}")
        speaker = frame.get("speaker")
        voice_name = calls.string(frame, "voice", "")
        knobs = calls.Knobs(
            voice=ctx.voices.get(voice_name),
            speaker=speaker if isinstance(speaker, str) else None,
            speaker_id=None if isinstance(speaker, str) else calls.integer(frame, "speaker"),
            speed=calls.number(frame, "speed"), noise_scale=calls.number(frame, "noise_scale"),
            noise_w=calls.number(frame, "noise_w"), sentence_silence_s=calls.number(frame, "sentence_silence_s"),
            encoding=FORMATS[fmt], chunk_ms=calls.integer(frame, "chunk_ms") or 0,
            sample_rate=calls.integer(frame, "sample_rate") or 0, timestamps=TIMESTAMPS[timestamps])
        options = calls.synthesis_options(ctx, knobs, live_text=True)
        segmenter = calls.live_segmenter(calls.integer(frame, "max_pending_ms"),
                                         calls.integer(frame, "max_pending_chars"))
        return cls(options, segmenter, fmt)


async def _read(websocket: WebSocket, requests: calls.LiveInput, max_chars: int) -> Optional[SpeakstreamError]:
    """Frames into `requests` until the client hangs up (None) or sends a bad frame (its error)."""
    ended = False
    try:
        while True:
            frame = _frame(await websocket.receive())
            kind = frame.get("type")
            if ended:
                raise InvalidArgument("type", f"{kind!r} after close: nothing may follow close")
            if kind == "text":
                text = calls.string(frame, "text", "")
                calls.check_total("text", requests.characters + len(text), max_chars)
                await requests.text(text)
            elif kind == "flush":
                await requests.flush()
            elif kind == "clear":
                await requests.clear()
            elif kind == "close":
                ended = True
                await requests.end()
            else:
                raise InvalidArgument("type", f"must be text, flush, clear or close, got {kind!r}")
    except WebSocketDisconnect:
        return None
    except SpeakstreamError as exc:
        return exc


def _frame(message: Message) -> dict:
    """A client's frame as a JSON object; WebSocketDisconnect when it hung up."""
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise InvalidArgument("frame", "binary frames carry audio from the server only; send JSON text frames")
    try:
        frame = json.loads(message["text"])
    except ValueError as exc:
        raise InvalidArgument("frame", f"is not valid JSON ({exc})") from None
    if not isinstance(frame, dict):
        raise InvalidArgument("frame", "must be a JSON object with a type")
    return frame


async def _send_chunk(websocket: WebSocket, chunk: OutputChunk, rate: int) -> None:
    if not chunk.audio and not chunk.num_samples and not chunk.final:
        return
    frame = {"type": "audio", "sequence": chunk.sequence, "sample_offset": chunk.sample_offset,
             "num_samples": chunk.num_samples, "text_span": list(chunk.span),
             "sentence_index": chunk.sentence_index, "final": chunk.final, "bytes": len(chunk.audio)}
    if chunk.words:
        frame["words"] = [_word(w, rate) for w in chunk.words]
    await websocket.send_text(json.dumps(frame))
    if chunk.audio:
        await websocket.send_bytes(chunk.audio)


def _word(word: WordTiming, rate: int) -> dict:
    """A word's span and its times in seconds from the stream's start (and its phonemes', when asked)."""
    out = {"text_span": list(word.span), "start_s": word.start / rate, "end_s": word.end / rate}
    if word.phonemes:
        out["phonemes"] = [{"phoneme": p.phoneme, "start_s": p.start / rate, "end_s": p.end / rate}
                           for p in word.phonemes]
    return out


async def _refuse(websocket: WebSocket, exc: SpeakstreamError, call: CallRecord) -> None:
    """The error frame, then the close code 4000 + its HTTP status."""
    call.status = exc.code.name
    status = http_status(exc)
    try:
        await websocket.send_text(json.dumps({
            "type": "error", "status": status, "code": exc.code.name.lower(),
            "field": getattr(exc, "field", None), "message": str(exc)}))
        await websocket.close(4000 + status)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # already gone: nobody to tell
