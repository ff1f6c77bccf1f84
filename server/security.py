"""TLS credentials and bearer-token authentication.

`load_security(settings)` reads and checks every file the security flags name
(certificate, key, client CA, token files) and fails with a SecurityConfigError
that names the file, so a bad flag stops the server before any model loads.
The result gives the server its credentials (TLS, or mutual TLS when a client
CA is set) and its interceptor (bearer tokens).

The token check is a server interceptor, so it sees every RPC before the
servicers do: services outside `open_services` (health, reflection) need
`authorization: Bearer <token>`; methods in `admin_methods` need an admin token.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Optional

import grpc

from server.config import Settings

_LOGGER = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
BEARER_SCHEME = "bearer"
# One message for a missing and a wrong token: the caller learns nothing about which.
UNAUTHENTICATED_DETAILS = "this call needs a valid 'authorization: Bearer <token>' header"
ADMIN_ONLY_DETAILS = "this method needs an admin token"


class SecurityConfigError(ValueError):
    """A security flag names a file that cannot be read or does not hold what it should."""


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes for grpc.ssl_server_credentials."""

    private_key: bytes
    """The server's private key."""

    certificate_chain: bytes
    """The server's certificate, then any intermediates."""

    client_ca: Optional[bytes] = None
    """CA certificates client certificates must chain to; None = no client certificates."""


@dataclass(frozen=True)
class AuthTokens:
    """Bearer tokens the server accepts."""

    user: tuple[bytes, ...]
    """Tokens for every RPC except the admin-only ones."""

    admin: tuple[bytes, ...] = ()
    """Tokens for every RPC, admin-only ones included; empty = nobody may call those."""


@dataclass(frozen=True)
class Security:
    """What the security settings resolve to: TLS material and tokens, each optional."""

    tls: Optional[TlsMaterial] = None
    """Serve TLS with this material; None = plaintext."""

    auth: Optional[AuthTokens] = None
    """Require bearer tokens; None = every call is open."""

    def credentials(self) -> Optional[grpc.ServerCredentials]:
        """Server credentials for add_secure_port, or None for an insecure port."""
        if self.tls is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.tls.private_key, self.tls.certificate_chain)],
            root_certificates=self.tls.client_ca,
            require_client_auth=self.tls.client_ca is not None,
        )

    def interceptors(self, open_services: Iterable[str],
                     admin_methods: Iterable[str]) -> list[grpc.aio.ServerInterceptor]:
        """The server interceptors: the token check when tokens are set, else none."""
        if self.auth is None:
            return []
        return [BearerTokenInterceptor(self.auth, open_services, admin_methods)]


def load_security(settings: Settings) -> Security:
    """Read and check the files the security settings name; SecurityConfigError names a bad one."""
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = _load_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    auth = None
    if settings.auth_token_file is not None:
        admin = read_tokens(settings.admin_token_file, "admin_token_file") if settings.admin_token_file else ()
        auth = AuthTokens(user=read_tokens(settings.auth_token_file, "auth_token_file"), admin=admin)
    return Security(tls=tls, auth=auth)


def read_tokens(path: Path, name: str = "token_file") -> tuple[bytes, ...]:
    """The tokens of a token file: one per line (a single token is one line); blank lines skipped.

    :param name: the setting that names the file, for the error message.
    """
    try:
        text = _read(path, name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecurityConfigError(f"{name}: {path}: not UTF-8 text") from exc
    tokens = tuple(dict.fromkeys(line.strip().encode() for line in text.splitlines() if line.strip()))
    if not tokens:
        raise SecurityConfigError(f"{name}: {path}: holds no token")
    if any(b" " in t or b"\t" in t for t in tokens):
        raise SecurityConfigError(f"{name}: {path}: a token contains whitespace; put one token per line")
    return tokens


def _load_tls(cert: Path, key: Path, client_ca: Optional[Path]) -> TlsMaterial:
    cert_pem, key_pem = _read(cert, "tls_cert"), _read(key, "tls_key")
    _require_pem("tls_cert", cert, cert_pem, "CERTIFICATE")
    _require_pem("tls_key", key, key_pem, "PRIVATE KEY")
    # The ssl module parses both and checks that the key belongs to the certificate,
    # which grpc only finds out at the first handshake.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise SecurityConfigError(
            f"tls_key: {key} is not the key of {cert}, or either is malformed ({exc.reason})") from exc
    ca_pem = None
    if client_ca is not None:
        ca_pem = _read(client_ca, "tls_client_ca")
        _require_pem("tls_client_ca", client_ca, ca_pem, "CERTIFICATE")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise SecurityConfigError(
                f"tls_client_ca: {client_ca}: not a CA certificate bundle ({exc.reason})") from exc
    return TlsMaterial(private_key=key_pem, certificate_chain=cert_pem, client_ca=ca_pem)


def _read(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{name}: {path}: cannot read ({exc.strerror or exc})") from exc


def _require_pem(name: str, path: Path, data: bytes, kind: str) -> None:
    if b"-----BEGIN " not in data or kind.encode() + b"-----" not in data:
        raise SecurityConfigError(f"{name}: {path}: no PEM {kind} in it")


def bearer_token(metadata: Optional[Iterable[tuple[str, object]]]) -> Optional[bytes]:
    """The token of the call's `authorization: Bearer <token>` header, None if there is none."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION_KEY or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == BEARER_SCHEME and token.strip():
            return token.strip().encode()
    return None


def token_in(token: bytes, tokens: Iterable[bytes]) -> bool:
    """Whether `token` is one of `tokens`, comparing every one in constant time."""
    found = False
    for candidate in tokens:  # no early exit: the time does not say which one matched
        found |= hmac.compare_digest(token, candidate)
    return found


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with a valid bearer token; open services need none."""

    def __init__(self, tokens: AuthTokens, open_services: Iterable[str], admin_methods: Iterable[str]):
        """:param open_services: full service names served without a token (health, reflection).
        :param admin_methods: "/package.Service/Method" names that need an admin token."""
        self._user = tokens.user
        self._admin = tokens.admin
        self._open = frozenset(open_services)
        self._admin_methods = frozenset(admin_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Optional[grpc.RpcMethodHandler]]],
        details: grpc.HandlerCallDetails,
    ) -> Optional[grpc.RpcMethodHandler]:
        """The method's handler if the call may proceed, else one that aborts with the status."""
        handler = await continuation(details)
        if _service_of(details.method) in self._open:
            return handler
        denial = self._denial(details)
        if denial is None:
            return handler
        return _aborting_handler(handler, details.method, *denial)

    def _denial(self, details: grpc.HandlerCallDetails) -> Optional[tuple[grpc.StatusCode, str]]:
        token = bearer_token(details.invocation_metadata)
        is_admin = token is not None and token_in(token, self._admin)
        if token is None or not (is_admin or token_in(token, self._user)):
            return grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS
        if details.method in self._admin_methods and not is_admin:
            return grpc.StatusCode.PERMISSION_DENIED, ADMIN_ONLY_DETAILS
        return None


def _service_of(method: str) -> str:
    """"/pkg.Service/Method" → "pkg.Service"."""
    return method.lstrip("/").split("/", 1)[0]


def _aborting_handler(handler: Optional[grpc.RpcMethodHandler], method: str,
                      code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as `handler` whose behavior aborts with `code`."""

    async def abort(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
        _LOGGER.info("denied %s from %s: %s", method, context.peer(), code.name)
        await context.abort(code, details)

    request_streaming = bool(handler and handler.request_streaming)
    response_streaming = bool(handler and handler.response_streaming)
    # No deserializer: the request is never read, so it stays bytes.
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
