"""Settings and their flags come from one declaration: every flag reaches its field, every range is enforced.

The cases are generated from the fields' declarations (server/config.py), so a
new setting is covered without touching this file; only a renamed or removed
flag needs the frozen list below changed, on purpose.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from server.__main__ import _flag_message, build_parser, parse_settings, value_type
from server.config import GROUPS, Settings, flag, flag_of, option

# The flags users have: renaming or dropping one breaks their scripts.
FLAGS = frozenset({
    "--admin-token-file", "--allow-spinning", "--arena-extend", "--arena-max-extend-mb", "--arena-shrink-every",
    "--auth-token-file", "--cache-mb", "--cpu-arena", "--cuda-device-id", "--device", "--enable-profiling",
    "--decoder-windows", "--first-clause-cut", "--first-window-frames", "--window-frames", "--window-context-frames",
    "--graph-cache", "--conv-2d",
    "--first-chunk-phonemes", "--gpu-mem-limit-mb", "--grace-s", "--host", "--idle-trim-s", "--inter-op-threads",
    "--intra-op-threads", "--keepalive-time-s", "--keepalive-timeout-s", "--log-format", "--log-level",
    "--lookahead-chunks", "--max-chars", "--max-concurrent-rpcs", "--max-connection-age-s",
    "--max-phonemes-per-chunk", "--max-queue", "--max-response-mb", "--max-streams-per-connection", "--metrics",
    "--metrics-port", "--min-client-ping-interval-s", "--pool-size", "--port", "--preload", "--sessions",
    "--tls-cert", "--tls-client-ca", "--tls-key", "--voice", "--voice-dir", "--voice-idle-s", "--warm-up",
    "--http-port", "--wyoming-port", "--openai-voices", "--http-read-timeout-s", "--lexicon",
})
NEGATIONS = frozenset({"--no-allow-spinning", "--no-cpu-arena", "--no-metrics", "--no-warm-up",
                       "--no-decoder-windows", "--no-conv-2d", "--no-first-clause-cut"})

FIELDS = dataclasses.fields(Settings)
HINTS = typing.get_type_hints(Settings)
DEFAULTS = Settings()


def _kind(field: dataclasses.Field) -> type:
    return value_type(HINTS[field.name])


def _ranged() -> list:
    """(field, "low" | "high") for every bound a field declares."""
    return [pytest.param(f, side, id=f"{f.name}-{side}") for f in FIELDS if option(f).range
            for side, bound in zip(("low", "high"), option(f).range) if bound is not None]


def _bound(field: dataclasses.Field, side: str) -> Any:
    low, high = option(field).range
    return _kind(field)(low if side == "low" else high)


def _outside(field: dataclasses.Field, side: str) -> Any:
    """The nearest value beyond the bound: one integer, or the next float."""
    value = _bound(field, side)
    if _kind(field) is float:
        return math.nextafter(value, -math.inf if side == "low" else math.inf)
    return value - 1 if side == "low" else value + 1


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """An existing file for every path setting, so that settings which go in pairs (TLS, tokens) hold."""
    paths = {f.name: tmp_path / f"base-{f.name}" for f in FIELDS if _kind(f) is Path}
    for path in paths.values():
        path.write_text("x")
    return paths


def _base_argv(files: dict[str, Path]) -> list[str]:
    return [arg for name, path in files.items() for arg in (flag_of(name), str(path))]


def _changes(field: dataclasses.Field, tmp_path: Path) -> list[tuple[list[str], Any]]:
    """(flag arguments, the value they must give the field) for values other than the default."""
    default, opt, kind = getattr(DEFAULTS, field.name), option(field), _kind(field)
    if kind is bool:
        cases = [([flag(field)], True)]
        if default is not False:  # --flag/--no-flag
            cases.append(([flag(field).replace("--", "--no-", 1)], False))
        return [(argv, value) for argv, value in cases if value != default]
    if opt.choices:
        value = next(c for c in opt.choices if c != default)
    elif opt.range:
        low, high = opt.range
        value = next(kind(v) for v in (high, low, low + 1) if v is not None and kind(v) != default)
    elif kind is Path:
        value = tmp_path / f"other-{field.name}"
        value.write_text("x")
    else:
        value = f"x-{field.name}"
    return [([flag(field), str(value)], value)]


# --- the flags -----------------------------------------------------------------------------------

def test_the_flags_are_the_ones_users_have():
    parsed = {o for a in build_parser()._actions for o in a.option_strings} - {"-h", "--help"}
    assert parsed == FLAGS | NEGATIONS
    assert {flag(f) for f in FIELDS} == FLAGS
    assert flag_of("cpu_mem_arena") == "--cpu-arena"


def test_no_flags_give_the_default_settings():
    assert parse_settings([]) == DEFAULTS


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_flag_reaches_its_field_and_no_other(field, files, tmp_path):
    base = parse_settings(_base_argv(files))
    assert base == dataclasses.replace(DEFAULTS, **files)
    cases = _changes(field, tmp_path)
    assert cases, f"no value other than the default for {field.name}"
    for argv, value in cases:
        assert parse_settings(_base_argv(files) + argv) == dataclasses.replace(base, **{field.name: value}), argv


def test_the_log_level_takes_lower_case():
    assert parse_settings(["--log-level", "debug"]).log_level == "DEBUG"


# --- ranges and choices --------------------------------------------------------------------------

@pytest.mark.parametrize("field, side", _ranged())
def test_a_bound_itself_is_accepted(field, side):
    value = _bound(field, side)
    assert getattr(parse_settings([flag(field), str(value)]), field.name) == value


@pytest.mark.parametrize("field, side", _ranged())
def test_a_value_just_outside_a_bound_is_a_usage_error_naming_the_flag(field, side, capsys):
    with pytest.raises(SystemExit) as info:
        parse_settings([f"{flag(field)}={_outside(field, side)!r}"])  # "=": argparse reads -5e-324 as a flag
    assert info.value.code == 2
    assert f"error: {flag(field).removeprefix('--')}: must be " in capsys.readouterr().err


@pytest.mark.parametrize("field, side", _ranged())
def test_settings_enforce_the_same_bound(field, side):
    with pytest.raises(ValueError, match=f"^{field.name}: must be "):
        Settings(**{field.name: _outside(field, side)})


@pytest.mark.parametrize("field", [f for f in FIELDS if option(f).choices], ids=lambda f: f.name)
def test_a_value_outside_the_choices_is_refused(field, capsys):
    with pytest.raises(SystemExit) as info:
        parse_settings([flag(field), "nonsense"])
    assert info.value.code == 2
    assert f"argument {flag(field)}: invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"^{field.name}: must be one of "):
        Settings(**{field.name: "nonsense"})


def test_nan_is_outside_every_range():
    with pytest.raises(ValueError, match="^grace_s: must be >= 0, got nan"):
        Settings(grace_s=math.nan)


def test_a_settings_error_names_the_flag_not_the_field():
    assert _flag_message(ValueError("cpu_mem_arena: must be on")) == "cpu-arena: must be on"
    assert _flag_message(ValueError("max_queue: must be between 0 and 9")) == "max-queue: must be between 0 and 9"
    assert _flag_message(ValueError("something else: entirely")) == "something else: entirely"


# --- --help --------------------------------------------------------------------------------------

def _help_sections() -> dict[str, list[str]]:
    """Each --help heading with the flags listed under it, in order."""
    sections: dict[str, list[str]] = {}
    heading = None
    for line in build_parser().format_help().splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            heading = line[:-1]
            sections[heading] = []
        elif match := re.match(r"  (--[a-z0-9-]+)", line):
            sections[heading].append(match[1])
    return sections


def test_help_lists_every_flag_in_its_group_in_order():
    sections = _help_sections()
    assert list(sections) == ["options", *GROUPS.values()]
    assert sections.pop("options") == []  # only -h
    listed = {f: title for title, flags in sections.items() for f in flags}
    assert listed == {flag(f): GROUPS[option(f).group] for f in FIELDS}
    assert sections[GROUPS["network"]][:2] == ["--host", "--port"]
    assert sections[GROUPS["voices"]][:2] == ["--voice", "--voice-dir"]


def test_help_says_what_pool_size_sessions_and_threads_mean():
    text = " ".join(build_parser().format_help().split())
    assert "--pool-size POOL_SIZE inferences run at the same time, over all voices" in text
    assert "--sessions SESSIONS copies of each voice's model loaded, for isolation" in text
    assert "--intra-op-threads INTRA_OP_THREADS threads ONE inference may use" in text
    assert f"(default: the number of cores, {DEFAULTS.pool_size} here)" in text


def test_help_states_every_range():
    helps = {a.dest: a.help for a in build_parser()._actions}
    for field in FIELDS:
        if option(field).range:
            low, high = option(field).range
            assert (f">= {low:,}" if high is None else f"{low:,} to {high:,}") in helps[field.name], field.name
