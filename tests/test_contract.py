"""The .proto contract: buf lint clean, no breaking change against the baseline commit."""

from __future__ import annotations

import os
import shutil

import pytest

from external_tools import REPO, buf_path, command, run

_PROTOS = REPO / "protos"
# The API is released, so the breaking-change check is on. The baseline is a git
# ref (default: the previous commit); "off" turns the check off (docs/API.md).
_BASELINE_ENV = "SPEAKSTREAM_PROTO_BASELINE"


def _copy_protos(tmp_path):
    """buf.yaml and the .proto files of protos/, copied into tmp_path/protos."""
    copy = tmp_path / "protos"
    for source in (_PROTOS / "buf.yaml", *_PROTOS.rglob("*.proto")):
        target = copy / source.relative_to(_PROTOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return copy


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


async def test_buf_breaking_catches_a_renumbered_field(tmp_path):
    protos = _copy_protos(tmp_path)
    proto = protos / "speakstream" / "v1" / "synthesizer.proto"
    source = proto.read_text(encoding="utf-8")
    assert "string voice = 2;" in source
    proto.write_text(source.replace("string voice = 2;", "string voice = 1000;"), encoding="utf-8")
    result = await run([buf_path(), "breaking", str(protos), "--against", "protos", "--error-format", "json"])
    assert result.code != 0
    assert "FIELD_NO_DELETE" in result.out, result.explain()


async def test_no_breaking_change_against_the_baseline_commit():
    baseline = os.environ.get(_BASELINE_ENV, "HEAD~1")
    if baseline == "off":
        pytest.skip(f"{_BASELINE_ENV}=off: the breaking-change check is turned off")
    git = command("git")
    git_dir = await run([git, "rev-parse", "--path-format=absolute", "--git-common-dir"])
    commit = await run([git, "rev-parse", "--verify", "--quiet", f"{baseline}^{{commit}}"])
    if git_dir.code != 0 or commit.code != 0:
        pytest.skip(f"baseline {baseline} is not in this clone (shallow clone or first commit); "
                    "buf breaking not run")
    against = f"{git_dir.out.strip()}#ref={commit.out.strip()},subdir=protos"
    result = await run([buf_path(), "breaking", "protos", "--against", against])
    assert result.code == 0, (f"protos/ breaks the API of {baseline}: fields are never renumbered or "
                              f"reused (docs/API.md, Evolving the contract)\n{result.explain()}")
