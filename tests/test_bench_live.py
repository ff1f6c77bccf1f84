"""The live benchmark measures what it says: its clauses are the server's, every clause is timed."""

from __future__ import annotations

import pytest

from bench import live as bench_live
from server.frontend import split_sentences


@pytest.fixture(scope="module")
def plan_for():
    from server.config import Settings
    from server.frontend import Frontend
    from server.voices import bundled_voice

    settings = Settings()  # the server's segment sizes, as the bench's floor uses
    frontend = Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes)
    return lambda pieces: bench_live.clause_plan(pieces, frontend, bundled_voice().config)


def test_clauses_are_the_servers_sentences_each_decided_by_a_later_piece(plan_for):
    pieces = bench_live.tokens(bench_live.REPLY)
    assert "".join(pieces) == bench_live.REPLY
    plan = plan_for(pieces)
    assert [(c["start"], c["end"]) for c in plan] == split_sentences(bench_live.REPLY)
    assert "Dr. Patel" in bench_live.REPLY[plan[1]["start"]:plan[1]["end"]]
    for clause in plan[:-1]:  # decided by the piece holding the character after the space
        decided_at = sum(len(p) for p in pieces[:clause["piece"] + 1])
        assert decided_at > clause["end"] and pieces[clause["piece"]].strip()
    assert plan[-1]["piece"] is None  # the last one by the end of input


def test_playback_gaps_count_only_the_time_nothing_is_left_to_play():
    assert bench_live.playback_gaps([(0.0, 1.0), (0.5, 1.0), (2.0, 1.0)]) == 0.0
    assert bench_live.playback_gaps([(0.0, 1.0), (1.5, 1.0), (3.0, 0.5)]) == pytest.approx(1.0)


@pytest.mark.slow
async def test_a_live_call_times_every_clause(stub, plan_for):
    pieces = bench_live.tokens(bench_live.REPLY)
    plan = plan_for(pieces)
    result = await bench_live.live_call(stub, pieces, plan)
    assert len(result["latency"]) == len(plan) and all(t is not None and t > 0 for t in result["latency"])
    assert result["silence_s"] >= 0
