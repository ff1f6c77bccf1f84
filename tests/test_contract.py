"""The .proto contract: buf lint clean, no breaking change against the released contract."""

from __future__ import annotations

import shutil

from external_tools import REPO, Result, buf_path, run
from google.protobuf import descriptor_pb2

_PROTOS = REPO / "protos"
# The contract as last released: a buf image (a FileDescriptorSet) committed with the
# code, so the breaking-change check runs on every clone, shallow or not. Refreshed only
# at a release, by `make proto-baseline` (docs/API.md, Evolving the contract).
_RELEASED = _PROTOS / "released.binpb"
# What the first release (v1) served; any later baseline holds at least these.
_FIRST_RELEASE = {
    "speakstream.v1.Synthesizer": {"Synthesize", "SynthesizeStream", "ListVoices", "SynthesizeLive"},
    "speakstream.v1.Stats": {"GetStats", "WatchStats", "ProfileMemory"},
}


def _copy_protos(tmp_path):
    """buf.yaml and the .proto files of protos/, copied into tmp_path/protos."""
    copy = tmp_path / "protos"
    for source in (_PROTOS / "buf.yaml", *_PROTOS.rglob("*.proto")):
        target = copy / source.relative_to(_PROTOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return copy


async def _breaking(protos) -> Result:
    """buf breaking of `protos` against the released contract, findings as JSON lines."""
    return await run([buf_path(), "breaking", str(protos), "--against", str(_RELEASED), "--error-format", "json"])


async def test_buf_lint_is_clean():
    result = await run([buf_path(), "lint", "protos"])
    assert result.code == 0, f"buf lint findings (fix them, or see protos/buf.yaml):\n{result.explain()}"


async def test_buf_lint_still_enforces_the_standard_rules_on_new_files(tmp_path):
    protos = _copy_protos(tmp_path)
    (protos / "speakstream" / "v1" / "extra.proto").write_text(
        'syntax = "proto3";\npackage speakstream.v1;\n'
        "service Extra { rpc Do(Thing) returns (Thing); }\nmessage Thing { string BadName = 1; }\n")
    result = await run([buf_path(), "lint", str(protos), "--error-format", "json"])
    assert result.code != 0
    for rule in ("FIELD_LOWER_SNAKE_CASE", "RPC_REQUEST_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE"):
        assert rule in result.out, result.explain()
    assert "synthesizer.proto" not in result.out


def test_the_released_contract_holds_every_released_rpc():
    released = descriptor_pb2.FileDescriptorSet.FromString(_RELEASED.read_bytes())
    services = {f"{f.package}.{s.name}": {m.name for m in s.method} for f in released.file for s in f.service}
    for service, methods in _FIRST_RELEASE.items():
        assert methods <= services.get(service, set()), f"{_RELEASED.name} lacks RPCs of {service}"


async def test_no_breaking_change_against_the_released_contract():
    result = await _breaking("protos")
    assert result.code == 0, (f"protos/ breaks the released API ({_RELEASED.name}): fields are never renumbered "
                              f"or reused (docs/API.md, Evolving the contract)\n{result.explain()}")


async def test_buf_breaking_catches_a_renumbered_field(tmp_path):
    protos = _copy_protos(tmp_path)
    proto = protos / "speakstream" / "v1" / "synthesizer.proto"
    source = proto.read_text(encoding="utf-8")
    assert "string voice = 2;" in source
    proto.write_text(source.replace("string voice = 2;", "string voice = 1000;"), encoding="utf-8")
    result = await _breaking(protos)
    assert result.code != 0
    assert "FIELD_NO_DELETE" in result.out, result.explain()


async def test_an_added_field_message_and_rpc_are_not_breaking(tmp_path):
    protos = _copy_protos(tmp_path)
    proto = protos / "speakstream" / "v1" / "synthesizer.proto"
    source = proto.read_text(encoding="utf-8")
    anchor = "message SynthesizeRequest {"
    assert anchor in source and "service Synthesizer {" in source
    source = source.replace(anchor, f"{anchor}\n  uint32 added_knob = 999;", 1)
    source = source.replace("service Synthesizer {", "service Synthesizer {\n"
                            "  rpc AddedRpc(AddedRpcRequest) returns (AddedRpcResponse);", 1)
    proto.write_text(source + "\nmessage AddedRpcRequest {}\nmessage AddedRpcResponse {}\n", encoding="utf-8")
    result = await _breaking(protos)
    assert result.code == 0, result.explain()
