"""The HTTP door (--http-port): the OpenAI speech API, the WebSocket live endpoint and the page.

A Starlette app served by uvicorn inside the server's own event loop (no
thread, no process: the same scheduler and metrics objects as the gRPC
services). uvicorn's own signal handling is not used: the server's SIGTERM
drain stops this door too (App.stop).

    GET  /                    the page (server/doors/page/), open
    GET  /v1/models           the models, as the OpenAI API lists them
    GET  /v1/audio/voices     every voice with its speakers, and the OpenAI names
    POST /v1/audio/speech     the OpenAI speech API (server/doors/openai_api.py)
    WS   /v1/audio/live       text in pieces in, audio out (server/doors/live_ws.py)

With --auth-token-file every /v1 path needs `Authorization: Bearer <token>`
(the WebSocket may send its token in its first message instead, as
browsers cannot set headers on one); with --tls-cert/--tls-key the port
speaks HTTPS and WSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import AsyncGenerator, AsyncIterator, Optional

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from server import transport
from server.calls import CallContext, text_chunks
from server.doors import calls, live_ws, openai_api
from server.doors.listen import listen
from server.doors.status import SlowRequest, Unauthenticated, http_status
from server.errors import InvalidArgument, SpeakstreamError, TooLarge
from server.metrics import CallRecord
from server.output import OutputChunk
from server.security import UNAUTHENTICATED_DETAILS, Security

_LOGGER = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "page"
DOOR = "http"
SPEECH_CALL = "http:/v1/audio/speech"
CALLS = (SPEECH_CALL, "http:/v1/models", "http:/v1/audio/voices")

class HttpDoor:
    """The HTTP door: its app, its uvicorn server, its port."""

    def __init__(self, ctx: CallContext, security: Security):
        self.ctx = ctx
        self.table = openai_api.VoiceTable(ctx.voices, ctx.settings.openai_voices)
        self._security = security
        self._server: Optional[uvicorn.Server] = None
        self._main: Optional[asyncio.Task] = None
        self._socket: Optional[socket.socket] = None
        self.port: Optional[int] = None
        ctx.metrics.register(DOOR, CALLS)
        ctx.metrics.register(live_ws.DOOR, (live_ws.CALL,))

    def app(self) -> Starlette:
        """The ASGI application."""
        live = live_ws.LiveEndpoint(self.ctx)
        return Starlette(routes=[
            Route("/", _page),
            Mount("/page", StaticFiles(directory=PAGE_DIR), name="page"),
            Route("/v1/models", self._models),
            Route("/v1/audio/voices", self._voices),
            Route("/v1/audio/speech", SpeechEndpoint(self.ctx, self.table), methods=["POST"]),
            WebSocketRoute("/v1/audio/live", live.serve),
        ])

    async def start(self) -> int:
        """Listen on --host:--http-port (BindError names the flag) and serve; returns the port."""
        settings = self.ctx.settings
        assert settings.http_port is not None  # the door is made only when --http-port is given
        sock = self._socket = listen(settings.host, settings.http_port, "--http-port")
        config = uvicorn.Config(
            self.app(), log_config=None, access_log=False, lifespan="off", ws="websockets-sansio",
            ws_max_size=transport.max_receive_bytes(settings), server_header=False,
            # Connections (and upgrades) at once; more get 503 from uvicorn, as gRPC caps calls.
            limit_concurrency=transport.max_concurrent_rpcs(settings),
            h11_max_incomplete_event_size=64 * 1024,  # request line and headers
            timeout_keep_alive=max(1, round(settings.http_read_timeout_s)),
            timeout_graceful_shutdown=0)
        config.load()
        # uvicorn's own start/stop lines say nothing the server's log does not; its errors still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config.ssl = self._ssl_context()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)  # "off": nothing runs
        await self._server.startup(sockets=[sock])
        # Keeps the Date header current and notices should_exit (ten cheap wake-ups a second).
        self._main = asyncio.create_task(self._server.main_loop(), name="http-door")
        self.port = sock.getsockname()[1]
        scheme = "https" if config.ssl else "http"
        _LOGGER.info("HTTP door on %s://%s:%d/ (OpenAI speech API, WebSocket live, page)", scheme,
                     _bracket(settings.host), self.port)
        return self.port

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening; calls in progress get `grace` seconds, then they are cancelled."""
        if self._server is None:
            return
        server, self._server = self._server, None
        # At least a moment: uvicorn reports a zero timeout as exceeded even with nothing to wait for.
        # uvicorn annotates it int, but passes it on as asyncio.wait_for's timeout: seconds as a float.
        server.config.timeout_graceful_shutdown = max(0.1, grace)  # type: ignore[assignment]
        server.should_exit = True
        if self._main is not None:
            await self._main
        assert self._socket is not None  # start() listened before it made the server
        await server.shutdown(sockets=[self._socket])

    def _ssl_context(self) -> Optional[ssl.SSLContext]:
        """HTTPS from the same --tls-cert/--tls-key (and --tls-client-ca) as the gRPC port."""
        settings = self.ctx.settings
        if self._security.tls is None:
            return None
        assert settings.tls_cert is not None and settings.tls_key is not None  # security.tls is read from both
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:
            context.load_verify_locations(cafile=settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def _models(self, request: Request) -> Response:
        return await self._listing(request, "http:/v1/models", lambda: openai_api.models())

    async def _voices(self, request: Request) -> Response:
        return await self._listing(request, "http:/v1/audio/voices",
                                   lambda: openai_api.voices_listing(self.ctx.voices, self.table, self.ctx.settings))

    async def _listing(self, request: Request, name: str, build) -> Response:
        request_id = calls.request_id(request.headers.get(calls.REQUEST_ID_HEADER))
        async with self.ctx.metrics.track(name, door=DOOR) as call:
            call.request_id = request_id
            headers = {calls.REQUEST_ID_HEADER: request_id}
            if not self.ctx.authorized(request.headers.get("authorization")):
                call.status = "UNAUTHENTICATED"
                return _error_response(Unauthenticated(UNAUTHENTICATED_DETAILS), headers)
            return JSONResponse(build(), headers=headers)


async def _page(request: Request) -> Response:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html; charset=utf-8")


def _error_response(exc: SpeakstreamError, headers: dict) -> Response:
    status = http_status(exc)
    return Response(openai_api.error_body(exc, status), status, headers=headers, media_type="application/json")


class SpeechEndpoint:
    """POST /v1/audio/speech as a raw ASGI app: the call holds its admission place while it streams."""

    def __init__(self, ctx: CallContext, table: openai_api.VoiceTable):
        self._ctx = ctx
        self._table = table

    async def __call__(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        exchange = _Exchange(receive, send, calls.request_id(headers.get(calls.REQUEST_ID_HEADER)))
        async with self._ctx.metrics.track(SPEECH_CALL, door=DOOR) as call:
            call.request_id = exchange.request_id
            try:
                if not self._ctx.authorized(headers.get("authorization")):
                    raise Unauthenticated(UNAUTHENTICATED_DETAILS)
                body = await _read_body(headers, exchange, self._ctx.settings)
            except _ClientGone:
                call.status = "CANCELLED"
                return
            except SpeakstreamError as exc:
                await exchange.error(exc, call)
                return
            respond = asyncio.ensure_future(self._respond(body, exchange, call))
            gone = asyncio.ensure_future(exchange.disconnected())
            try:
                await asyncio.wait({respond, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not respond.done():  # the client went away: stop its inferences
                respond.cancel()
                await asyncio.wait({respond})
                call.status = "CANCELLED"
                return
            respond.result()

    async def _respond(self, body: bytes, exchange: _Exchange, call: CallRecord) -> None:
        chunks: Optional[AsyncGenerator[OutputChunk, None]] = None
        try:
            request = openai_api.parse_speech(body, self._ctx, self._table)
            chunks = text_chunks(self._ctx, request.options, call.request_id, call)
            first = await anext(chunks)  # errors before any audio still get their own status
        except SpeakstreamError as exc:
            if chunks is not None:
                await chunks.aclose()
            await exchange.error(exc, call)
            return
        async with contextlib.aclosing(chunks):
            await exchange.start(200, request.content_type)
            try:
                await _stream(exchange, request, first, chunks)
            except SpeakstreamError as exc:  # after the headers: the stream is cut, not completed
                call.status = exc.code.name
                _LOGGER.error("request %s: %s after the response began; connection closed", call.request_id, exc)
                if request.stream_format == "sse":
                    await exchange.body(openai_api.sse_error(exc, http_status(exc)), final=True)


class _ClientGone(Exception):
    """The client closed the connection before its request had arrived."""


class _Exchange:
    """One request's ASGI receive and send, knowing whether the response is complete."""

    def __init__(self, receive, send, request_id: str):
        self.receive = receive
        self._send = send
        self.request_id = request_id
        self.complete = False

    async def start(self, status: int, content_type: str) -> None:
        """The status line and headers (with the request id)."""
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [(b"x-request-id", self.request_id.encode()),
                                      (b"content-type", content_type.encode())]})

    async def body(self, data: bytes, final: bool = False) -> None:
        """Part of the body; `final` completes the response."""
        self.complete = self.complete or final
        await self._send({"type": "http.response.body", "body": data, "more_body": not final})

    async def error(self, exc: SpeakstreamError, call: CallRecord) -> None:
        """The whole response of a refused call: the API's error JSON with its status."""
        call.status = exc.code.name
        status = http_status(exc)
        await self.start(status, "application/json")
        await self.body(openai_api.error_body(exc, status), final=True)

    async def disconnected(self) -> None:
        """Return when the client goes away before the response is complete."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect" and not self.complete:
                return
            if message["type"] == "http.disconnect":  # uvicorn says so once the response is complete
                await asyncio.Event().wait()


async def _stream(exchange: _Exchange, request: openai_api.SpeechRequest, first: OutputChunk,
                  chunks: AsyncIterator[OutputChunk]) -> None:
    """The encoded audio as it is made: raw bytes, or SSE events."""
    sse = request.stream_format == "sse"
    chunk: Optional[OutputChunk] = first
    while chunk is not None:
        if chunk.audio:
            await exchange.body(openai_api.sse_delta(chunk.audio) if sse else chunk.audio)
        chunk = await anext(chunks, None)
    await exchange.body(openai_api.sse_done(len(request.options.text)) if sse else b"", final=True)


async def _read_body(headers: dict, exchange: _Exchange, settings) -> bytes:
    """The request body, at most the gRPC door's receive limit, within --http-read-timeout-s."""
    limit = transport.max_receive_bytes(settings)
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidArgument("content-length", f"must be a number of bytes, got {declared!r}")
        if int(declared) > limit:
            raise TooLarge("body", f"is {int(declared)} bytes; the limit is {limit} (4 x --max-chars + 64 KiB)")
    deadline = time.monotonic() + settings.http_read_timeout_s
    body = bytearray()
    more = True
    while more:
        try:
            message = await asyncio.wait_for(exchange.receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise SlowRequest("body", f"not received within {settings.http_read_timeout_s:g} s "
                                      "(--http-read-timeout-s)") from None
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise TooLarge("body", f"is more than {limit} bytes, the limit (4 x --max-chars + 64 KiB)")
        more = message.get("more_body", False)
    return bytes(body)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
