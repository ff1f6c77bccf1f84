"""Client-side balancing in the bundled clients (clients/channel.py): several addresses or a dns:/// name
become gRPC's round_robin over the servers whose health check says SERVING, with retries of refused calls."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from fleet_calls import rpc_total, snapshot
from grpc_health.v1 import health_pb2
from servers import serving

from clients.channel import BALANCED_SERVICE_CONFIG, Connection, grpc_target, open_aio_channel
from server.app import SYNTHESIZER_SERVICE
from server.config import Settings
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc


@pytest.mark.parametrize("server, target", [
    ("127.0.0.1:50051", "127.0.0.1:50051"),
    ("speakstream.example:50051", "speakstream.example:50051"),
    ("10.0.0.1:50051,10.0.0.2:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
    ("10.0.0.1:50051, 10.0.0.2:50052", "ipv4:10.0.0.1:50051,10.0.0.2:50052"),
    ("[fd00::1]:50051,[fd00::2]:50051", "ipv6:[fd00::1]:50051,[fd00::2]:50051"),
    ("dns:///speakstream.default.svc.cluster.local:50051", "dns:///speakstream.default.svc.cluster.local:50051"),
    ("ipv4:10.0.0.1:1,10.0.0.2:1", "ipv4:10.0.0.1:1,10.0.0.2:1"),
])
def test_server_flag_becomes_a_grpc_target(server, target):
    assert grpc_target(server) == target
    balanced = Connection(server).balanced
    assert balanced == ("," in server or server.startswith("dns:"))
    config = dict(Connection(server).options()).get("grpc.service_config")
    assert (json.loads(config) if config else None) == (BALANCED_SERVICE_CONFIG if balanced else None)


@pytest.mark.parametrize("server", ["a.example:1,b.example:1", "10.0.0.1:1,[fd00::1]:1", "10.0.0.1,10.0.0.2:1"])
def test_several_servers_must_be_ip_addresses_of_one_family(server):
    with pytest.raises(ValueError, match=r"^server: .*dns:///"):
        grpc_target(server)


def test_the_service_config_balances_by_the_servers_real_health_service():
    assert BALANCED_SERVICE_CONFIG["loadBalancingConfig"] == [{"round_robin": {}}]
    assert BALANCED_SERVICE_CONFIG["healthCheckConfig"]["serviceName"] == SYNTHESIZER_SERVICE
    [method] = BALANCED_SERVICE_CONFIG["methodConfig"]
    assert method["name"] == [{"service": SYNTHESIZER_SERVICE}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clients.stats import main; sys.exit(main(sys.argv[1:]))", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_a_client_cli_reaches_a_server_listed_among_several(app):
    dead = "127.0.0.1:1"  # nothing listens there: round_robin skips it
    code, out, err = await _cli("--server", f"{dead},{app.address}", "--json")
    assert code == 0, err
    assert json.loads(out)["queue"]["capacity"] == app.settings.pool_size + app.settings.max_queue


async def test_a_bad_server_list_is_a_usage_error_naming_the_flag():
    code, out, err = await _cli("--server", "alpha:1,beta:1")
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith("speakstream-stats: error: server: 'alpha:1,beta:1': several servers")


@pytest.mark.slow
async def test_round_robin_skips_a_server_whose_health_says_not_serving(app):
    async with serving(Settings(port=0, pool_size=1, max_queue=8)) as (other, _):
        addresses = [app.address, other.address]
        async with open_aio_channel(Connection(",".join(addresses))) as channel:
            stub = pb_grpc.SynthesizerStub(channel)

            async def spread(calls: int) -> list[int]:
                before = [rpc_total(await snapshot(a), "ListVoices") for a in addresses]
                for _ in range(calls):
                    await stub.ListVoices(pb.ListVoicesRequest(), timeout=30, wait_for_ready=True)
                return [rpc_total(await snapshot(a), "ListVoices") - b for a, b in zip(addresses, before)]

            async def settle(done, calls: int) -> None:
                """Call until `done(spread)` holds: the channel has taken in a health change (bounded)."""
                for _ in range(50):
                    if done(await spread(calls)):
                        return
                raise AssertionError("the channel never took the health change in")

            # Both healthy: two calls in a row reach both once the channel has both ready.
            await settle(lambda counts: 0 not in counts, 2)
            assert await spread(6) == [3, 3]
            await other.health.set(SYNTHESIZER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
            # The channel watches health: once the update reaches it, `other` gets nothing.
            await settle(lambda counts: counts[1] == 0, 2)
            assert await spread(6) == [6, 0]
            await other.health.set(SYNTHESIZER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            await settle(lambda counts: counts[1] > 0, 1)
            assert await spread(6) == [3, 3]
