"""speakstream-server: argument parsing, logging, signals, serve until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import typing
from typing import Any, Optional, Sequence

from server.config import GROUPS, Option, Settings, flag, flag_of, option
from server.errors import BindError, VoiceLoadError
from server.requestlog import configure_logging

_LOGGER = logging.getLogger("server")
_PROG = "speakstream-server"


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per Settings field, in its --help group, from the field's declaration."""
    parser = argparse.ArgumentParser(
        prog=_PROG, usage="%(prog)s [options]", description="Streaming text-to-speech gRPC server.",
        epilog="docs/OPERATIONS.md says what each limit protects and why its default is what it is.")
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    defaults = Settings()
    hints = typing.get_type_hints(Settings)
    for field in dataclasses.fields(Settings):
        _add_flag(groups[option(field).group], field, hints[field.name], getattr(defaults, field.name))
    return parser


def _add_flag(group: argparse._ArgumentGroup, field: dataclasses.Field, hint: Any, default: Any) -> None:
    """One flag: a switch for a bool (off by default: --flag; else --flag/--no-flag), else a typed value."""
    opt = option(field)
    kind = value_type(hint)
    help_text = _help(opt, default)
    if kind is bool:
        action = "store_true" if default is False else argparse.BooleanOptionalAction
        group.add_argument(flag(field), dest=field.name, action=action, default=default, help=help_text)
        return
    group.add_argument(flag(field), dest=field.name, type=opt.parse or kind, default=default,
                       choices=opt.choices or None, help=help_text)


def _help(opt: Option, default: Any) -> str:
    """The help text with the default (unless the text states it) and the accepted range."""
    notes = []
    if default is not None and "(default" not in opt.help:
        notes.append("default %(default)s")
    if opt.range is not None:
        low, high = opt.range
        notes.append(f">= {low:,}" if high is None else f"{low:,} to {high:,}")
    return opt.help + (f" ({'; '.join(notes)})" if notes else "")


def value_type(hint: Any) -> type:
    """The type a flag's value has: int for int and for Optional[int], and so on."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def parse_settings(argv: Optional[Sequence[str]] = None) -> Settings:
    """Flags into Settings, ranges and pairs checked; a bad value ends the program with a usage error (exit 2).

    Certificate and token files must exist but are not read here (settings_from_args reads them).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return Settings(**vars(args))
    except ValueError as exc:
        parser.error(_flag_message(exc))


def settings_from_args(argv: Optional[Sequence[str]] = None) -> Settings:
    """Parse flags into Settings and read the security files; bad values end the program with a usage error."""
    settings = parse_settings(argv)
    from server.security import SecurityConfigError, load_security

    try:
        load_security(settings)  # unreadable or malformed files are usage errors too, before any model loads
    except SecurityConfigError as exc:
        build_parser().error(_flag_message(exc))
    return settings


def _flag_message(exc: ValueError) -> str:
    """A Settings error as the flag's name: "cpu_mem_arena: ..." → "cpu-arena: ..."."""
    name, sep, rest = str(exc).partition(":")
    flag_name = flag_of(name) if sep else None
    return flag_name.removeprefix("--") + sep + rest if flag_name else str(exc)


async def serve(settings: Settings) -> None:
    """Start, wait for SIGTERM/SIGINT, drain; a second signal stops at once."""
    from server.app import start  # heavy imports after argument errors are reported

    app = await start(settings)
    if app.doors.http is not None:
        print(f"speakstream http on {settings.host}:{app.doors.http_port}", flush=True)
    if app.doors.wyoming is not None:
        print(f"speakstream wyoming on {settings.host}:{app.doors.wyoming_port}", flush=True)
    print(f"speakstream listening on {app.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop)
    try:
        await stop.wait()
        _LOGGER.info("draining: in-flight calls get %.1f s", settings.grace_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _exit_now)
    finally:
        await app.stop()
    _LOGGER.info("stopped")


def _on_signal(stop: asyncio.Event) -> None:
    stop.set()


def _exit_now() -> None:
    _LOGGER.warning("second signal: exiting without waiting")
    logging.shutdown()
    os._exit(1)  # skip the drain that is still running


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `speakstream-server` and `python -m server`."""
    settings = settings_from_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except VoiceLoadError as exc:
        _LOGGER.error("cannot start: %s", exc)
        return 2
    except BindError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)  # one line, like a usage error: the fix is a flag
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
