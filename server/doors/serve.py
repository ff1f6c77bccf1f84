"""Starting and stopping the doors that are on, as parts of the App (server/app.py)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from server import transport
from server.calls import CallContext
from server.config import Settings
from server.security import Security

if TYPE_CHECKING:
    from server.doors.http import HttpDoor
    from server.doors.wyoming import WyomingDoor


@dataclass
class Doors:
    """The doors that are on (none unless --http-port or --wyoming-port is given)."""

    http: Optional[HttpDoor] = None
    wyoming: Optional[WyomingDoor] = None

    @property
    def http_port(self) -> Optional[int]:
        """Port of the HTTP door, None when it is off."""
        return self.http.port if self.http else None

    @property
    def wyoming_port(self) -> Optional[int]:
        """Port of the Wyoming door, None when it is off."""
        return self.wyoming.port if self.wyoming else None

    async def stop(self, grace: float) -> None:
        """Stop listening; calls in progress get `grace` seconds (the server's drain)."""
        await asyncio.gather(*(door.stop(grace) for door in (self.http, self.wyoming) if door is not None))


def check_ports(settings: Settings) -> None:
    """BindError naming the flag when a door's port is taken: before any model loads, as for --port."""
    for port, flag in ((settings.http_port, "--http-port"), (settings.wyoming_port, "--wyoming-port")):
        if port is not None:
            transport.check_port(settings.host, port, flag)


async def start_doors(app, security: Security, parts: AsyncExitStack) -> Doors:
    """Start the doors that are on, over `app`'s engine; each is stopped by `parts`.

    Nothing of theirs is imported when both are off, so the gRPC door runs as it did without them.
    """
    doors = Doors()
    settings = app.settings
    if settings.http_port is None and settings.wyoming_port is None:
        return doors
    ctx = CallContext(settings, app.voices, app.synthesizer, app.scheduler, app.metrics, security.auth)
    if settings.http_port is not None:
        from server.doors.http import HttpDoor

        doors.http = HttpDoor(ctx, security)
        await doors.http.start()
        parts.push_async_callback(doors.http.stop)
    if settings.wyoming_port is not None:
        from server.doors.wyoming import WyomingDoor

        doors.wyoming = WyomingDoor(ctx)
        await doors.wyoming.start()
        parts.push_async_callback(doors.wyoming.stop)
    return doors
