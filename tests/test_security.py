"""TLS, mutual TLS and bearer tokens, through real servers with certificates made here.

One small server per mode (TLS, mutual TLS, tokens), each started once for
the module; the certificates are generated into a temporary directory.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import sys
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from external_tools import command, grpcurl_examples, grpcurl_path, run
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from clients.channel import TOKEN_ENV, Connection, open_aio_channel
from server import app as app_module
from server import security as security_module
from server.__main__ import build_parser, settings_from_args
from server.app import ADMIN_METHODS, OPEN_SERVICES, start
from server.config import Settings
from server.security import (
    AuthTokens,
    BearerTokenInterceptor,
    SecurityConfigError,
    bearer_token,
    load_security,
    read_tokens,
    token_in,
)
from speakstream.v1 import stats_pb2 as spb
from speakstream.v1 import stats_pb2_grpc as spb_grpc
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 30
# The tokens docs/OPERATIONS.md uses in its grpcurl examples.
_USER_TOKEN = "user-token-1"
_OTHER_USER_TOKEN = "user-token-2"
_ADMIN_TOKEN = "admin-token-1"
_DOC_ADDRESS, _DOC_CA = "localhost:50051", "ca.pem"


# --- certificates ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pem:
    """A certificate and its key, as PEM bytes and as files."""

    cert: bytes
    key: bytes
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(directory: Path, stem: str, subject: str, issuer=None, *, ca: bool = False,
           server: bool = False, client: bool = False) -> tuple[_Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for `subject`, self-signed when `issuer` (key, cert) is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_key, issuer_cert = issuer or (key, None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False,
            decipher_only=False), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return _Pem(cert_pem, key_pem, cert_path, key_path), key, cert


@dataclass(frozen=True)
class _Pki:
    server_ca: _Pem
    server: _Pem
    client_ca: _Pem
    client: _Pem
    stranger: _Pem  # a client certificate from a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> _Pki:
    """A server CA and server certificate (127.0.0.1, localhost), a client CA, its client, a stranger."""
    d = tmp_path_factory.mktemp("pki")
    server_ca, server_ca_key, server_ca_cert = _issue(d, "server-ca", "speakstream test server CA", ca=True)
    server, _, _ = _issue(d, "server", "localhost", (server_ca_key, server_ca_cert), server=True)
    client_ca, client_ca_key, client_ca_cert = _issue(d, "client-ca", "speakstream test client CA", ca=True)
    client, _, _ = _issue(d, "client", "a trusted client", (client_ca_key, client_ca_cert), client=True)
    _, other_key, other_cert = _issue(d, "other-ca", "another CA", ca=True)
    stranger, _, _ = _issue(d, "stranger", "an untrusted client", (other_key, other_cert), client=True)
    return _Pki(server_ca, server, client_ca, client, stranger)


def _credentials(pki: _Pki, client: _Pem | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=pki.server_ca.cert,
                                        private_key=client.key if client else None,
                                        certificate_chain=client.cert if client else None)


# --- servers ----------------------------------------------------------------------------------

async def _start(settings: Settings):
    return await asyncio.wait_for(start(settings), 120)


@pytest.fixture(scope="module")
async def tls_app(pki):
    """TLS without client certificates."""
    app = await _start(Settings(port=0, pool_size=1, max_queue=4, grace_s=0,
                                tls_cert=pki.server.cert_path, tls_key=pki.server.key_path))
    yield app
    await app.stop(grace=0)


@pytest.fixture(scope="module")
async def mtls_app(pki):
    """TLS that requires a client certificate signed by the client CA."""
    app = await _start(Settings(port=0, pool_size=1, max_queue=4, grace_s=0,
                                tls_cert=pki.server.cert_path, tls_key=pki.server.key_path,
                                tls_client_ca=pki.client_ca.cert_path))
    yield app
    await app.stop(grace=0)


@pytest.fixture(scope="module")
async def token_app(pki, tmp_path_factory):
    """TLS on the default (loopback) host, bearer tokens, an admin token, profiling on."""
    d = tmp_path_factory.mktemp("tokens")
    users, admins = d / "tokens", d / "admin-tokens"
    users.write_text(f"{_USER_TOKEN}\n\n{_OTHER_USER_TOKEN}\n")
    admins.write_text(_ADMIN_TOKEN)  # a single token, no newline
    app = await _start(Settings(port=0, pool_size=1, max_queue=4, grace_s=0, enable_profiling=True,
                                tls_cert=pki.server.cert_path, tls_key=pki.server.key_path,
                                auth_token_file=users, admin_token_file=admins))
    yield app
    await app.stop(grace=0)


@pytest.fixture(scope="module")
async def token_channel(token_app, pki):
    async with grpc.aio.secure_channel(token_app.address, _credentials(pki)) as channel:
        yield channel


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- binding --------------------------------------------------------------------------------

def test_the_server_binds_loopback_unless_told_otherwise():
    assert Settings().host == "127.0.0.1"
    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert settings_from_args([]).host == "127.0.0.1"
    assert settings_from_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


def _proc_address(hex_address: str) -> str:
    """An address as /proc/net/tcp{,6} prints it (32-bit words in host, little-endian, byte order);
    an IPv4-mapped IPv6 address (gRPC binds 127.0.0.1 on an IPv6 socket) as the IPv4 one."""
    raw = bytes.fromhex(hex_address)
    address = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    return str(getattr(address, "ipv4_mapped", None) or address)


def _own_socket_inodes() -> set[str]:
    """Inodes of this process's sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _listening_addresses(port: int) -> set[str]:
    """The local addresses this process's TCP sockets listen on at `port`, as the kernel reports them."""
    ours, addresses = _own_socket_inodes(), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port and fields[3] == "0A" and fields[9] in ours:  # 0A: LISTEN
                addresses.add(_proc_address(address))
    return addresses


async def test_a_default_server_listens_on_loopback_only(token_app):
    # What the kernel has bound, not the address the app reports: no other interface reaches it.
    assert _listening_addresses(token_app.port) == {"127.0.0.1"}


# --- TLS --------------------------------------------------------------------------------------

async def test_tls_call_works_with_the_ca_as_root(tls_app, pki):
    async with grpc.aio.secure_channel(tls_app.address, _credentials(pki)) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        voices = await stub.ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)
        response = await stub.Synthesize(pb.SynthesizeRequest(text="Hi."), timeout=_TIMEOUT)
    assert voices.voices and response.num_samples > 0


async def test_tls_server_answers_to_localhost_too(tls_app, pki):
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(tls_app.address, _credentials(pki), options=options) as channel:
        await pb_grpc.SynthesizerStub(channel).ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)


async def test_plaintext_client_against_a_tls_server_is_unavailable(tls_app):
    async with grpc.aio.insecure_channel(tls_app.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.SynthesizerStub(channel).ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_client_that_does_not_trust_the_server_ca_is_unavailable(tls_app, pki):
    untrusting = grpc.ssl_channel_credentials(root_certificates=pki.client_ca.cert)
    async with grpc.aio.secure_channel(tls_app.address, untrusting) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.SynthesizerStub(channel).ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_client_with_a_certificate_from_the_client_ca_works(mtls_app, pki):
    async with grpc.aio.secure_channel(mtls_app.address, _credentials(pki, pki.client)) as channel:
        response = await pb_grpc.SynthesizerStub(channel).Synthesize(pb.SynthesizeRequest(text="Hi."),
                                                                     timeout=_TIMEOUT)
    assert response.num_samples > 0


@pytest.mark.parametrize("who", ["no certificate", "a certificate from another CA"])
async def test_mtls_refuses_a_client_without_a_trusted_certificate(mtls_app, pki, who):
    client = None if who == "no certificate" else pki.stranger
    async with grpc.aio.secure_channel(mtls_app.address, _credentials(pki, client)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.SynthesizerStub(channel).ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --- bearer tokens ------------------------------------------------------------------------------

async def _synthesize(channel, metadata):
    response = await pb_grpc.SynthesizerStub(channel).Synthesize(
        pb.SynthesizeRequest(text="Hi."), metadata=metadata, timeout=_TIMEOUT)
    assert response.num_samples > 0


async def _synthesize_stream(channel, metadata):
    call = pb_grpc.SynthesizerStub(channel).SynthesizeStream(
        pb.SynthesizeRequest(text="Hi."), metadata=metadata, timeout=_TIMEOUT)
    chunks = [chunk async for chunk in call]
    assert chunks and chunks[-1].final


async def _list_voices(channel, metadata):
    response = await pb_grpc.SynthesizerStub(channel).ListVoices(
        pb.ListVoicesRequest(), metadata=metadata, timeout=_TIMEOUT)
    assert response.voices


async def _get_stats(channel, metadata):
    response = await spb_grpc.StatsStub(channel).GetStats(
        spb.GetStatsRequest(), metadata=metadata, timeout=_TIMEOUT)
    assert response.snapshot.uptime_s > 0


async def _watch_stats(channel, metadata):
    call = spb_grpc.StatsStub(channel).WatchStats(
        spb.WatchStatsRequest(interval_ms=100), metadata=metadata, timeout=_TIMEOUT)
    first = await call.read()
    call.cancel()
    assert first.snapshot.uptime_s > 0


_CALLS = {f.__name__.lstrip("_"): f for f in (_synthesize, _synthesize_stream, _list_voices, _get_stats,
                                               _watch_stats)}


@pytest.mark.parametrize("token", [_USER_TOKEN, _OTHER_USER_TOKEN, _ADMIN_TOKEN])
@pytest.mark.parametrize("rpc", list(_CALLS))
async def test_a_valid_token_passes(token_channel, rpc, token):
    await _CALLS[rpc](token_channel, _bearer(token))


@pytest.mark.parametrize("metadata", [
    pytest.param((), id="no header"),
    pytest.param(_bearer("not-a-token"), id="wrong token"),
    pytest.param(_bearer(_USER_TOKEN[:-1]), id="token prefix"),
    pytest.param((("authorization", _USER_TOKEN),), id="no scheme"),
    pytest.param((("authorization", f"Basic {_USER_TOKEN}"),), id="other scheme"),
    pytest.param((("x-token", _USER_TOKEN),), id="other header"),
])
@pytest.mark.parametrize("rpc", list(_CALLS))
async def test_a_missing_or_wrong_token_is_unauthenticated_alike(token_app, token_channel, rpc, metadata):
    calls_before = token_app.metrics.count()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _CALLS[rpc](token_channel, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == "this call needs a valid 'authorization: Bearer <token>' header"
    assert token_app.metrics.count() == calls_before  # refused before reaching the servicer


async def test_health_check_needs_no_token(token_channel):
    response = await health_pb2_grpc.HealthStub(token_channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"])
async def test_reflection_lists_services_without_a_token(token_channel, service):
    call = token_channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                       request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                       response_deserializer=rpb.ServerReflectionResponse.FromString)
    responses = [r async for r in call(iter([rpb.ServerReflectionRequest(list_services="")]), timeout=_TIMEOUT)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"speakstream.v1.Synthesizer", "speakstream.v1.Stats", "grpc.health.v1.Health"} <= names


async def _profile(channel, metadata) -> spb.ProfileMemoryResponse:
    return await spb_grpc.StatsStub(channel).ProfileMemory(
        spb.ProfileMemoryRequest(duration_ms=10, top_n=1), metadata=metadata, timeout=_TIMEOUT)


async def test_profile_memory_with_a_user_token_is_permission_denied(token_channel):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _profile(token_channel, _bearer(_USER_TOKEN))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_profile_memory_without_a_token_is_unauthenticated(token_channel):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _profile(token_channel, ())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_profile_memory_with_the_admin_token_works(token_channel):
    response = await _profile(token_channel, _bearer(_ADMIN_TOKEN))
    assert response.duration_s > 0 and response.traced_bytes > 0


# --- the interceptor on its own ---------------------------------------------------------------

_Details = namedtuple("_Details", "method invocation_metadata")


class _Aborted(Exception):
    pass


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code, details):
        raise _Aborted(code)


async def _intercept(tokens: AuthTokens, method: str, metadata, handler):
    interceptor = BearerTokenInterceptor(tokens, OPEN_SERVICES, ADMIN_METHODS)

    async def continuation(details):
        return handler

    return await asyncio.wait_for(interceptor.intercept_service(continuation, _Details(method, metadata)),
                                  _TIMEOUT)


async def _denial_code(handler: grpc.RpcMethodHandler):
    behavior = next(b for b in (handler.unary_unary, handler.unary_stream, handler.stream_unary,
                                handler.stream_stream) if b is not None)
    with pytest.raises(_Aborted) as info:
        await asyncio.wait_for(behavior(b"", _Context()), _TIMEOUT)
    return info.value.args[0]


async def test_with_no_admin_tokens_profile_memory_is_denied_to_everyone():
    real = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    handler = await _intercept(AuthTokens(user=(b"u",)), "/speakstream.v1.Stats/ProfileMemory",
                               _bearer("u"), real)
    assert handler is not real
    assert await _denial_code(handler) == grpc.StatusCode.PERMISSION_DENIED
    passed = await _intercept(AuthTokens(user=(b"u",)), "/speakstream.v1.Stats/GetStats", _bearer("u"), real)
    assert passed is real


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
async def test_a_denial_keeps_the_streaming_shape_of_the_method(kind):
    real = getattr(grpc, f"{kind}_rpc_method_handler")(lambda request, context: None)
    handler = await _intercept(AuthTokens(user=(b"u",)), "/speakstream.v1.Synthesizer/Any", (), real)
    assert (handler.request_streaming, handler.response_streaming) == (
        real.request_streaming, real.response_streaming)
    assert await _denial_code(handler) == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unknown_method_without_a_token_is_unauthenticated():
    handler = await _intercept(AuthTokens(user=(b"u",)), "/speakstream.v1.Nope/Nothing", (), None)
    assert await _denial_code(handler) == grpc.StatusCode.UNAUTHENTICATED


def test_bearer_token_reads_the_authorization_header():
    assert bearer_token((("x-request-id", "1"), ("authorization", "Bearer abc"))) == b"abc"
    assert bearer_token((("authorization", "bearer  abc "),)) == b"abc"
    assert bearer_token((("authorization", "Bearer "),)) is None
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token(None) is None


def test_token_in_compares_against_every_token(monkeypatch):
    compared = []
    compare_digest = security_module.hmac.compare_digest

    def recording(token, candidate):
        compared.append(candidate)
        return compare_digest(token, candidate)

    monkeypatch.setattr(security_module.hmac, "compare_digest", recording)
    tokens = (b"a", b"b", b"c")
    assert token_in(b"a", tokens)
    # No early exit at the match: the time taken does not tell which token matched.
    assert compared == list(tokens)
    assert not token_in(b"bb", (b"a", b"b"))
    assert not token_in(b"a", ())


# --- start-up errors --------------------------------------------------------------------------

def test_token_files_hold_one_token_per_line_or_a_single_one(tmp_path):
    many, one = tmp_path / "many", tmp_path / "one"
    many.write_text("first\n\n  second  \nfirst\n")
    one.write_text("only")
    assert read_tokens(many) == (b"first", b"second")
    assert read_tokens(one) == (b"only",)


@pytest.mark.parametrize("content, error", [
    (b"", "holds no token"),
    (b"\n \n", "holds no token"),
    (b"two words\n", "a token contains whitespace"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_bad_token_file_is_named_in_the_error(tmp_path, content, error):
    path = tmp_path / "tokens"
    path.write_bytes(content)
    with pytest.raises(SecurityConfigError, match=re.escape(f"auth_token_file: {path}: {error}")):
        load_security(Settings(auth_token_file=path))


@pytest.mark.parametrize("fields, error", [
    ({"tls_cert": "server.pem"}, "tls_cert: TLS needs both --tls-cert and --tls-key"),
    ({"tls_key": "server.key"}, "tls_cert: TLS needs both --tls-cert and --tls-key"),
    ({"tls_client_ca": "client-ca.pem"}, "tls_client_ca: mutual TLS needs --tls-cert and --tls-key too"),
    ({"admin_token_file": "tokens"}, "admin_token_file: admin tokens need --auth-token-file too"),
    ({"tls_cert": "missing.pem", "tls_key": "server.key"}, "tls_cert: no such file: .*missing.pem"),
    ({"tls_cert": "server.pem", "tls_key": "missing.key"}, "tls_key: no such file: .*missing.key"),
    ({"auth_token_file": "missing"}, "auth_token_file: no such file: .*missing"),
])
def test_settings_name_a_missing_file_or_flag(pki, fields, error):
    directory = pki.server.cert_path.parent
    (directory / "tokens").write_text("t")
    with pytest.raises(ValueError, match=error):
        Settings(**{name: directory / value for name, value in fields.items()})


def test_a_file_that_is_not_pem_is_named(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(SecurityConfigError, match=re.escape(f"tls_cert: {garbage}: no PEM CERTIFICATE")):
        load_security(Settings(tls_cert=garbage, tls_key=pki.server.key_path))
    with pytest.raises(SecurityConfigError, match=re.escape(f"tls_key: {garbage}: no PEM PRIVATE KEY")):
        load_security(Settings(tls_cert=pki.server.cert_path, tls_key=garbage))
    with pytest.raises(SecurityConfigError, match=re.escape(f"tls_client_ca: {garbage}: no PEM CERTIFICATE")):
        load_security(Settings(tls_cert=pki.server.cert_path, tls_key=pki.server.key_path, tls_client_ca=garbage))


def test_a_key_that_does_not_match_the_certificate_is_an_error(pki):
    with pytest.raises(SecurityConfigError, match=re.escape(f"tls_key: {pki.client.key_path} is not the key of")):
        load_security(Settings(tls_cert=pki.server.cert_path, tls_key=pki.client.key_path))


async def test_an_unreadable_key_is_a_one_line_usage_error_before_any_model_loads(pki, tmp_path):
    key = tmp_path / "locked.key"
    key.write_bytes(pki.server.key)
    key.chmod(0)
    # Root reads a mode-0 file through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; setpriv drops
    # both before exec, so the server meets the key as any other user would (CI runs as root).
    drop = [command("setpriv"), "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    result = await run([*(drop if os.geteuid() == 0 else []), sys.executable, "-m", "server", "--port", "0",
                        "--tls-cert", str(pki.server.cert_path), "--tls-key", str(key)])
    assert result.code == 2, result.explain()
    *usage, error = result.err.splitlines()
    assert error == f"speakstream-server: error: tls-key: {key}: cannot read (Permission denied)", result.explain()
    # argparse's usage and nothing else: no traceback, no log line of a model loading.
    assert usage == ["usage: speakstream-server [options]"], result.explain()


def test_the_command_line_names_a_bad_file_as_a_usage_error(pki, tmp_path, capsys):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(SystemExit) as info:
        settings_from_args(["--tls-cert", str(garbage), "--tls-key", str(pki.server.key_path)])
    assert info.value.code == 2
    assert f"error: tls-cert: {garbage}: no PEM CERTIFICATE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        settings_from_args(["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.server.key_path)])
    assert f"error: tls-cert: no such file: {tmp_path / 'missing.pem'}" in capsys.readouterr().err


async def test_start_fails_on_a_bad_certificate_before_loading_any_model(pki, tmp_path, monkeypatch):
    def no_models(settings):
        raise AssertionError("models were loaded")

    monkeypatch.setattr(app_module, "load_voices", no_models)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(SecurityConfigError, match="tls_cert"):
        await asyncio.wait_for(start(Settings(port=0, tls_cert=garbage, tls_key=pki.server.key_path)), _TIMEOUT)


# --- the clients: speakstream-say, speakstream-stats, speakstream-bench ---------------------------

async def _client(module: str, *args, env_token: str | None = None):
    """Run a client as a user does; its exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if env_token is not None:
        env[TOKEN_ENV] = env_token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)
    out, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    return process.returncode, out, err.decode()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("client") / "token"
    path.write_text(_USER_TOKEN + "\n")
    return path


async def test_say_speaks_through_tls_with_a_token_file(token_app, pki, token_file, tmp_path):
    out = tmp_path / "hi.wav"
    code, _, err = await _client("clients.say", "--server", token_app.address, "--tls-ca",
                                 str(pki.server_ca.cert_path), "--token-file", str(token_file), "Hi.", "-o", str(out))
    assert code == 0, err
    assert out.stat().st_size > 1000


async def test_say_takes_the_token_from_the_environment(token_app, pki, tmp_path):
    out = tmp_path / "hi.wav"
    code, _, err = await _client("clients.say", "--server", token_app.address, "--tls-ca",
                                 str(pki.server_ca.cert_path), "Hi.", "-o", str(out), env_token=_USER_TOKEN)
    assert code == 0, err
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_say_without_a_valid_token_reports_unauthenticated(token_app, pki, tmp_path, token):
    code, _, err = await _client("clients.say", "--server", token_app.address, "--tls-ca",
                                 str(pki.server_ca.cert_path), "Hi.", "-o", str(tmp_path / "x.wav"), env_token=token)
    assert code == 3 and "UNAUTHENTICATED" in err, err


async def test_say_with_a_client_certificate_passes_mutual_tls(mtls_app, pki, tmp_path):
    out = tmp_path / "hi.wav"
    base = ("--server", mtls_app.address, "--tls-ca", str(pki.server_ca.cert_path))
    code, _, err = await _client("clients.say", *base, "--tls-cert", str(pki.client.cert_path),
                                 "--tls-key", str(pki.client.key_path), "Hi.", "-o", str(out))
    assert code == 0, err
    code, _, err = await _client("clients.say", *base, "Hi.", "-o", str(out))  # no certificate: refused
    assert code == 3 and "cannot reach the server" in err, err


async def test_say_names_a_half_certificate_pair_as_a_usage_error(pki):
    code, _, err = await _client("clients.say", "--tls-cert", str(pki.client.cert_path), "Hi.", "-o", "x.wav")
    assert code == 2 and "tls-cert: mutual TLS needs both --tls-cert and --tls-key" in err


async def test_stats_reads_through_tls_with_a_token(token_app, pki, token_file):
    code, out, err = await _client("clients.stats", "--server", token_app.address, "--tls-ca",
                                   str(pki.server_ca.cert_path), "--token-file", str(token_file), "--json")
    assert code == 0, err
    assert json.loads(out)["uptimeS"] > 0  # proto3 JSON names


async def test_the_asyncio_channel_of_bench_carries_tls_and_the_token(token_app, pki):
    connection = Connection(token_app.address, tls=True, ca=pki.server_ca.cert, token=_USER_TOKEN)
    async with open_aio_channel(connection) as channel:
        await _get_stats(channel, ())  # no metadata of its own: the channel adds the token
        await _synthesize_stream(channel, ())
        await _synthesize(channel, ())
        await _list_voices(channel, ())


# --- docs/OPERATIONS.md -----------------------------------------------------------------------

def _doc_examples() -> list[tuple[tuple[str, ...], str]]:
    """The grpcurl commands of the "TLS and authentication" section, with the status each expects."""
    return grpcurl_examples("OPERATIONS.md", "TLS and authentication")


def test_operations_doc_shows_tokens_and_the_ca_for_each_kind_of_call():
    commands = [" ".join(argv) for argv, _ in _doc_examples()]
    for needle in ("Synthesizer/Synthesize ", "Stats/GetStats", "Health/Check", " list", "Stats/ProfileMemory"):
        assert any(needle in c + " " for c in commands), needle
    assert all("-cacert ca.pem" in c for c in commands)
    assert {status for _, status in _doc_examples()} == {"", "Unauthenticated", "PermissionDenied"}


@pytest.mark.parametrize("argv, expected_status", _doc_examples(),
                         ids=lambda v: " ".join(v)[-60:] if isinstance(v, tuple) else v)
async def test_operations_doc_example_runs(token_app, pki, argv, expected_status):
    swap = {_DOC_ADDRESS: token_app.address, _DOC_CA: str(pki.server_ca.cert_path)}
    result = await run([grpcurl_path(), "-max-time", str(_TIMEOUT), *(swap.get(a, a) for a in argv[1:])])
    if expected_status:
        assert f"Code: {expected_status}" in result.err, result.explain()
    else:
        assert result.code == 0, result.explain()
        assert result.out.strip()
