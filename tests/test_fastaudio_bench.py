"""The fastaudio benchmark runs and reports every operation of both implementations."""

import json

import pytest
from fastaudio_impls import load

from bench import fastaudio as bench_fastaudio


def test_benchmark_reports_every_operation_for_both_implementations():
    load("cython")
    result = bench_fastaudio.run(seconds_budget=0.01)
    assert json.loads(json.dumps(result)) == result
    assert result["implementations"] == ["cython", "numpy"]
    assert result["repeats"] >= 5
    for op in bench_fastaudio.OPS:
        row = result["ops"][op]
        assert row["cython_ns"] > 0 and row["numpy_ns"] > 0
    table = bench_fastaudio.format_table(result)
    assert "ring write+read" in table and "target:" in table


def test_benchmark_main_prints_json(capsys):
    load("cython")
    assert bench_fastaudio.main(["--budget", "0.01", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["ops"]) == set(bench_fastaudio.OPS)


@pytest.mark.parametrize("name", ["cython", "numpy"])
def test_each_workload_counts_the_frames_the_implementation_really_made(name):
    """Every figure is ns per frame: the frames a timed batch reports are its divisor.

    The chunker keeps a partial frame between batches, so after any number of
    batches the frames counted must be all the whole frames in the bytes fed.
    """
    workloads = bench_fastaudio._workloads(load(name))
    batch_bytes = 2 * sum(c.size for c in bench_fastaudio._network_chunks(bench_fastaudio._BATCH_FRAMES))
    assert batch_bytes % bench_fastaudio.FRAME_BYTES  # a partial frame is carried over
    frames = 0
    for batches, op in enumerate(("chunk", "chunk", "total", "chunk", "total"), start=1):
        frames += workloads[op]()
        assert frames == batches * batch_bytes // bench_fastaudio.FRAME_BYTES, (op, batches)
