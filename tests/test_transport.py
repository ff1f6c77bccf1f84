"""gRPC transport limits on real servers: message sizes, streams per connection, concurrent RPCs."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from server import transport
from server.__main__ import settings_from_args
from server.app import start
from server.config import Settings
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 60
_TEXT = "One small sentence to speak. And a second one after it."


@pytest.fixture(scope="module")
async def small_app():
    """Unary responses of at most 1 MiB, two streams per connection."""
    app = await start(Settings(port=0, pool_size=1, max_queue=8, grace_s=0,
                               max_response_mb=1, max_streams_per_connection=2))
    yield app
    await app.stop(grace=0)


@pytest.mark.slow
async def test_unary_audio_over_the_response_limit_is_resource_exhausted_and_names_audio(small_app):
    # ~15 s of speech as FLOAT32 is ~1.3 MB, over the 1 MiB limit.
    text = "This sentence is long enough to take a few seconds to speak aloud. " * 4
    async with grpc.aio.insecure_channel(small_app.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.SynthesizerStub(channel).Synthesize(
                pb.SynthesizeRequest(text=text, encoding=pb.AUDIO_ENCODING_FLOAT32, noise_scale=0, noise_w=0),
                timeout=_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith("audio: "), info.value.details()
        assert "SynthesizeStream" in info.value.details()
        # The same request streams (and comes from the cache now).
        chunks = [c async for c in pb_grpc.SynthesizerStub(channel).SynthesizeStream(
            pb.SynthesizeRequest(text=text, encoding=pb.AUDIO_ENCODING_FLOAT32, noise_scale=0, noise_w=0),
            timeout=_TIMEOUT)]
    assert sum(len(c.audio) for c in chunks) > transport.max_response_bytes(small_app.settings)


async def test_a_request_message_over_the_receive_limit_is_resource_exhausted(small_app):
    limit = transport.max_receive_bytes(small_app.settings)
    async with grpc.aio.insecure_channel(small_app.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.SynthesizerStub(channel).Synthesize(pb.SynthesizeRequest(text="a" * (limit + 1)),
                                                              timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.slow
async def test_streams_over_the_per_connection_limit_wait_in_the_client_and_all_complete(small_app):
    """gRPC semantics (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): a client does not open more streams
    than the server allows on one connection; the extra calls wait, they are not refused."""
    seen = []

    async def stream(stub):
        chunks = []
        async for chunk in stub.SynthesizeStream(pb.SynthesizeRequest(text=_TEXT), timeout=_TIMEOUT):
            seen.append(small_app.metrics.in_flight["SynthesizeStream"])
            chunks.append(chunk)
        return chunks

    async with grpc.aio.insecure_channel(small_app.address) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        results = await asyncio.gather(*(stream(stub) for _ in range(4)))
    assert all(chunks[-1].final for chunks in results)
    assert max(seen) == 2  # reached, never exceeded, although four calls were made at once


def test_max_concurrent_rpcs_leaves_room_above_admission_for_health_and_stats():
    settings = Settings(pool_size=2, max_queue=16)
    assert transport.max_concurrent_rpcs(settings) > 2 * (2 + 16)
    assert transport.max_concurrent_rpcs(Settings(max_concurrent_rpcs=500)) == 500
    with pytest.raises(ValueError, match="max_concurrent_rpcs: must exceed pool_size"):
        Settings(pool_size=1, max_queue=10, max_concurrent_rpcs=11)


def test_the_transport_flags_reach_the_server_options():
    settings = settings_from_args(["--max-chars", "1000", "--max-response-mb", "8", "--max-streams-per-connection",
                                   "7", "--keepalive-time-s", "30", "--keepalive-timeout-s", "5",
                                   "--min-client-ping-interval-s", "15", "--max-connection-age-s", "600",
                                   "--max-concurrent-rpcs", "300"])
    options = dict(transport.server_options(settings))
    assert options["grpc.max_receive_message_length"] == 4 * 1000 + 64 * 1024
    assert options["grpc.max_send_message_length"] == 8 * 1024 * 1024 + 64 * 1024
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.keepalive_time_ms"] == 30_000 and options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 15_000
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert transport.max_concurrent_rpcs(settings) == 300
    assert "grpc.max_connection_age_ms" not in dict(transport.server_options(Settings()))


def test_the_largest_unary_response_fits_max_chars_of_normal_speech():
    """10,000 characters (~11 min at ~15 characters/s) as 16-bit 22.05 kHz PCM fit the default."""
    seconds = Settings().max_chars / 15
    assert seconds * 22_050 * 2 < transport.max_response_bytes(Settings())


def test_operations_doc_names_every_server_flag(repo_root):
    from server.__main__ import build_parser

    doc = (repo_root / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    flags = [o for a in build_parser()._actions for o in a.option_strings
             if o.startswith("--") and o != "--help" and not o.startswith("--no-")]
    missing = [f for f in flags if f"`{f}`" not in doc and f"`{f} " not in doc]
    assert missing == []
