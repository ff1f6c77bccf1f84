"""Three real servers on loopback, reached through a real nginx (deploy/nginx/) and through the bundled
clients' own round_robin over the three (clients/channel.py): every RPC passes, calls spread, deadlines
and cancels reach the server, a killed server loses only the calls it had answered, a drained one none.

Which server served a call is read from the servers' own request logs (deploy/fleet.py keeps them) and
nginx's access log; no test sleeps: each waits on a server's Stats, on calls ending, or on a process.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from fleet_calls import RPCS, Outcome, SteadyLoad, call, rpc_total, snapshot, wait_stats

from clients.channel import Connection, open_aio_channel
from deploy.fleet import SMALL_SERVER_ARGS, Fleet, find_nginx
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_NO_NGINX = "nginx is not installed (Debian's nginx; .ci/system-deps installs it)"
# Calls get 30 s to finish on a draining server, far more than one takes here.
_SERVER_ARGS = (*SMALL_SERVER_ARGS, "--grace-s", "30")
_LONG = " ".join(f"Sentence number {i} keeps the server busy for a good while longer." for i in range(40))
_EXACT = {"noise_scale": 0.0, "noise_w": 0.0}  # the same audio from every server
_CONCURRENCY = 8
_CALLS_AFTER = 8  # calls started after the signal's effect that must all succeed


@pytest.fixture(scope="module")
def fleet():
    """Three servers and, when nginx is installed, nginx in front of them."""
    with Fleet(3, _SERVER_ARGS, balancer=find_nginx() is not None) as fleet:
        yield fleet


@pytest.fixture
def nginx(fleet):
    """The fleet's nginx address; the test is skipped when nginx is not installed."""
    if fleet.nginx is None:
        pytest.skip(_NO_NGINX)
    return fleet.nginx.address


def _target(fleet: Fleet, path: str) -> str:
    """--server of a client taking `path`: nginx's one address, or the three servers' (round_robin)."""
    if path == "nginx":
        if fleet.nginx is None:
            pytest.skip(_NO_NGINX)
        return fleet.nginx.address
    return ",".join(fleet.addresses)


def _access_log(fleet: Fleet) -> dict[str, dict[str, str]]:
    """nginx's access log: request id -> the line's fields (upstream=..., grpc-status=...)."""
    lines = {}
    for line in fleet.nginx.access_log.read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
        fields["upstream"] = line.split("upstream=", 1)[1].split(" grpc-status=")[0]
        lines[fields["id"]] = fields
    return lines


async def test_every_rpc_passes_through_nginx_with_the_same_audio(fleet, nginx):
    async with open_aio_channel(Connection(nginx)) as proxied, \
            open_aio_channel(Connection(fleet.addresses[0])) as direct:
        for rpc in RPCS:
            through = await call(pb_grpc.SynthesizerStub(proxied), rpc, f"same-{rpc}", **_EXACT)
            straight = await call(pb_grpc.SynthesizerStub(direct), rpc, f"direct-{rpc}", **_EXACT)
            assert (through.code, straight.code) == (grpc.StatusCode.OK, grpc.StatusCode.OK), (through, straight)
            assert through.audio == straight.audio and len(through.audio) > 10_000
            _check_streams_whole([through])
        voices = await pb_grpc.SynthesizerStub(proxied).ListVoices(pb.ListVoicesRequest(), timeout=30)
        assert voices == await pb_grpc.SynthesizerStub(direct).ListVoices(pb.ListVoicesRequest(), timeout=30)


async def test_live_text_reaches_the_server_through_nginx_as_it_is_sent(nginx):
    """nginx streams the request body unbuffered: each turn is spoken to its end while the call stays open."""
    async with open_aio_channel(Connection(nginx)) as channel:
        live = pb_grpc.SynthesizerStub(channel).SynthesizeLive(timeout=60)
        await live.write(pb.LiveRequest(config=pb.LiveConfig()))
        for turn in ("one", "two"):
            await live.write(pb.LiveRequest(text=f"This is turn {turn}.", context_id=turn))
            await live.write(pb.LiveRequest(flush=True, context_id=turn))
            # Would wait for the deadline if nginx held the text back until the client closes its side.
            chunks = [await live.read()]
            while not chunks[-1].context_end:
                chunks.append(await live.read())
            assert {c.context_id for c in chunks} == {turn} and sum(c.num_samples for c in chunks) > 10_000
        await live.done_writing()
        rest = []
        while (chunk := await live.read()) is not grpc.aio.EOF:
            rest.append(chunk)
        assert rest[-1].final and await live.code() == grpc.StatusCode.OK


async def test_x_request_id_is_forwarded_or_made_by_nginx_and_logged_on_both_sides(fleet, nginx):
    async with open_aio_channel(Connection(nginx)) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        given = stub.Synthesize(pb.SynthesizeRequest(text="Mine."), timeout=30,
                                metadata=(("x-request-id", "client-chosen-17"),))
        await given
        unnamed = stub.Synthesize(pb.SynthesizeRequest(text="Anyone's."), timeout=30)
        await unnamed
    assert dict(await given.initial_metadata())["x-request-id"] == "client-chosen-17"
    made = dict(await unnamed.initial_metadata())["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0  # nginx's $request_id, passed to the server
    log, served = _access_log(fleet), fleet.served()
    for request_id in ("client-chosen-17", made):
        assert log[request_id]["grpc-status"] == "0"
        [where] = served[request_id]
        assert (where.rpc, where.status) == ("Synthesize", "OK")
        assert log[request_id]["upstream"] == fleet.addresses[where.server]


@pytest.mark.parametrize("path", ["nginx", "round_robin"])
async def test_calls_spread_evenly_over_the_servers(fleet, path):
    async with open_aio_channel(Connection(_target(fleet, path))) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        # round_robin picks among the servers whose health check has answered: first let each serve a call.
        for n in range(30):
            if _servers_of(fleet, f"warm-{path}-") == {0, 1, 2}:
                break
            await stub.Synthesize(pb.SynthesizeRequest(text="Warm."), timeout=30,
                                  metadata=(("x-request-id", f"warm-{path}-{n}"),))
        assert _servers_of(fleet, f"warm-{path}-") == {0, 1, 2}
        before = [rpc_total(await snapshot(a), "Synthesize") for a in fleet.addresses]
        for _ in range(9):
            await stub.Synthesize(pb.SynthesizeRequest(text="Spread me."), timeout=30)
        after = [rpc_total(await snapshot(a), "Synthesize") for a in fleet.addresses]
    assert [b - a for a, b in zip(before, after)] == [3, 3, 3]


def _nginx_upstream_sockets(fleet: Fleet) -> dict[str, set[int]]:
    """nginx's side of its connections to the servers, by TCP state ("01" established, "06" time-wait):
    the local ports of the loopback sockets whose remote port is a server's (/proc/net/tcp)."""
    ports = {int(a.rpartition(":")[2]) for a in fleet.addresses}
    found: dict[str, set[int]] = {"01": set(), "06": set()}
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = row.split()[1:4]
        if int(remote.split(":")[1], 16) in ports and state in found:
            found[state].add(int(local.split(":")[1], 16))
    return found


async def test_nginx_keeps_its_connections_to_the_servers_open_between_calls(fleet, nginx):
    async with open_aio_channel(Connection(nginx)) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        for n in range(3):  # a connection to each server nginx picks
            await stub.ListVoices(pb.ListVoicesRequest(), timeout=30, metadata=(("x-request-id", f"keep-{n}"),))
        before = _nginx_upstream_sockets(fleet)
        for n in range(3, 15):
            await stub.ListVoices(pb.ListVoicesRequest(), timeout=30, metadata=(("x-request-id", f"keep-{n}"),))
        after = _nginx_upstream_sockets(fleet)
    log = _access_log(fleet)
    used = {log[f"keep-{n}"]["upstream"] for n in range(15)}
    why = f"upstreams {sorted(used)}; nginx error log:\n{fleet.nginx.error_log.read_text()[-2000:]}"
    # Upstream keep-alive: the 12 calls went over the connections already open; none was closed after
    # its call (nginx, closing first, would hold it in TIME_WAIT) and none was opened for it. One open
    # connection per server the calls went to (round robin reaches all three unless nginx marked one
    # failed for fail_timeout, which the servers' own tests cover).
    assert after["06"] <= before["06"], why
    assert after["01"] == before["01"], why
    assert len(after["01"]) == len(used) >= 2, why


def _servers_of(fleet: Fleet, prefix: str) -> set[int]:
    """The servers that logged a call whose request id starts with `prefix`."""
    return {s.server for request_id, where in fleet.served().items() if request_id.startswith(prefix) for s in where}


async def test_the_deadline_reaches_the_server_through_nginx(fleet, nginx):
    async with open_aio_channel(Connection(nginx)) as channel:
        outcome = await call(pb_grpc.SynthesizerStub(channel), "SynthesizeStream", "deadline-1", _LONG, timeout_s=1.5)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcome.ended - outcome.started < 10  # the client's deadline, not nginx's 3600 s timeouts
    # The client stops at its deadline; the server ends the call a moment later, logging it as it does.
    for address in fleet.addresses:
        await wait_stats(address, lambda s: s.requests.in_flight == 0)
    # The server knew the deadline (grpc-timeout passed on): a call cancelled without one counts CANCELLED.
    [where] = fleet.served()["deadline-1"]
    assert where.status == "DEADLINE_EXCEEDED"
    await wait_stats(fleet.addresses[where.server], lambda s: s.pool.busy == 0 and s.queue.depth == 0)


async def test_a_cancel_through_nginx_stops_the_servers_inference(fleet, nginx):
    before = {a: await snapshot(a) for a in fleet.addresses}
    async with open_aio_channel(Connection(nginx)) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        stream = stub.SynthesizeStream(pb.SynthesizeRequest(text=_LONG), timeout=60,
                                       metadata=(("x-request-id", "cancel-1"),))
        first = await stream.read()
        assert first.sequence == 0
        [serving] = [a for a in fleet.addresses if (await snapshot(a)).requests.in_flight == 1]
        stream.cancel()
        # The call ends on the server, and nothing of it runs or waits there any more.
        after = await wait_stats(serving, lambda s: s.requests.cancelled == before[serving].requests.cancelled + 1
                                 and s.requests.in_flight == 0)
        settled = await wait_stats(serving, lambda s: s.pool.busy == 0 and s.queue.depth == 0)
    assert after.requests.by_status["CANCELLED"] == before[serving].requests.by_status.get("CANCELLED", 0) + 1
    runs = settled.pool.runs_started - before[serving].pool.runs_started
    # 40 sentences need at least 40 inference runs; the cancel left it at the few queued ahead (--lookahead 3).
    assert 1 <= runs <= 8, runs
    assert settled.pool.runs_completed == settled.pool.runs_started  # every run started has ended
    assert fleet.served()["cancel-1"][0].status == "CANCELLED"


async def _load_and_signal(fleet: Fleet, path: str, victim: int, sig: int, prefix: str):
    """Steady load at concurrency 8 through `path`; `sig` to server `victim` while it has calls in flight,
    a stream among them;
    the load goes on until _CALLS_AFTER calls started after the server exited have ended.

    Returns (outcomes, when the signal was sent, when the server had exited, its exit code).
    """
    async with open_aio_channel(Connection(_target(fleet, path))) as channel:
        load = SteadyLoad(pb_grpc.SynthesizerStub(channel), _CONCURRENCY, prefix)
        load.start()
        try:
            await load.wait_for(lambda done: sum(o.code == grpc.StatusCode.OK for o in done) >= _CONCURRENCY)
            # A stream among them: its headers are out, so it cannot be retried (a unary call in
            # flight has sent none yet, and a balancer takes it elsewhere, as it should).
            await wait_stats(fleet.addresses[victim], lambda s: s.requests.in_flight >= 2 and any(
                r.in_flight for r in s.requests.rpcs if r.method in ("SynthesizeStream", "SynthesizeLive")))
            signalled = time.monotonic()
            fleet.signal(victim, sig)
            code = await asyncio.to_thread(fleet.wait_exit, victim)
            exited = time.monotonic()
            await load.wait_for(lambda done: sum(o.started > exited for o in done) >= _CALLS_AFTER)
        finally:
            outcomes = await load.stop()
    return outcomes, signalled, exited, code


def _check_streams_whole(outcomes: list[Outcome]) -> None:
    """Every stream that ended OK has its chunks once each, in order, the last one final: none was replayed."""
    for o in outcomes:
        if o.code == grpc.StatusCode.OK and o.rpc != "Synthesize":
            assert o.sequences == list(range(len(o.sequences))) and o.final, o


@pytest.mark.parametrize("path", ["nginx", "round_robin"])
async def test_sigkill_loses_only_the_calls_the_killed_server_had_answered(fleet, path):
    # The kill is aimed at a moment the victim has a stream in flight, but a short stream can end
    # between the Stats snapshot and the signal; then nothing was lost and the kill is tried again.
    for attempt in range(_KILL_ATTEMPTS):
        lost = await _kill_under_load(fleet, path, f"kill-{path}-{attempt}")
        if lost:
            return
    pytest.fail(f"no call was in flight on the killed server in {_KILL_ATTEMPTS} kills")


_KILL_ATTEMPTS = 3


async def _kill_under_load(fleet: Fleet, path: str, prefix: str) -> list[Outcome]:
    """SIGKILL server 0 under load; checks every outcome; returns the calls lost."""
    victim = 0
    try:
        outcomes, signalled, exited, code = await _load_and_signal(fleet, path, victim, signal.SIGKILL, prefix)
    finally:
        fleet.restart(victim)
    assert code == -signal.SIGKILL
    served = fleet.served()
    lost = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    # No call hangs: each ended OK or as a call cut off with its server (60 s deadlines: a hang would show).
    # The lost calls are ones the victim had in flight: started before the kill, logged by no server.
    assert all(o.started < signalled and o.request_id not in served for o in lost), lost
    if path == "nginx":
        # One that had its headers is reset (RST_STREAM INTERNAL_ERROR); one without gets nginx's 502
        # (UNAVAILABLE): nginx streams a gRPC request body upstream as it comes, so it cannot send it again.
        assert all(o.code == grpc.StatusCode.INTERNAL and "RST_STREAM" in o.details and o.headers_at is not None
                   or o.code == grpc.StatusCode.UNAVAILABLE and "502" in o.details for o in lost), lost
    else:
        # UNAVAILABLE, and only calls past their headers: the channel sent the others again elsewhere.
        assert all(o.code == grpc.StatusCode.UNAVAILABLE and o.headers_at is not None for o in lost), lost
    assert all(o.request_id in served for o in outcomes if o.code == grpc.StatusCode.OK)
    # Every call that ended OK ran once, on one server; every call started after the kill went elsewhere.
    for o in outcomes:
        if o.code == grpc.StatusCode.OK:
            [where] = served[o.request_id]
            assert where.status == "OK" and (o.started < exited or where.server != victim), (o, where)
    after = [o for o in outcomes if o.started > exited]
    assert len(after) >= _CALLS_AFTER and all(o.code == grpc.StatusCode.OK for o in after)
    _check_streams_whole(outcomes)
    if path == "nginx":  # nginx tried no lost call anywhere else; one it sent to the dead server
        # (refused) it tried again elsewhere, with success. Whether any was sent there depends on
        # how soon nginx marked the server down after the first failure.
        log = _access_log(fleet)
        assert all(log[o.request_id]["upstream"] == fleet.addresses[victim] for o in lost)
        retried = [o for o in after if log[o.request_id]["upstream"].startswith(fleet.addresses[victim] + ", ")]
        assert all(log[o.request_id]["grpc-status"] == "0" for o in retried)
    return lost


@pytest.mark.parametrize("path", ["nginx", "round_robin"])
async def test_sigterm_drains_without_a_failed_call(fleet, path):
    victim = 1
    try:
        outcomes, signalled, exited, code = await _load_and_signal(fleet, path, victim, signal.SIGTERM,
                                                                   f"drain-{path}")
    finally:
        fleet.restart(victim)
    assert code == 0
    assert [o for o in outcomes if o.code != grpc.StatusCode.OK] == []
    served = fleet.served()
    for o in outcomes:
        [where] = served[o.request_id]  # once each, never retried after it began
        assert where.status == "OK"
    # The drain was exercised: calls in flight on the victim at SIGTERM finished there.
    finished_on_victim = [o for o in outcomes
                          if served[o.request_id][0].server == victim and o.started < signalled < o.ended]
    assert finished_on_victim
    after = [o for o in outcomes if o.started > exited]
    assert len(after) >= _CALLS_AFTER and all(served[o.request_id][0].server != victim for o in after)
    _check_streams_whole(outcomes)
