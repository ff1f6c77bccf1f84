"""Servers started by the benchmarks and the fleet runner die with the process that started them."""

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_STARTER = ("import subprocess; from bench.server_process import dies_with_parent; "
            "child = subprocess.Popen(dies_with_parent(['sleep', '60']), "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(child.pid, flush=True)")


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds to wait for a process it did not start")
def test_a_spawned_child_gets_sigterm_when_its_starter_exits():
    starter = subprocess.run([sys.executable, "-c", _STARTER], cwd=REPO, capture_output=True, text=True, check=True)
    try:
        pidfd = os.pidfd_open(int(starter.stdout))
    except ProcessLookupError:
        return  # already gone: what is asserted below
    try:
        # The starter has exited: its child must go too (sleep 60 would otherwise outlive the 10 s).
        readable, _, _ = select.select([pidfd], [], [], 10)
        assert readable, "the child outlived the process that started it"
    finally:
        os.close(pidfd)
