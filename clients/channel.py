"""The connection flags every client shares (servers, TLS, mutual TLS, bearer token) and the channels they make.

speakstream-say, speakstream-stats and speakstream-bench add these flags with
`add_connection_flags` and dial with `open_channel` (blocking API) or
`open_aio_channel` (asyncio), so a server set up as docs/OPERATIONS.md
describes ("TLS and authentication") is reached the same way by all of them.

`--server` names one server, several (`10.0.0.11:50051,10.0.0.12:50051`) or a
gRPC name that resolves to several (`dns:///speakstream.ns.svc.cluster.local:50051`,
a Kubernetes headless Service). With several, the channel balances calls
itself, as docs/OPERATIONS.md ("Client-side balancing") describes: gRPC's
`round_robin` over the servers whose grpc.health.v1 status is SERVING, and a
call that a server refused before answering (UNAVAILABLE without response
headers: it never reached the service) is tried again on another.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc

from speakstream.v1 import synthesizer_pb2

TOKEN_ENV = "SPEAKSTREAM_TOKEN"
ADDRESS_ENV = "SPEAKSTREAM_ADDRESS"  # the default of --server, as for the Node client
DEFAULT_ADDRESS = "127.0.0.1:50051"
SYNTHESIZER_SERVICE = synthesizer_pb2.DESCRIPTOR.services_by_name["Synthesizer"].full_name
# gRPC name resolvers whose names may stand for several servers.
BALANCED_SCHEMES = ("dns", "ipv4", "ipv6")
# The channel's service config when it balances (gRPC's service config JSON, A6 retries, A17 health):
# calls go round robin over the servers whose health says SERVING (a draining server says
# NOT_SERVING first and drops out of the pick at once); a call that failed UNAVAILABLE before any
# response header is tried again, on the next server: gRPC commits a call at its first response
# header, so a call the service has begun (and a stream that has sent audio) is never replayed.
BALANCED_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": SYNTHESIZER_SERVICE},
    "methodConfig": [{
        "name": [{"service": SYNTHESIZER_SERVICE}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
}


@dataclass(frozen=True)
class Connection:
    """Where and how to connect."""

    server: str
    tls: bool = False
    ca: Optional[bytes] = None
    cert: Optional[bytes] = None
    key: Optional[bytes] = None
    server_name: str = ""
    token: str = ""

    def credentials(self) -> Optional[grpc.ChannelCredentials]:
        """TLS credentials (client certificate included for mutual TLS), or None for plaintext."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    @property
    def target(self) -> str:
        """The gRPC target: `server` itself, or several IP:port addresses as one ipv4:/ipv6: name."""
        return grpc_target(self.server)

    @property
    def balanced(self) -> bool:
        """Whether the target may stand for several servers (round robin with health checks)."""
        return self.target.partition(":")[0] in BALANCED_SCHEMES

    def options(self) -> list[tuple[str, object]]:
        """Channel options: the TLS name to check, no receive limit below the server's send limit,
        and the balancing service config when the target names several servers."""
        options: list[tuple[str, object]] = [("grpc.max_receive_message_length", -1)]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.balanced:
            options.append(("grpc.service_config", json.dumps(BALANCED_SERVICE_CONFIG)))
        return options

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata every call carries: the bearer token, when there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def grpc_target(server: str) -> str:
    """`server` as a gRPC target: `host:port` and gRPC names (`dns:///name:port`, `ipv4:...`) as they are;
    several IP addresses `a:port,b:port` as `ipv4:a:port,b:port` (or ipv6:). ValueError("server: ...") else."""
    scheme, sep, _ = server.partition(":")
    if sep and scheme in BALANCED_SCHEMES + ("unix", "unix-abstract", "vsock"):
        return server
    parts = [part.strip() for part in server.split(",")]
    if len(parts) == 1:
        return server
    families = {_ip_family(part) for part in parts}
    if len(families) != 1 or None in families:
        raise ValueError(f"server: {server!r}: several servers are IP:port addresses of one family "
                         "(10.0.0.1:50051,10.0.0.2:50051 or [fd00::1]:50051,[fd00::2]:50051); "
                         "for host names use a dns:/// name that resolves to every server")
    return f"{families.pop()}:{','.join(parts)}"


def _ip_family(address: str) -> Optional[str]:
    """"ipv4" or "ipv6" for an IP:port address, None for anything else (a host name, no port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None
    return f"ipv{ip.version}"


def add_connection_flags(parser: argparse.ArgumentParser, server_flag: bool = True) -> None:
    """--server (unless the program names its target otherwise) and the TLS/token flags."""
    if server_flag:
        parser.add_argument("--server", default=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
                            help="server address host:port; several servers as IP:port,IP:port or a name "
                                 "such as dns:///speakstream.NAMESPACE.svc.cluster.local:50051, balanced "
                                 "round robin over the healthy ones "
                                 f"(default: ${ADDRESS_ENV} if set, else {DEFAULT_ADDRESS})")
    g = parser.add_argument_group("TLS and authentication (docs/OPERATIONS.md)")
    g.add_argument("--tls", action="store_true",
                   help="connect with TLS, trusting the system's CAs (implied by --tls-ca, --tls-cert)")
    g.add_argument("--tls-ca", type=Path, help="CA certificate(s), PEM, that signed the server's certificate")
    g.add_argument("--tls-cert", type=Path, help="client certificate, PEM, for mutual TLS (with --tls-key)")
    g.add_argument("--tls-key", type=Path, help="private key, PEM, of --tls-cert")
    g.add_argument("--tls-server-name", default="",
                   help="name to check the server's certificate against (default: the host of --server)")
    g.add_argument("--token-file", type=Path,
                   help=f"file holding the bearer token to send (default: ${TOKEN_ENV} if set)")


def connection_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                         server: Optional[str] = None) -> Connection:
    """The Connection the flags describe (to `server`, default --server); unreadable files and
    half pairs are usage errors."""
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("tls-cert: mutual TLS needs both --tls-cert and --tls-key")
    try:
        ca, cert, key = (_read(path) for path in (args.tls_ca, args.tls_cert, args.tls_key))
        token = (Path(args.token_file).read_bytes().decode() if args.token_file
                 else os.environ.get(TOKEN_ENV, "")).strip()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read {getattr(exc, 'filename', None) or 'a file'}: {getattr(exc, 'strerror', exc)}")
    if args.token_file and not token:
        parser.error(f"token-file: {args.token_file} is empty")
    try:
        grpc_target(server or args.server)
    except ValueError as exc:
        parser.error(str(exc))
    tls = bool(args.tls or ca or cert or args.tls_server_name)
    return Connection(server=server or args.server, tls=tls, ca=ca, cert=cert, key=key,
                      server_name=args.tls_server_name, token=token)


def _read(path: Optional[Path]) -> Optional[bytes]:
    return None if path is None else Path(path).read_bytes()


def open_channel(connection: Connection) -> grpc.Channel:
    """A blocking-API channel; every call on it carries the token."""
    credentials = connection.credentials()
    if credentials is None:
        channel = grpc.insecure_channel(connection.target, options=connection.options())
    else:
        channel = grpc.secure_channel(connection.target, credentials, options=connection.options())
    if connection.token:
        channel = grpc.intercept_channel(channel, _TokenInterceptor(connection.metadata()))
    return channel


def open_aio_channel(connection: Connection) -> grpc.aio.Channel:
    """An asyncio channel; every call on it carries the token."""
    interceptors = [cls(connection.metadata()) for cls in _AIO_INTERCEPTORS] if connection.token else None
    credentials = connection.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(connection.target, options=connection.options(), interceptors=interceptors)
    return grpc.aio.secure_channel(connection.target, credentials, options=connection.options(),
                                   interceptors=interceptors)


def _with_metadata(details, extra):
    """Call details with `extra` metadata added to what the call already sends."""
    metadata = tuple(details.metadata or ()) + extra
    return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)


class _Details(grpc.ClientCallDetails):
    """Call details with other metadata (for details objects that cannot be copied with _replace)."""

    def __init__(self, details, metadata):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the authorization header to every call of a blocking-API channel."""

    def __init__(self, metadata):
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_with_metadata(details, self._metadata), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(_with_metadata(details, self._metadata), request_iterator)

    intercept_stream_stream = intercept_stream_unary


class _AioToken:
    """Adds the authorization header to every call of an asyncio channel (one subclass per call shape:
    grpc.aio files an interceptor under the first shape it is an instance of)."""

    def __init__(self, metadata):
        self._metadata = metadata

    async def _intercept(self, continuation, details, request):
        return await continuation(_aio_details(details, self._metadata), request)


def _aio_details(details, extra) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(details.method, details.timeout,
                                      tuple(details.metadata or ()) + extra,
                                      details.credentials, details.wait_for_ready)


class _AioUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await self._intercept(continuation, details, request)


class _AioUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await self._intercept(continuation, details, request)


class _AioStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await self._intercept(continuation, details, request_iterator)


class _AioStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await self._intercept(continuation, details, request_iterator)


_AIO_INTERCEPTORS = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
