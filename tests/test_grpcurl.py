"""grpcurl against the real server: list, describe and call, through reflection and through -proto.

Also runs every grpcurl example of docs/API.md, so the documentation cannot rot.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from dataclasses import dataclass

import pytest
from external_tools import grpcurl_examples, grpcurl_path, run

from speakstream.v1 import stats_pb2 as spb
from speakstream.v1 import stats_pb2_grpc as spb_grpc
from speakstream.v1 import synthesizer_pb2 as pb

_SYNTH = "speakstream.v1.Synthesizer"
_STATS = "speakstream.v1.Stats"
_SYNTH_METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["Synthesizer"].methods]
_PROTO_ARGS = ("-import-path", "protos", "-proto", "speakstream/v1/synthesizer.proto")
_DOC_ADDRESS = "localhost:50051"
_HELLO = {"text": "Hello there. How are you?", "noise_scale": 0, "noise_w": 0}
# grpcurl exits with 64 + the gRPC status code of a failed call.
_EXIT_STATUS_BASE = 64


@pytest.fixture
def grpcurl(app):
    """grpcurl bound to the test server: `await grpcurl("list")`, `await grpcurl(method, data={...})`."""
    binary = grpcurl_path()

    async def call(*target: str, data=None, proto: bool = False):
        argv = [binary, "-plaintext", "-max-time", "60", *(_PROTO_ARGS if proto else ())]
        if data is not None:
            argv += ["-d", json.dumps(data)]
        return await run([*argv, app.address, *target])

    return call


def _json_stream(text: str) -> list[dict]:
    """The JSON objects grpcurl prints one after another (one per streamed message)."""
    decoder, objects, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        obj, end = decoder.raw_decode(text, position)
        objects.append(obj)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return objects


async def test_list_shows_every_served_service(grpcurl):
    result = await grpcurl("list")
    assert result.code == 0, result.explain()
    assert set(result.out.split()) == {_SYNTH, _STATS, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                       "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize("proto", [False, True], ids=["reflection", "proto"])
async def test_list_shows_the_synthesizer_methods(grpcurl, proto):
    result = await grpcurl("list", _SYNTH, proto=proto)
    assert result.code == 0, result.explain()
    assert set(result.out.split()) == {f"{_SYNTH}.Synthesize", f"{_SYNTH}.SynthesizeStream",
                                     f"{_SYNTH}.SynthesizeLive", f"{_SYNTH}.ListVoices"}


@pytest.mark.parametrize("proto", [False, True], ids=["reflection", "proto"])
@pytest.mark.parametrize("method, signature", [
    ("SynthesizeStream", "rpc SynthesizeStream ( .speakstream.v1.SynthesizeRequest ) "
                         "returns ( stream .speakstream.v1.AudioChunk );"),
    ("Synthesize", "rpc Synthesize ( .speakstream.v1.SynthesizeRequest ) "
                   "returns ( .speakstream.v1.SynthesizeResponse );"),
    ("ListVoices", "rpc ListVoices ( .speakstream.v1.ListVoicesRequest ) "
                   "returns ( .speakstream.v1.ListVoicesResponse );"),
])
async def test_describe_resolves_a_method_by_its_full_name(grpcurl, proto, method, signature):
    result = await grpcurl("describe", f"{_SYNTH}.{method}", proto=proto)
    assert result.code == 0, result.explain()
    assert f"{_SYNTH}.{method} is a method:" in result.out
    assert signature in result.out


@pytest.mark.parametrize("proto", [False, True], ids=["reflection", "proto"])
async def test_describe_shows_a_message_with_its_optional_and_reserved_fields(grpcurl, proto):
    result = await grpcurl("describe", "speakstream.v1.SynthesizeRequest", proto=proto)
    assert result.code == 0, result.explain()
    for line in ("string text = 1;", "optional float noise_scale = 6;", "uint32 chunk_ms = 11;", "reserved 4;"):
        assert line in result.out
    # Reflection carries no source comments; the .proto file does.
    assert ("// Speaking rate" in result.out) == proto


async def test_describe_resolves_enum_values_and_every_listed_service(grpcurl):
    value = await grpcurl("describe", "speakstream.v1.AudioEncoding.AUDIO_ENCODING_WAV")
    assert value.code == 0, value.explain()
    assert "AUDIO_ENCODING_WAV = 3;" in value.out
    listed, everything = await grpcurl("list"), await grpcurl("describe")
    assert listed.code == 0 and everything.code == 0, listed.explain() + everything.explain()
    described = [line.split()[0] for line in everything.out.splitlines() if line.endswith(" is a service:")]
    assert sorted(described) == sorted(listed.out.split())


@pytest.mark.parametrize("proto", [False, True], ids=["reflection", "proto"])
async def test_synthesize_from_json_returns_a_wav_file(grpcurl, proto):
    result = await grpcurl(f"{_SYNTH}/Synthesize", data={**_HELLO, "encoding": "AUDIO_ENCODING_WAV"}, proto=proto)
    assert result.code == 0, result.explain()
    response = json.loads(result.out)
    assert response["encoding"] == "AUDIO_ENCODING_WAV"
    with wave.open(io.BytesIO(base64.b64decode(response["audio"]))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        assert wav.getnframes() == int(response["numSamples"])
    assert len(response["sentences"]) == 2


@pytest.mark.parametrize("proto", [False, True], ids=["reflection", "proto"])
async def test_synthesize_stream_from_json_gives_ordered_chunks_like_the_python_stub(grpcurl, stub, proto):
    result = await grpcurl(f"{_SYNTH}/SynthesizeStream", data={**_HELLO, "chunk_ms": 250}, proto=proto)
    assert result.code == 0, result.explain()
    chunks = _json_stream(result.out)
    assert len(chunks) >= 2
    assert [int(c.get("sequence", 0)) for c in chunks] == list(range(len(chunks)))
    offset = 0
    for chunk in chunks:
        assert int(chunk.get("sampleOffset", 0)) == offset
        assert len(base64.b64decode(chunk["audio"])) == 2 * chunk["numSamples"]
        offset += chunk["numSamples"]
    assert [c.get("final", False) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    # The same request through the generated Python stubs: the same audio length.
    reference = await stub.Synthesize(pb.SynthesizeRequest(**_HELLO), timeout=60)
    assert offset == reference.num_samples


async def test_reflection_and_proto_print_the_same_json(grpcurl):
    """Both print proto3 JSON names (lowerCamelCase): reflection sends each field's json_name."""
    data = {**_HELLO, "encoding": "AUDIO_ENCODING_WAV"}
    outputs = [await grpcurl(f"{_SYNTH}/Synthesize", data=data, proto=proto) for proto in (False, True)]
    assert all(o.code == 0 for o in outputs), [o.explain() for o in outputs]
    by_reflection, by_proto = (json.loads(o.out) for o in outputs)
    assert by_reflection == by_proto
    assert {"sampleRateHz", "numSamples"} <= set(by_reflection)


@pytest.mark.parametrize("method", [f"{_SYNTH}/ListVoices", f"{_SYNTH}.ListVoices"])
async def test_list_voices_by_slash_or_dot_name(grpcurl, method):
    result = await grpcurl(method, data={})
    assert result.code == 0, result.explain()
    voices = json.loads(result.out)["voices"]
    assert [v["name"] for v in voices if v.get("isDefault")] == ["en_US-joe-medium"]
    assert voices[0]["sampleRateHz"] == 22050


@pytest.mark.parametrize("service", ["", _SYNTH])
async def test_health_check_says_serving(grpcurl, service):
    result = await grpcurl("grpc.health.v1.Health/Check", data={"service": service})
    assert result.code == 0, result.explain()
    assert json.loads(result.out) == {"status": "SERVING"}


@pytest.mark.parametrize("data, status, code", [
    ({"text": ""}, "InvalidArgument", 3),
    ({"text": "Hi.", "noise_w": 2.5}, "InvalidArgument", 3),
    ({"text": "Hi.", "voice": "nobody"}, "NotFound", 5),
])
async def test_a_bad_request_shows_its_status_and_exits_64_plus_code(grpcurl, data, status, code):
    result = await grpcurl(f"{_SYNTH}/Synthesize", data=data)
    assert result.code == _EXIT_STATUS_BASE + code, result.explain()
    assert f"Code: {status}" in result.err


async def test_stats_get_stats_prints_the_snapshot_the_stub_gets(app, grpcurl, stub, channel):
    """GetStats through reflection: proto3 JSON names, the server's own sizes, the calls counted."""
    await stub.Synthesize(pb.SynthesizeRequest(**_HELLO), timeout=60)
    reference = (await spb_grpc.StatsStub(channel).GetStats(spb.GetStatsRequest(), timeout=60)).snapshot
    result = await grpcurl(f"{_STATS}/GetStats", data={})
    assert result.code == 0, result.explain()
    snapshot = json.loads(result.out)["snapshot"]
    settings = app.settings
    assert snapshot["recording"] is True
    assert snapshot["pool"]["size"] == settings.pool_size
    assert snapshot["queue"]["capacity"] == settings.pool_size + settings.max_queue
    assert snapshot["cache"]["maxBytes"] == str(settings.cache_mb * 1024 * 1024)  # uint64: a JSON string
    assert [s["voice"] for s in snapshot["pool"]["sessions"]] == [s.voice for s in reference.pool.sessions]
    assert snapshot["uptimeS"] >= reference.uptime_s
    rpcs = {r["method"]: r for r in snapshot["requests"]["rpcs"]}
    assert list(rpcs) == _SYNTH_METHODS
    # No Synthesize call ran between the two snapshots; the one above made the count at least 1.
    reference_ok = next(r for r in reference.requests.rpcs if r.method == "Synthesize").by_status["OK"]
    assert reference_ok >= 1
    assert int(rpcs["Synthesize"]["byStatus"]["OK"]) == reference_ok


@dataclass(frozen=True)
class _DocExample:
    argv: tuple[str, ...]
    expected_status: str  # "" for success, else grpcurl's status name ("InvalidArgument")

    def __str__(self) -> str:
        return " ".join(self.argv[1:])[:70]


def _doc_examples() -> list[_DocExample]:
    """Every grpcurl command in the sh blocks of docs/API.md, with the status it expects."""
    return [_DocExample(argv, status) for argv, status in grpcurl_examples("API.md")]


def test_api_doc_has_grpcurl_examples_for_every_rpc():
    commands = " ".join(" ".join(e.argv) for e in _doc_examples())
    for name in ("Synthesize ", "SynthesizeStream", "ListVoices", "Health/Check", "Stats/GetStats",
                 " list", " describe", "-proto "):
        assert name in commands + " ", f"docs/API.md has no grpcurl example with {name.strip()!r}"


@pytest.mark.parametrize("example", _doc_examples(), ids=str)
async def test_api_doc_example_runs(app, example):
    argv = [grpcurl_path(), "-max-time", "60",
            *(app.address if arg == _DOC_ADDRESS else arg for arg in example.argv[1:])]
    result = await run(argv)
    if example.expected_status:
        assert result.code > _EXIT_STATUS_BASE, result.explain()
        assert f"Code: {example.expected_status}" in result.err
    else:
        assert result.code == 0, result.explain()
        assert result.out.strip()
