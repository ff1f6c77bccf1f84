"""Fault isolation on real servers: a failing session fails only its call and is replaced;
a missing or corrupt voice at start-up is named, and the process exits before "ready".

The session failure is injected with VoiceSessions.inject_failure (a test hook: the next run of
one session raises, through the same path a real ONNX Runtime error takes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import start
from server.config import Settings
from server.voices import bundled_voice
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 60
_TEXT = "The first sentence is short. The second sentence follows it. And a third one ends the text."


@pytest.fixture(scope="module")
async def two_session_app():
    """Two sessions of the default voice, two inferences at once."""
    app = await start(Settings(port=0, pool_size=2, sessions=2, intra_op_threads=1, max_queue=8, grace_s=0))
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield app, channel
    await app.stop(grace=0)


async def _stream(stub) -> list:
    return [c async for c in stub.SynthesizeStream(pb.SynthesizeRequest(text=_TEXT), timeout=_TIMEOUT)]


@pytest.mark.slow
async def test_a_failing_session_fails_one_call_with_internal_and_is_replaced(two_session_app, caplog):
    app, channel = two_session_app
    stub = pb_grpc.SynthesizerStub(channel)
    sessions = app.pool.loaded(app.voices.default)
    broken = sessions.slots[0]
    failed_before = app.scheduler.counters.runs_failed
    sessions.inject_failure(broken.index)
    with caplog.at_level(logging.WARNING, logger="server.pool"):
        results = await asyncio.gather(*(_stream(stub) for _ in range(4)), return_exceptions=True)
        await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failed) == 1, results
    assert failed[0].code() == grpc.StatusCode.INTERNAL
    assert "inference failed on voice en_US-joe-medium" in failed[0].details()
    for chunks in (r for r in results if isinstance(r, list)):  # the others: every sentence, in order
        assert chunks[-1].final and {c.sentence_index for c in chunks} == {0, 1, 2}
        assert [c.sequence for c in chunks] == list(range(len(chunks)))
    # Replaced: a fresh session in the broken one's place, the failure counted and logged.
    assert broken not in sessions.slots and broken.retired and broken.failures == 1
    assert len(sessions.slots) == 2 and all(not s.retired for s in sessions.slots)
    assert app.scheduler.counters.runs_failed == failed_before + 1
    assert f"replaced failed session {broken.index}" in caplog.text
    # And the server is whole: health, and a call served by the new session too.
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=_TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for _ in range(2):
        assert (await _stream(stub))[-1].final


# --- start-up: a real process ---------------------------------------------------------------------

async def _start_process(*flags) -> tuple[int, str, str]:
    """Run the server until it exits (or says it is ready: a failure of the test); exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", "0", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, out.decode(), err.decode()


def _voice_dir(tmp_path: Path, name: str, model: bytes | None, config: bool = True) -> Path:
    """A voice directory holding `name`: the given model bytes (None: no model) and the bundled config."""
    voice = bundled_voice()
    if model is not None:
        (tmp_path / f"{name}.onnx").write_bytes(model)
    if config:
        shutil.copy(voice.model_path.with_name(voice.model_path.name + ".json"), tmp_path / f"{name}.onnx.json")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["corrupt model", "truncated model", "missing model", "missing config",
                                  "invalid config"])
async def test_a_bad_default_voice_is_named_and_the_process_exits_before_ready(tmp_path, case):
    model = bundled_voice().model_path.read_bytes()
    name = "broken-voice"
    if case == "corrupt model":
        directory = _voice_dir(tmp_path, name, b"this is not an onnx model" * 100)
    elif case == "truncated model":
        directory = _voice_dir(tmp_path, name, model[: len(model) // 3])
    elif case == "missing model":
        directory = _voice_dir(tmp_path, name, None)
    elif case == "missing config":
        directory = _voice_dir(tmp_path, name, model, config=False)
    else:
        directory = _voice_dir(tmp_path, name, model)
        (directory / f"{name}.onnx.json").write_text(json.dumps({"audio": {}}))
    code, out, err = await _start_process("--voice-dir", str(directory), "--voice", name)
    assert code == 2, err
    assert "speakstream listening" not in out and "ready on" not in err
    expected = {"missing config": f"{name}.onnx.json", "invalid config": f"{name}.onnx.json"}.get(
        case, f"{name}.onnx")
    assert "cannot start: " in err and str(directory / expected) in err, err
