"""Shared fixtures: a real server on 127.0.0.1:0 with the real voice, real channels."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

_REPO = Path(__file__).resolve().parents[1]


DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def phoneme_vectors() -> dict:
    """Reference phoneme ids from Piper's training-time frontend (tests/data/vectors/README.md)."""
    return json.loads((DATA / "vectors" / "phoneme_ids.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def settings():
    """Server settings for the shared test server."""
    from server.config import Settings

    return Settings(port=0, pool_size=2, max_queue=16, grace_s=0.5)


@pytest.fixture(scope="session")
async def app(settings):
    """The real server, started once per session on a free loopback port."""
    from server.app import start

    app = await start(settings)
    app.scheduler.log_runs()  # tests count and time the inferences of their calls
    yield app
    await app.stop(grace=0)


@pytest.fixture
def run_log(app):
    """The shared server's log of inference runs (server/scheduler.py RunRecord)."""
    return app.scheduler.run_log


@pytest.fixture(scope="session")
async def channel(app):
    """An async channel to the shared server."""
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    """A Synthesizer stub on the shared channel."""
    from speakstream.v1 import synthesizer_pb2_grpc

    return synthesizer_pb2_grpc.SynthesizerStub(channel)


@pytest.fixture
def repo_root() -> Path:
    """The checkout's root directory."""
    return _REPO
