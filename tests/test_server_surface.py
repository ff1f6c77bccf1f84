"""Health, reflection and the command-line entry points."""

import asyncio
import contextlib
import os
import socket
import sys
import threading
import wave

import pytest
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


# --- start-up failures: one line, exit 2, nothing left running ----------------------------------

@contextlib.contextmanager
def _held_port():
    """A loopback port another program listens on, for as long as the block runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _in_use(port: int, flag: str) -> str:
    return f"port {port} on 127.0.0.1 is in use (another speakstream-server?); choose another with {flag}"


async def test_a_busy_port_is_one_line_and_exit_2_before_any_model_loads():
    with _held_port() as port:
        code, out, err = await _run(sys.executable, "-m", "server", "--port", str(port), "--log-level", "INFO")
    assert code == 2
    assert out == ""
    # At INFO a model load logs "voice ... loaded"; the only line is the refusal.
    assert err.splitlines() == [f"speakstream-server: {_in_use(port, '--port')}"]


async def test_a_busy_metrics_port_is_one_line_and_exit_2():
    with _held_port() as metrics_port:
        code, _, err = await _run(sys.executable, "-m", "server", "--port", "0", "--metrics-port", str(metrics_port),
                                  "--log-level", "ERROR")
    assert code == 2
    assert err.splitlines() == [f"speakstream-server: {_in_use(metrics_port, '--metrics-port')}"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(("infer", "frontend"))}


async def test_a_failure_after_the_workers_started_stops_everything_started():
    from server.app import start
    from server.config import Settings
    from server.errors import BindError

    tasks, threads = asyncio.all_tasks(), _engine_threads()
    port = _free_port()
    with _held_port() as metrics_port:
        # The exporter starts after the workers and the idle trimmer: its bind fails with them running.
        with pytest.raises(BindError) as info:
            await start(Settings(port=port, pool_size=2, metrics_port=metrics_port, idle_trim_s=5, grace_s=0))
    assert str(info.value) == _in_use(metrics_port, "--metrics-port")
    left = [t.get_name() for t in asyncio.all_tasks() - tasks - {asyncio.current_task()} if not t.done()]
    assert left == []
    assert [t.name for t in _engine_threads() - threads if t.is_alive()] == []
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # the gRPC port was given back
