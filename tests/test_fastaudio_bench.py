"""The fastaudio benchmark runs and reports every operation of both implementations."""

import json

import pytest

from bench import fastaudio as bench_fastaudio
from fastaudio_impls import load


def test_benchmark_reports_every_operation_for_both_implementations():
    load("cython")
    result = bench_fastaudio.run(seconds_budget=0.01)
    assert json.loads(json.dumps(result)) == result
    assert result["implementations"] == ["cython", "numpy"]
    assert result["repeats"] >= 5
    for op in bench_fastaudio.OPS:
        row = result["ops"][op]
        assert row["cython_ns"] > 0 and row["numpy_ns"] > 0
        assert row["speedup"] == pytest.approx(row["numpy_ns"] / row["cython_ns"], rel=0.01)
    table = bench_fastaudio.format_table(result)
    assert "ring write+read" in table and "target:" in table


def test_benchmark_main_prints_json(capsys):
    load("cython")
    assert bench_fastaudio.main(["--budget", "0.01", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["ops"]) == set(bench_fastaudio.OPS)
