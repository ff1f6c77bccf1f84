"""Graceful shutdown of a real server process: SIGTERM drains, a second signal does not wait."""

import asyncio
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import start_server

from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 60
_TEXT = ("The first sentence is spoken while the server is asked to stop. "
         "The second one must still arrive in full. And so must the third, every sample of it.")


async def _sigterm_and_wait_for_drain(process, channel) -> None:
    """Send SIGTERM and return once health says NOT_SERVING (the server is draining).

    The Watch is opened first: once draining, the server takes no new calls at all.
    """
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    first = await asyncio.wait_for(watch.read(), _TIMEOUT)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    process.send_signal(signal.SIGTERM)
    while (await asyncio.wait_for(watch.read(), _TIMEOUT)).status != health_pb2.HealthCheckResponse.NOT_SERVING:
        pass
    watch.cancel()


async def _goaway_received(channel) -> None:
    """Wait until the server's GOAWAY reached the channel (it leaves READY; the streams in flight go on).

    A call sent in the instant between NOT_SERVING and the transport's stop can reach the server
    before its GOAWAY is out, and gRPC itself then cancels it (CANCELLED): that race is gRPC's
    (docs/OPERATIONS.md, Draining). From the GOAWAY on, every new call is refused UNAVAILABLE.
    """
    while (state := channel.get_state()) == grpc.ChannelConnectivity.READY:
        await asyncio.wait_for(channel.wait_for_state_change(state), _TIMEOUT)


async def _finish(call) -> list:
    chunks = []
    while (chunk := await asyncio.wait_for(call.read(), _TIMEOUT)) is not grpc.aio.EOF:
        chunks.append(chunk)
    return chunks


@pytest.mark.slow
async def test_sigterm_lets_active_streams_finish_refuses_new_calls_and_exits_0():
    process, address = await start_server("--grace-s", "30", "--max-queue", "8")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            calls = [stub.SynthesizeStream(pb.SynthesizeRequest(text=_TEXT), timeout=_TIMEOUT) for _ in range(4)]
            firsts = [await asyncio.wait_for(call.read(), _TIMEOUT) for call in calls]
            await _sigterm_and_wait_for_drain(process, channel)
            await _goaway_received(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Synthesize(pb.SynthesizeRequest(text="Too late."), timeout=_TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            streams = [[first] + await _finish(call) for first, call in zip(firsts, calls)]
        for chunks in streams:
            assert chunks[-1].final
            assert {c.sentence_index for c in chunks} == {0, 1, 2}
            assert [c.sequence for c in chunks] == list(range(len(chunks)))
        assert await asyncio.wait_for(process.wait(), _TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_a_second_signal_exits_at_once_without_waiting_for_streams():
    process, address = await start_server("--grace-s", "300")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            call = stub.SynthesizeStream(pb.SynthesizeRequest(text=_TEXT * 20), timeout=_TIMEOUT)
            await asyncio.wait_for(call.read(), _TIMEOUT)
            await _sigterm_and_wait_for_drain(process, channel)
            process.send_signal(signal.SIGTERM)
            # Far sooner than the 300 s grace: the stream is abandoned.
            assert await asyncio.wait_for(process.wait(), _TIMEOUT) == 1
            call.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
