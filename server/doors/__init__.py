"""The doors besides gRPC: HTTP (the OpenAI speech API, the WebSocket live endpoint, a page) and Wyoming.

Each door is a thin adapter over the same engine as the gRPC services
(server/doors/calls.py): the same admission, scheduler, cache, limits,
cancellation, request ids and metrics (counted per door). They run in the
server's own event loop; each is off unless its port is given
(--http-port, --wyoming-port).
"""
