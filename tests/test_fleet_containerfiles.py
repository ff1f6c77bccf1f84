"""deploy/container/Containerfile.{cpu,cuda}, checked without a container engine (none is reachable here):
every file they copy exists, they start the installed speakstream-server with flags the server accepts,
and they expose the ports those flags open."""

from __future__ import annotations

import glob
import json
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from server.__main__ import parse_settings

REPO = Path(__file__).resolve().parents[1]
CONTAINERFILES = sorted((REPO / "deploy" / "container").glob("Containerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip()]


def _exec_form(path: Path, keyword: str) -> list[str]:
    [args] = [a for k, a in instructions(path) if k == keyword]
    return json.loads(args)  # exec form: a JSON array (a shell form would run under /bin/sh and lose signals)


def test_there_is_one_for_cpu_and_one_for_cuda():
    assert [p.name for p in CONTAINERFILES] == ["Containerfile.cpu", "Containerfile.cuda"]


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_every_file_copied_from_the_build_context_exists(path):
    copies = [shlex.split(args) for kind, args in instructions(path) if kind in ("COPY", "ADD")]
    from_context = [c for c in copies if not any(a.startswith("--from=") for a in c)]
    assert from_context
    for *sources, _ in from_context:
        for source in sources:
            assert glob.glob(str(REPO / source)), f"{path.name}: COPY {source}: nothing in the repository"


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_it_runs_the_installed_server_with_its_real_flags(path):
    assert _exec_form(path, "ENTRYPOINT") == ["speakstream-server"]
    [script] = entry_points(group="console_scripts", name="speakstream-server")  # what `pip install .` makes
    assert script.value == "server.__main__:main"
    settings = parse_settings(_exec_form(path, "CMD"))  # an unknown flag or bad value exits
    assert settings.host == "0.0.0.0"
    assert settings.device == ("cuda" if path.suffix == ".cuda" else "auto")
    [exposed] = [args.split() for kind, args in instructions(path) if kind == "EXPOSE"]
    assert sorted(map(int, exposed)) == sorted([settings.port, settings.metrics_port])
    assert any(kind == "USER" and not args.startswith(("0", "root")) for kind, args in instructions(path))


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_the_project_is_installed_with_pip_from_the_copied_tree(path):
    runs = " ".join(args for kind, args in instructions(path) if kind == "RUN")
    assert re.search(r"/opt/speakstream/bin/pip install --no-cache-dir \.(\s|$)", runs)
    stages = [args for kind, args in instructions(path) if kind == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")  # the compiler stays in the build stage
