"""The Wyoming door (--wyoming-port): Home Assistant's protocol for speech services.

    describe                         -> info: every voice (and its speakers) as one TTS program
    synthesize                       -> audio-start, audio-chunk as inference makes them, audio-stop
    synthesize-start, -chunk, -stop  -> the same, as sentences complete (the live segmenter),
                                        then synthesize-stopped
    ping                             -> pong

Audio is 16-bit mono PCM at the voice's rate. Events are written with the
`wyoming` package; they are read here with bounds (a header line of at most
64 KiB, data and payload within the gRPC door's receive limit), because its
reader would buffer whatever length a peer announces. A `synthesize` that
arrives while a streamed request is open is the copy Home Assistant sends
for older servers, and is ignored (as wyoming-piper does). A bad event gets
an `error` event and the connection is closed. The protocol has no
authentication and no TLS: keep the port where only Home Assistant reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import AsyncGenerator, Optional

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from server import transport
from server.calls import CallContext, live_chunks, text_chunks
from server.doors import calls
from server.doors.listen import listen
from server.encoding import Encoding
from server.errors import InvalidArgument, NotFound, SpeakstreamError
from server.output import OutputChunk
from server.voices import Voice

_LOGGER = logging.getLogger(__name__)

DOOR = "wyoming"
SYNTHESIZE_CALL = "wyoming:synthesize"
STREAM_CALL = "wyoming:synthesize-start"
DESCRIBE_CALL = "wyoming:describe"
CALLS = (SYNTHESIZE_CALL, STREAM_CALL, DESCRIBE_CALL)
_HEADER_LIMIT = 64 * 1024
_WIDTH = 2  # bytes per sample: LINEAR16
_ATTRIBUTION = Attribution(name="speakstream", url="https://github.com/rhasspy/piper")


class FrameError(InvalidArgument):
    """An event that cannot be read: not JSON, no type, or longer than the limits."""


class WyomingDoor:
    """The Wyoming TCP server on --host:--wyoming-port."""

    def __init__(self, ctx: CallContext):
        self.ctx = ctx
        self.port: Optional[int] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._connections: set[asyncio.Task] = set()
        self._limit = transport.max_concurrent_rpcs(ctx.settings)
        ctx.metrics.register(DOOR, CALLS)

    async def start(self) -> int:
        """Listen (BindError names --wyoming-port) and serve; returns the port."""
        settings = self.ctx.settings
        assert settings.wyoming_port is not None  # the door is made only when --wyoming-port is given
        sock = listen(settings.host, settings.wyoming_port, "--wyoming-port")
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=_HEADER_LIMIT)
        self.port = sock.getsockname()[1]
        _LOGGER.info("Wyoming door on tcp://%s:%d (no tokens, no TLS: the protocol has neither)",
                     settings.host, self.port)
        if self.ctx.auth is not None:
            _LOGGER.warning("--auth-token-file does not cover the Wyoming port: anyone who reaches "
                            "%s:%d can synthesize; keep it on a trusted network", settings.host, self.port)
        return self.port

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening; connections get `grace` seconds to finish, then they are cancelled."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=grace)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio.start_server runs each connection's callback in a task of its own
        self._connections.add(task)
        try:
            if len(self._connections) > self._limit:
                await _write(writer, Error(text=f"server is at its connection limit ({self._limit})",
                                           code="resource_exhausted").event())
                return
            await _Connection(self.ctx, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away; its call (if any) was cancelled on the way out
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _Connection:
    """One client connection: events in order; a request's audio is written while more events are read."""

    def __init__(self, ctx: CallContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._ctx, self._reader, self._writer = ctx, reader, writer
        self._task: Optional[asyncio.Task] = None  # the request being spoken
        self._stream: Optional[calls.LiveInput] = None  # open between synthesize-start and -stop
        self._limit = transport.max_receive_bytes(ctx.settings)

    async def run(self) -> None:
        """Read events until the peer closes, or an error event ends the connection."""
        try:
            while True:
                try:
                    event = await read_event(self._reader, self._limit)
                except FrameError as exc:
                    await self._fail(exc)
                    return
                if event is None or not await self._handle(event):
                    return
        finally:
            if self._task is not None and not self._task.done():  # the peer hung up mid-request
                self._task.cancel()
                await asyncio.wait({self._task})

    async def _handle(self, event: Event) -> bool:
        """One event; False ends the connection."""
        if Describe.is_type(event.type):
            await self._describe()
        elif Ping.is_type(event.type):
            await _write(self._writer, Pong(text=event.data.get("text")).event())
        elif SynthesizeStart.is_type(event.type):
            await self._wait_previous()
            self._stream = calls.LiveInput()
            self._task = asyncio.create_task(self._speak(event, self._stream))
        elif SynthesizeChunk.is_type(event.type) or SynthesizeStop.is_type(event.type):
            return await self._streamed(event)
        elif Synthesize.is_type(event.type) and self._stream is None:
            await self._wait_previous()
            self._task = asyncio.create_task(self._speak(event, None))
        # Anything else (the synthesize copy of a streamed request, other services' events) is not ours.
        return True

    async def _streamed(self, event: Event) -> bool:
        if self._stream is None:
            await self._fail(InvalidArgument("type", f"{event.type} without synthesize-start"))
            return False
        if SynthesizeStop.is_type(event.type):
            stream, self._stream = self._stream, None
            await stream.end()
            return True
        text = event.data.get("text")
        if not isinstance(text, str):
            await self._stream.fail(InvalidArgument("text", "must be a string"))
            return True
        try:
            calls.check_total("text", self._stream.characters + len(text), self._ctx.settings.max_chars)
        except SpeakstreamError as exc:
            await self._stream.fail(exc)
            return True
        await self._stream.text(text)
        return True

    async def _wait_previous(self) -> None:
        """Requests on one connection are spoken one after the other."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def _describe(self) -> None:
        async with self._ctx.metrics.track(DESCRIBE_CALL, door=DOOR) as call:
            call.request_id = calls.request_id(None)
            await _write(self._writer, info(self._ctx).event())

    async def _speak(self, event: Event, stream: Optional[calls.LiveInput]) -> None:
        """One request's audio events; an error event (and the connection's end) if it fails."""
        name = SYNTHESIZE_CALL if stream is None else STREAM_CALL
        async with self._ctx.metrics.track(name, door=DOOR) as call:
            call.request_id = calls.request_id(None)
            try:
                options = _options(self._ctx, event, streamed=stream is not None)
                if stream is None:
                    chunks = text_chunks(self._ctx, options, call.request_id, call)
                else:
                    segmenter = calls.live_segmenter(None, None)
                    chunks = live_chunks(self._ctx, options, segmenter, stream, call.request_id, call)
                await self._audio(chunks, options.client_rate)
            except SpeakstreamError as exc:
                call.status = exc.code.name
                await self._fail(exc)
                return
            if stream is not None:
                await _write(self._writer, SynthesizeStopped().event())

    async def _audio(self, chunks: AsyncGenerator[OutputChunk, None], rate: int) -> None:
        """audio-start at the first audio, then a chunk for each, audio-stop after the last."""
        started = False
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if not chunk.audio:
                    continue
                if not started:
                    await _write(self._writer, AudioStart(rate=rate, width=_WIDTH, channels=1).event())
                    started = True
                await _write(self._writer, AudioChunk(rate=rate, width=_WIDTH, channels=1,
                                                      audio=chunk.audio).event())
        if not started:
            await _write(self._writer, AudioStart(rate=rate, width=_WIDTH, channels=1).event())
        await _write(self._writer, AudioStop().event())

    async def _fail(self, exc: SpeakstreamError) -> None:
        """The error event, then the connection's end: a client waiting for audio-stop learns it at once."""
        _LOGGER.info("wyoming: %s", exc)
        with contextlib.suppress(ConnectionError):
            await _write(self._writer, Error(text=str(exc), code=exc.code.name.lower()).event())
        self._writer.close()


def _options(ctx: CallContext, event: Event, streamed: bool):
    """The request's options: its voice (by name, else by language, else the default) and speaker."""
    data = event.data if isinstance(event.data, dict) else {}
    text = "" if streamed else calls.string(data, "text", "")
    if not streamed:
        calls.check_length("text", text, ctx.settings.max_chars)
    requested = data.get("voice") or {}
    if not isinstance(requested, dict):
        raise InvalidArgument("voice", "must be an object with name, speaker or language")
    voice = _voice(ctx, calls.string(requested, "name", name="voice.name"),
                   calls.string(requested, "language", name="voice.language"))
    speaker = calls.string(requested, "speaker", name="voice.speaker")
    speaker_id = None
    if speaker is not None and speaker.isdigit() and speaker not in voice.config.speaker_id_map:
        speaker_id, speaker = int(speaker), None  # wyoming-piper takes a speaker's number too
    knobs = calls.Knobs(text=text, voice=voice, speaker=speaker, speaker_id=speaker_id,
                        encoding=Encoding.LINEAR16)
    return calls.synthesis_options(ctx, knobs, live_text=streamed)


def _voice(ctx: CallContext, name: Optional[str], language: Optional[str]) -> Voice:
    if name:
        return ctx.voices.get(name)
    if language:
        for voice in ctx.voices:
            if voice.config.language.lower() in (language.lower(), language.replace("-", "_").lower()):
                return voice
        raise NotFound("voice.language", f"no voice speaks {language!r}")
    return ctx.voices.default


def info(ctx: CallContext) -> Info:
    """describe's answer: one TTS program listing every voice and its speakers."""
    voices = []
    for voice in ctx.voices:
        cfg = voice.config
        speakers = [TtsVoiceSpeaker(name=n) for n, _ in sorted(cfg.speaker_id_map.items(), key=lambda kv: kv[1])]
        voices.append(TtsVoice(name=voice.name, description=voice.name, attribution=_ATTRIBUTION, installed=True,
                               version=None, languages=[cfg.language], speakers=speakers or None))
    program = TtsProgram(name="speakstream", description="speakstream (Piper voices, streaming)",
                         attribution=_ATTRIBUTION, installed=True, version=_version(), voices=voices,
                         supports_synthesize_streaming=True)
    return Info(tts=[program])


def _version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("speakstream")
    except PackageNotFoundError:
        return None


async def read_event(reader: asyncio.StreamReader, limit: int) -> Optional[Event]:
    """The next event, None at the end of the stream; FrameError when it is malformed or too long."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's LimitOverrunError, as readline reports it
        raise FrameError("event", f"header line longer than {_HEADER_LIMIT} bytes") from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise FrameError("event", "the connection ended inside a header line")
    header = _json(line, "header")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise FrameError("type", "every event needs a type string")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise FrameError("data", "must be an object")
    data_length = _length(header, "data_length", limit)
    if data_length:
        extra = _json(await reader.readexactly(data_length), "data")
        data = {**data, **extra}
    payload_length = _length(header, "payload_length", limit)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


def _json(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError:
        raise FrameError(what, "is not a JSON object (Wyoming events are a JSON line, then data and payload)") from None
    if not isinstance(value, dict):
        raise FrameError(what, "must be a JSON object")
    return value


def _length(header: dict, field: str, limit: int) -> int:
    value = header.get(field) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FrameError(field, f"must be a byte count, got {value!r}")
    if value > limit:
        raise FrameError(field, f"{value} bytes is over the limit of {limit} (4 x --max-chars + 64 KiB)")
    return value


async def _write(writer: asyncio.StreamWriter, event: Event) -> None:
    await async_write_event(event, writer)
