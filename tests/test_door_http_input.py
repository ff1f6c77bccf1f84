"""The bad-input matrix of the HTTP door, with raw HTTP/1.1 on a socket (what a broken client sends).

Each bad request gets a clear error in the OpenAI API's shape naming the
field, with its status; none is INTERNAL; no inference is left behind; the
server keeps answering. Also: bearer tokens and HTTPS on the HTTP door.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import openai
import pytest
from doors import TWO_SENTENCES, door_settings, doors_server, http_url, idle

_TIMEOUT = 60
_SPEECH = "/v1/audio/speech"


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    settings = door_settings(tmp_path_factory.mktemp("voices"), http_read_timeout_s=0.5)
    async with doors_server(settings) as app:
        yield app


async def _exchange(port: int, raw: bytes, ssl_context=None) -> tuple[int, dict, bytes]:
    """Send `raw`, read the whole response (the server closes or says its length): status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(_response(reader), _TIMEOUT)
    finally:
        writer.close()


async def _response(reader) -> tuple[int, dict, bytes]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readline()
    else:  # until the server closes
        body = await reader.read()
    return status, headers, body


def _post(body: bytes, headers: str = "", path: str = _SPEECH) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n").encode() + body


def _json(fields: dict) -> bytes:
    return json.dumps({"model": "tts-1", "voice": "alloy", "input": "Hello."} | fields).encode()


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, "body"),
    (b"\xff\xfe not utf-8", 400, "body"),
    (b"[1, 2]", 400, "body"),
    (b"", 400, "body"),
    (_json({"input": 5}), 400, "input"),
    (_json({"input": None}), 400, "input"),
    (_json({"model": 3}), 400, "model"),
    (_json({"voice": 7}), 400, "voice"),
    (_json({"voice": {"name": "alloy"}}), 400, "voice"),
    (_json({"speed": "fast"}), 400, "speed"),
    (_json({"speed": True}), 400, "speed"),
    (_json({"speed": 0.1}), 400, "speed"),
    (_json({"response_format": "ogg"}), 400, "response_format"),
    (_json({"response_format": 1}), 400, "response_format"),
    (_json({"stream_format": "chunks"}), 400, "stream_format"),
    (_json({"instructions": ["x"]}), 400, "instructions"),
    (_json({"noise_scale": 3}), 400, "noise_scale"),
    (_json({"sentence_silence_s": -1}), 400, "sentence_silence_s"),
    (_json({"input": "\u200b\u200b !!"}), 400, "input"),
    (_json({"voice": "nobody"}), 404, "voice"),
    (_json({"input": "a" * 10_001}), 413, "input"),
])
async def test_a_bad_request_gets_the_error_naming_its_field(app, body, status, param):
    got, headers, answer = await _exchange(app.doors.http_port, _post(body))
    error = json.loads(answer)["error"]
    assert (got, error["param"]) == (status, param), error
    assert error["message"].startswith(param + ":") and error["code"] != "internal"
    assert headers["content-type"] == "application/json" and len(headers["x-request-id"]) == 16


async def test_an_oversized_body_is_413_before_it_is_read(app):
    declared = 10 ** 9
    raw = (f"POST {_SPEECH} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n").encode() + b"{"
    status, _, body = await _exchange(app.doors.http_port, raw)
    assert status == 413 and json.loads(body)["error"]["param"] == "body"


async def test_an_oversized_chunked_body_is_413_once_it_passes_the_limit(app):
    piece = b"a" * 65_536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = f"POST {_SPEECH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    status, _, body = await _exchange(app.doors.http_port, head + chunk * 3)  # 196,608 bytes, never finished
    assert status == 413 and "the limit" in json.loads(body)["error"]["message"]


async def test_a_slow_loris_upload_is_408(app):
    raw = f"POST {_SPEECH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b'{"model": '
    status, _, body = await _exchange(app.doors.http_port, raw)  # the rest never comes
    error = json.loads(body)["error"]
    assert status == 408 and error["param"] == "body" and "--http-read-timeout-s" in error["message"]
    assert app.metrics.count("http:/v1/audio/speech", "DEADLINE_EXCEEDED") >= 1


async def test_a_client_that_vanishes_mid_upload_is_cancelled(app):
    before = app.metrics.count("http:/v1/audio/speech", "CANCELLED")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.doors.http_port)
    writer.write(f"POST {_SPEECH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
    await writer.drain()
    writer.close()
    await app.metrics.wait_until(lambda: app.metrics.count("http:/v1/audio/speech", "CANCELLED") > before)


async def test_abrupt_disconnects_mid_stream_leave_nothing_running(app):
    body = _json({"input": TWO_SENTENCES * 10, "response_format": "pcm"})
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", app.doors.http_port)
        writer.write(_post(body))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(1000)  # some audio
        writer.transport.abort()  # RST, not a polite close
    await idle(app)
    assert all(s.in_flight == 0 for voice in app.pool.all() for s in voice.slots)


async def test_wrong_methods_and_paths_are_refused_plainly(app):
    def get(path: bytes) -> bytes:
        return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    status, _, _ = await _exchange(app.doors.http_port, get(b"/v1/audio/speech"))
    assert status == 405
    status, _, _ = await _exchange(app.doors.http_port, get(b"/v2/nothing"))
    assert status == 404
    status, _, _ = await _exchange(app.doors.http_port, b"NONSENSE\r\n\r\n")
    assert status == 400


async def test_the_server_is_healthy_after_the_matrix(app):
    await idle(app)
    assert app.metrics.count(status="INTERNAL") == 0
    client = openai.AsyncOpenAI(base_url=http_url(app) + "/v1", api_key="x", max_retries=0, timeout=60)
    audio = (await client.audio.speech.create(model="tts-1", voice="alloy", input="Still here.",
                                              response_format="pcm")).content
    assert len(audio) > 10_000


# --- tokens and TLS ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def secure_app(tmp_path_factory):
    from test_security import _issue

    d = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = _issue(d, "ca", "doors test CA", ca=True)
    server, _, _ = _issue(d, "server", "localhost", (ca_key, ca_cert), server=True)
    tokens = d / "tokens.txt"
    tokens.write_text("door-token\n")
    settings = door_settings(tmp_path_factory.mktemp("voices"), tls_cert=server.cert_path,
                             tls_key=server.key_path, auth_token_file=tokens)
    async with doors_server(settings) as app:
        yield app, ssl.create_default_context(cadata=ca.cert.decode())


async def test_https_with_a_token_works(secure_app):
    app, context = secure_app
    client = openai.AsyncOpenAI(base_url=http_url(app, "https") + "/v1", api_key="door-token", max_retries=0,
                                timeout=60, http_client=openai.DefaultAsyncHttpxClient(verify=context))
    audio = (await client.audio.speech.create(model="tts-1", voice="alloy", input="Secure.",
                                              response_format="pcm")).content
    assert len(audio) > 10_000


@pytest.mark.parametrize("authorization",
                         ["", "Authorization: Bearer wrong\r\n", "Authorization: Basic door-token\r\n"])
@pytest.mark.parametrize("path", [_SPEECH, "/v1/models", "/v1/audio/voices"])
async def test_a_missing_or_wrong_token_is_401_alike(secure_app, authorization, path):
    app, context = secure_app
    method = "POST" if path == _SPEECH else "GET"
    raw = _post(_json({}), authorization, path).replace(b"POST", method.encode(), 1)
    status, _, body = await _exchange(app.doors.http_port, raw, context)
    assert status == 401
    assert json.loads(body)["error"]["message"] == "this call needs a valid 'authorization: Bearer <token>' header"


async def test_the_page_is_open_without_a_token(secure_app):
    app, context = secure_app
    status, headers, body = await _exchange(
        app.doors.http_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", context)
    assert status == 200 and headers["content-type"].startswith("text/html") and b"speakstream" in body


async def test_plain_http_against_the_https_port_gets_no_answer(secure_app):
    app, _ = secure_app
    reader, writer = await asyncio.open_connection("127.0.0.1", app.doors.http_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert not (await asyncio.wait_for(reader.read(), _TIMEOUT)).startswith(b"HTTP/1.1 200")
    writer.close()
