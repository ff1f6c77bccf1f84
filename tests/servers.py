"""Servers of a test's own: in this process with its own Settings, or as a child process to signal or measure."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc

READY_PREFIX = "speakstream listening on "


async def start_server(*flags: str, timeout: float = 60):
    """(process, address) once the server prints its ready line; fails if it exits first."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", "0", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout)).decode()
        assert line, "server exited before it was ready"
        if line.startswith(READY_PREFIX):
            return process, line.split()[-1]


@contextlib.asynccontextmanager
async def serving(settings):
    """A server of its own with `settings`, and a Synthesizer stub on it: (app, stub)."""
    from server.app import start
    from speakstream.v1 import synthesizer_pb2_grpc

    app = await start(settings)
    app.scheduler.log_runs()  # tests count and time the inferences of their calls
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            yield app, synthesizer_pb2_grpc.SynthesizerStub(channel)
    finally:
        await app.stop(grace=0)
