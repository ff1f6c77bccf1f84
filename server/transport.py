"""gRPC server options: concurrency, message sizes, keepalive, streams per connection; the port check.

Each value is set on purpose (docs/OPERATIONS.md, "Limits", says why) from
Settings, so the transport's limits follow the request limits they protect.
"""

from __future__ import annotations

import socket

from server.config import Settings
from server.errors import BindError

_MIB = 1024 * 1024
# A request's bytes besides its text (voice name, knobs, metadata framing).
_REQUEST_OVERHEAD = 64 * 1024
# Handlers beyond the admission capacity: health, Stats, WatchStats, ListVoices
# and calls about to be refused must still find a handler when synthesis is full.
_CONTROL_HEADROOM = 64


def max_concurrent_rpcs(settings: Settings) -> int:
    """gRPC's own cap on calls in progress (beyond it: RESOURCE_EXHAUSTED from gRPC itself).

    Well above admission (`pool_size + max_queue`) so that the scheduler, not
    gRPC, refuses synthesis with a clear message, and health and Stats still
    answer while synthesis is saturated; it bounds the handlers a flood of
    cheap calls can pile up.
    """
    if settings.max_concurrent_rpcs:
        return settings.max_concurrent_rpcs
    return 2 * (settings.pool_size + settings.max_queue) + _CONTROL_HEADROOM


def max_receive_bytes(settings: Settings) -> int:
    """Largest request message: `max_chars` characters of 4-byte UTF-8 plus the other fields."""
    return 4 * settings.max_chars + _REQUEST_OVERHEAD


def max_send_bytes(settings: Settings) -> int:
    """Largest response message: the unary audio limit plus the other fields."""
    return settings.max_response_mb * _MIB + _REQUEST_OVERHEAD


def max_response_bytes(settings: Settings) -> int:
    """Largest audio one Synthesize (unary) response may carry."""
    return settings.max_response_mb * _MIB


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server (grpc core names)."""
    options = [
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ("grpc.max_receive_message_length", max_receive_bytes(settings)),
        ("grpc.max_send_message_length", max_send_bytes(settings)),
        # HTTP/2 streams one connection may have open; more wait in the client.
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        # Ping idle connections so dead peers (NAT timeouts, vanished clients) are found.
        ("grpc.keepalive_time_ms", round(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.keepalive_timeout_s * 1000)),
        # Client pings: allowed without calls in flight (idle channels kept warm),
        # but no more often than this; faster pingers get GOAWAY (too_many_pings).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", round(settings.min_client_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.max_pings_without_data", 0),  # our own keepalive pings need no data in between
    ]
    if settings.max_connection_age_s:
        # Make clients reconnect now and then, so an L4 balancer spreads them again.
        options.append(("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", round(settings.grace_s * 1000)))
    return options


def check_port(host: str, port: int, flag: str) -> None:
    """Raise BindError naming `flag` when no address of `host` can listen on `port` (busy, not this machine's).

    gRPC reports a failed bind only as "Failed to bind to address" after a
    log line of its own on stderr, so the server tries the bind itself first,
    as gRPC would (SO_REUSEADDR; one address of the host is enough), and
    says why in one line.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: a host name that does not resolve
        raise BindError(flag, host, port, exc) from None
    errors = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return
            except OSError as exc:
                errors.append(exc)
    raise BindError(flag, host, port, errors[0])
