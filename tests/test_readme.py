"""Every shell command of README.md, run as a user would run it: a README that does not work fails here.

Each ```sh block runs from the repository root, its lines one after another
(`bash -c`), against servers the block starts itself (`make serve &`), with
the ports made free ones: 50051, 9464, 8000 and 10200 in the text (as
host:port or after a --*-port flag) become ports picked here, `make serve`
gets `--port`, and SPEAKSTREAM_ADDRESS points the clients at it. A line
ending in `&` starts in the background and the block goes on once the
server has printed its ready line; `kill %1` stops it (SIGTERM, as
the shell's job control would) and the server must exit; a `make serve` in
the foreground is stopped with Ctrl-C (SIGINT) once ready. Audio goes to a
paced ALSA file device (bench/paced_device.py) instead of a sound card.
Two commands are not run for real, each for its reason: `make test` is what
runs this test, and `make bench` takes minutes; both are dry-run (`make -n`),
so a missing target still fails. Files a block writes in the repository
(hi.wav, ...) are removed afterwards.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from bench.paced_device import PacedFileDevice

pytestmark = pytest.mark.slow

_REPO = Path(__file__).resolve().parents[1]
_README = _REPO / "README.md"
_SERVER_PORT = "50051"
# Ports the README names (the server's, --metrics-port's, the doors'): each becomes a free one.
_DOC_PORTS = (_SERVER_PORT, "9464", "8000", "10200")
_LINE_TIMEOUT_S = 300
_READY = "speakstream listening on "
_DRY_RUN = {"make test": "the command running this test", "make bench": "minutes of measuring"}


def _blocks() -> list[list[str]]:
    """The command lines of each ```sh block (continuations joined, comments and blanks dropped)."""
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", _README.read_text(encoding="utf-8"), flags=re.DOTALL):
        lines = (_without_comment(line) for line in block.replace("\\\n", " ").splitlines())
        blocks.append([line for line in lines if line])
    return blocks


def _without_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (unquoted, after whitespace), stripped."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


class _Block:
    """One README block's run: its ports, environment, background server, and the files it made."""

    def __init__(self, device: PacedFileDevice):
        self.ports = {port: _free_port() for port in _DOC_PORTS}
        self.port = self.ports[_SERVER_PORT]
        self.env = device.env() | {
            "SPEAKSTREAM_ADDRESS": f"127.0.0.1:{self.port}",
            # HOME is the sound device's; the voices' split graphs stay in the real cache.
            "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
        }
        self.server: subprocess.Popen | None = None
        self.before = set(_REPO.iterdir())

    def command(self, line: str) -> str:
        """The line with this block's ports, and `make serve` told to use them."""
        for documented, free in self.ports.items():  # as host:port or a --*-port flag's value only
            line = re.sub(rf"(?<=:){documented}\b|(?<=port ){documented}\b", free, line)
        match = re.search(r'make serve(?: ARGS="([^"]*)")?', line)
        if match:
            args = f'{match.group(1) or ""} --port {self.port}'.strip()
            line = line[:match.start()] + f'make serve ARGS="{args}"' + line[match.end():]
        return line

    def run(self, line: str) -> None:
        dry = next((command for command in _DRY_RUN if line.startswith(command)), None)
        if dry:
            result = subprocess.run(["make", "-n", *shlex.split(line)[1:2]], cwd=_REPO, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, f"make -n for `{line}` ({_DRY_RUN[dry]}):\n{result.stderr}"
        elif line.strip() == "kill %1":
            self.stop(signal.SIGTERM)
        elif line.rstrip().endswith("&"):
            self.start(self.command(line.rstrip()[:-1]))
        elif line.startswith("make serve"):  # in the foreground: runs until Ctrl-C, as its comment says
            self.start(self.command(line))
            self.stop(signal.SIGINT)
        else:
            result = subprocess.run(["bash", "-c", "set -o pipefail; " + self.command(line)], cwd=_REPO,
                                    env=self.env, capture_output=True, text=True, timeout=_LINE_TIMEOUT_S)
            assert result.returncode == 0, f"`{line}` exited {result.returncode}:\n{result.stdout[-2000:]}\n" \
                                           f"{result.stderr[-3000:]}"

    def start(self, line: str) -> None:
        assert self.server is None, "one background server per block"
        self.server = subprocess.Popen(["bash", "-c", line], cwd=_REPO, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
        seen = []
        for output in self.server.stdout:  # make's install output, then the server's ready line
            seen.append(output)
            if output.startswith(_READY):
                assert output.split()[-1] == f"127.0.0.1:{self.port}"
                return
        pytest.fail(f"`{line}` ended before it was ready:\n{''.join(seen)[-3000:]}")

    def stop(self, sig: int) -> None:
        assert self.server is not None, "`kill %1` with nothing in the background"
        job = _group(self.server.pid)
        os.killpg(self.server.pid, sig)
        try:
            self.server.wait(timeout=60)
            for pid in job:  # the whole job ends: make, and the server after draining
                assert _wait_exit(pid, 60), f"process {pid} of `make serve` still runs after the signal"
        finally:
            self.server.stdout.close()
        self.server = None

    def clean(self) -> None:
        if self.server is not None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        for path in set(_REPO.iterdir()) - self.before:
            if path.is_file():
                path.unlink()


def _group(pgid: int) -> list[int]:
    """The processes of process group `pgid` (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (a pidfd becomes readable when it does)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


@pytest.mark.timeout(900)  # the tour speaks a 14,000-character chapter
@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_block_runs_as_written(index, tmp_path):
    block = _blocks()[index]
    with PacedFileDevice(tmp_path, sample_rate=22050) as device:
        run = _Block(device)
        try:
            for line in block:
                run.run(line)
            assert run.server is None, "the block leaves a server running: end it with `kill %1`"
        finally:
            run.clean()


def test_every_block_that_starts_a_server_stops_it():
    for block in _blocks():
        started = sum(1 for line in block if line.rstrip().endswith("&"))
        assert started == sum(1 for line in block if line.strip() == "kill %1"), block
