"""Health, reflection and the command-line entry points."""

import asyncio
import os
import sys
import wave

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

_TIMEOUT = 60


async def test_health_says_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "speakstream.v1.Synthesizer"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=_TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_both_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=_TIMEOUT)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"speakstream.v1.Synthesizer", "grpc.health.v1.Health"} <= names


async def _run(*argv, stdin=None):
    env = dict(os.environ)
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=_TIMEOUT)
    return process.returncode, out.decode(), err.decode()


async def test_say_writes_a_speech_wav(app, tmp_path):
    out = tmp_path / "hi.wav"
    code, _, err = await _run(sys.executable, "-m", "clients.say", "--server", app.address,
                              "Hello there. How are you?", "-o", str(out))
    assert code == 0, err
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        assert 1.5 <= wav.getnframes() / 22050 <= 3.0


async def test_say_reports_an_unknown_voice_with_exit_code_2(app, tmp_path):
    code, _, err = await _run(sys.executable, "-m", "clients.say", "--server", app.address,
                              "--voice", "nobody", "hi", "-o", str(tmp_path / "x.wav"))
    assert code == 2
    assert "NOT_FOUND" in err and "voice" in err


async def test_say_reports_an_unreachable_server(tmp_path):
    code, _, err = await _run(sys.executable, "-m", "clients.say", "--server", "127.0.0.1:1",
                              "--timeout", "5", "hi", "-o", str(tmp_path / "x.wav"))
    assert code == 3
    assert "cannot reach" in err


async def test_server_flags_are_checked_before_loading_models():
    code, _, err = await _run(sys.executable, "-m", "server", "--pool-size", "0")
    assert code == 2
    assert "pool-size" in err
