"""make bench's fleet section (bench/fleet.py) on the smallest fleet: the direct path never touches nginx,
the nginx path goes through it, every call ends OK, and the figures add up from the rounds."""

from __future__ import annotations

import pytest

from bench import fleet as fleet_bench
from deploy.fleet import find_nginx


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (.ci/system-deps installs Debian's)")
def test_one_server_direct_and_through_nginx(monkeypatch):
    monkeypatch.setattr(fleet_bench, "CONCURRENCY", 2)  # a small load: each round is still >= 2 calls per client
    result = fleet_bench.run([], seconds=1.0, sizes=(1,), light_calls=80)
    [one] = result["fleets"]
    direct, nginx = one["direct"], one["nginx"]
    for path in (direct, nginx):
        assert len(path["rounds"]) == 2 and path["errors"] == 0
        assert path["calls"] == sum(r["calls"] for r in path["rounds"]) >= 2 * fleet_bench.CONCURRENCY * 2
        assert path["light"]["calls"] == 80
        assert path["audio_s_per_s"] > 0 and path["servers_cpu_s_per_audio_s"] > 0
    # No call of a direct round went through nginx (its access log has a line per call), those of an nginx
    # round did: nginx writes a call's line as it finishes it, so the lines of the calls that end a round
    # may land just after it is counted, or those that ended the warm-up just inside.
    assert [r["nginx_calls"] for r in direct["rounds"]] == [0, 0]
    for r in nginx["rounds"]:
        assert abs(r["nginx_calls"] - r["calls"]) <= fleet_bench.CONCURRENCY < r["calls"]
    calls = nginx["calls"]
    nginx_cpu_s = sum(r["nginx_cpu_s"] for r in nginx["rounds"])
    assert nginx["nginx_cpu_ms_per_call"] == pytest.approx(1000 * nginx_cpu_s / calls)
    assert one["overhead"]["nginx_cpu_ms_per_call"] == nginx["nginx_cpu_ms_per_call"]
    assert len(one["server_rss_mb"]) == 1 and one["server_rss_mb"][0] > 100
