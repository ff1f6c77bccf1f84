"""deploy/nginx/speakstream.conf.template filled in by deploy/fleet.py: every placeholder, a config nginx
accepts (`nginx -t`), and bad addresses refused in one line naming the flag."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.fleet import TEMPLATE, find_nginx, render_nginx_conf

REPO = Path(__file__).resolve().parents[1]
_BACKENDS = ["10.0.0.11:50051", "10.0.0.12:50051", "speakstream-3.internal:50051"]


def test_every_placeholder_is_filled(tmp_path):
    text = render_nginx_conf(_BACKENDS, "0.0.0.0:50051", tmp_path, "auto")
    assert re.findall(r"@[A-Z_]+@", TEMPLATE.read_text()) and not re.findall(r"@[A-Z_]+@", text)
    assert re.findall(r"^\s*server (\S+) max_fails=1 fail_timeout=5s;$", text, re.M) == _BACKENDS
    assert re.findall(r"^\s*listen (\S+) http2;$", text, re.M) == ["0.0.0.0:50051"]
    assert f"pid {tmp_path}/nginx.pid;" in text and "worker_processes auto;" in text


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (.ci/system-deps installs Debian's)")
def test_nginx_accepts_the_filled_in_config(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(_BACKENDS[:2], "127.0.0.1:50099", tmp_path, "2"))
    test = subprocess.run([find_nginx(), "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stderr
    assert "test is successful" in test.stderr


@pytest.mark.parametrize("args, message", [
    (["--backend", "10.0.0.1"], "error: backend: '10.0.0.1' is not host:port"),
    (["--backend", "10.0.0.1:99999"], "error: backend: '10.0.0.1:99999' is not host:port"),
    (["--backend", "10.0.0.1:1", "--listen", ":80"], "error: listen: ':80' is not host:port"),
    (["--backend", "10.0.0.1:1", "--workers", "0"], "error: workers: '0' is neither a positive number nor auto"),
])
def test_a_bad_address_is_one_line_naming_the_flag(args, message):
    run = subprocess.run([sys.executable, "-m", "deploy.fleet", "nginx-conf", *args],
                         capture_output=True, text=True, check=False)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.splitlines() == [f"python -m deploy.fleet: {message}"]


def test_the_command_prints_the_config_it_renders(tmp_path):
    run = subprocess.run([sys.executable, "-m", "deploy.fleet", "nginx-conf", "--backend", _BACKENDS[0],
                          "--backend", _BACKENDS[1], "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert run.stdout == render_nginx_conf(_BACKENDS[:2], "0.0.0.0:50051", tmp_path, "auto")


def _doc_command() -> list[str]:
    """The `python -m deploy.fleet nginx-conf` command of docs/OPERATIONS.md, its output redirection dropped."""
    text = (REPO / "docs" / "OPERATIONS.md").read_text(encoding="utf-8").replace("\\\n", " ")
    [line] = [line for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
              for line in block.splitlines() if line.startswith("python -m deploy.fleet nginx-conf")]
    return shlex.split(line.split(">")[0])


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (.ci/system-deps installs Debian's)")
def test_the_documented_command_makes_a_config_nginx_accepts(tmp_path):
    args = _doc_command()[3:]
    args[args.index("--run-dir") + 1] = str(tmp_path)  # the documented /run/... needs root
    conf = tmp_path / "nginx.conf"
    conf.write_text(subprocess.run([sys.executable, "-m", "deploy.fleet", *args], capture_output=True, text=True,
                                   check=True).stdout)
    assert conf.read_text().count("        server 10.0.0.") == 3
    test = subprocess.run([find_nginx(), "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stderr
