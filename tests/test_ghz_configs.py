"""clients/ghz/*.json and the ghz commands of docs/LOADTEST.md, run by ghz against the test server.

Static checks (always): the keys are ghz's, the call exists, the data parses
into the request, the server answers one request of each. With a ghz binary
($SPEAKSTREAM_GHZ, ../shared/tools/ghz beside the checkout, or `ghz` on PATH;
skipped when there is none, as on a user's clone): every config and every ghz
command of the doc is run as written, with only the address, the number of
calls and the concurrency shrunk, and ghz's JSON report and the server's own
call counters must show exactly that many calls of the right method, all OK.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Optional

import pytest
from external_tools import REPO, run
from google.protobuf import descriptor_pool, json_format, message_factory

from speakstream.v1 import synthesizer_pb2  # noqa: F401  (registers the descriptors)

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
# ghz 0.120.0 sets total to MaxInt32 when any run duration is set (runner/options.go),
# so a config with one of these runs for the whole duration whatever its total says.
_RUN_DURATION_KEYS = {"duration", "max-duration"}
_DOC = REPO / "docs" / "LOADTEST.md"
_DOC_ADDRESS = "127.0.0.1:50051"  # the configs' host and the doc's address: `make serve`
# The run, shrunk for the test server (pool_size 2): calls per command and concurrency.
_TOTAL, _CONCURRENCY = 4, 2
_GHZ_TIMEOUT_S = 240


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
    assert method_name in service.methods_by_name, f"{call}: {service_name} has no method {method_name}"
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
    assert config["insecure"] is True and config["host"] == _DOC_ADDRESS
    assert _DURATION.match(config["timeout"]), "a per-call timeout bounds each call"
    assert not _RUN_DURATION_KEYS & set(config), "ghz ignores total when a run duration is set"
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


# --- ghz itself ---------------------------------------------------------------------------------

def _ghz() -> str:
    """The ghz binary: $SPEAKSTREAM_GHZ, else shared/tools/ghz beside the checkout (or in
    $SPEAKSTREAM_SHARED), else `ghz` on PATH; the test is skipped when there is none."""
    explicit = os.environ.get("SPEAKSTREAM_GHZ")
    if explicit:
        assert os.access(explicit, os.X_OK), f"SPEAKSTREAM_GHZ={explicit} is not an executable file"
        return explicit
    shared = Path(os.environ.get("SPEAKSTREAM_SHARED", REPO.parent / "shared")) / "tools" / "ghz"
    if os.access(shared, os.X_OK):
        return str(shared)
    on_path = shutil.which("ghz")
    if on_path is None:
        pytest.skip(f"ghz not found ({shared} absent, no SPEAKSTREAM_GHZ, no ghz on PATH); "
                    "docs/LOADTEST.md says where to get it")
    return on_path


def _doc_commands() -> list[tuple[str, ...]]:
    """The ghz commands in the ```sh blocks of docs/LOADTEST.md, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", _DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [tuple(shlex.split(line, comments=True)) for block in blocks
            for line in block.replace("\\\n", " ").splitlines() if line.startswith("ghz ")]


def _option(argv: tuple[str, ...], *names: str) -> Optional[str]:
    """The value of the first of `names` in argv (`--flag value` or `--flag=value`), else None."""
    for k, arg in enumerate(argv):
        for name in names:
            if arg == name and k + 1 < len(argv):
                return argv[k + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _invocations() -> list[tuple[str, ...]]:
    """Every ghz command of the doc, and `ghz --config X` for a config no doc command runs."""
    commands = _doc_commands()
    documented = {_option(c, "--config") for c in commands}
    return commands + [("ghz", "--config", str(p.relative_to(REPO))) for p in _CONFIGS
                       if str(p.relative_to(REPO)) not in documented]


def _shrunk(argv: tuple[str, ...], address: str, tmp_path: Path) -> list[str]:
    """argv's arguments for the test server: a config is copied with its host, total and
    concurrency replaced, flags -n/-c and the doc's address likewise; JSON report on stdout."""
    swap = {"-n": str(_TOTAL), "--total": str(_TOTAL), "-c": str(_CONCURRENCY), "--concurrency": str(_CONCURRENCY)}
    out, args = [], list(argv[1:])
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name == "--config":
            path = REPO / (arg.split("=", 1)[1] if "=" in arg else args.pop(0))
            config = _config(path) | {"host": address, "total": _TOTAL, "concurrency": _CONCURRENCY}
            copy = tmp_path / path.name
            copy.write_text(json.dumps(config), encoding="utf-8")
            out += ["--config", str(copy)]
        elif name in swap:
            out += [name, swap[name]]  # ghz takes no `-n=4`
            if "=" not in arg:
                args.pop(0)
        else:
            out.append(address if arg == _DOC_ADDRESS else arg)
    assert "--config" in out or address in out, f"{shlex.join(argv)}: neither a config nor {_DOC_ADDRESS}"
    return out + ["--format", "json"]


def _call(argv: tuple[str, ...]) -> str:
    """The method an invocation calls: its --call, else its config's call."""
    return _option(argv, "--call") or _config(REPO / _option(argv, "--config"))["call"]


def test_the_doc_runs_every_config_and_calls_with_the_proto_files_too():
    commands = _doc_commands()
    assert {_option(c, "--config") for c in commands} >= {str(p.relative_to(REPO)) for p in _CONFIGS}
    assert any(_option(c, "--proto") for c in commands), "the doc shows a run with the .proto files"


@pytest.mark.slow
@pytest.mark.timeout(_GHZ_TIMEOUT_S + 60)
@pytest.mark.parametrize("argv", _invocations(), ids=lambda argv: _option(argv, "--config") or _option(argv, "--call"))
async def test_ghz_runs_exactly_the_shrunk_total_of_the_right_rpc_all_ok(app, argv, tmp_path):
    ghz = _ghz()
    method, metrics = _method(_call(argv)).name, app.metrics
    # Calls a previous test left running would change the counters under us.
    await asyncio.wait_for(metrics.wait_until(lambda: metrics.in_flight_total == 0), 60)
    before, expected = dict(metrics.by_rpc_status), metrics.count(method) + _TOTAL
    result = await run([ghz, *_shrunk(argv, app.address, tmp_path)], timeout_s=_GHZ_TIMEOUT_S)
    assert result.code == 0, result.explain()
    report = json.loads(result.out)
    assert (report["count"], report["endReason"]) == (_TOTAL, "normal"), \
        f"ghz made {report['count']} calls in {report['total'] / 1e9:.1f} s, ended by {report['endReason']}"
    assert report["statusCodeDistribution"] == {"OK": _TOTAL}, report["statusCodeDistribution"]
    assert not report.get("errorDistribution"), report["errorDistribution"]
    assert [d["status"] for d in report["details"]] == ["OK"] * _TOTAL
    # The server saw exactly those calls, all of `method`, all OK, and no other call.
    await asyncio.wait_for(metrics.wait_until(lambda: metrics.count(method) >= expected), 60)
    after = dict(metrics.by_rpc_status)
    changed = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert changed == {(method, "OK"): _TOTAL}
