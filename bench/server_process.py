"""A speakstream server in a child process, for benchmarks: start, address, memory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

_READY_PREFIX = "speakstream listening on "
_DOOR_LINE = re.compile(r"speakstream (\w+) on (\S+)$")  # --http-port, --wyoming-port


class ServerProcess:
    """`python -m server --port 0 ...` in a child process, stopped on exit."""

    def __init__(self, args: Sequence[str] = (), start_timeout_s: float = 120.0):
        self._args = list(args)
        self._timeout = start_timeout_s
        self.process: Optional[subprocess.Popen] = None
        self.address = ""
        self.doors: dict[str, str] = {}
        """The other doors' addresses ("http", "wyoming" -> host:port), from the lines before the ready line."""

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            dies_with_parent([sys.executable, "-m", "server", "--port", "0", "--log-level", "WARNING", *self._args]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.address = self._wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def started(self) -> subprocess.Popen:
        """The server's process; RuntimeError if it has not been started."""
        if self.process is None:
            raise RuntimeError("the server has not been started")
        return self.process

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self._timeout
        stdout = self.started().stdout
        assert stdout is not None  # started with stdout=PIPE
        for line in stdout:  # the ready line comes once models are loaded
            if line.startswith(_READY_PREFIX):
                return line[len(_READY_PREFIX):].strip()
            door = _DOOR_LINE.match(line)
            if door:
                self.doors[door.group(1)] = door.group(2)
            if time.monotonic() > deadline:
                break
        raise RuntimeError("server did not start; run `python -m server --port 0` to see why")

    def rss_mb(self) -> float:
        """Resident memory now, in MB."""
        return _status_kb(self.started().pid, "VmRSS") / 1024

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used."""
        with open(f"/proc/{self.started().pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dies_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, run so that it gets SIGTERM if this process dies: no server is left running.

    Through util-linux's `setpriv --pdeathsig`, not a preexec_fn: with one, Python forks
    and runs code in the child before exec, and the child of a process using gRPC can
    abort there (gRPC's fork handling: "epoll_wait error: Bad file descriptor", SIGABRT,
    twice in a dozen full test runs); without one, the child is spawned and execs at once.
    Where setpriv is missing, the with-blocks still stop the servers on a normal exit.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else list(command)


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakSampler:
    """Samples a callable (e.g. RSS) every `interval_s` in a thread; keeps the maximum."""

    def __init__(self, read, interval_s: float = 0.02):
        self._read = read
        self._interval = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._read())
