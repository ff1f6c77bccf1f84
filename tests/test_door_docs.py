"""Every curl command of docs/API.md's doors section runs against a live server and succeeds."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil

import pytest
from doors import door_settings, doors_server

_SECTION = "Other doors: the OpenAI speech API, WebSocket, Wyoming"
_DOC_ADDRESS = "localhost:8000"


def _curl_commands(repo_root) -> list[str]:
    text = (repo_root / "docs" / "API.md").read_text(encoding="utf-8")
    text = text.split(f"\n## {_SECTION}\n", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
            for line in block.splitlines() if line.startswith("curl ")]


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    async with doors_server(door_settings(tmp_path_factory.mktemp("voices"))) as app:
        yield app


def test_the_section_has_curl_examples(repo_root):
    assert len(_curl_commands(repo_root)) >= 5


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_every_curl_example_works(app, repo_root, tmp_path):
    for command in _curl_commands(repo_root):
        argv = shlex.split(command.replace(_DOC_ADDRESS, f"127.0.0.1:{app.doors.http_port}"))
        process = await asyncio.create_subprocess_exec(*argv, "--fail-with-body", cwd=tmp_path,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, (command, err.decode(), out[:300])
        written = [tmp_path / argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
        assert all(p.stat().st_size > 10_000 for p in written) and (written or out), command
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"
