"""clients/ghz/*.json: valid ghz configs whose call exists and whose data the server accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory

from speakstream.v1 import synthesizer_pb2  # noqa: F401  (registers the descriptors)

from external_tools import REPO

_CONFIGS = sorted((REPO / "clients" / "ghz").glob("*.json"))
# The JSON keys of ghz's runner.Config (ghz 0.80 and later); a typo would be silently ignored by ghz.
_GHZ_KEYS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "cname", "authority", "insecure",
    "total", "concurrency", "connections", "qps", "duration", "duration-stop", "max-duration", "timeout",
    "data", "data-file", "binary-file", "metadata", "metadata-file", "stream-interval", "output", "format",
    "connect-timeout", "keepalive", "cpus", "import-paths", "name", "tags", "reflect-metadata", "debug",
    "host", "enable-compression",
}
_TEMPLATE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
_DURATION = re.compile(r"^\d+(ms|s|m|h)$")


def _config(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _render(value):
    """ghz's per-request template actions ({{.RequestNumber}}, ...) replaced by a sample value."""
    if isinstance(value, str):
        return _TEMPLATE.sub("7", value)
    if isinstance(value, dict):
        return {k: _render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v) for v in value]
    return value


def _method(call: str):
    """The method descriptor of a ghz call name ('pkg.Service.Method' or 'pkg.Service/Method')."""
    service_name, _, method_name = call.replace("/", ".").rpartition(".")
    service = descriptor_pool.Default().FindServiceByName(service_name)
    return service.methods_by_name[method_name]


def _request(config: dict):
    method = _method(config["call"])
    return json_format.ParseDict(_render(config["data"]), message_factory.GetMessageClass(method.input_type)())


def test_there_is_a_config_for_each_synthesizer_rpc():
    calls = {_config(p)["call"] for p in _CONFIGS}
    assert calls == {f"speakstream.v1.Synthesizer.{m}" for m in ("Synthesize", "SynthesizeStream", "ListVoices")}


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: p.name)
def test_config_is_a_valid_ghz_config_for_an_existing_call(path):
    config = _config(path)
    assert set(config) <= _GHZ_KEYS, f"not ghz config keys: {set(config) - _GHZ_KEYS}"
    method = _method(config["call"])
    assert not method.client_streaming
    request = _request(config)
    assert request.DESCRIPTOR.full_name == method.input_type.full_name
    assert 1 <= config["concurrency"] <= config["total"] <= 10_000
    assert config["insecure"] is True and config["host"].startswith("127.0.0.1:")
    assert all(_DURATION.match(config[k]) for k in ("timeout", "max-duration"))
    assert all(isinstance(v, str) for v in config.get("metadata", {}).values())
    assert "proto" not in config, "configs use reflection; docs/LOADTEST.md shows --proto"


@pytest.mark.parametrize("path", [p for p in _CONFIGS if "synthesize" in p.name], ids=lambda p: p.name)
def test_synthesis_texts_are_realistic_and_differ_per_request(path):
    text = _config(path)["data"]["text"]
    assert "{{.RequestNumber}}" in text, "a per-request text keeps a synthesis cache from answering"
    assert len(re.findall(r"[.!?](\s|$)", text)) >= 2 and 80 <= len(text) <= 1000


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: p.name)
async def test_the_server_answers_one_request_of_each_config(stub, path):
    config = _config(path)
    method = _method(config["call"])
    request = _request(config)
    metadata = tuple(_render(config.get("metadata", {})).items())
    call = getattr(stub, method.name)
    if method.server_streaming:
        chunks = [c async for c in call(request, metadata=metadata, timeout=120)]
        assert chunks[-1].final and sum(c.num_samples for c in chunks) > 22050
    else:
        response = await call(request, metadata=metadata, timeout=120)
        assert response.ByteSize() > 0
