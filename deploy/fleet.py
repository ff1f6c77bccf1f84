"""A fleet on loopback for tests and benchmarks: N speakstream servers and nginx balancing gRPC over them.

`Fleet` starts the servers (each `python -m server --port 0 ...`, loading their
models side by side), fills deploy/nginx/speakstream.conf.template with their
addresses, runs an unprivileged nginx on a free loopback port with every file
in the fleet's run directory, waits until each server and the balancer answer
gRPC health, and stops them all by pid. Each server's log (JSON lines, one per
request) is kept in the run directory, so a caller can tell which server
served which call. `python -m deploy.fleet nginx-conf ...` prints the
configuration filled in for a real deployment; `python -m deploy.fleet run`
keeps a fleet up until Ctrl-C (docs/OPERATIONS.md, "Scale-out").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.server_process import ServerProcess, dies_with_parent
from clients.channel import SYNTHESIZER_SERVICE

TEMPLATE = Path(__file__).resolve().parent / "nginx" / "speakstream.conf.template"
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
# Loopback servers of a fleet share the machine's cores: one inference each, on one thread,
# unless the caller says otherwise.
SMALL_SERVER_ARGS = ("--pool-size", "1", "--intra-op-threads", "1")
_START_TIMEOUT_S = 120.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def find_nginx() -> Optional[str]:
    """The nginx binary (PATH, else Debian's /usr/sbin/nginx), or None when it is not installed."""
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def render_nginx_conf(backends: Sequence[str], listen: str, run_dir: Path | str, workers: str = "auto") -> str:
    """deploy/nginx/speakstream.conf.template with the servers, the listen address and the run directory."""
    if not backends:
        raise ValueError("backend: at least one server address host:port is needed")
    for flag, address in [("backend", b) for b in backends] + [("listen", listen)]:
        _check_address(flag, address)
    if not (workers == "auto" or workers.isdigit() and int(workers) > 0):
        raise ValueError(f"workers: {workers!r} is neither a positive number nor auto")
    # A server that fails a connection is skipped for 5 s (a dead or draining one refuses at once).
    servers = "\n".join(f"        server {backend} max_fails=1 fail_timeout=5s;" for backend in backends)
    text = TEMPLATE.read_text(encoding="utf-8")
    for name, value in (("SERVERS", servers), ("LISTEN", listen), ("RUN_DIR", str(run_dir)), ("WORKERS", workers)):
        text = text.replace(f"@{name}@", value)
    return text


def _check_address(flag: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag}: {address!r} is not host:port")


def wait_serving(address: str, timeout_s: float = 60.0, service: str = "") -> None:
    """Return once `address` answers grpc.health.v1 Check with SERVING (gRPC waits for the connection)."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s, wait_for_ready=True)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise RuntimeError(f"{address} answers health {status}")


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """An unprivileged nginx (daemon off) balancing gRPC over `backends`, every file of it in `run_dir`."""

    def __init__(self, backends: Sequence[str], run_dir: Path, binary: Optional[str] = None, workers: str = "1"):
        self.backends = list(backends)
        self.run_dir = Path(run_dir)
        found = binary or find_nginx()
        if found is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx; .ci/system-deps does)")
        self.binary: str = found
        self.workers = workers
        self.process: Optional[subprocess.Popen] = None
        self.address = ""

    @property
    def conf(self) -> Path:
        """The filled-in configuration file."""
        return self.run_dir / "nginx.conf"

    @property
    def access_log(self) -> Path:
        """One line per call (log_format speakstream in the template)."""
        return self.run_dir / "access.log"

    @property
    def error_log(self) -> Path:
        """nginx's error log."""
        return self.run_dir / "error.log"

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> Nginx:
        """Start on a free loopback port and return once a health check through nginx is SERVING."""
        for _ in range(attempts):
            # The port is free when picked; should another process take it before nginx binds,
            # nginx exits at once and another port is tried.
            self.address = f"127.0.0.1:{free_port()}"
            self.conf.write_text(render_nginx_conf(self.backends, self.address, self.run_dir, self.workers))
            self.check()
            self.process = subprocess.Popen(dies_with_parent([self.binary, "-p", str(self.run_dir), "-c",
                                                              str(self.conf), "-e", str(self.error_log)]),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            try:
                wait_serving(self.address, timeout_s)
                return self
            except grpc.RpcError:
                if self.process.poll() is None:
                    self.stop()
                    raise RuntimeError(f"nginx did not answer in {timeout_s} s; see {self.error_log}") from None
        raise RuntimeError(f"nginx could not listen; see {self.error_log}")

    def check(self) -> None:
        """`nginx -t` on the configuration: RuntimeError with nginx's own words when it is refused."""
        test = subprocess.run([self.binary, "-t", "-q", "-p", str(self.run_dir), "-c", str(self.conf),
                               "-e", str(self.error_log)], capture_output=True, text=True, check=False)
        if test.returncode != 0:
            raise RuntimeError(f"nginx refuses {self.conf}: {test.stderr.strip()}")

    def pids(self) -> list[int]:
        """The master's pid and its workers'; RuntimeError if nginx has not been started."""
        if self.process is None:
            raise RuntimeError("nginx has not been started")
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [self.process.pid, *map(int, children)]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) nginx's master and workers have used."""
        return sum(_cpu_s(pid) for pid in self.pids())

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGQUIT (finish calls in flight, then exit), SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS



class FleetServer(ServerProcess):
    """One server of the fleet: a ServerProcess whose log (JSON lines, a line per request) goes to a file."""

    def __init__(self, args: Sequence[str], log: Path, port: int = 0):
        super().__init__(args, _START_TIMEOUT_S)
        self.log = log
        self.port = port

    def start(self) -> None:
        """Start the process (the model loads meanwhile); `wait_ready` waits for its ready line."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                dies_with_parent([sys.executable, "-m", "server", "--port", str(self.port), "--log-format", "json",
                                  *self._args]),
                stdout=subprocess.PIPE, stderr=log, text=True)

    def wait_ready(self) -> None:
        """Read the ready line (RuntimeError if the server exits first), then wait for health SERVING."""
        try:
            self.address = self._wait_ready()
        except RuntimeError as error:  # the server's own words are in its log, not on stdout
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            code = self.started().poll()
            raise RuntimeError(f"{error}; exit code {code}; its log {self.log} ends:\n{tail}") from None
        self.port = int(self.address.rpartition(":")[2])
        wait_serving(self.address, service=SYNTHESIZER_SERVICE)

    def __enter__(self) -> FleetServer:
        self.start()
        self.wait_ready()
        return self

    def requests(self) -> Iterator[dict]:
        """Every request line this server has logged so far (request_id, rpc, status, ...)."""
        with open(self.log, encoding="utf-8") as log:
            for line in log:
                entry = json.loads(line) if line.startswith("{") else {}
                if "request_id" in entry:
                    yield entry


class Served(NamedTuple):
    """Where a call was logged: the server's index in the fleet, its RPC and final status."""

    server: int
    rpc: str
    status: str


class Fleet:
    """N servers on loopback, optionally behind nginx; a context manager that stops everything by pid."""

    def __init__(self, size: int, server_args: Sequence[str] = SMALL_SERVER_ARGS, balancer: bool = True,
                 nginx_workers: str = "1"):
        if size < 1:
            raise ValueError("servers: a fleet has at least one server")
        self.size = size
        self.server_args = list(server_args)
        self.servers: list[FleetServer] = []
        self.nginx: Optional[Nginx] = None
        self._balancer = balancer
        self._nginx_workers = nginx_workers
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self.run_dir = Path()

    @property
    def addresses(self) -> list[str]:
        """Each server's host:port."""
        return [server.address for server in self.servers]

    def __enter__(self) -> Fleet:
        self._tmp = tempfile.TemporaryDirectory(prefix="speakstream-fleet-")
        self.run_dir = Path(self._tmp.name)
        try:
            self.servers = [FleetServer(self.server_args, self.run_dir / f"server-{i}.log") for i in range(self.size)]
            for server in self.servers:
                server.start()  # all load their models at once
            for server in self.servers:
                server.wait_ready()
            if self._balancer:
                self.nginx = Nginx(self.addresses, self.run_dir, workers=self._nginx_workers).start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for server in self.servers:
            server.__exit__(None, None, None)
        if self._tmp is not None:
            self._tmp.cleanup()

    def signal(self, index: int, sig: int) -> None:
        """Send `sig` to server `index`'s process."""
        self.servers[index].started().send_signal(sig)

    def wait_exit(self, index: int, timeout_s: float = 60.0) -> int:
        """Wait for server `index` to exit; its exit code (negative: the signal that ended it)."""
        return self.servers[index].started().wait(timeout_s)

    def restart(self, index: int) -> None:
        """Start server `index` again on its port (nginx's configuration names it), its log appended to."""
        old = self.servers[index]
        old.__exit__(None, None, None)
        self.servers[index] = FleetServer(self.server_args, old.log, old.port).__enter__()

    def served(self) -> dict[str, list[Served]]:
        """Request id -> every server that logged the call (a call retried elsewhere shows twice)."""
        seen: dict[str, list[Served]] = {}
        for index, server in enumerate(self.servers):
            for entry in server.requests():
                seen.setdefault(entry["request_id"], []).append(Served(index, entry["rpc"], entry["status"]))
        return seen


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deploy.fleet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("nginx-conf", help="print deploy/nginx/speakstream.conf.template filled in")
    conf.add_argument("--backend", action="append", required=True,
                      help="a speakstream server's host:port (once per server)")
    conf.add_argument("--listen", default="0.0.0.0:50051", help="where nginx listens (default %(default)s)")
    conf.add_argument("--run-dir", default="/run/speakstream-nginx",
                      help="pid file, logs and temporary files (default %(default)s)")
    conf.add_argument("--workers", default="auto", help="nginx worker processes, or auto (default %(default)s)")
    run = sub.add_parser("run", help="start N servers and nginx on loopback; print the addresses; Ctrl-C stops")
    run.add_argument("--servers", type=int, default=3, help="how many servers (default %(default)s)")
    run.add_argument("--server-args", default=" ".join(SMALL_SERVER_ARGS),
                     help="flags for every server (default %(default)r)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`nginx-conf`: print a configuration; `run`: a fleet on loopback until Ctrl-C or SIGTERM."""
    args = _parse(argv)
    try:
        if args.command == "nginx-conf":
            print(render_nginx_conf(args.backend, args.listen, args.run_dir, args.workers), end="")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with Fleet(args.servers, args.server_args.split()) as fleet:
            assert fleet.nginx is not None  # a Fleet starts nginx unless balancer=False
            print(f"servers: {','.join(fleet.addresses)}\nnginx: {fleet.nginx.address}\n"
                  f"logs: {fleet.run_dir}", flush=True)
            stop.wait()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"python -m deploy.fleet: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
