"""The encoding section of `make bench` runs and reports every encoding and rate (figures are not judged here)."""

import pytest

from bench import encoding as bench_encoding
from server.encoding import Encoding


@pytest.mark.slow
def test_encoding_section_reports_every_encoding_and_rate_next_to_inference():
    result = bench_encoding.bench_encoding(repeats=1)
    for clock in ("wall", "cpu"):
        r = result[clock]
        assert r["inference_ms_per_audio_s"] > 0
        assert set(r["encoding_ms_per_audio_s"]) == {e.name for e in Encoding}
        assert {k.split()[0] for k in r["resampling_ms_per_audio_s"]} == {str(rate) for rate in bench_encoding.RATES}
        assert r["all_vs_inference_pct"] > 0
    bench_encoding.print_encoding(result)
