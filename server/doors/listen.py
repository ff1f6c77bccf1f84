"""A listening socket for a door, or BindError naming the door's flag."""

from __future__ import annotations

import socket

from server.errors import BindError

_BACKLOG = 128


def listen(host: str, port: int, flag: str) -> socket.socket:
    """A TCP socket listening on host:port (0 picks a free port); BindError names `flag` when it cannot."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: a host name that does not resolve
        raise BindError(flag, host, port, exc) from None
    error = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            error = error or exc
    raise BindError(flag, host, port, error)
